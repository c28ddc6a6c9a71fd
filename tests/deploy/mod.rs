//! End-to-end tests of what a deployment relies on, against `miqat serve` as a real process:
//! fail-stop ends in a non-zero exit after `/readyz` said 503 (so a supervisor restarts it and
//! recovery keeps what was acknowledged), the token file, the admin listener, one JSON log
//! stream with an access log, and `--version`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use hyper::Method;

use crate::support::{
    DataSet, Http, OPERATOR_TOKEN, Server, ServerOptions, free_addr, miqat_bin, reserve_body, text,
};

/// Polls `probe` every 50 ms until it returns true; panics with `what` after `limit`.
async fn eventually(limit: Duration, what: &str, mut probe: impl AsyncFnMut() -> bool) {
    let started = std::time::Instant::now();
    while !probe().await {
        assert!(
            started.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_log_failure_readyz_says_503_and_the_process_exits_non_zero() {
    let work = tempfile::tempdir().unwrap();
    let data = DataSet::generate(2_000, 300, 11);
    let trigger = work.path().join("fail-fsync-now");
    let data_dir = work.path().join("db");
    let options = |name: &'static str, extra: &[&str]| ServerOptions {
        catalog: data.path(),
        data_dir: &data_dir,
        log_dir: work.path(),
        name,
        extra_args: extra.iter().map(|s| (*s).to_owned()).collect(),
    };
    let mut server = Server::spawn_with_env(
        &options(
            "failing",
            &["--fail-stop-grace-secs", "2", "--drain-timeout-secs", "2"],
        ),
        &[(
            "MIQAT_DEBUG_FAIL_FSYNC_WHEN",
            Some(trigger.to_str().unwrap()),
        )],
    );
    server.wait_ready(Duration::from_secs(30));
    let http = Http::new(server.addr);
    let eligible: Vec<_> = data.holders.iter().filter(|h| h.eligible()).collect();
    let caravan_of = |h: &crate::support::HolderRow| {
        data.caravans
            .iter()
            .find(|c| c.province_id == h.province_id && c.city == h.city)
            .unwrap()
            .id
            .clone()
    };
    let kept = http
        .post(
            "/v1/reservations",
            &[],
            &reserve_body(eligible[0], &caravan_of(eligible[0])),
        )
        .await;
    assert_eq!(kept.status, 201, "{}", kept.describe());
    let kept_id = kept.json()["id"].as_str().unwrap().to_owned();

    std::fs::write(&trigger, b"").unwrap();
    eventually(
        Duration::from_secs(10),
        "arming the fsync fault",
        async || !trigger.exists(),
    )
    .await;
    let h = eligible[1];
    let refused = http
        .post("/v1/reservations", &[], &reserve_body(h, &caravan_of(h)))
        .await;
    assert_eq!(refused.status, 500, "{}", refused.describe());
    assert_eq!(refused.code().as_deref(), Some("internal_error"));
    let ready = http.get("/readyz", &[]).await;
    assert_eq!(ready.status, 503, "{}", ready.describe());
    assert_eq!(ready.code().as_deref(), Some("not_ready"));
    let metrics = http.get("/metrics", &[]).await;
    let body = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        body.lines().any(|l| l == "miqat_wal_failed 1"),
        "no `miqat_wal_failed 1` in:\n{body}"
    );
    let status = server.wait_exit(Duration::from_secs(30));
    let stderr = server.stderr();
    let status = status.unwrap_or_else(|| panic!("still running after fail-stop:\n{stderr}"));
    assert!(
        !status.success(),
        "exit {status} after fail-stop:\n{stderr}"
    );
    assert!(stderr.contains("write-ahead log failed"), "{stderr}");

    // The supervisor's restart: recovery keeps every acknowledged reservation.
    let restarted = Server::start(&options("restarted", &[]));
    let http = Http::new(restarted.addr);
    let after = http.get_operator("/v1/admin/reservations?limit=100").await;
    let ids: Vec<String> = after.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(ids.contains(&kept_id), "{kept_id} lost: {ids:?}");
    let ready = http.get("/readyz", &[]).await;
    assert_eq!(ready.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_admin_listener_and_one_json_log_stream() {
    let work = tempfile::tempdir().unwrap();
    let data = DataSet::generate(2_000, 300, 12);
    let token_file = work.path().join("token");
    std::fs::write(&token_file, format!("{OPERATOR_TOKEN}\n")).unwrap();
    let admin_addr = free_addr();
    let admin_listen = admin_addr.to_string();
    let mut server = Server::spawn_with_env(
        &ServerOptions {
            catalog: data.path(),
            data_dir: &work.path().join("db"),
            log_dir: work.path(),
            name: "deployed",
            extra_args: [
                "--admin-listen",
                &admin_listen,
                "--log-format",
                "json",
                "--access-log",
                "--cors-origin",
                "https://front.example,http://localhost:5173",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        },
        &[
            ("MIQAT_OPERATOR_TOKEN", None),
            // An empty list is no list, not an error.
            ("MIQAT_TRUSTED_PROXIES", Some("")),
            (
                "MIQAT_OPERATOR_TOKEN_FILE",
                Some(token_file.to_str().unwrap()),
            ),
        ],
    );
    server.wait_ready(Duration::from_secs(30));
    let public = Http::new(server.addr);
    let admin = Http::new(admin_addr);
    // The token from the file works, on the admin port only.
    let stats = admin.get_operator("/v1/admin/stats").await;
    assert_eq!(stats.status, 200, "{}", stats.describe());
    assert_eq!(public.get_operator("/v1/admin/stats").await.status, 404);
    assert_eq!(admin.get("/metrics", &[]).await.status, 200);
    assert_eq!(public.get("/metrics", &[]).await.status, 404);
    assert_eq!(public.get("/v1/provinces", &[]).await.status, 200);
    assert_eq!(admin.get("/v1/provinces", &[]).await.status, 404);
    assert_eq!(admin.get("/readyz", &[]).await.status, 200);
    // CORS from the comma-separated list.
    let preflight = public
        .send(
            Method::OPTIONS,
            "/v1/reservations",
            &[
                ("origin", "http://localhost:5173"),
                ("access-control-request-method", "POST"),
            ],
            None,
        )
        .await;
    assert_eq!(preflight.status, 204);
    // Refused before its body is read (declared too large), the answer still carries CORS
    // headers, so the front-end can read the 413.
    let head = raw_exchange(
        server.addr,
        "POST /v1/reservations HTTP/1.1\r\nHost: x\r\nOrigin: https://front.example\r\n\
         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("access-control-allow-origin: https://front.example"),
        "{head}"
    );
    assert!(head.contains("body_too_large"), "{head}");
    let answered = public
        .get("/v1/waves", &[("x-request-id", "trace-7")])
        .await;
    assert_eq!(answered.header("x-request-id"), Some("trace-7"));

    server.terminate();
    let status = server.wait_exit(Duration::from_secs(30));
    let stderr = server.stderr();
    assert!(status.is_some_and(|s| s.success()), "{status:?}:\n{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line:?}"))
        })
        .collect();
    let said = |needle: &str| {
        lines
            .iter()
            .any(|l| l["message"].as_str().is_some_and(|m| m.contains(needle)))
    };
    for needle in ["starting", "listening on", "ready", "stopped cleanly"] {
        assert!(said(needle), "no JSON line saying {needle:?}:\n{stderr}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l["request_id"] == "trace-7" && l["route"] == "/v1/waves"),
        "no access-log line for trace-7:\n{stderr}"
    );
}

/// Sends `request` on a new connection and returns everything the server sends back.
fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    text(&answer)
}

#[test]
fn the_operator_token_file_must_exist_and_not_be_empty() {
    let work = tempfile::tempdir().unwrap();
    let data = DataSet::generate(500, 100, 13);
    let empty = work.path().join("empty");
    std::fs::write(&empty, "  \n").unwrap();
    for (file, expect) in [
        (empty.to_str().unwrap().to_owned(), "is empty"),
        (
            work.path().join("missing").to_str().unwrap().to_owned(),
            "token file",
        ),
    ] {
        let out = std::process::Command::new(miqat_bin())
            .args(["serve", "--catalog"])
            .arg(data.path())
            .arg("--data-dir")
            .arg(work.path().join("db"))
            .args(["--listen", "127.0.0.1:0", "--operator-token-file", &file])
            .env_remove("MIQAT_OPERATOR_TOKEN")
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains(expect), "{}", text(&out.stderr));
    }
}

#[test]
fn version_names_the_package_version_and_git_revision() {
    let out = std::process::Command::new(miqat_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let line = text(&out.stdout);
    let expected = format!("miqat {} (git ", env!("CARGO_PKG_VERSION"));
    assert!(line.starts_with(&expected), "{line}");
    let revision = line
        .trim()
        .trim_start_matches(&expected)
        .trim_end_matches(')');
    assert!(
        revision == "unknown"
            || (revision.len() >= 7 && revision.bytes().all(|b| b.is_ascii_hexdigit())),
        "{line}"
    );
}
