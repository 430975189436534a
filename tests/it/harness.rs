//! Shared test harness: the tansu broker, the campo binary, the Python readers, lake queries.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use campo_lake::Lake;
use campo_lake::arrow::array::{Array, AsArray};
use campo_lake::arrow::datatypes::Int64Type;

pub fn campo_bin() -> &'static str {
    env!("CARGO_BIN_EXE_campo")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A free port below Linux's ephemeral range (32768..): for a broker started later, while a
/// client already retries it. Neither another test's `free_port` nor an outgoing connection's
/// source port (TCP self-connect) can take it in the meantime.
pub fn free_port_outside_ephemeral_range() -> u16 {
    use rand::Rng;
    let mut rng = rand::rng();
    loop {
        let port = rng.random_range(20_000..32_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn cache_dir() -> PathBuf {
    std::env::var_os("CAMPO_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/campo"))
}

/// The tansu binary installed by scripts/test.sh. Missing it is a failure, not a skip.
pub fn tansu_bin() -> PathBuf {
    let p = std::env::var_os("CAMPO_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("tansu-0.6.0/bin/tansu"));
    assert!(p.exists(), "tansu not found at {}: run scripts/test.sh, which installs it", p.display());
    p
}

/// The venv Python with deltalake, polars and duckdb, installed by scripts/test.sh.
pub fn python() -> PathBuf {
    let p = std::env::var_os("CAMPO_PYTHON").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("python3"));
    let ok = Command::new(&p).args(["-c", "import deltalake, polars, duckdb"]).status().is_ok_and(|s| s.success());
    assert!(ok, "{} cannot import deltalake, polars and duckdb: run scripts/test.sh, which installs them", p.display());
    p
}

/// Debian's Chromium (scripts/test.sh installs it; CAMPO_CHROMIUM overrides). Missing it is a
/// failure, not a skip.
pub fn chromium() -> PathBuf {
    let p = std::env::var_os("CAMPO_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(p.exists(), "{} is missing: run scripts/test.sh, which installs Debian's chromium", p.display());
    p
}

/// The `node_modules` holding playwright-core (scripts/test.sh installs it; CAMPO_NODE_PATH).
pub fn node_modules() -> PathBuf {
    let p = std::env::var_os("CAMPO_NODE_PATH").map(PathBuf::from).unwrap_or_else(|| cache_dir().join("node-playwright-core-1.64.1/node_modules"));
    assert!(p.join("playwright-core").exists(), "{} has no playwright-core: run scripts/test.sh, which installs it", p.display());
    p
}

/// A tansu broker on a free loopback port, stopped (SIGTERM) on drop.
pub struct Broker {
    child: Child,
    pub addr: String,
}

impl Broker {
    pub fn start() -> Broker {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Broker {
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_bin())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let addr = format!("127.0.0.1:{port}");
        let start = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "tansu did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker { child, addr }
    }

    /// The readings and activity topics with `partitions` each, and a one-partition DLQ.
    pub fn create_topics(&self, (readings, activity, dlq): (&str, &str, &str), partitions: i32) {
        self.create_topic(readings, partitions);
        self.create_topic(activity, partitions);
        self.create_topic(dlq, 1);
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        let st = Command::new(tansu_bin())
            .args(["topic", "create", "--broker", &format!("tcp://{}", self.addr), "--partitions", &partitions.to_string(), name])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "tansu topic create {name}");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A unique suffix for topic and group names.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple().to_string().get(..8).unwrap())
}

pub fn lake(path: &Path) -> Lake {
    Lake::new(path.to_str().unwrap(), Default::default()).unwrap()
}

/// `SELECT count(*)`-style single integer.
pub async fn scalar(lake: &Lake, sql: &str) -> i64 {
    let b = lake.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let col = campo_lake::arrow::compute::cast(b[0].column(0), &campo_lake::arrow::datatypes::DataType::Int64).unwrap();
    let col = col.as_primitive::<Int64Type>();
    if col.is_null(0) { 0 } else { col.value(0) }
}

/// Rows of a two-column (string, count) query, as a sorted map.
pub async fn counts_by(lake: &Lake, sql: &str) -> std::collections::BTreeMap<String, i64> {
    let mut out = std::collections::BTreeMap::new();
    for b in lake.query(sql).await.unwrap() {
        let k = campo_lake::arrow::compute::cast(b.column(0), &campo_lake::arrow::datatypes::DataType::Utf8).unwrap();
        let v = campo_lake::arrow::compute::cast(b.column(1), &campo_lake::arrow::datatypes::DataType::Int64).unwrap();
        for i in 0..b.num_rows() {
            out.insert(k.as_string::<i32>().value(i).to_string(), v.as_primitive::<Int64Type>().value(i));
        }
    }
    out
}

/// Runs `campo simulate` into a file or broker and returns its totals.
pub fn simulate(args: &[&str]) -> serde_json::Value {
    let out = Command::new(campo_bin()).arg("simulate").args(args).arg("--json").output().unwrap();
    assert!(out.status.success(), "campo simulate failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn total(v: &serde_json::Value, key: &str, topic: &str) -> i64 {
    v[key][topic].as_i64().unwrap_or(0)
}

pub fn invalid_total(v: &serde_json::Value, topic: &str) -> i64 {
    v["invalid"][topic].as_object().map(|m| m.values().map(|x| x.as_i64().unwrap()).sum()).unwrap_or(0)
}

/// Polls until `f` is true or the limit passes (then panics with `what`).
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `campo simulate --json` as a child process sending one record per producer batch: tansu
/// skips the rest of a batch when a consumer resumes inside it (shared/TANSU.md).
/// A `campo simulate` producer running in the background; its log goes to a file, shown if it
/// fails.
pub struct Producer {
    child: Child,
    log: PathBuf,
}

impl Producer {
    /// Waits for it and returns its output (the JSON totals on stdout); panics with its log if
    /// it failed.
    pub fn finish(self) -> std::process::Output {
        let out = self.child.wait_with_output().unwrap();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let _ = std::fs::remove_file(&self.log);
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        assert!(out.status.success(), "campo simulate failed ({}):\n{tail}", out.status);
        out
    }
}

pub fn one_record_batches_producer(brokers: &str, topics: (&str, &str), extra: &[&str]) -> Producer {
    let log = std::env::temp_dir().join(format!("{}.log", unique("campo-simulate")));
    let child = Command::new(campo_bin())
        .args(["simulate", "--brokers", brokers, "--partitions", "0", "--json"])
        .args(["--readings-topic", topics.0, "--activity-topic", topics.1])
        .args(["-X", "batch.num.messages=1", "-X", "linger.ms=0"])
        .args(extra)
        .env("CAMPO_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("producer log"))
        .spawn()
        .expect("start campo simulate");
    Producer { child, log }
}

/// One HTTP/1.1 response, read whole (the connection is closed after it).
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A minimal HTTP client for the tests (no client crate in the tree): `Connection: close`,
/// with chunked bodies decoded.
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut rest = &raw[split + 4..];
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("a status line");
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        let mut out = Vec::new();
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").expect("a chunk size line");
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16).expect("a hex chunk size");
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        out
    } else {
        rest.to_vec()
    };
    HttpResponse { status, headers, body: String::from_utf8_lossy(&body).into() }
}

/// A child process whose stdout and stderr lines are collected as they come.
pub struct Watched {
    pub child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Watched {
    pub fn spawn(mut cmd: Command) -> Watched {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [out, err] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Watched { child, lines }
    }

    /// The first line for which `f` gives a value, waiting up to `limit`.
    pub fn wait_for<T>(&mut self, limit: Duration, what: &str, f: impl Fn(&str) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = self.lines.lock().unwrap().iter().find_map(|l| f(l)) {
                return v;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                panic!("exited ({status}) before {what}:\n{}", self.output());
            }
            assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// SIGINT, then the exit status.
    pub fn interrupt(mut self) -> (std::process::ExitStatus, String) {
        Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().unwrap();
        let status = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        (status, self.output())
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
