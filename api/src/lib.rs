//! Miqat's HTTP API: axum handlers over the engine, problem+json errors, authentication,
//! admission control and rate limits, Prometheus metrics and an OpenAPI document.
//!
//! [`app`] builds the whole router from an [`AppState`]; tests drive it without sockets.
//! [`server::serve`] runs it on a socket with timeouts and graceful shutdown. The state holds
//! the catalog at once and the engine once recovery is done ([`AppState::set_engine`]): until
//! then `/readyz` and every `/v1` route answer 503.

pub mod access_log;
pub mod cache;
pub mod client_ip;
pub mod cluster;
pub mod cors;
pub mod dto;
pub mod error;
pub mod handlers;
pub mod holders;
pub mod limits;
pub mod openapi;
pub mod ops;
pub mod principals;
pub mod queue;
pub mod queue_pass;
pub mod roster;
pub mod server;
pub mod telemetry;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post, put};
use metrics_exporter_prometheus::PrometheusHandle;
use miqat_engine::Engine;
use miqat_engine::catalog::{Catalog, ProvinceIdx};

use crate::access_log::AccessLog;
use crate::cache::CaravanListCache;
use crate::client_ip::IpBlock;
use crate::cors::CorsPolicy;
use crate::error::{ApiError, ErrorCode};
use crate::limits::{Admission, KeyedLimiter, Rate, retry_after_seconds};
use crate::principals::Principals;
use crate::telemetry::{Rejection, RequestMetrics};

/// Request bodies are limited to this many bytes (16 KiB); larger ones get 413.
pub const BODY_BYTES_MAX: usize = 16 * 1024;

/// How the API behaves; [`ApiConfig::default`] suits production.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The operator's bearer token (`MIQAT_OPERATOR_TOKEN`), an `operator` principal beside
    /// `principals`; `None` adds none.
    pub operator_token: Option<String>,
    /// The principals of the principals file (`--principals`); with no principal and no
    /// operator token the operator endpoints answer 401.
    pub principals: Principals,
    /// Requests in flight at most; past it, `503 overloaded` at once.
    pub max_in_flight: usize,
    /// Rate limit per national ID (applicant endpoints).
    pub per_holder: Rate,
    /// Rate limit per client address (every `/v1` route); 0 per second disables it.
    pub per_client: Rate,
    /// How stale a cached caravan list may be.
    pub list_max_age: Duration,
    /// Browser origins allowed to call the API (CORS); empty (the default): none, and no
    /// CORS work at all.
    pub cors: CorsPolicy,
    /// Reverse proxies whose `X-Forwarded-For` names the client for the per-client rate limit
    /// and the access log; empty (the default): the header is ignored.
    pub trusted_proxies: Vec<IpBlock>,
    /// Log one line per request with a request id (`X-Request-Id`).
    pub access_log: bool,
    /// The secret waiting-room passes are signed with (at least 32 bytes); `None` (the
    /// default): a random one drawn at start, so passes do not outlive the process.
    pub queue_pass_secret: Option<Vec<u8>>,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            operator_token: None,
            principals: Principals::none(),
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
            cors: CorsPolicy::default(),
            trusted_proxies: Vec::new(),
            access_log: false,
            queue_pass_secret: None,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) catalog: Arc<Catalog>,
    /// `config.principals` plus the operator token's principal.
    pub(crate) principals: Principals,
    /// The configuration as given (callers are authorized through `principals`).
    pub(crate) config: ApiConfig,
    pub(crate) engine: OnceLock<Arc<Engine>>,
    /// Set in cluster mode only: writes then go through it.
    pub(crate) cluster: OnceLock<Arc<dyn cluster::Cluster>>,
    pub(crate) cache: CaravanListCache,
    pub(crate) admission: Admission,
    pub(crate) holder_limiter: KeyedLimiter,
    pub(crate) client_limiter: KeyedLimiter,
    pub(crate) metrics: Option<PrometheusHandle>,
    pub(crate) cors: Arc<CorsPolicy>,
    pub(crate) trusted_proxies: Arc<[IpBlock]>,
    pub(crate) request_metrics: RequestMetrics,
    pub(crate) queue: queue::Queue,
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
        let principals = config
            .principals
            .clone()
            .with_operator_token(config.operator_token.as_deref().unwrap_or(""));
        let pass_key = queue::pass_key(config.queue_pass_secret.as_deref()).or_else(|e| {
            // The server's flags are checked before this; a library caller gets a working key.
            tracing::error!(error = %e, "queue pass secret refused; passes use a random key");
            queue::pass_key(None)
        });
        let queue = match pass_key {
            Ok(key) => queue::Queue::new(key),
            Err(e) => panic!("no key for waiting-room passes: {e}"),
        };
        AppState {
            inner: Arc::new(Inner {
                queue,
                principals,
                cache: CaravanListCache::new(config.list_max_age),
                admission: Admission::new(config.max_in_flight),
                holder_limiter: KeyedLimiter::new(config.per_holder, 20),
                client_limiter: KeyedLimiter::new(config.per_client, 16),
                cors: Arc::new(config.cors.clone()),
                trusted_proxies: config.trusted_proxies.clone().into(),
                config,
                catalog,
                engine: OnceLock::new(),
                cluster: OnceLock::new(),
                metrics,
                request_metrics: RequestMetrics::new(route_labels()),
            }),
        }
    }

    /// Makes the API ready over `engine` (after recovery). Only the first call counts.
    pub fn set_engine(&self, engine: Arc<Engine>) {
        let _ = self.inner.engine.set(engine);
    }

    /// Returns the cause if and only if the engine's log failed (fail-stop): the engine
    /// acknowledges nothing more, `/readyz` answers 503 and the process is about to exit.
    pub fn log_failure(&self) -> Option<String> {
        self.inner.engine.get().and_then(|e| e.log_failure())
    }

    /// The engine, or `503 not_ready` while recovery runs.
    pub fn engine(&self) -> Result<&Arc<Engine>, ApiError> {
        self.inner.engine.get().ok_or(ApiError::NotReady)
    }
}

