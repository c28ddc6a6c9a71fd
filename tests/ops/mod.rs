//! What an operations team sees: the `/metrics` scrape (every family described, the
//! dashboard's and the alert rules' names all exported, `promtool` satisfied) and the live
//! operations page in a real headless browser, against a running `miqat serve`.
//!
//! The tests that need `promtool` (Debian package `prometheus`) or `chromium` are ignored in a
//! plain `cargo test` and run by `.ci/run` with `--ignored`, which installs both; run there,
//! a missing tool fails them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use hyper::Method;
use serde_json::{Value, json};

use crate::support::{DataSet, Http, OPERATOR_TOKEN, Server, ServerOptions, reserve_body, text};

/// The repository's root (the `miqat` package's folder).
pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A reserve wave that opens long after any test run, so the page has a countdown.
const FUTURE_WAVE_OPENS_AT: &str = "2099-03-21T06:30:00Z";

/// A server over a small generated data set with `reservations` seats taken and the reserve
/// wave moved into the future.
struct Scene {
    _data: DataSet,
    _work: tempfile::TempDir,
    server: Server,
    http: Http,
    reserved: usize,
}

async fn scene(name: &str, reservations: usize) -> Scene {
    let data = DataSet::generate(3_000, 400, 77);
    let work = tempfile::tempdir().unwrap();
    let server = Server::start(&ServerOptions {
        catalog: data.path(),
        data_dir: &work.path().join("data"),
        log_dir: work.path(),
        name,
        extra_args: Vec::new(),
    });
    let http = Http::new(server.addr);
    let by_city = data.caravans_by_city();
    let mut reserved = 0;
    for holder in data.holders.iter().filter(|h| h.eligible()) {
        if reserved == reservations {
            break;
        }
        let Some(caravans) = by_city.get(&(holder.province_id, holder.city.clone())) else {
            continue;
        };
        let answer = http
            .post(
                "/v1/reservations",
                &[],
                &reserve_body(holder, &caravans[0].id),
            )
            .await;
        if answer.status == 201 {
            reserved += 1;
        }
    }
    assert_eq!(reserved, reservations, "not enough holders could reserve");
    // A refusal on another route, so that refusals are counted beyond the reserve route.
    assert_eq!(http.get("/v1/caravans/NOPE", &[]).await.status, 404);

    let mut waves = http.get("/v1/waves", &[]).await.json();
    let waves_list = waves.as_array_mut().unwrap();
    assert!(waves_list.len() >= 2, "{waves}");
    waves_list[1]["opens_at"] = json!(FUTURE_WAVE_OPENS_AT);
    let bearer = format!("Bearer {OPERATOR_TOKEN}");
    let answer = http
        .send(
            Method::PUT,
            "/v1/admin/waves",
            &[("authorization", bearer.as_str())],
            Some(&waves),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.describe());
    Scene {
        _data: data,
        _work: work,
        server,
        http,
        reserved,
    }
}

/// Families declared by `# TYPE` lines, with their type; panics on a family without HELP.
pub(crate) fn families(exposition: &str) -> BTreeMap<String, String> {
    let helped: BTreeSet<&str> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut out = BTreeMap::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            panic!("malformed TYPE line: {line}");
        };
        assert!(helped.contains(name), "family {name} has no HELP text");
        out.insert(name.to_owned(), kind.to_owned());
    }
    out
}

/// Every metric name (`miqat_*`, `process_*`) written in `text`.
pub(crate) fn names_used(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for prefix in ["miqat_", "process_"] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let preceded_by_word = rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            if !preceded_by_word {
                out.insert(tail[..end].to_owned());
            }
            rest = &tail[end..];
        }
    }
    out
}

/// Whether `name` is a series of one of `families` (a histogram's `_bucket`, `_sum` and
/// `_count` included).
pub(crate) fn is_exported(name: &str, families: &BTreeMap<String, String>) -> bool {
    if families.contains_key(name) {
        return true;
    }
    ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        name.strip_suffix(suffix)
            .is_some_and(|family| families.get(family).is_some_and(|k| k == "histogram"))
    })
}

fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_alert_rules_use_only_metrics_the_server_exports() {
    let scene = scene("metrics-names", 3).await;
    let scrape = scene.http.get("/metrics", &[]).await;
    assert_eq!(scrape.status, 200);
    let exposition = text(&scrape.body);
    let families = families(&exposition);

    // What an operator relies on is there from the start, with the buckets meant for it.
    for family in [
        "miqat_build_info",
        "miqat_seats_capacity",
        "miqat_seats_free",
        "miqat_waitlist_offers_made_total",
        "miqat_waitlist_offers_ended_total",
        "miqat_wal_staged_bytes",
        "miqat_wal_staged_bytes_limit",
        "miqat_http_refusals_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(families.contains_key(family), "{family} is not exported");
    }
    assert_eq!(
        sample(
            &exposition,
            r#"miqat_reservations_total{outcome="reserved"}"#
        ),
        Some(scene.reserved as f64)
    );
    assert_eq!(
        sample(
            &exposition,
            r#"miqat_admission_rejections_total{reason="overloaded"}"#
        ),
        Some(0.0),
        "shed requests are counted from zero"
    );
    assert_eq!(
        sample(
            &exposition,
            r#"miqat_http_refusals_total{route="/v1/caravans/{id}",code="caravan_not_found"}"#
        ),
        Some(1.0),
        "refusals are counted by code on every route"
    );
    assert!(
        exposition.contains(r#"miqat_wal_batch_records_bucket{le="16384"}"#),
        "batch sizes have count buckets"
    );
    assert!(
        exposition.contains(r#"le="10"}"#),
        "latency buckets reach 10 s"
    );
    assert!(
        exposition.contains(&format!(
            r#"miqat_build_info{{version="{}","#,
            env!("CARGO_PKG_VERSION")
        )),
        "build info names the version"
    );

    for file in [
        "deploy/grafana/miqat-opening-day.json",
        "deploy/prometheus/miqat-alerts.yml",
    ] {
        let body = std::fs::read_to_string(repo().join(file)).unwrap();
        if file.ends_with(".json") {
            let dashboard: Value = serde_json::from_str(&body).unwrap();
            assert!(
                dashboard["panels"]
                    .as_array()
                    .is_some_and(|p| !p.is_empty())
            );
        }
        let used = names_used(&body);
        assert!(used.len() > 10, "{file} uses only {used:?}");
        let missing: Vec<&String> = used.iter().filter(|n| !is_exported(n, &families)).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics the server does not export: {missing:?}"
        );
    }
}

/// Runs `program` with `args`, feeding `stdin`; panics with its output unless it succeeds.
fn run_tool(program: &str, args: &[&str], stdin: Option<&str>, dir: &Path) -> String {
    use std::io::Write as _;
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        });
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{program} could not be started ({e}): is it installed?"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let all = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}): {all}",
        output.status
    );
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs promtool (Debian package prometheus); run by .ci/run"]
async fn promtool_accepts_the_scrape_the_rules_and_the_rules_tests() {
    let scene = scene("promtool", 2).await;
    // Every kind of series present: a refusal, a histogram with samples, labels with spaces.
    let exposition = text(&scene.http.get("/metrics", &[]).await.body);
    let deploy = repo().join("deploy/prometheus");
    let report = run_tool(
        "promtool",
        &["check", "metrics"],
        Some(&exposition),
        &deploy,
    );
    assert!(report.trim().is_empty(), "promtool check metrics: {report}");
    run_tool(
        "promtool",
        &["check", "rules", "miqat-alerts.yml"],
        None,
        &deploy,
    );
    run_tool(
        "promtool",
        &["test", "rules", "miqat-alerts.test.yml"],
        None,
        &deploy,
    );
    // The cluster's rules (their metrics are checked against a cluster node's scrape in
    // the cluster tests).
    run_tool(
        "promtool",
        &["check", "rules", "miqat-cluster-alerts.yml"],
        None,
        &deploy,
    );
    run_tool(
        "promtool",
        &["test", "rules", "miqat-cluster-alerts.test.yml"],
        None,
        &deploy,
    );
}

/// The value of attribute `data-value` of the first element after `marker` in `dom`.
fn data_value_after<'a>(dom: &'a str, marker: &str) -> Option<&'a str> {
    let at = dom.find(marker)?;
    let tail = &dom[at..];
    let element_end = tail.find('>')?;
    let element = &tail[..element_end];
    let value_at = element.find("data-value=\"")? + "data-value=\"".len();
    let value = &element[value_at..];
    Some(&value[..value.find('"')?])
}

/// The text of the element with `id` in `dom`.
fn text_of_id<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let tail = &dom[at..];
    let start = tail.find('>')? + 1;
    let end = tail[start..].find('<')?;
    Some(&tail[start..start + end])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium; run by .ci/run"]
async fn the_operations_page_in_a_browser_shows_what_the_api_says() {
    let scene = scene("ops-page", 7).await;
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/ops?interval_ms=500", scene.server.addr);
    let user_data_dir = format!("--user-data-dir={}", profile.path().display());
    let dom = run_tool(
        "chromium",
        &[
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &user_data_dir,
            "--virtual-time-budget=5000",
            "--dump-dom",
            &url,
        ],
        None,
        profile.path(),
    );
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page never loaded its data: {dom}"
    );
    // Nothing changed since the page was read: it must show exactly what the API says now.
    let provinces = scene.http.get("/v1/provinces", &[]).await.json();
    let provinces = provinces.as_array().unwrap();
    let mut seats_taken = 0;
    for province in provinces {
        let id = province["id"].as_u64().unwrap();
        let row_at = dom
            .find(&format!("data-province=\"{id}\""))
            .unwrap_or_else(|| panic!("province {id} is not on the page"));
        let row = &dom[row_at..];
        let row = &row[..row.find("</tr>").unwrap()];
        let free = data_value_after(row, "class=\"free").unwrap();
        let total = data_value_after(row, "class=\"total").unwrap();
        assert_eq!(free, province["seats_free"].to_string(), "province {id}");
        assert_eq!(total, province["seats_total"].to_string(), "province {id}");
        seats_taken +=
            province["seats_total"].as_u64().unwrap() - province["seats_free"].as_u64().unwrap();
    }
    assert_eq!(seats_taken, scene.reserved as u64);

    let summary = scene.http.get("/v1/ops/summary", &[]).await.json();
    assert_eq!(
        data_value_after(&dom, "id=\"total-free\""),
        Some(summary["seats_free"].to_string().as_str())
    );
    assert_eq!(
        data_value_after(&dom, "id=\"reserved\""),
        Some(scene.reserved.to_string().as_str())
    );
    assert_eq!(summary["counters"]["reserved"], json!(scene.reserved));
    let wave = &summary["next_wave"];
    assert_eq!(wave["opens_at"], json!(FUTURE_WAVE_OPENS_AT));
    assert_eq!(
        text_of_id(&dom, "wave-opens-jalali"),
        wave["opens_at_jalali"].as_str()
    );
    assert!(
        wave["opens_at_jalali"]
            .as_str()
            .is_some_and(|j| j.starts_with("1478/01/") && j.ends_with(" 10:00")),
        "{wave}"
    );
    let countdown = text_of_id(&dom, "countdown").unwrap();
    assert!(
        countdown.contains("d ") && countdown.matches(':').count() == 2,
        "countdown {countdown:?}"
    );
}
