//! The live operations page: `GET /ops` (one self-contained HTML page) and the JSON it polls,
//! `GET /v1/ops/summary`, built from the engine's counters and the server's own `/metrics`
//! exposition so that the page and the scrape never disagree.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use miqat_engine::calendar::{format_rfc3339_utc, format_tehran_jalali};
use miqat_engine::catalog::ProvinceIdx;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::ApiError;

/// The page, inline CSS and JavaScript, no external resource.
const PAGE: &str = include_str!("ops.html");

/// `GET /ops`: the live operations page.
#[utoipa::path(get, path = "/ops", tag = "operations",
    responses((status = 200, content_type = "text/html",
        description = "One self-contained page (inline CSS and script) that polls `/v1/ops/summary`")))]
pub async fn page() -> Response {
    let mut response = PAGE.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Everything is inline: nothing else may load, and nothing may frame the page.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// What the operations page shows, as of `now`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpsSummary {
    /// The server's clock (RFC 3339 UTC).
    pub now: String,
    /// The same instant, Tehran wall clock in Jalali.
    pub now_jalali: String,
    /// Server version and git revision.
    pub version: String,
    /// Seats and waiting holders per province, in catalog order.
    pub provinces: Vec<OpsProvince>,
    /// Seats over every caravan.
    pub seats_total: u64,
    /// Seats free over every province.
    pub seats_free: u64,
    /// Holders waiting over every province.
    pub waiting: u64,
    /// Counters since start, as `/metrics` exports them (all 0 without a metrics recorder).
    pub counters: OpsCounters,
    /// Latency of every `/v1` request except this one's own route, cumulative buckets.
    pub request_latency: Buckets,
    /// Duration of each log `fsync`, cumulative buckets.
    pub fsync_latency: Buckets,
    /// The next wave to open, if any is still to come.
    pub next_wave: Option<NextWave>,
}

/// One province on the page.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpsProvince {
    /// Public id.
    pub id: u32,
    /// English name.
    pub name: String,
    /// Persian name.
    pub name_fa: String,
    /// Seats over its caravans.
    pub seats_total: u64,
    /// Seats not held, offered or confirmed.
    pub seats_free: u64,
    /// Holds and offers not yet confirmed.
    pub holds_live: u64,
    /// Holders on its waiting list.
    pub waiting: u64,
}

/// Counters since start (`miqat_*` families of `/metrics`).
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct OpsCounters {
    /// Requests answered by the router.
    pub requests: u64,
    /// `POST /v1/reservations` that took a new seat.
    pub reserved: u64,
    /// `POST /v1/reservations` retries answered with the original reservation.
    pub replayed: u64,
    /// `POST /v1/reservations` refused, any code (malformed requests included).
    pub reserve_refused: u64,
    /// Requests on any route answered with a problem document.
    pub refusals: u64,
    /// Requests shed at the in-flight limit.
    pub shed: u64,
    /// Requests refused by the per-client rate limit.
    pub rate_limited: u64,
    /// Waiting-list offers made.
    pub offers_made: u64,
    /// Waiting-list offers accepted.
    pub offers_accepted: u64,
    /// Waiting-list offers whose deadline passed.
    pub offers_lapsed: u64,
    /// Holds and offers expired.
    pub expirations: u64,
}

/// A histogram's cumulative buckets.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Buckets {
    /// Upper bounds in seconds, ascending (the `+Inf` bucket is `count`).
    pub le: Vec<f64>,
    /// Observations at or below each bound.
    pub cumulative: Vec<u64>,
    /// All observations.
    pub count: u64,
}

/// The next wave to open.
#[derive(Debug, Serialize, ToSchema)]
pub struct NextWave {
    /// Its name.
    pub name: String,
    /// When it opens (RFC 3339 UTC).
    pub opens_at: String,
    /// The same instant, Tehran wall clock in Jalali.
    pub opens_at_jalali: String,
    /// Milliseconds from `now` until it opens.
    pub opens_in_ms: i64,
    /// The public ids of the provinces it opens; absent for every province.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provinces: Option<Vec<u32>>,
}

/// `GET /v1/ops/summary`: what the live operations page shows.
#[utoipa::path(get, path = "/v1/ops/summary", tag = "operations",
    responses((status = 200, body = OpsSummary),
        (status = 503, description = "`not_ready`", body = crate::error::Problem)))]
pub async fn summary(State(state): State<AppState>) -> Result<Json<OpsSummary>, ApiError> {
    let engine = state.engine()?;
    let now_ms = engine.now_ms();
    let catalog = engine.catalog();
    let provinces: Vec<OpsProvince> = catalog
        .provinces()
        .iter()
        .enumerate()
        .map(|(p, province)| {
            let p = ProvinceIdx(p as u16);
            OpsProvince {
                id: province.id,
                name: province.name_en.clone(),
                name_fa: province.name_fa.clone(),
                seats_total: engine.province_seats_total(p),
                seats_free: u64::from(engine.province_free_seats(p)),
                holds_live: u64::from(engine.province_holds_live(p)),
                waiting: u64::from(engine.province_waiting(p)),
            }
        })
        .collect();
    let schedule = engine.schedule();
    let next_wave = schedule
        .waves
        .iter()
        .filter(|w| w.opens_at_ms > now_ms)
        .min_by_key(|w| w.opens_at_ms)
        .map(|w| NextWave {
            name: w.name.clone(),
            opens_at: format_rfc3339_utc(w.opens_at_ms),
            opens_at_jalali: format_tehran_jalali(w.opens_at_ms),
            opens_in_ms: w.opens_at_ms - now_ms,
            provinces: w.provinces.clone(),
        });
    let exposition = state
        .inner
        .metrics
        .as_ref()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    let samples = parse_exposition(&exposition);
    Ok(Json(OpsSummary {
        now: format_rfc3339_utc(now_ms),
        now_jalali: format_tehran_jalali(now_ms),
        version: format!(
            "{} ({})",
            crate::telemetry::VERSION,
            crate::telemetry::GIT_SHA
        ),
        seats_total: provinces.iter().map(|p| p.seats_total).sum(),
        seats_free: provinces.iter().map(|p| p.seats_free).sum(),
        waiting: provinces.iter().map(|p| p.waiting).sum(),
        provinces,
        counters: counters(&samples),
        request_latency: buckets(&samples, "miqat_http_request_duration_seconds", |s| {
            s.label("route")
                .is_some_and(|r| r.starts_with("/v1/") && r != "/v1/ops/summary")
        }),
        fsync_latency: buckets(&samples, "miqat_wal_fsync_seconds", |_| true),
        next_wave,
    }))
}

