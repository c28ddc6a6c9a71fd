//! Browser front-ends on other origins: preflights on every route, the CORS headers on
//! answers to allowed origins only, `Vary: Origin`, and nothing at all when no origin is
//! configured.

use crate::support::*;
use miqat_api::ROUTES;
use miqat_api::cors::CorsPolicy;

const FRONT: &str = "https://hajj.example.ir";

fn with_cors(origins: &[&str]) -> Fx {
    Fx::with_config(ApiConfig {
        cors: CorsPolicy::new(origins).unwrap(),
        ..config()
    })
}

/// A concrete URI for a route template.
fn uri_of(path: &str) -> String {
    path.replace("{id}", "1")
}

async fn preflight(fx: &Fx, uri: &str, origin: &str, method: &str) -> Resp {
    fx.send(
        Method::OPTIONS,
        uri,
        &[
            ("origin", origin),
            ("access-control-request-method", method),
            (
                "access-control-request-headers",
                "x-national-id, x-tracking-code, idempotency-key, content-type",
            ),
        ],
        None,
    )
    .await
}

fn vary_names(r: &Resp) -> Vec<String> {
    r.headers
        .get_all(header::VARY)
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .collect()
}

#[tokio::test]
async fn a_preflight_from_an_allowed_origin_is_answered_on_every_route() {
    let fx = with_cors(&["http://localhost:5173", FRONT]);
    for route in ROUTES {
        for method in ["GET", "POST", "PUT", "DELETE"] {
            let r = preflight(&fx, &uri_of(route.path), FRONT, method).await;
            assert_eq!(r.status, StatusCode::NO_CONTENT, "{method} {}", route.path);
            assert_eq!(r.header("access-control-allow-origin"), Some(FRONT));
            let methods = r.header("access-control-allow-methods").unwrap();
            assert!(methods.contains(method), "{methods}");
            let headers = r.header("access-control-allow-headers").unwrap();
            for needed in [
                "x-national-id",
                "x-tracking-code",
                "idempotency-key",
                "authorization",
                "if-none-match",
                "content-type",
            ] {
                assert!(headers.contains(needed), "{needed} not in {headers}");
            }
            assert!(r.header("access-control-max-age").is_some());
            assert!(vary_names(&r).contains(&"origin".to_owned()));
        }
    }
}

#[tokio::test]
async fn answers_to_an_allowed_origin_carry_cors_headers_and_vary() {
    let fx = with_cors(&[FRONT]);
    // The caravan list with a filter, as a front-end asks for it.
    let r = fx
        .send(
            Method::GET,
            "/v1/provinces/1/caravans?city=A&available=true",
            &[("origin", FRONT)],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.header("access-control-allow-origin"), Some(FRONT));
    let exposed = r.header("access-control-expose-headers").unwrap();
    for needed in ["etag", "retry-after", "location", "idempotent-replayed"] {
        assert!(exposed.contains(needed), "{needed} not in {exposed}");
    }
    assert!(vary_names(&r).contains(&"origin".to_owned()));
    assert!(r.header("access-control-allow-credentials").is_none());
    // Errors too: a front-end must be able to read the problem document.
    let r = fx
        .send(
            Method::POST,
            "/v1/reservations",
            &[("origin", FRONT)],
            Some(&reserve_body(&holder(99), "a1")),
        )
        .await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "invalid_credentials");
    assert_eq!(r.header("access-control-allow-origin"), Some(FRONT));
    // The origin is compared without regard to case, as browsers lower-case it anyway.
    let r = fx
        .send(
            Method::GET,
            "/v1/waves",
            &[("origin", "HTTPS://Hajj.Example.IR")],
            None,
        )
        .await;
    assert!(r.header("access-control-allow-origin").is_some());
}

#[tokio::test]
async fn a_disallowed_origin_gets_no_cors_header() {
    let fx = with_cors(&[FRONT]);
    for origin in [
        "https://evil.example",
        "null",
        "https://hajj.example.ir.evil.example",
    ] {
        let r = preflight(&fx, "/v1/reservations", origin, "POST").await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{origin}");
        assert!(
            r.header("access-control-allow-origin").is_none(),
            "{origin}"
        );
        assert!(
            r.header("access-control-allow-methods").is_none(),
            "{origin}"
        );
        let r = fx
            .send(Method::GET, "/v1/waves", &[("origin", origin)], None)
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(
            r.header("access-control-allow-origin").is_none(),
            "{origin}"
        );
        assert!(
            r.header("access-control-expose-headers").is_none(),
            "{origin}"
        );
        // The answer depends on the origin, so caches must key on it.
        assert!(vary_names(&r).contains(&"origin".to_owned()));
    }
    // Same-origin requests (no Origin header) are unchanged but for Vary.
    let r = fx.get("/v1/waves").await;
    assert!(r.header("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn without_an_allow_list_nothing_changes() {
    let fx = Fx::new();
    let r = preflight(&fx, "/v1/reservations", FRONT, "POST").await;
    assert_problem(&r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let r = fx
        .send(Method::GET, "/v1/waves", &[("origin", FRONT)], None)
        .await;
    assert!(r.header("access-control-allow-origin").is_none());
    assert!(r.header(header::VARY.as_str()).is_none());
}

/// Preflights are answered before admission control and handlers: even while the server
/// is not ready, a browser learns it may ask, and then can read the 503's problem document.
#[tokio::test]
async fn a_preflight_is_answered_before_admission_and_handlers() {
    let state = AppState::new(
        catalog(),
        ApiConfig {
            cors: CorsPolicy::new(&[FRONT]).unwrap(),
            ..config()
        },
        None,
    );
    let router = app(state);
    let asked = [("origin", FRONT), ("access-control-request-method", "POST")];
    let r = send(&router, Method::OPTIONS, "/v1/reservations", &asked, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = send(
        &router,
        Method::GET,
        "/v1/waves",
        &[("origin", FRONT)],
        None,
    )
    .await;
    assert_problem(&r, StatusCode::SERVICE_UNAVAILABLE, "not_ready");
    assert_eq!(r.header("access-control-allow-origin"), Some(FRONT));
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_allowed_origins_readably() {
    let fx = with_cors(&[FRONT]);
    for (method, uri) in [
        (Method::GET, "/v1/nowhere"),
        (Method::GET, "/nowhere"),
        (Method::PATCH, "/v1/waves"),
    ] {
        let r = fx
            .send(method.clone(), uri, &[("origin", FRONT)], None)
            .await;
        assert!(r.status.is_client_error(), "{method} {uri}: {}", r.status);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(FRONT),
            "{method} {uri}"
        );
        let r = preflight(&fx, uri, FRONT, "GET").await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "preflight {uri}");
    }
}
