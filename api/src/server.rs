//! Serving the router on a socket, hardened against slow and idle clients: a total deadline
//! for reading each request (headers and body together), bodies read in full before a request
//! reaches admission control, an idle timeout for every connection (including ones that never
//! send a byte), a cap on connections per client address, connection metrics, the client
//! address for rate limits, and graceful shutdown (stop accepting, finish in-flight requests).
//!
//! Why bodies are read here: admission control bounds the requests the engine works on. If a
//! request took its place before its body arrived, a client sending one byte every few seconds
//! would hold that place for as long as it liked, and a few thousand such clients would shut
//! everyone else out. Reading the body first, under a deadline that does not restart with each
//! byte, means a slow client only ever holds its own connection, for a bounded time.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::BODY_BYTES_MAX;
use crate::error::ApiError;
use crate::limits::ConnectionCap;

/// Limits and timeouts of the server; [`ServeOptions::default`] suits production.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// A request's headers and body together must arrive within this time, counted from its
    /// first byte. Headers too slow: the connection is closed; a body too slow: `408`.
    pub request_read_timeout: Duration,
    /// A connection with no request in flight and nothing received for this long is closed,
    /// whether it is a keep-alive connection between requests or one that never sent a byte.
    pub idle_timeout: Duration,
    /// Open connections per client address at most; past it, new ones are closed at once.
    /// 0 disables the cap (behind a proxy every connection shares its address).
    pub connections_per_client_max: u32,
    /// Open connections at most, from all clients; past it, new ones are closed at once. Each
    /// open connection costs about 20 KiB of memory (hyper's buffers, the task), so this bounds
    /// what a connection flood can take.
    pub connections_max: usize,
    /// In-flight requests get this long to finish after shutdown begins.
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            request_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(20),
            connections_per_client_max: 2_048,
            connections_max: 16_384,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Requests one HTTP/2 connection may have open at once.
const H2_STREAMS_MAX: u32 = 16;
/// Bytes HTTP/2 buffers per stream for a client that does not read.
const H2_SEND_BUFFER_BYTES_MAX: usize = 16 * 1024;

/// After a graceful close begins on an idle connection, it gets this long before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and waits (up
/// to the drain timeout) for open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper starts this timer whenever it waits for a request head, so it is also the
        // keep-alive limit between requests; the watchdog enforces the tighter total deadline.
        .header_read_timeout(options.idle_timeout.max(options.request_read_timeout))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(options.idle_timeout))
        .keep_alive_timeout(options.idle_timeout)
        // A client that never opens its flow-control window leaves every answer it asked for
        // in memory: bound the answers one connection can hold (hyper's default is 200
        // streams of up to 400 KiB buffered each).
        .max_concurrent_streams(H2_STREAMS_MAX)
        .max_send_buf_size(H2_SEND_BUFFER_BYTES_MAX);
    let builder = Arc::new(builder);
    let cap = Arc::new(ConnectionCap::new(options.connections_per_client_max, 16));
    let open_connections = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(open) = OpenConnection::try_new(&open_connections, options.connections_max) else {
            closed("connections_max");
            drop(stream);
            continue;
        };
        let Some(permit) = cap.try_open(&addr.ip()) else {
            closed("per_client_cap");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let builder = Arc::clone(&builder);
        let app = app.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            let reason = run_connection(&builder, stream, addr, app, options, stop).await;
            closed(reason);
            drop((permit, open));
        });
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(true);
    tokio::select! {
        () = stop_tx.closed() => {}
        () = tokio::time::sleep(options.drain_timeout) => {
            tracing::warn!("connections still open after the drain timeout");
        }
    }
    Ok(())
}

/// One connection counted against [`ServeOptions::connections_max`] and in the
/// `miqat_connections_open` gauge while it lives.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn try_new(open: &Arc<AtomicUsize>, max: usize) -> Option<OpenConnection> {
        if open.fetch_add(1, Ordering::AcqRel) >= max {
            open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        metrics::gauge!("miqat_connections_open").increment(1.0);
        Some(OpenConnection(Arc::clone(open)))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("miqat_connections_open").decrement(1.0);
    }
}

fn closed(reason: &'static str) {
    metrics::counter!("miqat_connections_closed_total", "reason" => reason).increment(1);
}