fn counters(samples: &[Sample]) -> OpsCounters {
    let sum = |name: &str, keep: &dyn Fn(&Sample) -> bool| -> u64 {
        samples
            .iter()
            .filter(|s| s.name == name && keep(s))
            .map(|s| s.value.max(0.0) as u64)
            .sum()
    };
    let label_is =
        |key: &'static str, want: &'static str| move |s: &Sample| s.label(key) == Some(want);
    OpsCounters {
        requests: sum("miqat_http_requests_total", &|_| true),
        reserved: sum("miqat_reservations_total", &label_is("outcome", "reserved")),
        replayed: sum("miqat_reservations_total", &label_is("outcome", "replayed")),
        reserve_refused: sum("miqat_http_refusals_total", &|s| {
            s.label("route") == Some("/v1/reservations")
        }),
        refusals: sum("miqat_http_refusals_total", &|_| true),
        shed: sum(
            "miqat_admission_rejections_total",
            &label_is("reason", "overloaded"),
        ),
        rate_limited: sum(
            "miqat_admission_rejections_total",
            &label_is("reason", "rate_limited"),
        ),
        offers_made: sum("miqat_waitlist_offers_made_total", &|_| true),
        offers_accepted: sum(
            "miqat_waitlist_offers_ended_total",
            &label_is("outcome", "accepted"),
        ),
        offers_lapsed: sum(
            "miqat_waitlist_offers_ended_total",
            &label_is("outcome", "lapsed"),
        ),
        expirations: sum("miqat_expirations_total", &|_| true),
    }
}

/// Sums the cumulative buckets of histogram `family` over the series `keep` accepts.
fn buckets(samples: &[Sample], family: &str, keep: impl Fn(&Sample) -> bool) -> Buckets {
    let bucket_name = format!("{family}_bucket");
    let count_name = format!("{family}_count");
    let mut out = Buckets::default();
    for s in samples.iter().filter(|s| keep(s)) {
        if s.name == count_name {
            out.count += s.value.max(0.0) as u64;
        } else if s.name == bucket_name {
            let Some(le) = s.label("le").and_then(|le| le.parse::<f64>().ok()) else {
                continue;
            };
            if !le.is_finite() {
                continue;
            }
            match out.le.iter().position(|&b| b == le) {
                Some(i) => out.cumulative[i] += s.value.max(0.0) as u64,
                None => {
                    out.le.push(le);
                    out.cumulative.push(s.value.max(0.0) as u64);
                }
            }
        }
    }
    let mut pairs: Vec<(f64, u64)> = out.le.iter().copied().zip(out.cumulative).collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    (out.le, out.cumulative) = pairs.into_iter().unzip();
    out
}

/// One sample line of the Prometheus text format.
#[derive(Debug, PartialEq)]
pub struct Sample {
    /// The series name (with `_bucket`, `_sum`, `_count` for histograms).
    pub name: String,
    /// Its labels, in order.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The samples of a Prometheus text exposition; comments and lines that do not parse are
/// skipped.
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_sample)
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i + 1);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            '"' => break,
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
        rest = &inner[end?..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_labels_escapes_and_infinity() {
        let text =
            "# HELP x y\nx_total 3\ny{a=\"1\",b=\"q\\\"uo,te\"} 2.5\nh_bucket{le=\"+Inf\"} 7\n";
        let samples = parse_exposition(text);
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].name, "x_total");
        assert_eq!(samples[0].value, 3.0);
        assert_eq!(samples[1].label("b"), Some("q\"uo,te"));
        assert_eq!(samples[1].label("a"), Some("1"));
        assert_eq!(samples[2].label("le"), Some("+Inf"));
    }

    #[test]
    fn buckets_sum_over_series_and_sort_by_bound() {
        let text = "h_bucket{route=\"/v1/a\",le=\"0.1\"} 1\nh_bucket{route=\"/v1/a\",le=\"0.01\"} 0\n\
                    h_bucket{route=\"/v1/b\",le=\"0.01\"} 2\nh_bucket{route=\"/v1/b\",le=\"0.1\"} 3\n\
                    h_bucket{route=\"/v1/b\",le=\"+Inf\"} 4\nh_count{route=\"/v1/a\"} 1\n\
                    h_count{route=\"/v1/b\"} 4\nh_count{route=\"/x\"} 9\n";
        let samples = parse_exposition(text);
        let b = buckets(&samples, "h", |s| {
            s.label("route").is_some_and(|r| r.starts_with("/v1/"))
        });
        assert_eq!(b.le, vec![0.01, 0.1]);
        assert_eq!(b.cumulative, vec![2, 4]);
        assert_eq!(b.count, 5);
    }
}
