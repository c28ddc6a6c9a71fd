//! The HTTP client of a run: keep-alive connections bounded by a semaphore, a timeout per
//! request, every request sent at its intended time and recorded from it (so waiting for a
//! connection or a slow server counts as latency, not as a later start).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::follow::{Targets, parse_targets};
use crate::outcome::{Endpoint, Outcome};
use crate::recorder::{Recorder, RequestRecord};
use crate::tls::{ClientTls, Connector};

/// A problem+json body, the members clients branch on.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Problem {
    /// The stable code.
    #[serde(default)]
    pub code: Option<String>,
    /// `caravan_full`: caravans of the holder's city with free seats.
    #[serde(default)]
    pub alternatives: Vec<Alternative>,
    /// `already_reserved`: the holder's live reservation.
    #[serde(default)]
    pub reservation_id: Option<String>,
}

/// A caravan offered as an alternative.
#[derive(Debug, Clone, Deserialize)]
pub struct Alternative {
    /// The caravan's id.
    pub id: String,
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The problem, for 4xx and 5xx with a JSON body.
    pub problem: Option<Problem>,
    /// `Retry-After` in seconds.
    pub retry_after_s: Option<f64>,
    /// `ETag`.
    pub etag: Option<String>,
    /// The body.
    pub body: Bytes,
    /// The outcome class it was recorded as.
    pub outcome: Outcome,
    /// `Miqat-Leader` (a cluster's follower names the leader's API address).
    pub leader: Option<String>,
}

impl Answer {
    /// The problem's code, if any.
    pub fn code(&self) -> Option<&str> {
        self.problem.as_ref().and_then(|p| p.code.as_deref())
    }
}

/// No answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAnswer {
    /// The timeout passed.
    Timeout,
    /// Refused, reset, or a broken answer.
    Transport,
}

/// One request to send.
pub struct Call<'a> {
    /// The endpoint (for the records).
    pub endpoint: Endpoint,
    /// Method.
    pub method: Method,
    /// Path and query.
    pub path: &'a str,
    /// JSON body, if any.
    pub body: Option<Bytes>,
    /// Extra headers.
    pub headers: &'a [(&'static str, &'a str)],
    /// When the request is meant to leave.
    pub intended: Instant,
    /// The credentials are wrong on purpose (401 is then the right answer).
    pub wrong_credentials: bool,
}

/// The run's client; cheap to share behind an `Arc`.
pub struct Http {
    client: Client<Connector, Full<Bytes>>,
    base: String,
    permits: Semaphore,
    timeout: Duration,
    recorder: Arc<Recorder>,
    /// Two or more targets: the cluster the client follows.
    cluster: Option<Arc<Targets>>,
}

impl Http {
    /// A client of `base` (`http://host:port`) with at most `connections` requests in flight.
    pub fn new(
        base: &str,
        connections: usize,
        timeout: Duration,
        recorder: Arc<Recorder>,
    ) -> anyhow::Result<Http> {
        Http::with_tls(base, connections, timeout, recorder, &ClientTls::default())
    }

    /// [`Http::new`] for `http://` or `https://host:port`, with these TLS settings; a
    /// comma-separated list of targets is a cluster to follow ([`crate::follow`]).
    pub fn with_tls(
        base: &str,
        connections: usize,
        timeout: Duration,
        recorder: Arc<Recorder>,
        tls: &ClientTls,
    ) -> anyhow::Result<Http> {
        let mut targets = parse_targets(base)?;
        let base = targets.remove(0);
        let cluster = (!targets.is_empty()).then(|| {
            targets.insert(0, base.clone());
            Arc::new(Targets::new(targets))
        });
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(connections)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(tls.connector());
        Ok(Http {
            client,
            base,
            permits: Semaphore::new(connections.max(1)),
            timeout,
            recorder,
            cluster,
        })
    }

