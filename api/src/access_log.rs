//! The optional access log: one `tracing` event per request (target `miqat::access`) with a
//! request id, which is also sent back in `X-Request-Id` so a user's report can be matched to
//! the log line. Installed only when asked for (`--access-log`): off, it costs nothing.
//!
//! The matched route is logged, never the raw path: reservation ids in paths are secrets that
//! grant access to a reservation, and a log is read by more people than the database.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use crate::client_ip::{self, IpBlock};

/// Request ids longer than this, or with other than visible ASCII, are replaced by our own.
const REQUEST_ID_BYTES_MAX: usize = 64;

/// What the access log needs: the trusted proxies (to log the real client) and a source of
/// request ids unique within the process and unlikely to repeat across restarts.
pub struct AccessLog {
    trusted_proxies: Arc<[IpBlock]>,
    process_tag: u32,
    next_id: AtomicU64,
}

impl AccessLog {
    /// An access log that resolves clients through `trusted_proxies`.
    pub fn new(trusted_proxies: Arc<[IpBlock]>) -> AccessLog {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        AccessLog {
            trusted_proxies,
            process_tag: started.subsec_nanos() ^ std::process::id().rotate_left(16),
            next_id: AtomicU64::new(1),
        }
    }

    /// The client's own `X-Request-Id` if it is short visible ASCII, else a new one.
    fn request_id(&self, req: &Request) -> HeaderValue {
        if let Some(given) = req.headers().get("x-request-id")
            && !given.is_empty()
            && given.len() <= REQUEST_ID_BYTES_MAX
            && given.as_bytes().iter().all(u8::is_ascii_graphic)
        {
            return given.clone();
        }
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{:08x}-{n:012x}", self.process_tag))
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
    }
}

/// Logs the request once it is answered and returns its id in `X-Request-Id`.
pub async fn layer(State(log): State<Arc<AccessLog>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = log.request_id(&req);
    let client = client_ip::of_request(&req, &log.trusted_proxies);
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let mut response = next.run(req).await;
    let code = response
        .extensions()
        .get::<crate::error::ErrorCode>()
        .map_or("", |c| c.0);
    tracing::info!(
        target: "miqat::access",
        request_id = id.to_str().unwrap_or(""),
        client = client.map(|ip| ip.to_string()).unwrap_or_default(),
        method = %method,
        route,
        status = response.status().as_u16(),
        code,
        duration_ms = started.elapsed().as_secs_f64() * 1_000.0,
        "request"
    );
    response.headers_mut().insert("x-request-id", id);
    response
}
