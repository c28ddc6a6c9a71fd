//! Operations endpoints: `/healthz`, `/readyz`, `/metrics` and `/openapi.json`.

use crate::support::*;

#[tokio::test]
async fn healthz_answers_even_before_recovery() {
    let state = AppState::new(catalog(), config(), None);
    let r = send(&app(state), Method::GET, "/healthz", &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text, "ok\n");
}

#[tokio::test]
async fn readyz_and_v1_answer_503_not_ready_until_the_engine_is_set() {
    let catalog = catalog();
    let state = AppState::new(Arc::clone(&catalog), config(), None);
    let router = app(state.clone());
    let r = send(&router, Method::GET, "/readyz", &[], None).await;
    assert_problem(&r, StatusCode::SERVICE_UNAVAILABLE, "not_ready");
    assert_eq!(r.header("retry-after"), Some("1"));
    for uri in ["/v1/waves", "/v1/provinces", "/v1/provinces/1/caravans"] {
        let r = send(&router, Method::GET, uri, &[], None).await;
        assert_problem(&r, StatusCode::SERVICE_UNAVAILABLE, "not_ready");
        assert_eq!(r.header("retry-after"), Some("1"), "{uri}");
    }
    let r = send(
        &router,
        Method::POST,
        "/v1/reservations",
        &[],
        Some(&reserve_body(&a(0), "a1")),
    )
    .await;
    assert_problem(&r, StatusCode::SERVICE_UNAVAILABLE, "not_ready");

    let engine = Engine::in_memory(
        catalog,
        season_opening_at(T0),
        Arc::new(ManualClock::new(T0)),
        EngineConfig::default(),
    )
    .unwrap();
    state.set_engine(engine);
    let r = send(&router, Method::GET, "/readyz", &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = send(&router, Method::GET, "/v1/waves", &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn openapi_is_3_1_and_lists_every_contract_path() {
    let fx = Fx::new();
    let r = fx.get("/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    assert!(
        r.body["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        r.body["openapi"]
    );
    let paths = &r.body["paths"];
    for (path, methods) in [
        ("/v1/waves", &["get"][..]),
        ("/v1/provinces", &["get"]),
        ("/v1/provinces/{id}/caravans", &["get"]),
        ("/v1/caravans/{id}", &["get"]),
        ("/v1/reservations", &["post"]),
        ("/v1/reservations/{id}", &["get", "delete"]),
        ("/v1/reservations/{id}/accept", &["post"]),
        ("/v1/reservations/{id}/events", &["post"]),
        ("/v1/waitlist", &["post"]),
        ("/v1/waitlist/me", &["get"]),
        ("/v1/admin/reservations", &["get"]),
        ("/v1/admin/stats", &["get"]),
        ("/v1/admin/waves", &["put"]),
        ("/v1/caravans/{id}/roster", &["get"]),
        ("/v1/admin/transfers", &["post"]),
        ("/v1/admin/holders/{national_id}/dispatch", &["put"]),
    ] {
        for method in methods {
            assert!(
                paths[path][method].is_object(),
                "{method} {path} missing from the OpenAPI document"
            );
        }
    }
    assert!(r.body["components"]["schemas"]["Problem"].is_object());
    assert!(r.body["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn metrics_answers_prometheus_text() {
    let fx = Fx::new();
    let r = fx.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
}
