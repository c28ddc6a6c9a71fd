//! Cross-origin requests from browser front-ends (CORS): an allow-list of exact origins,
//! preflights answered for every route, and the headers a front-end must read exposed.
//!
//! The layer is installed only when at least one origin is allowed, so a server without
//! browser front-ends pays nothing per request. Credentials travel in headers
//! (`X-National-Id`, `Authorization`), never in cookies, so `Access-Control-Allow-Credentials`
//! is never sent.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Request headers a front-end may send (the answer to every preflight).
pub const ALLOWED_HEADERS: &str = "authorization, content-type, idempotency-key, if-none-match, \
     x-national-id, x-tracking-code, x-request-id";

/// Methods the API's routes take (the answer to every preflight).
pub const ALLOWED_METHODS: &str = "GET, POST, PUT, DELETE";

/// Response headers a front-end may read besides the CORS-safelisted ones.
pub const EXPOSED_HEADERS: &str =
    "etag, retry-after, location, idempotent-replayed, x-request-id, content-length";

/// How long a browser may cache a preflight's answer, in seconds (Chromium caps it at 7,200).
const PREFLIGHT_MAX_AGE_SECS: u32 = 600;

/// The origins allowed to call the API from a browser.
#[derive(Debug, Clone, Default)]
pub struct CorsPolicy {
    origins: Box<[HeaderValue]>,
}

impl CorsPolicy {
    /// A policy allowing exactly `origins` (each `scheme://host[:port]`, as a browser sends it in
    /// `Origin`). Returns an error naming the first entry that is not such an origin.
    pub fn new<S: AsRef<str>>(origins: &[S]) -> Result<CorsPolicy, String> {
        let mut allowed = Vec::with_capacity(origins.len());
        for origin in origins {
            let normalized = normalize_origin(origin.as_ref())?;
            let value = HeaderValue::from_str(&normalized)
                .map_err(|_| format!("{:?} is not a valid origin", origin.as_ref()))?;
            if !allowed.contains(&value) {
                allowed.push(value);
            }
        }
        Ok(CorsPolicy {
            origins: allowed.into_boxed_slice(),
        })
    }

    /// Returns true if and only if no origin is allowed (the layer is then not installed).
    pub fn is_empty(&self) -> bool {
        self.origins.is_empty()
    }

    /// The request's `Origin` if and only if it is on the allow-list.
    fn allowed_origin<'h>(&self, headers: &'h HeaderMap) -> Option<&'h HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        self.origins
            .iter()
            .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
            .then_some(origin)
    }
}

/// Lower-cases an origin and drops one trailing `/`; refuses anything with a path, a query,
/// user info, or without an `http`/`https` scheme and a host.
fn normalize_origin(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    let origin = trimmed
        .strip_suffix('/')
        .unwrap_or(trimmed)
        .to_ascii_lowercase();
    let refuse = || {
        Err(format!(
            "{text:?} is not an origin: write scheme://host[:port], e.g. https://hajj.example.ir"
        ))
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return refuse();
    };
    if !matches!(scheme, "http" | "https")
        || authority.is_empty()
        || authority.contains(['/', '?', '#', '@', ' '])
    {
        return refuse();
    }
    Ok(origin)
}

/// The CORS middleware: answers preflights from allowed origins at once, adds the CORS
/// headers to other answers for allowed origins, and `Vary: Origin` to every answer (a cache
/// must not hand one origin's answer to another). A disallowed origin gets no CORS header.
pub async fn layer(State(policy): State<Arc<CorsPolicy>>, req: Request, next: Next) -> Response {
    let Some(origin) = policy.allowed_origin(req.headers()).cloned() else {
        let mut response = next.run(req).await;
        response
            .headers_mut()
            .append(header::VARY, HeaderValue::from_static("origin"));
        return response;
    };
    if req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return preflight(origin);
    }
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED_HEADERS),
    );
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    response
}

/// `204` with what the browser asked about: every route takes these methods and headers
/// (a route answers `405` itself for a method it does not take).
fn preflight(origin: HeaderValue) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(ALLOWED_METHODS),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOWED_HEADERS),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(PREFLIGHT_MAX_AGE_SECS),
    );
    headers.insert(
        header::VARY,
        HeaderValue::from_static(
            "origin, access-control-request-method, access-control-request-headers",
        ),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::normalize_origin;

    #[track_caller]
    fn check(input: &str, expect: Result<&str, ()>) {
        assert_eq!(
            normalize_origin(input).map_err(|_| ()),
            expect.map(str::to_owned),
            "{input:?}"
        );
    }

    #[test]
    fn origins_are_normalized_or_refused() {
        check("https://Hajj.Example.ir/", Ok("https://hajj.example.ir"));
        check(" http://localhost:5173 ", Ok("http://localhost:5173"));
        check("hajj.example.ir", Err(()));
        check("https://hajj.example.ir/app", Err(()));
        check("ftp://hajj.example.ir", Err(()));
        check("https://", Err(()));
        check("https://user@hajj.example.ir", Err(()));
        check("*", Err(()));
        check("null", Err(()));
    }
}
