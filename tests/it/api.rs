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
    // The dashboard of the running demo, in headless Chromium: live data arrives over the stream
    // (the page marks itself `data-live` at the first window event), and its screenshot is not blank.
    let (url, _) = demo.wait_for(Duration::from_secs(5), "the demo's dashboard line", |l| {
        l.trim().strip_prefix("the dashboard, live: ").map(|u| (u.to_string(), ()))
    });
    let shot = dir.path().join("dashboard.png");
    let out = Command::new("node")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/dashboard.js"))
        .arg(&url)
        .arg(&shot)
        .env("NODE_PATH", node_modules())
        .env("CAMPO_CHROMIUM", chromium())
        .output()
        .unwrap();
    assert!(out.status.success(), "the browser test failed: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(page["tiles"].as_u64().unwrap() >= 5, "{page}");
    assert!(page["sparklines"].as_u64().unwrap() >= 5, "{page}");
    assert_eq!(page["status"], "live", "{page}");
    assert_eq!(page["errors"], serde_json::json!([]), "no script error: {page}");
    let stats = Command::new(python()).arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/png_stats.py")).arg(&shot).output().unwrap();
    assert!(stats.status.success(), "{}", String::from_utf8_lossy(&stats.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert!(stats["colors"].as_u64().unwrap() > 50, "a blank screenshot: {stats}");
    assert!(stats["dominant_share"].as_f64().unwrap() < 0.95, "a blank screenshot: {stats}");
    if let Some(keep) = std::env::var_os("CAMPO_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }

    let m = http(&addr, "GET", "/metrics", &[], b"");
    assert_eq!(m.status, 200);
    assert!(m.body.contains("campo_api_requests_total"), "the API counts its own requests");
    assert!(m.body.contains("campo_records_total"), "pipeline metrics share the endpoint");
    let (status, out) = demo.interrupt();
    assert!(status.success(), "{out}");

    // A later `campo serve` on the same lake: same key file, so the demo's token still works.
    let mut cmd = Command::new(campo_bin());
    // (rate limits off: schemathesis below sends requests as fast as it can; they have tests of their own)
    cmd.args(["serve", "--lake", lake.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .env("CAMPO_LOG", "warn")
        .env("CAMPO__API__RATE_LIMIT_PER_S", "0");
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
    // schemathesis against the live document: no server error, no answer outside the schema.
    let admin = Command::new(campo_bin())
        .args(["token", "--lake", lake.to_str().unwrap(), "--scope", "admin", "--ttl", "30m"])
        .output()
        .unwrap();
    let admin = String::from_utf8(admin.stdout).unwrap().trim().to_string();
    let schemathesis = python().parent().unwrap().join("schemathesis");
    let report = dir.path().join("schemathesis");
    let out = Command::new(&schemathesis)
        .args(["run", &format!("http://{addr}/openapi.json"), "--checks", "not_a_server_error,response_schema_conformance"])
        .args(["--header", &format!("Authorization: Bearer {admin}"), "--exclude-path", "/v1/stream", "--exclude-path", "/v1/erasure"])
        .args(["--max-examples", "40", "--seed", "7", "--workers", "1", "--request-timeout", "30", "--no-color"])
        .args(["--generation-database", ":memory:", "--report-dir", report.to_str().unwrap()])
        .current_dir(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/test.sh installs schemathesis in the venv)", schemathesis.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis found problems:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    // Every operation but the endless stream and erasure (tested on its own) was tested.
    let tested = text.lines().find_map(|l| l.trim().strip_prefix("Tested:")).and_then(|n| n.trim().parse::<u32>().ok());
    assert_eq!(tested, Some(9), "schemathesis ran every operation: {text}");

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
