//! HTTP benchmark of `miqat serve`'s two rush endpoints against the machine's ceiling: a
//! trivial axum handler that parses the same JSON and answers it, driven by the same client in
//! the same run. Reports throughput ratios, open-loop latency at half the ceiling (measured
//! from each request's intended send time, so queueing is not hidden), and resident memory.
//!
//! `cargo run --release -p miqat-bench --bin http_bench -- [--connections N] [--get-requests N]`
//! (`--no-fsync` or `--in-memory` split the durability cost out, for diagnosis only)
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::http::StatusCode;
use axum::routing::{get, post};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use miqat_api::{ApiConfig, AppState, app};
use miqat_bench::{FixedClock, fill_plan, national, numeric_flag, resident_bytes};
use miqat_engine::catalog::Catalog;
use miqat_engine::season::Season;
use miqat_engine::wal::DirStorage;
use miqat_engine::{Engine, EngineConfig};
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};

/// One request to send: method, path, JSON body.
#[derive(Clone)]
struct Job {
    post: bool,
    path: String,
    body: Bytes,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct ReserveBody {
    national_id: String,
    tracking_code: String,
    caravan_id: String,
}

async fn start(router: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(miqat_api::server::serve(
        listener,
        router,
        miqat_api::server::ServeOptions::default(),
        std::future::pending(),
    ));
    addr
}

/// The ceiling: the same routes, doing only the JSON work.
fn trivial_router(caravans_body: Bytes) -> axum::Router {
    axum::Router::new()
        .route(
            "/v1/reservations",
            post(|Json(body): Json<ReserveBody>| async move { (StatusCode::CREATED, Json(body)) }),
        )
        .route(
            "/v1/provinces/{id}/caravans",
            get(move || {
                let body = caravans_body.clone();
                async move { ([("content-type", "application/json")], body) }
            }),
        )
}

async fn miqat_server(
    catalog: &Arc<Catalog>,
    season: &Season,
    dir: &std::path::Path,
) -> (SocketAddr, Arc<Engine>) {
    let storage = Arc::new(DirStorage::open(dir).unwrap());
    let clock = FixedClock(season.schedule.waves[0].opens_at_ms + 1);
    let config = ApiConfig {
        per_holder: miqat_api::limits::Rate {
            per_second: 0.0,
            burst: 1,
        },
        ..ApiConfig::default()
    };
    if std::env::args().any(|a| a == "--in-memory") {
        // Diagnostic: no log at all, to split the HTTP cost from the durability cost.
        let engine = Engine::in_memory(
            Arc::clone(catalog),
            season.clone(),
            Arc::new(clock),
            EngineConfig::default(),
        )
        .unwrap();
        let state = AppState::new(Arc::clone(catalog), config, None);
        state.set_engine(Arc::clone(&engine));
        return (start(app(state)).await, engine);
    }
    let (engine, _) = Engine::open(
        Arc::clone(catalog),
        season.clone(),
        Arc::new(clock),
        storage,
        EngineConfig {
            durability: if std::env::args().any(|a| a == "--no-fsync") {
                miqat_engine::wal::Durability::None
            } else {
                miqat_engine::wal::Durability::Fsync
            },
            ..EngineConfig::default()
        },
    )
    .unwrap();
    let state = AppState::new(Arc::clone(catalog), config, None);
    state.set_engine(Arc::clone(&engine));
    (start(app(state)).await, engine)
}

struct RunResult {
    sent: u64,
    ok: u64,
    other: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    send_lag_us: Histogram<u64>,
}

/// Sends `jobs` over `connections` keep-alive connections. `rate_per_s = None`: closed loop,
/// as fast as the server answers. `Some(r)`: open loop, request `i` is meant to leave at
/// `start + i / r`, and latency counts from then.
async fn drive(
    addr: SocketAddr,
    jobs: Arc<Vec<Job>>,
    connections: usize,
    rate_per_s: Option<f64>,
    expect: StatusCode,
) -> RunResult {
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let lag = Arc::new(Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let started = Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (jobs, next, ok, other, latency, lag) = (
            Arc::clone(&jobs),
            Arc::clone(&next),
            Arc::clone(&ok),
            Arc::clone(&other),
            Arc::clone(&latency),
            Arc::clone(&lag),
        );
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut lat = Histogram::<u64>::new(3).unwrap();
            let mut lg = Histogram::<u64>::new(3).unwrap();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                let intended = match rate_per_s {
                    Some(r) => started + Duration::from_secs_f64(i as f64 / r),
                    None => Instant::now(),
                };
                // The timer wheel ticks in milliseconds: sleep to within one, then yield, so a
                // request leaves close to its intended time instead of up to a tick late.
                let tick = Duration::from_millis(1);
                while let Some(ahead) = intended.checked_duration_since(Instant::now()) {
                    if ahead > tick {
                        tokio::time::sleep(ahead - tick).await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
                let sent = Instant::now();
                let _ = lg.record(sent.saturating_duration_since(intended).as_micros() as u64);
                let mut req = Request::builder()
                    .uri(&job.path)
                    .header("host", "bench")
                    .header("content-type", "application/json");
                req = req.method(if job.post { "POST" } else { "GET" });
                let req = req.body(Full::new(job.body.clone())).unwrap();
                match sender.send_request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let _ = resp.into_body().collect().await;
                        let done = Instant::now();
                        let _ = lat.record(done.duration_since(intended).as_micros() as u64);
                        if status == expect {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            other.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        other.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            latency.lock().add(&lat).unwrap();
            lag.lock().add(&lg).unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let latency_us = latency.lock().clone();
    let send_lag_us = lag.lock().clone();
    RunResult {
        sent: jobs.len() as u64,
        ok: ok.load(Ordering::Relaxed),
        other: other.load(Ordering::Relaxed),
        elapsed,
        latency_us,
        send_lag_us,
    }
}

fn rps(r: &RunResult) -> f64 {
    r.ok as f64 / r.elapsed.as_secs_f64()
}

fn line(name: &str, r: &RunResult) {
    let h = &r.latency_us;
    println!(
        "{name:<34} {:>9.0} ok/s  ({} sent, {} ok, {} other)  p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  send-lag p99 {:.2} ms",
        rps(r),
        r.sent,
        r.ok,
        r.other,
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.value_at_quantile(0.999) as f64 / 1e3,
        h.max() as f64 / 1e3,
        r.send_lag_us.value_at_quantile(0.99) as f64 / 1e3,
    );
}

fn reserve_jobs(catalog: &Catalog, season: &Season) -> Vec<Job> {
    fill_plan(catalog, season)
        .into_iter()
        .map(|(h, c)| {
            let holder = catalog.holder(h).unwrap();
            let body = ReserveBody {
                national_id: format!("{:010}", holder.national_id),
                tracking_code: holder.tracking_code.to_owned(),
                caravan_id: catalog.caravans()[c.index()].id.clone(),
            };
            Job {
                post: true,
                path: "/v1/reservations".into(),
                body: Bytes::from(serde_json::to_vec(&body).unwrap()),
            }
        })
        .collect()
}

fn main() {
    let connections = numeric_flag("--connections", 64.0) as usize;
    let get_requests = numeric_flag("--get-requests", 200_000.0) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let data = std::env::temp_dir().join("miqat-bench-national");
        let (catalog, season) = national(&data, 1_000_000);
        let jobs = Arc::new(reserve_jobs(&catalog, &season));
        let rss_start = resident_bytes();
        println!(
            "{} reservations per POST run (every seat once, distinct holders), {} connections, keep-alive",
            jobs.len(),
            connections
        );

        // The caravan list of the largest province, as the cached body miqat serves.
        let work = tempfile::tempdir().unwrap();
        let (addr, _engine) = miqat_server(&catalog, &season, &work.path().join("warm")).await;
        let list_path = "/v1/provinces/1/caravans".to_owned();
        let list_body = {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut s, c) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(c);
            let req = Request::get(&list_path)
                .header("host", "bench")
                .body(Full::new(Bytes::new()))
                .unwrap();
            s.send_request(req).await.unwrap().into_body().collect().await.unwrap().to_bytes()
        };
        let ceiling = start(trivial_router(list_body.clone())).await;
        let get_jobs = Arc::new(vec![
            Job {
                post: false,
                path: list_path.clone(),
                body: Bytes::new(),
            };
            get_requests
        ]);

        println!("\n-- closed loop (throughput)");
        let base_post = drive(ceiling, Arc::clone(&jobs), connections, None, StatusCode::CREATED).await;
        line("ceiling POST /v1/reservations", &base_post);
        let (miqat, engine) = miqat_server(&catalog, &season, &work.path().join("run1")).await;
        let rss_before = resident_bytes();
        let ours_post = drive(miqat, Arc::clone(&jobs), connections, None, StatusCode::CREATED).await;
        let rss_after_post = resident_bytes();
        line("miqat   POST /v1/reservations", &ours_post);
        let wal = engine.wal_stats().unwrap_or_default();
        let base_get = drive(ceiling, Arc::clone(&get_jobs), connections, None, StatusCode::OK).await;
        line("ceiling GET caravans", &base_get);
        let ours_get = drive(miqat, Arc::clone(&get_jobs), connections, None, StatusCode::OK).await;
        let rss_after_get = resident_bytes();
        line("miqat   GET caravans (cached)", &ours_get);
        println!(
            "ratios: POST {:.2}x the ceiling, GET {:.2}x the ceiling; log: {} records in {} fsyncs",
            rps(&ours_post) / rps(&base_post),
            rps(&ours_get) / rps(&base_get),
            wal.records_written,
            wal.fsyncs
        );

        let half = rps(&base_post) / 2.0;
        println!("\n-- open loop at half the POST ceiling ({half:.0} requests/s), latency from intended send time");
        let (miqat2, _engine2) = miqat_server(&catalog, &season, &work.path().join("run2")).await;
        let ours_open = drive(miqat2, Arc::clone(&jobs), connections, Some(half), StatusCode::CREATED).await;
        line("miqat   POST open loop", &ours_open);
        let base_open = drive(ceiling, Arc::clone(&jobs), connections, Some(half), StatusCode::CREATED).await;
        line("ceiling POST open loop", &base_open);
        let ours_half = rps(&ours_post) / 2.0;
        println!("-- open loop at half of miqat's own POST rate ({ours_half:.0} requests/s)");
        let (miqat3, _engine3) = miqat_server(&catalog, &season, &work.path().join("run3")).await;
        let ours_open_own = drive(miqat3, Arc::clone(&jobs), connections, Some(ours_half), StatusCode::CREATED).await;
        line("miqat   POST open loop (own half)", &ours_open_own);
        let half_get = rps(&base_get) / 2.0;
        let ours_get_open = drive(miqat2, Arc::clone(&get_jobs), connections, Some(half_get), StatusCode::OK).await;
        line("miqat   GET open loop", &ours_get_open);
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        println!(
            "\nresident memory: {:.0} MiB with the catalog loaded; one server's run: {:.0} MiB before, \
             {:.0} MiB after {} POSTs (every seat taken), {:.0} MiB after {} more GETs; {:.0} MiB at the end",
            mib(rss_start),
            mib(rss_before),
            mib(rss_after_post),
            jobs.len(),
            mib(rss_after_get),
            get_jobs.len(),
            mib(resident_bytes())
        );
    });
}
