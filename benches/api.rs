//! API benchmark: `GET /v1/regions` under a steady open-loop load while the pipeline ingests.
//!
//! Starts the release `campo demo` (in-process Kafka, the simulator, the whole engine and the
//! API), waits for its windows, then sends `GET /v1/regions` at a fixed rate over keep-alive
//! connections for a fixed time. Latency is measured from each request's scheduled send time
//! (open loop: a slow answer delays the next ones and is counted, no coordinated omission).
//! Prints the rate reached, p50/p90/p99/max latency and the ingest rate meanwhile; then, when
//! `wrk` is installed, its closed-loop figures for the same route.
//!
//! CAMPO_BENCH_API_RATE (default 5000 req/s), CAMPO_BENCH_API_SECS (30), CAMPO_BENCH_API_CONNS
//! (32), CAMPO_BENCH_EVENTS_RATE (the demo's simulated events/s, default 3000). Run:
//! `cargo bench --bench api`.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn env(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn main() {
    let rate = env("CAMPO_BENCH_API_RATE", 5000.0);
    let secs = env("CAMPO_BENCH_API_SECS", 30.0);
    let conns = env("CAMPO_BENCH_API_CONNS", 32.0) as usize;
    let events = env("CAMPO_BENCH_EVENTS_RATE", 3000.0);
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let mut demo = Command::new(env!("CARGO_BIN_EXE_campo"))
        .args(["demo", "--lake", dir.path().join("lake").to_str().unwrap(), "--rate", &events.to_string(), "--speed", "60"])
        .args(["--metrics-listen", "", "--api-listen", &addr, "--api-rate-limit", "0"])
        .env("CAMPO_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start campo demo");
    let token = {
        use std::io::BufRead;
        let out = demo.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(out).lines();
        let token = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| l.split_once("Bearer ").map(|(_, r)| r.split('\'').next().unwrap().to_string()))
            .expect("the demo printed its curl line");
        std::thread::spawn(move || for _ in lines {}); // keep draining the demo's output
        token
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let request = format!("GET /v1/regions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n").into_bytes();
        // Wait for every region's first windows.
        let started = Instant::now();
        loop {
            let body = get_once(&addr, &request).await.unwrap_or_default();
            if body.matches("\"region\"").count() >= 5 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "the demo's regions never filled");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let ingested_before = records(&addr).await;
        let request = Arc::new(request);
        let lat = Arc::new(Mutex::new(Vec::<u64>::with_capacity((rate * secs) as usize)));
        let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut senders = Vec::new();
        let mut workers = Vec::new();
        for _ in 0..conns {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
            senders.push(tx);
            workers.push(tokio::spawn(worker(addr.clone(), request.clone(), rx, lat.clone(), errors.clone())));
        }
        let total = (rate * secs) as u64;
        let t0 = Instant::now();
        let mut sent = 0u64;
        while sent < total {
            let due = ((t0.elapsed().as_secs_f64() * rate) as u64).min(total);
            while sent < due {
                let at = t0 + Duration::from_secs_f64(sent as f64 / rate);
                let _ = senders[(sent as usize) % conns].send(at);
                sent += 1;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        drop(senders);
        for w in workers {
            let _ = w.await;
        }
        let wall = t0.elapsed().as_secs_f64();
        let ingested = records(&addr).await.saturating_sub(ingested_before);
        let mut lat = lat.lock().unwrap().clone();
        lat.sort_unstable();
        let q = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).map_or(f64::NAN, |&v| v as f64 / 1000.0);
        let errors = errors.load(std::sync::atomic::Ordering::Relaxed);
        println!("GET /v1/regions, open loop at {rate:.0} req/s over {conns} keep-alive connections for {secs:.0} s, while the demo ingests:");
        println!("  answered {} (errors {errors}) in {wall:.1} s: {:.0} req/s", lat.len(), lat.len() as f64 / wall);
        println!("  latency from the scheduled send: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms", q(0.5), q(0.9), q(0.99), q(1.0));
        println!("  the pipeline committed {ingested} records meanwhile ({:.0} records/s)", ingested as f64 / wall);
        let met = q(0.99) <= 5.0 && errors == 0 && lat.len() as f64 / wall >= rate * 0.98;
        println!("  target p99 <= 5 ms at {rate:.0} req/s: {}", if met { "met" } else { "NOT met" });
    });
    if Command::new("wrk").arg("--version").output().is_ok() {
        println!("\nwrk (closed loop, 2 threads, 32 connections, 10 s) on the same route:");
        let out = Command::new("wrk")
            .args(["-t2", "-c32", "-d10s", "--latency", "-H", &format!("Authorization: Bearer {token}"), &format!("http://{addr}/v1/regions")])
            .output()
            .unwrap();
        print!("{}", String::from_utf8_lossy(&out.stdout));
    } else {
        println!("\n(wrk is not installed; `apt-get install wrk` adds its closed-loop figures)");
    }
    let _ = Command::new("kill").args(["-INT", &demo.id().to_string()]).status();
    let _ = demo.wait();
}

/// One connection: sends a request per scheduled instant, in order, and records the time from
/// the schedule to the end of the answer.
async fn worker(
    addr: String,
    request: Arc<Vec<u8>>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Instant>,
    lat: Arc<Mutex<Vec<u64>>>,
    errors: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut conn = None;
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(at) = rx.recv().await {
        if conn.is_none() {
            conn = TcpStream::connect(&addr).await.ok();
            if let Some(c) = &conn {
                let _ = c.set_nodelay(true);
            }
        }
        let ok = match conn.as_mut() {
            Some(c) => exchange(c, &request, &mut buf).await.is_ok_and(|status| status == 200),
            None => false,
        };
        if ok {
            lat.lock().unwrap().push(at.elapsed().as_micros() as u64);
        } else {
            errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            conn = None;
        }
    }
}

/// Writes the request and reads one whole answer; its status.
async fn exchange(c: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) -> std::io::Result<u16> {
    c.write_all(request).await?;
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    let (head_end, length) = loop {
        let n = c.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                .unwrap_or(0);
            break (i + 4, length);
        }
    };
    while buf.len() < head_end + length {
        let n = c.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let status = String::from_utf8_lossy(&buf[..12]).split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok(status)
}

async fn get_once(addr: &str, request: &[u8]) -> Option<String> {
    let mut c = TcpStream::connect(addr).await.ok()?;
    let mut buf = Vec::new();
    exchange(&mut c, request, &mut buf).await.ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Records committed so far (bronze + duplicates + DLQ), from the API's /metrics.
async fn records(addr: &str) -> u64 {
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes();
    let text = get_once(addr, &req).await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("campo_records_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