    /// The cluster this client follows, if it was given several targets.
    pub fn cluster(&self) -> Option<&Arc<Targets>> {
        self.cluster.as_ref()
    }

    /// The recorder requests go to.
    pub fn recorder(&self) -> &Arc<Recorder> {
        &self.recorder
    }

    /// Sends `call` at its intended time and records it.
    pub async fn call(&self, call: Call<'_>) -> Result<Answer, NoAnswer> {
        if call.intended > Instant::now() {
            tokio::time::sleep_until(call.intended.into()).await;
        }
        let dispatched = Instant::now();
        let connected = parking_lot::Mutex::new(None);
        // Boxed: the exchange's future is large, and 300,000 journeys waiting at once each
        // hold their state machine; boxing keeps a waiting journey small.
        let result = Box::pin(self.send(&call, &connected)).await;
        let done = Instant::now();
        if let Some(cluster) = &self.cluster {
            cluster.settle(&call.method, &result);
        }
        let (outcome, answer) = match &result {
            Ok(a) => (a.outcome, Some((a.status, a.code()))),
            Err(NoAnswer::Timeout) => (Outcome::Timeout, None),
            Err(NoAnswer::Transport) => (Outcome::Transport, None),
        };
        self.recorder.request(RequestRecord {
            endpoint: call.endpoint,
            intended: call.intended,
            dispatched,
            connected: *connected.lock(),
            done,
            outcome,
            answer,
        });
        result
    }

    async fn send(
        &self,
        call: &Call<'_>,
        connected: &parking_lot::Mutex<Option<Instant>>,
    ) -> Result<Answer, NoAnswer> {
        let deadline = call.intended + self.timeout;
        let work = async {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| NoAnswer::Transport)?;
            *connected.lock() = Some(Instant::now());
            match &self.cluster {
                Some(cluster) => cluster.exchange(self, call).await,
                None => self.exchange_at(&self.base, call).await,
            }
        };
        match tokio::time::timeout_at(deadline.into(), work).await {
            Ok(result) => result,
            Err(_) => Err(NoAnswer::Timeout),
        }
    }

    /// One exchange of `call` with the server at `base`.
    pub(crate) async fn exchange_at(
        &self,
        base: &str,
        call: &Call<'_>,
    ) -> Result<Answer, NoAnswer> {
        let mut request = Request::builder()
            .method(call.method.clone())
            .uri(format!("{base}{}", call.path));
        if call.body.is_some() {
            request = request.header("content-type", "application/json");
        }
        for (name, value) in call.headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(call.body.clone().unwrap_or_default()))
            .map_err(|_| NoAnswer::Transport)?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|_| NoAnswer::Transport)?;
        let status = response.status().as_u16();
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        // Seconds only (an HTTP date counts as absent); a value that is not a finite,
        // non-negative number is ignored rather than trusted.
        let retry_after_s = header(hyper::header::RETRY_AFTER)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0);
        let etag = header(hyper::header::ETAG);
        let leader = header(hyper::header::HeaderName::from_static("miqat-leader"));
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|_| NoAnswer::Transport)?
            .to_bytes();
        let problem = (status >= 400)
            .then(|| serde_json::from_slice::<Problem>(&body).ok())
            .flatten();
        let code = problem.as_ref().and_then(|p| p.code.as_deref());
        let outcome = Outcome::of_answer(
            status,
            code,
            retry_after_s.is_some(),
            call.wrong_credentials,
        );
        Ok(Answer {
            status,
            problem,
            retry_after_s,
            etag,
            body,
            outcome,
            leader,
        })
    }
}

/// Percent-encodes a query value (UTF-8 bytes outside the unreserved set).
pub fn query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::query_value;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_value("Bandar Abbas"), "Bandar%20Abbas");
        assert_eq!(query_value("a&b=c"), "a%26b%3Dc");
        assert_eq!(query_value("قم"), "%D9%82%D9%85");
    }
}
