//! The ceiling measured in the same run: a trivial axum handler answering the same routes with
//! fixed JSON, driven by the same client, closed loop (the most it answers) and with the
//! plan's own schedule (the same shape), plus the generator's own rate per CPU core.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{any, get, post};
use bytes::Bytes;
use hyper::Method;

use crate::client::{Call, Http};
use crate::outcome::Endpoint;
use crate::recorder::{Recorder, percentiles};

/// Name prefix of the client runtime's threads, whose CPU time the generator rate counts.
pub const CLIENT_THREAD_NAME: &str = "miqat-lt";

/// A trivial server on a free loopback port, on its own threads; dropped with the runtime.
pub struct TrivialServer {
    /// Base URL.
    pub base: String,
    _runtime: tokio::runtime::Runtime,
}

/// Starts the trivial server; its waves open `opens_in` from now.
pub fn start_trivial(opens_in: Duration) -> anyhow::Result<TrivialServer> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("miqat-baseline")
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr: SocketAddr = listener.local_addr()?;
    let opens_at = jiff::Timestamp::now()
        + jiff::SignedDuration::from_millis(i64::try_from(opens_in.as_millis()).unwrap_or(0));
    runtime.spawn(async move {
        let _ = axum::serve(listener, trivial_router(opens_at.to_string())).await;
    });
    Ok(TrivialServer {
        base: format!("http://{addr}"),
        _runtime: runtime,
    })
}

fn trivial_router(opens_at: String) -> Router {
    let waves = Bytes::from(format!(
        r#"[{{"name":"main","receipts_until":"1386/01/31","opens_at":"{opens_at}"}}]"#
    ));
    let caravans: String = (1..=20)
        .map(|i| {
            format!(
                r#"{{"id":"T{i:03}","province_id":1,"city":"Tehran","manager":"Manager","phone":"021-00000000","price_group":"B","route":"medina_first","departure_date":"1399/05/04","price_rial":1500000000,"capacity":150,"seats_free":150}}"#
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    let caravans = Bytes::from(format!("[{caravans}]"));
    let provinces = Bytes::from_static(
        br#"[{"id":1,"name_en":"Tehran","name_fa":"","seats_total":3000,"seats_free":3000}]"#,
    );
    let json = |body: Bytes| ([("content-type", "application/json")], body);
    Router::new()
        .route("/readyz", get(|| async { "ready" }))
        .route("/v1/waves", get(move || async move { json(waves) }))
        .route("/v1/provinces", get(move || async move { json(provinces) }))
        .route(
            "/v1/provinces/{id}/caravans",
            get(move || async move { json(caravans) }),
        )
        .route(
            "/v1/reservations",
            post(|body: Bytes| async move {
                // Parse the JSON as the real handler must, then answer a fixed reservation.
                let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&body);
                let caravan = parsed
                    .ok()
                    .and_then(|v| v.get("caravan_id")?.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let reply = format!(
                    r#"{{"id":"0001000000010000000000000000000000000000000a","caravan_id":"{}","created_at":"2026-01-01T00:00:00Z"}}"#,
                    caravan.replace('"', "")
                );
                (
                    StatusCode::CREATED,
                    [("content-type", "application/json")],
                    reply,
                )
            }),
        )
        .fallback(any(move || async move { json(Bytes::from_static(b"{}")) }))
}

/// What the closed-loop ceiling run measured.
pub struct Ceiling {
    /// Answers per second.
    pub rps: f64,
    /// Requests per CPU-second of the client threads, where the platform tells.
    pub rps_per_core: Option<f64>,
    /// Latency.
    pub latency: crate::summary::Percentiles,
}

/// Drives `base` as fast as it answers for `length`: `connections` loops, lists and
/// reservations in the given proportion.
pub async fn closed_loop(
    base: &str,
    connections: usize,
    length: Duration,
    reserve_share: f64,
) -> anyhow::Result<Ceiling> {
    let body = Bytes::from_static(
        br#"{"national_id":"0000000000","tracking_code":"00000000","caravan_id":"T001"}"#,
    );
    let calls: Vec<LoopCall> = (0..100u32)
        .map(|n| {
            if f64::from(n) / 100.0 < reserve_share {
                LoopCall::reserve(body.clone())
            } else {
                LoopCall::list("/v1/provinces/1/caravans?city=Tehran".to_string())
            }
        })
        .collect();
    closed_loop_calls(base, connections, length, Arc::new(calls)).await
}

/// One request of a closed loop.
#[derive(Debug, Clone)]
pub struct LoopCall {
    endpoint: Endpoint,
    method: Method,
    path: String,
    body: Option<Bytes>,
}

impl LoopCall {
    /// `GET path` (a caravan list).
    pub fn list(path: String) -> LoopCall {
        LoopCall {
            endpoint: Endpoint::List,
            method: Method::GET,
            path,
            body: None,
        }
    }

    /// `POST /v1/reservations` with `body`.
    pub fn reserve(body: Bytes) -> LoopCall {
        LoopCall {
            endpoint: Endpoint::Reserve,
            method: Method::POST,
            path: "/v1/reservations".to_string(),
            body: Some(body),
        }
    }
}

/// Drives `base` as fast as it answers for `length`: `connections` loops, each sending the
/// next of `calls` (round robin, every loop from its own offset) as soon as the previous one
/// is answered.
pub async fn closed_loop_calls(
    base: &str,
    connections: usize,
    length: Duration,
    calls: Arc<Vec<LoopCall>>,
) -> anyhow::Result<Ceiling> {
    anyhow::ensure!(!calls.is_empty(), "a closed loop needs requests to send");
    let recorder = Arc::new(Recorder::new(Instant::now()));
    let http = Arc::new(Http::new(
        base,
        connections,
        Duration::from_secs(10),
        Arc::clone(&recorder),
    )?);
    let answered = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let cpu_before = client_cpu_seconds();
    let started = Instant::now();
    let until = started + length;
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (http, answered, next, calls) = (
            Arc::clone(&http),
            Arc::clone(&answered),
            Arc::clone(&next),
            Arc::clone(&calls),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let call = &calls[(n % calls.len() as u64) as usize];
                let result = http
                    .call(Call {
                        endpoint: call.endpoint,
                        method: call.method.clone(),
                        path: &call.path,
                        body: call.body.clone(),
                        headers: &[],
                        intended: Instant::now(),
                        wrong_credentials: false,
                    })
                    .await;
                if result.is_ok() {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = match (cpu_before, client_cpu_seconds()) {
        (Some(a), Some(b)) if b > a => Some(b - a),
        _ => None,
    };
    let total = answered.load(Ordering::Relaxed) as f64;
    let recorded = recorder.finish();
    let mut all = recorded.latency[Endpoint::List as usize].clone();
    let _ = all.add(&recorded.latency[Endpoint::Reserve as usize]);
    Ok(Ceiling {
        rps: total / elapsed,
        rps_per_core: cpu.map(|c| total / c),
        latency: percentiles(&all),
    })
}

/// CPU seconds (user + system) used so far by this process's client threads, from
/// `/proc/self/task`; `None` where that is not available.
pub fn client_cpu_seconds() -> Option<f64> {
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let mut ticks = 0u64;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesized thread name: state is field 3, utime 14, stime 15.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(CLIENT_THREAD_NAME) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        ticks += field(14)? + field(15)?;
    }
    Some(ticks as f64 / ticks_per_second)
}