/// Drives one connection to its end; returns why it ended (a metrics label).
async fn run_connection(
    builder: &Builder<TokioExecutor>,
    stream: TcpStream,
    addr: SocketAddr,
    app: Router,
    options: ServeOptions,
    mut stop: watch::Receiver<bool>,
) -> &'static str {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(TrackedIo {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let service = {
        let activity = Arc::clone(&activity);
        tower::service_fn(move |req: hyper::Request<Incoming>| {
            handle(
                app.clone(),
                Arc::clone(&activity),
                addr,
                options.request_read_timeout,
                req,
            )
        })
    };
    let connection = builder
        .serve_connection_with_upgrades(io, hyper_util::service::TowerToHyperService::new(service));
    tokio::pin!(connection);
    loop {
        let deadline = activity.next_deadline(&options);
        tokio::select! {
            result = connection.as_mut() => {
                return match result {
                    Ok(()) => "finished",
                    Err(e) => {
                        tracing::debug!(error = %e, "connection ended with an error");
                        "error"
                    }
                };
            }
            () = sleep_until_or_forever(deadline) => match activity.overdue(&options) {
                Some(Overdue::Headers) => return "header_timeout",
                Some(Overdue::Idle) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(CLOSE_GRACE, connection.as_mut()).await;
                    return "idle_timeout";
                }
                None => {}
            },
            () = activity.changed.notified() => {}
            _ = stop.changed() => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.as_mut().await;
                return "shutdown";
            }
        }
    }
}

async fn sleep_until_or_forever(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reads the request's body in full (bounded in size and by the request's deadline), then
/// hands the request to the router. Bodies that are declared too large are refused at once.
async fn handle(
    app: Router,
    activity: Arc<Activity>,
    addr: SocketAddr,
    read_timeout: Duration,
    req: hyper::Request<Incoming>,
) -> Result<Response, Infallible> {
    let started = activity.begin_request();
    let _in_flight = RequestGuard(Arc::clone(&activity));
    let deadline = started + read_timeout;
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(ConnectInfo::<SocketAddr>(addr));
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > BODY_BYTES_MAX as u64) {
        return Ok(refuse_through(
            &app,
            parts,
            "body_too_large",
            ApiError::BodyTooLarge(BODY_BYTES_MAX),
        )
        .await);
    }
    let body = if body.is_end_stream() {
        Body::empty()
    } else {
        let collected =
            tokio::time::timeout_at(deadline, Limited::new(body, BODY_BYTES_MAX).collect()).await;
        match collected {
            Ok(Ok(collected)) => Body::from(collected.to_bytes()),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return Ok(refuse_through(
                    &app,
                    parts,
                    "body_too_large",
                    ApiError::BodyTooLarge(BODY_BYTES_MAX),
                )
                .await);
            }
            Ok(Err(e)) => {
                return Ok(refuse_through(
                    &app,
                    parts,
                    "body_error",
                    ApiError::Malformed(format!("the request body could not be read: {e}")),
                )
                .await);
            }
            Err(_elapsed) => {
                return Ok(refuse_through(
                    &app,
                    parts,
                    "body_timeout",
                    ApiError::RequestTimeout(read_timeout.as_secs().max(1)),
                )
                .await);
            }
        }
    };
    let request = Request::from_parts(parts, body);
    app.oneshot(request).await
}