/// Which listener serves a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// The public API: applicants, public reads, and operator events on reservations.
    Public,
    /// Operations (`/metrics`) and the operator's `/v1/admin/*`: on the admin listener when
    /// there is one, else on the public one.
    Admin,
    /// Health and the OpenAPI document: on every listener.
    Every,
}

/// One route of the API: its path (axum's syntax, which is also OpenAPI's), the listener
/// that serves it and its handlers. [`ROUTES`] is the one list the routers are built from,
/// and a test compares it with the OpenAPI document both ways.
pub struct RouteEntry {
    /// The path template, e.g. `/v1/reservations/{id}`.
    pub path: &'static str,
    /// Where it is served.
    pub surface: Surface,
    method_router: fn() -> MethodRouter<AppState>,
}

/// Every route of the API.
pub const ROUTES: &[RouteEntry] = &[
    route("/healthz", Surface::Every, || get(handlers::healthz)),
    route("/readyz", Surface::Every, || get(handlers::readyz)),
    route("/openapi.json", Surface::Every, || get(openapi::serve)),
    route("/metrics", Surface::Admin, || get(metrics_text)),
    route("/ops", Surface::Admin, || get(ops::page)),
    route("/v1/ops/summary", Surface::Admin, || get(ops::summary)),
    route("/v1/waves", Surface::Public, || get(handlers::waves)),
    route("/v1/cluster", Surface::Public, || {
        get(handlers::cluster_status)
    }),
    route("/v1/provinces", Surface::Public, || {
        get(handlers::provinces)
    }),
    route("/v1/provinces/{id}/caravans", Surface::Public, || {
        get(handlers::province_caravans)
    }),
    route("/v1/caravans/{id}", Surface::Public, || {
        get(handlers::caravan)
    }),
    route("/v1/caravans/{id}/roster", Surface::Public, || {
        get(roster::roster)
    }),
    route("/v1/reservations", Surface::Public, || {
        post(handlers::reserve)
    }),
    route("/v1/reservations/{id}", Surface::Public, || {
        get(handlers::get_reservation).delete(handlers::cancel)
    }),
    route("/v1/reservations/{id}/accept", Surface::Public, || {
        post(handlers::accept)
    }),
    route("/v1/reservations/{id}/events", Surface::Public, || {
        post(handlers::event)
    }),
    route("/v1/waitlist", Surface::Public, || {
        post(handlers::join_waitlist)
    }),
    route("/v1/waitlist/me", Surface::Public, || {
        get(handlers::waitlist_me)
    }),
    route("/v1/queue", Surface::Public, || post(queue::join)),
    route("/v1/queue/me", Surface::Public, || get(queue::me)),
    route("/v1/admin/reservations", Surface::Admin, || {
        get(handlers::admin_reservations)
    }),
    route("/v1/admin/stats", Surface::Admin, || {
        get(handlers::admin_stats)
    }),
    route("/v1/admin/waves", Surface::Admin, || {
        put(handlers::replace_waves)
    }),
    route("/v1/admin/transfers", Surface::Admin, || {
        post(holders::transfer)
    }),
    route("/v1/admin/cluster/learners", Surface::Admin, || {
        post(cluster::add_learner)
    }),
    route("/v1/admin/cluster/voters", Surface::Admin, || {
        post(cluster::promote)
    }),
    route("/v1/admin/cluster/members/{id}", Surface::Admin, || {
        axum::routing::delete(cluster::remove)
    }),
    route(
        "/v1/admin/holders/{national_id}/dispatch",
        Surface::Admin,
        || put(holders::change_dispatch),
    ),
];

const fn route(
    path: &'static str,
    surface: Surface,
    method_router: fn() -> MethodRouter<AppState>,
) -> RouteEntry {
    RouteEntry {
        path,
        surface,
        method_router,
    }
}

/// Builds the whole router: every route on one listener.
pub fn app(state: AppState) -> Router {
    build(state, |_| true)
}

