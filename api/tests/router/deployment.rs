//! What deployments rely on: the admin listener's split of routes, trusted proxies for the
//! per-client limit, the access log's request id, and `/readyz` after a log failure.

use crate::support::*;
use miqat_api::{Surface, admin_app, public_app};
use miqat_engine::wal::{FaultMode, FaultyStorage, MemStorage, Storage};

fn state() -> (AppState, Fx) {
    let fx = Fx::new();
    let state = AppState::new(catalog(), config(), None);
    state.set_engine(Arc::clone(&fx.engine));
    (state, fx)
}

#[tokio::test]
async fn with_an_admin_listener_operations_leave_the_public_port() {
    let (state, _fx) = state();
    let public = public_app(state.clone());
    let admin = admin_app(state);
    let auth = format!("Bearer {TOKEN}");
    let operator = [("authorization", auth.as_str())];
    for (uri, surface) in [
        ("/metrics", Surface::Admin),
        ("/v1/admin/stats", Surface::Admin),
        ("/v1/admin/reservations", Surface::Admin),
        ("/v1/waves", Surface::Public),
        ("/v1/provinces/1/caravans", Surface::Public),
        ("/healthz", Surface::Every),
        ("/readyz", Surface::Every),
        ("/openapi.json", Surface::Every),
    ] {
        let on_public = send(&public, Method::GET, uri, &operator, None).await;
        let on_admin = send(&admin, Method::GET, uri, &operator, None).await;
        assert_eq!(
            on_public.status == StatusCode::OK,
            surface != Surface::Admin,
            "{uri} on the public router: {} {}",
            on_public.status,
            on_public.text
        );
        assert_eq!(
            on_admin.status == StatusCode::OK,
            surface != Surface::Public,
            "{uri} on the admin router: {} {}",
            on_admin.status,
            on_admin.text
        );
    }
    // Not there is a plain 404, not a hint that the route exists elsewhere.
    let r = send(
        &public,
        Method::PUT,
        "/v1/admin/waves",
        &operator,
        Some("[]"),
    )
    .await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    // The operator's events on reservations stay on the public port (with the token).
    let r = send(
        &public,
        Method::POST,
        "/v1/reservations/x/events",
        &operator,
        Some("{}"),
    )
    .await;
    assert_ne!(r.body["code"], "not_found", "{}", r.text);
}

fn from(peer: [u8; 4], forwarded: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder().uri("/v1/waves");
    if let Some(value) = forwarded {
        builder = builder.header("x-forwarded-for", value);
    }
    let mut req = builder.body(Body::empty()).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(std::net::SocketAddr::from((peer, 40_000))));
    req
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_per_client_limit_counts_forwarded_clients() {
    let limited = Rate {
        per_second: 0.001,
        burst: 1,
    };
    let fx = Fx::with_config(ApiConfig {
        per_client: limited,
        trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
        ..config()
    });
    // Two clients behind one proxy each get their own budget.
    let proxy = [10, 0, 0, 1];
    for client in ["198.51.100.1", "198.51.100.2"] {
        let r = send_request(&fx.app, from(proxy, Some(client))).await;
        assert_eq!(r.status, StatusCode::OK, "{client}");
    }
    let r = send_request(&fx.app, from(proxy, Some("198.51.100.1"))).await;
    assert_problem(&r, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // A client cannot escape its budget by writing its own header in front.
    let r = send_request(&fx.app, from(proxy, Some("1.2.3.4, 198.51.100.1"))).await;
    assert_problem(&r, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // An untrusted peer's header is ignored: it is limited as itself.
    let direct = [203, 0, 113, 7];
    let r = send_request(&fx.app, from(direct, Some("198.51.100.9"))).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = send_request(&fx.app, from(direct, Some("198.51.100.10"))).await;
    assert_problem(&r, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
}

#[tokio::test]
async fn without_trusted_proxies_forwarded_for_is_ignored() {
    let fx = Fx::with_config(ApiConfig {
        per_client: Rate {
            per_second: 0.001,
            burst: 1,
        },
        ..config()
    });
    let peer = [10, 0, 0, 1];
    assert_eq!(
        send_request(&fx.app, from(peer, Some("198.51.100.1")))
            .await
            .status,
        StatusCode::OK
    );
    let r = send_request(&fx.app, from(peer, Some("198.51.100.2"))).await;
    assert_problem(&r, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
}

#[tokio::test]
async fn the_access_log_gives_every_answer_a_request_id() {
    let fx = Fx::with_config(ApiConfig {
        access_log: true,
        ..config()
    });
    let first = fx.get("/v1/waves").await;
    let second = fx.get("/v1/caravans/nope").await;
    let ids: Vec<&str> = [&first, &second]
        .iter()
        .map(|r| r.header("x-request-id").unwrap())
        .collect();
    assert_ne!(ids[0], ids[1]);
    // A proxy's id is kept, so one id follows the request through both logs.
    let r = fx
        .send(
            Method::GET,
            "/v1/waves",
            &[("x-request-id", "edge-42")],
            None,
        )
        .await;
    assert_eq!(r.header("x-request-id"), Some("edge-42"));
    let long = "x".repeat(65);
    let r = fx
        .send(Method::GET, "/v1/waves", &[("x-request-id", &long)], None)
        .await;
    assert_ne!(r.header("x-request-id"), Some(long.as_str()));
    // Off (the default), nothing is added.
    assert!(
        Fx::new()
            .get("/v1/waves")
            .await
            .header("x-request-id")
            .is_none()
    );
}

async fn reserve_via(router: &Router, h: &Holder) -> Resp {
    let body = reserve_body(h, "a1");
    send(router, Method::POST, "/v1/reservations", &[], Some(&body)).await
}

/// After an fsync error the engine acknowledges nothing (fail-stop); `/readyz` must say so
/// at once, so that load balancers stop sending and the supervisor restarts the process.
#[tokio::test]
async fn readyz_answers_503_once_the_log_has_failed() {
    let faulty = FaultyStorage::new(Arc::new(MemStorage::new()));
    let storage: Arc<dyn Storage> = Arc::new(faulty.clone());
    let catalog = catalog();
    let (engine, _) = Engine::open(
        Arc::clone(&catalog),
        season_opening_at(T0),
        Arc::new(ManualClock::new(T0)),
        storage,
        EngineConfig::default(),
    )
    .unwrap();
    let state = AppState::new(catalog, config(), None);
    state.set_engine(engine);
    let router = app(state.clone());
    let ready = send(&router, Method::GET, "/readyz", &[], None).await;
    assert_eq!(ready.status, StatusCode::OK);
    let r = reserve_via(&router, &a(0)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    faulty.fail_sync(1, FaultMode::Once);
    let r = reserve_via(&router, &a(1)).await;
    assert_problem(&r, StatusCode::INTERNAL_SERVER_ERROR, "internal_error");
    assert!(state.log_failure().is_some());
    let r = send(&router, Method::GET, "/readyz", &[], None).await;
    assert_problem(&r, StatusCode::SERVICE_UNAVAILABLE, "not_ready");
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("write-ahead log failed")
    );
    // The process is up (it is about to exit on its own), so liveness still answers.
    let r = send(&router, Method::GET, "/healthz", &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
}
