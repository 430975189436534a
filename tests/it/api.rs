//! The HTTP API from the binary: the demo's printed token and curl line work, `/readyz` follows
//! the pipeline, and a later `campo serve` on the same lake accepts the demo's token and one
//! minted by `campo token`.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// `(token, url)` from the demo's `curl -s -H 'Authorization: Bearer T' URL` line.
fn curl_line(l: &str) -> Option<(String, String)> {
    let rest = l.trim().strip_prefix("curl -s -H 'Authorization: Bearer ")?;
    let (token, url) = rest.split_once("' ")?;
    Some((token.to_string(), url.trim().to_string()))
}

fn host_of(url: &str) -> String {
    url.trim_start_matches("http://").split('/').next().unwrap().to_string()
}

#[test]
fn demo_token_works_on_the_demo_and_on_a_later_serve() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let mut cmd = Command::new(campo_bin());
    cmd.args(["demo", "--lake", lake.to_str().unwrap(), "--rate", "3000", "--speed", "60", "--metrics-listen", "", "--api-listen", "127.0.0.1:0"])
        .env("CAMPO_LOG", "warn");
    let mut demo = Watched::spawn(cmd);
    let (token, url) = demo.wait_for(Duration::from_secs(60), "the demo's curl line", curl_line);
    assert!(url.ends_with("/v1/regions"), "{url}");
    let addr = host_of(&url);
    let auth = bearer(&token);

    // Ready once the mock cluster has assigned the partitions.
    let start = std::time::Instant::now();
    loop {
        let r = http(&addr, "GET", "/readyz", &[], b"");
        if r.status == 200 {
            let v = r.json();
            for check in ["lake_reachable", "kafka_connected", "assignment_held", "lake_writable"] {
                assert_eq!(v["checks"][check], true, "{v}");
            }
            break;
        }
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(start.elapsed() < Duration::from_secs(60), "never ready: {}", r.body);
        std::thread::sleep(Duration::from_millis(250));
    }
    // The printed curl line answers with every region once windows have closed.
    let start = std::time::Instant::now();
    let regions = loop {
        let r = http(&addr, "GET", "/v1/regions", &[("Authorization", &auth)], b"");
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.header("x-trace-id").is_some());
        let items = r.json()["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= 5 {
            break items;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "regions never filled: {}", r.body);
        std::thread::sleep(Duration::from_millis(500));
    };
    for r in &regions {
        assert!(r["hz_mean"].as_f64().is_some_and(|hz| hz > 300.0 && hz < 700.0), "{r}");
        assert!(r["state"].is_string() && r["alert_level"].is_string(), "{r}");
    }
    let m = http(&addr, "GET", "/metrics", &[], b"");
    assert_eq!(m.status, 200);
    assert!(m.body.contains("campo_api_requests_total"), "the API counts its own requests");
    assert!(m.body.contains("campo_records_total"), "pipeline metrics share the endpoint");
    let (status, out) = demo.interrupt();
    assert!(status.success(), "{out}");

    // A later `campo serve` on the same lake: same key file, so the demo's token still works.
    let mut cmd = Command::new(campo_bin());
    cmd.args(["serve", "--lake", lake.to_str().unwrap(), "--listen", "127.0.0.1:0"]).env("CAMPO_LOG", "warn");
    let mut serve = Watched::spawn(cmd);
    let addr = serve.wait_for(Duration::from_secs(30), "serve's address", |l| {
        l.split_once("at http://").map(|(_, r)| r.split('/').next().unwrap().to_string())
    });
    let r = http(&addr, "GET", "/v1/regions", &[("Authorization", &auth)], b"");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["items"].as_array().map(Vec::len), Some(regions.len()));
    assert_eq!(http(&addr, "GET", "/readyz", &[], b"").status, 200, "serve is ready on a reachable lake");

    // `campo token` signs with the same key; its scopes are enforced.
    let out = Command::new(campo_bin())
        .args(["token", "--lake", lake.to_str().unwrap(), "--scope", "alerts:read", "--ttl", "10m", "--subject", "oncall"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let minted = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let r = http(&addr, "GET", "/v1/alerts", &[("Authorization", &bearer(&minted))], b"");
    assert_eq!(r.status, 200, "{}", r.body);
    let r = http(&addr, "GET", "/v1/regions", &[("Authorization", &bearer(&minted))], b"");
    assert_eq!(r.status, 403, "alerts:read does not read signals: {}", r.body);
    assert_eq!(r.json()["code"], "forbidden");
    let key = lake.join("_campo/api-signing.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let (status, out) = serve.interrupt();
    assert!(status.success(), "{out}");

    // An unknown scope and an unusable listen address are usage errors naming what is wrong.
    let out = Command::new(campo_bin()).args(["token", "--lake", lake.to_str().unwrap(), "--scope", "root"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scope"));
    let out = Command::new(campo_bin()).args(["serve", "--lake", lake.to_str().unwrap(), "--listen", "nowhere"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("api.listen"), "{}", String::from_utf8_lossy(&out.stderr));
}
