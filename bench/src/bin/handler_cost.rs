//! The CPU cost of one request through the router, without sockets or the log: every seat
//! reserved once with `POST /v1/reservations`, then cached caravan-list reads. Single thread.
//! `cargo run --release -p miqat-bench --bin handler_cost`
#![allow(clippy::unwrap_used, missing_docs)]
use axum::body::Body;
use http_body_util::BodyExt;
use miqat_api::{ApiConfig, AppState, app};
use miqat_bench::{FixedClock, fill_plan, national};
use miqat_engine::{Engine, EngineConfig};
use std::sync::Arc;
use std::time::Instant;
use tower::ServiceExt;
fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let data = std::env::temp_dir().join("miqat-bench-national");
        let (catalog, season) = national(&data, 1_000_000);
        let plan = fill_plan(&catalog, &season);
        let clock = FixedClock(season.schedule.waves[0].opens_at_ms + 1);
        let engine = Engine::in_memory(
            Arc::clone(&catalog),
            season.clone(),
            Arc::new(clock),
            EngineConfig::default(),
        )
        .unwrap();
        let state = AppState::new(
            Arc::clone(&catalog),
            ApiConfig {
                per_holder: miqat_api::limits::Rate {
                    per_second: 0.0,
                    burst: 1,
                },
                ..ApiConfig::default()
            },
            None,
        );
        state.set_engine(engine);
        let router = app(state);
        let bodies: Vec<String> = plan
            .iter()
            .map(|&(h, c)| {
                let x = catalog.holder(h).unwrap();
                format!(
                    "{{\"national_id\":\"{:010}\",\"tracking_code\":\"{}\",\"caravan_id\":\"{}\"}}",
                    x.national_id,
                    x.tracking_code,
                    catalog.caravans()[c.index()].id
                )
            })
            .collect();
        let t = Instant::now();
        for b in &bodies {
            let req = axum::http::Request::post("/v1/reservations")
                .header("content-type", "application/json")
                .body(Body::from(b.clone()))
                .unwrap();
            let resp = router.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status(), 201);
            let _ = resp.into_body().collect().await;
        }
        let e = t.elapsed();
        println!(
            "{} POSTs through the router in {:?}: {:.2} us each",
            bodies.len(),
            e,
            e.as_secs_f64() * 1e6 / bodies.len() as f64
        );
        let t = Instant::now();
        for _ in 0..100_000 {
            let req = axum::http::Request::get("/v1/provinces/1/caravans")
                .body(Body::empty())
                .unwrap();
            let resp = router.clone().oneshot(req).await.unwrap();
            let _ = resp.into_body().collect().await;
        }
        println!(
            "100000 GETs: {:.2} us each",
            t.elapsed().as_secs_f64() * 10.0
        );
    });
}
