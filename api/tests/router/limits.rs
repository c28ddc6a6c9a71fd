//! Limits: bodies over 16 KiB (`413`), per-holder and per-address rates (`429`), a full house
//! (`503`), each with its problem document.

use crate::support::*;

#[tokio::test]
async fn a_body_over_16_kib_is_413() {
    let fx = Fx::new();
    let padding = "x".repeat(17 * 1024);
    let body = json!({
        "national_id": a(0).national_id,
        "tracking_code": padding,
        "caravan_id": "a1",
    })
    .to_string();
    let r = fx
        .send(Method::POST, "/v1/reservations", &[], Some(&body))
        .await;
    assert_problem(&r, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    // Without a Content-Length (a streamed body) too.
    let chunks: Vec<Result<String, std::io::Error>> = vec![Ok(body.clone())];
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/waitlist")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::new(IterBody(chunks.into_iter())))
        .unwrap();
    let r = send_request(&fx.app, req).await;
    assert_problem(&r, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    // Just under the limit is parsed (and refused for what it says, not for its size).
    let body = json!({
        "national_id": a(0).national_id,
        "tracking_code": "x".repeat(15 * 1024),
        "caravan_id": "a1",
    })
    .to_string();
    let r = fx
        .send(Method::POST, "/v1/reservations", &[], Some(&body))
        .await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "invalid_credentials");
}

/// A body of chunks without a size hint (as a client streaming without `Content-Length`).
struct IterBody(std::vec::IntoIter<Result<String, std::io::Error>>);

impl axum::body::HttpBody for IterBody {
    type Data = axum::body::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Ready(
            self.0
                .next()
                .map(|chunk| chunk.map(|s| hyper::body::Frame::data(s.into()))),
        )
    }
}

#[tokio::test]
async fn an_accept_body_over_16_kib_is_413_problem_json() {
    let fx = Fx::new();
    let body = json!({
        "national_id": a(0).national_id,
        "tracking_code": "x".repeat(17 * 1024),
    })
    .to_string();
    let r = fx
        .send(
            Method::POST,
            &format!("/v1/reservations/{}/accept", "0".repeat(32)),
            &[],
            Some(&body),
        )
        .await;
    assert_problem(&r, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
}

#[tokio::test]
async fn too_many_requests_per_holder_is_429_with_retry_after() {
    let fx = Fx::with_config(ApiConfig {
        per_holder: Rate {
            per_second: 1.0,
            burst: 1,
        },
        ..config()
    });
    fx.reserve_ok(&a(0), "a1").await;
    let r = fx.reserve(&a(0), "a1").await;
    assert_problem(&r, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert_eq!(r.header("retry-after"), Some("1"));
    // Every applicant endpoint counts against the same holder.
    let r = fx.waitlist_me(&a(0)).await;
    assert_problem(&r, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // Someone else is not slowed down.
    fx.reserve_ok(&a(1), "a1").await;
    // Public reads are not limited per holder.
    assert_eq!(fx.get("/v1/provinces").await.status, StatusCode::OK);
}

#[tokio::test]
async fn too_many_requests_per_client_address_is_429_with_retry_after() {
    let fx = Fx::with_config(ApiConfig {
        per_client: Rate {
            per_second: 1.0,
            burst: 2,
        },
        ..config()
    });
    let from = |ip: [u8; 4]| {
        let mut req = Request::builder()
            .uri("/v1/waves")
            .body(Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(std::net::SocketAddr::from((ip, 40_000))));
        req
    };
    for _ in 0..2 {
        let r = send_request(&fx.app, from([10, 0, 0, 1])).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let r = send_request(&fx.app, from([10, 0, 0, 1])).await;
    assert_problem(&r, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let seconds: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&seconds), "{seconds}");
    let r = send_request(&fx.app, from([10, 0, 0, 2])).await;
    assert_eq!(r.status, StatusCode::OK);
    // Operations endpoints are outside the limit.
    let mut req = Request::builder()
        .uri("/healthz")
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(std::net::SocketAddr::from(([10, 0, 0, 1], 1))));
    assert_eq!(send_request(&fx.app, req).await.status, StatusCode::OK);
}

/// A request whose body has not arrived holds its admission permit: with `max_in_flight` 1,
/// every other `/v1` request is shed with `503 overloaded` until it completes. The slow
/// request goes through hyper over an in-memory pipe, so its body can be held back.
#[tokio::test]
async fn a_full_house_is_503_overloaded_with_retry_after() {
    let fx = Fx::with_config(ApiConfig {
        max_in_flight: 1,
        ..config()
    });
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let service = hyper_util::service::TowerToHyperService::new(fx.app.clone());
    let connection = tokio::spawn(async move {
        hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .serve_connection(hyper_util::rt::TokioIo::new(server), service)
            .await
    });
    let body = reserve_body(&a(0), "a1");
    let head = format!(
        "POST /v1/reservations HTTP/1.1\r\nhost: miqat\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(&body.as_bytes()[..1]).await.unwrap();

    let mut shed = None;
    for _ in 0..2_000 {
        let r = fx.get("/v1/waves").await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            shed = Some(r);
            break;
        }
        assert_eq!(r.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let r = shed.expect("the held request never took the only permit");
    assert_problem(&r, StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));
    let r = fx.reserve(&a(1), "a1").await;
    assert_problem(&r, StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    // Operations endpoints are not shed.
    assert_eq!(fx.get("/healthz").await.status, StatusCode::OK);

    // The rest of the body arrives: the held request completes, and the house is open again.
    client.write_all(&body.as_bytes()[1..]).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed early");
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let mut open = false;
    for _ in 0..2_000 {
        if fx.get("/v1/waves").await.status == StatusCode::OK {
            open = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(open, "the permit was never given back");
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
}