/// An answer given before the body was read in full: the connection cannot carry another
/// request, so it is closed after this answer. The refusal still passes through the router
/// (with an empty body, marked [`RefusedUnread`]) so that its outer layers apply to it: a
/// browser front-end gets its CORS headers and can read the 413, and the access log has it.
async fn refuse_through(
    app: &Router,
    mut parts: axum::http::request::Parts,
    reason: &'static str,
    error: ApiError,
) -> Response {
    metrics::counter!("miqat_requests_refused_unread_total", "reason" => reason).increment(1);
    let refusal = RefusedUnread(Arc::new(parking_lot::Mutex::new(Some(
        error.into_response(),
    ))));
    parts.extensions.insert(refusal);
    let request = Request::from_parts(parts, Body::empty());
    let mut response = match app.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A request refused before its body was read, with the answer the router must give it
/// instead of running a handler (taken once by `observe`).
#[derive(Clone)]
pub struct RefusedUnread(Arc<parking_lot::Mutex<Option<Response>>>);

impl RefusedUnread {
    /// The refusal's answer; `None` if it was already taken.
    pub fn take(&self) -> Option<Response> {
        self.0.lock().take()
    }
}

/// What a connection is doing, shared between its reads, its requests and its watchdog.
struct Activity {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last byte received or the last request finished.
    last_active_ms: AtomicU64,
    /// Milliseconds since `epoch` of the first byte of a request not yet handed to a handler,
    /// or [`NO_REQUEST`].
    request_started_ms: AtomicU64,
    /// Requests handed to handlers and not yet answered.
    in_flight: AtomicU32,
    /// Woken when a deadline may have moved (a request began or ended).
    changed: Notify,
    /// The protocol, as far as the bytes so far tell: [`UNDECIDED`] while every byte received
    /// matches the start of the HTTP/2 preface (`POST` and `PUT` begin with its `P`),
    /// [`HTTP1`] or [`HTTP2`] once they tell. Undecided bytes count as an HTTP/1 request.
    protocol: AtomicU8,
    /// How many bytes of the HTTP/2 preface the client has sent while undecided.
    preface_matched: AtomicUsize,
}

const UNDECIDED: u8 = 0;
const HTTP1: u8 = 1;
const HTTP2: u8 = 2;

/// The start of the HTTP/2 connection preface (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const NO_REQUEST: u64 = u64::MAX;

/// Why the watchdog closes a connection.
enum Overdue {
    /// A request's headers did not arrive within the read deadline.
    Headers,
    /// Nothing in flight and nothing received for the idle timeout.
    Idle,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            last_active_ms: AtomicU64::new(0),
            request_started_ms: AtomicU64::new(NO_REQUEST),
            in_flight: AtomicU32::new(0),
            changed: Notify::new(),
            protocol: AtomicU8::new(UNDECIDED),
            preface_matched: AtomicUsize::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// `bytes` arrived. On HTTP/1 the connection is active, and with nothing in flight they
    /// begin a request. On HTTP/2 only requests count: pings and settings frames keep no
    /// connection open, and hyper delivers a stream only once its headers are complete.
    fn on_read(&self, bytes: &[u8]) {
        match self.protocol.load(Ordering::Relaxed) {
            HTTP2 => return,
            HTTP1 => {}
            _ => {
                // Only the connection's own reads get here, one at a time.
                let mut matched = self.preface_matched.load(Ordering::Relaxed);
                let mut protocol = UNDECIDED;
                for &b in bytes {
                    if H2_PREFACE.get(matched) == Some(&b) {
                        matched += 1;
                        if matched == H2_PREFACE.len() {
                            protocol = HTTP2;
                            break;
                        }
                    } else {
                        protocol = HTTP1;
                        break;
                    }
                }
                self.preface_matched.store(matched, Ordering::Relaxed);
                self.protocol.store(protocol, Ordering::Relaxed);
                if protocol == HTTP2 {
                    // The preface is no request: HTTP/2 requests are counted as they begin.
                    self.request_started_ms.store(NO_REQUEST, Ordering::Release);
                    self.last_active_ms.store(self.now_ms(), Ordering::Relaxed);
                    self.changed.notify_one();
                    return;
                }
            }
        }
        let now = self.now_ms();
        self.last_active_ms.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Acquire) == 0
            && self
                .request_started_ms
                .compare_exchange(NO_REQUEST, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.changed.notify_one();
        }
    }

    /// A request's head was parsed; returns when its first byte arrived.
    fn begin_request(&self) -> Instant {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let started = self.request_started_ms.swap(NO_REQUEST, Ordering::AcqRel);
        self.changed.notify_one();
        if started == NO_REQUEST {
            Instant::now()
        } else {
            self.at(started)
        }
    }

    fn end_request(&self) {
        self.last_active_ms.store(self.now_ms(), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.changed.notify_one();
    }

    /// When the watchdog must look again; `None` while requests are in flight (their bodies
    /// have their own deadline, and handlers are bounded by the engine).
    fn next_deadline(&self, options: &ServeOptions) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let started = self.request_started_ms.load(Ordering::Acquire);
        Some(if started == NO_REQUEST {
            self.at(self.last_active_ms.load(Ordering::Relaxed)) + options.idle_timeout
        } else {
            self.at(started) + options.request_read_timeout
        })
    }

    fn overdue(&self, options: &ServeOptions) -> Option<Overdue> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let now = Instant::now();
        let started = self.request_started_ms.load(Ordering::Acquire);
        if started != NO_REQUEST {
            return (now >= self.at(started) + options.request_read_timeout)
                .then_some(Overdue::Headers);
        }
        let last = self.at(self.last_active_ms.load(Ordering::Relaxed));
        (now >= last + options.idle_timeout).then_some(Overdue::Idle)
    }
}

/// Marks a request answered when its handler's future completes or is dropped.
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.end_request();
    }
}

/// The socket, noting every read in the connection's [`Activity`].
struct TrackedIo {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