/// The router of the public listener when operations have their own (`--admin-listen`):
/// `/metrics` and `/v1/admin/*` answer 404 here.
pub fn public_app(state: AppState) -> Router {
    build(state, |surface| surface != Surface::Admin)
}

/// The router of the admin listener: `/metrics`, `/v1/admin/*`, health and the document.
pub fn admin_app(state: AppState) -> Router {
    build(state, |surface| surface != Surface::Public)
}

fn build(state: AppState, serves: impl Fn(Surface) -> bool) -> Router {
    let mut v1 = Router::new();
    let mut operations = Router::new();
    for entry in ROUTES.iter().filter(|e| serves(e.surface)) {
        if entry.path.starts_with("/v1/") {
            v1 = v1.route(entry.path, (entry.method_router)());
        } else {
            operations = operations.route(entry.path, (entry.method_router)());
        }
    }
    let v1 = v1
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), admit));
    let mut router = operations
        .merge(v1)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_BYTES_MAX));
    if state.inner.config.access_log {
        let log = Arc::new(AccessLog::new(Arc::clone(&state.inner.trusted_proxies)));
        router = router.layer(middleware::from_fn_with_state(log, access_log::layer));
    }
    if !state.inner.cors.is_empty() {
        let policy = Arc::clone(&state.inner.cors);
        router = router.layer(middleware::from_fn_with_state(policy, cors::layer));
    }
    router.with_state(state)
}

/// The route label of a request no route matched.
const UNMATCHED: &str = "unmatched";

/// Every route label the request metrics know: each route's path, and [`UNMATCHED`].
fn route_labels() -> impl Iterator<Item = &'static str> {
    ROUTES
        .iter()
        .map(|entry| entry.path)
        .chain(std::iter::once(UNMATCHED))
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
        state
            .inner
            .request_metrics
            .admission_rejected(Rejection::Overloaded);
        state.inner.queue.note_shed();
        return ApiError::Overloaded(1).into_response();
    };
    if let Some(client) = client_ip::of_request(&req, &state.inner.trusted_proxies)
        && let Err(wait) = state.inner.client_limiter.check(&client)
    {
        state
            .inner
            .request_metrics
            .admission_rejected(Rejection::RateLimited);
        return ApiError::RateLimited(retry_after_seconds(wait)).into_response();
    }
    next.run(req).await
}

/// Counts every request by route and status (and a refusal by its code) and records its
/// latency, through handles kept per route: no label lookup once a route has been seen.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(refused) = req.extensions().get::<server::RefusedUnread>()
        && let Some(response) = refused.take()
    {
        return response;
    }
    let started = Instant::now();
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
    // A fixed label set: a client inventing methods must not grow the metrics without bound.
    let method = telemetry::method_index(req.method());
    let response = next.run(req).await;
    let code = response
        .extensions()
        .get::<ErrorCode>()
        .map(|code| code.0)
        .filter(|_| !response.status().is_success());
    state.inner.request_metrics.observe(
        method,
        route,
        response.status().as_u16(),
        code,
        started.elapsed().as_secs_f64(),
    );
    if let Some(code) = code
        && response.status().is_client_error()
    {
        tracing::debug!(code, "request refused");
    }
    response
}

/// `GET /metrics`: Prometheus text format, with per-province gauges read at scrape time.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String,
        content_type = "text/plain")))]
pub async fn metrics_text(State(state): State<AppState>) -> Response {
    metrics::gauge!("miqat_requests_in_flight").set(state.inner.admission.in_flight() as f64);
    metrics::gauge!("miqat_requests_in_flight_limit").set(state.inner.config.max_in_flight as f64);
    if let Ok(engine) = state.engine() {
        for (p, province) in engine.catalog().provinces().iter().enumerate() {
            let labels = [
                ("province", province.id.to_string()),
                ("province_name", province.name_en.clone()),
            ];
            let p = ProvinceIdx(p as u16);
            metrics::gauge!("miqat_seats_capacity", &labels)
                .set(engine.province_seats_total(p) as f64);
            metrics::gauge!("miqat_seats_free", &labels)
                .set(f64::from(engine.province_free_seats(p)));
            metrics::gauge!("miqat_holds_live", &labels)
                .set(f64::from(engine.province_holds_live(p)));
            metrics::gauge!("miqat_waitlist_length", &labels)
                .set(f64::from(engine.province_waiting(p)));
        }
        metrics::gauge!("miqat_requests_in_flight").set(state.inner.admission.in_flight() as f64);
        metrics::gauge!("miqat_wal_failed").set(if engine.log_failure().is_some() {
            1.0
        } else {
            0.0
        });
        queue::record_metrics(&state, engine);
        if let Some(wal) = engine.wal_stats() {
            metrics::gauge!("miqat_wal_staged_bytes").set(wal.staged_bytes as f64);
            metrics::gauge!("miqat_wal_staged_bytes_limit").set(wal.staged_bytes_max as f64);
        }
    }
    if let Some(cluster) = state.cluster() {
        cluster.record_metrics();
    }
    let mut body = state
        .inner
        .metrics
        .as_ref()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    telemetry::render_process_metrics(&mut body);
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
