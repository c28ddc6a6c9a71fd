//! Miqat's HTTP API: axum handlers over the engine, problem+json errors, authentication,
//! admission control and rate limits, Prometheus metrics and an OpenAPI document.
//!
//! [`app`] builds the whole router from an [`AppState`]; tests drive it without sockets.
//! [`server::serve`] runs it on a socket with timeouts and graceful shutdown. The state holds
//! the catalog at once and the engine once recovery is done ([`AppState::set_engine`]): until
//! then `/readyz` and every `/v1` route answer 503.

pub mod cache;
pub mod cluster;
pub mod dto;
pub mod error;
pub mod handlers;
pub mod limits;
pub mod openapi;
pub mod server;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use metrics_exporter_prometheus::PrometheusHandle;
use miqat_engine::Engine;
use miqat_engine::catalog::{Catalog, ProvinceIdx};

use crate::cache::CaravanListCache;
use crate::error::{ApiError, ErrorCode};
use crate::limits::{Admission, KeyedLimiter, Rate, retry_after_seconds};

/// Request bodies are limited to this many bytes (16 KiB); larger ones get 413.
pub const BODY_BYTES_MAX: usize = 16 * 1024;

/// How the API behaves; [`ApiConfig::default`] suits production.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The operator's bearer token; `None` closes the operator endpoints.
    pub operator_token: Option<String>,
    /// Requests in flight at most; past it, `503 overloaded` at once.
    pub max_in_flight: usize,
    /// Rate limit per national ID (applicant endpoints).
    pub per_holder: Rate,
    /// Rate limit per client address (every `/v1` route); 0 per second disables it.
    pub per_client: Rate,
    /// How stale a cached caravan list may be.
    pub list_max_age: Duration,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            operator_token: None,
            max_in_flight: 4_096,
            per_holder: Rate {
                per_second: 5.0,
                burst: 20,
            },
            per_client: Rate {
                per_second: 0.0,
                burst: 1,
            },
            list_max_age: Duration::from_millis(5),
        }
    }
}

pub(crate) struct Inner {
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) config: ApiConfig,
    pub(crate) engine: OnceLock<Arc<Engine>>,
    /// Set in cluster mode only: writes then go through it.
    pub(crate) cluster: OnceLock<Arc<dyn cluster::Cluster>>,
    pub(crate) cache: CaravanListCache,
    pub(crate) admission: Admission,
    pub(crate) holder_limiter: KeyedLimiter,
    pub(crate) client_limiter: KeyedLimiter,
    pub(crate) metrics: Option<PrometheusHandle>,
}

/// Shared state of every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

impl AppState {
    /// State over `catalog`, without an engine yet (not ready). `metrics` is the Prometheus
    /// recorder's handle, if one is installed.
    pub fn new(
        catalog: Arc<Catalog>,
        config: ApiConfig,
        metrics: Option<PrometheusHandle>,
    ) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                cache: CaravanListCache::new(config.list_max_age),
                admission: Admission::new(config.max_in_flight),
                holder_limiter: KeyedLimiter::new(config.per_holder, 20),
                client_limiter: KeyedLimiter::new(config.per_client, 16),
                catalog,
                config,
                engine: OnceLock::new(),
                cluster: OnceLock::new(),
                metrics,
            }),
        }
    }

    /// Makes the API ready over `engine` (after recovery). Only the first call counts.
    pub fn set_engine(&self, engine: Arc<Engine>) {
        let _ = self.inner.engine.set(engine);
    }

    /// The engine, or `503 not_ready` while recovery runs.
    pub fn engine(&self) -> Result<&Arc<Engine>, ApiError> {
        self.inner.engine.get().ok_or(ApiError::NotReady)
    }
}

/// Builds the whole router.
pub fn app(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/waves", get(handlers::waves))
        .route("/v1/provinces", get(handlers::provinces))
        .route(
            "/v1/provinces/{id}/caravans",
            get(handlers::province_caravans),
        )
        .route("/v1/caravans/{id}", get(handlers::caravan))
        .route("/v1/reservations", post(handlers::reserve))
        .route(
            "/v1/reservations/{id}",
            get(handlers::get_reservation).delete(handlers::cancel),
        )
        .route("/v1/reservations/{id}/accept", post(handlers::accept))
        .route("/v1/reservations/{id}/events", post(handlers::event))
        .route("/v1/waitlist", post(handlers::join_waitlist))
        .route("/v1/waitlist/me", get(handlers::waitlist_me))
        .route("/v1/admin/reservations", get(handlers::admin_reservations))
        .route("/v1/admin/stats", get(handlers::admin_stats))
        .route("/v1/admin/waves", put(handlers::replace_waves))
        .route("/v1/cluster", get(handlers::cluster_status))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), admit));
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi::serve))
        .merge(v1)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(observe))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("not_found", "no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Admission control and the per-client rate limit, before any work is done.
async fn admit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(_permit) = state.inner.admission.try_admit() else {
        metrics::counter!("miqat_admission_rejections_total", "reason" => "overloaded")
            .increment(1);
        return ApiError::Overloaded(1).into_response();
    };
    if let Some(addr) = handlers::client_addr(&req)
        && let Err(wait) = state.inner.client_limiter.check(&addr.ip())
    {
        metrics::counter!("miqat_admission_rejections_total", "reason" => "rate_limited")
            .increment(1);
        return ApiError::RateLimited(retry_after_seconds(wait)).into_response();
    }
    next.run(req).await
}

/// Counts every request by route and status and records its latency; 4xx are not errors.
async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // A fixed label set: a client inventing methods must not grow the metrics without bound.
    let method = match *req.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    let labels = [
        ("method", method.to_owned()),
        ("route", route),
        ("status", status),
    ];
    metrics::counter!("miqat_http_requests_total", &labels).increment(1);
    metrics::histogram!("miqat_http_request_duration_seconds", &labels[..2])
        .record(started.elapsed().as_secs_f64());
    if let Some(code) = response.extensions().get::<ErrorCode>()
        && response.status().is_client_error()
    {
        tracing::debug!(code = code.0, "request refused");
    }
    response
}

/// `GET /metrics`: Prometheus text format, with per-province gauges read at scrape time.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String,
        content_type = "text/plain")))]
pub async fn metrics_text(State(state): State<AppState>) -> Response {
    if let Ok(engine) = state.engine() {
        for (p, province) in engine.catalog().provinces().iter().enumerate() {
            let labels = [("province", province.id.to_string())];
            let p = ProvinceIdx(p as u16);
            metrics::gauge!("miqat_seats_free", &labels)
                .set(f64::from(engine.province_free_seats(p)));
            metrics::gauge!("miqat_holds_live", &labels)
                .set(f64::from(engine.province_holds_live(p)));
            metrics::gauge!("miqat_waitlist_length", &labels)
                .set(f64::from(engine.province_waiting(p)));
        }
        metrics::gauge!("miqat_requests_in_flight").set(state.inner.admission.in_flight() as f64);
    }
    let body = state
        .inner
        .metrics
        .as_ref()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
