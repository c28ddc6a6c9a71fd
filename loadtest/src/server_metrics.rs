//! The server's own view of a run: its `/metrics` scraped once a second and turned into
//! per-interval figures (requests and shed per second, p99 of reserving and of `fsync` as the
//! server measured them, CPU, memory) on the run's time axis, and the server's version.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::admin::Admin;

/// One series of a scrape: name, labels and value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find_map(|(k, v)| (k == key).then_some(v.as_str()))
    }
}

/// The series of a Prometheus text exposition (comments and lines that do not parse are
/// left out).
fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                number => number.parse().ok()?,
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
                None => (series, Vec::new()),
            };
            Some(Sample {
                name: name.to_owned(),
                labels,
                value,
            })
        })
        .collect()
}

/// `a="1",b="x \"y\""` as pairs; `None` if it is not well formed.
fn parse_labels(mut text: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    while !text.is_empty() {
        let (key, rest) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut escaped = false;
        let mut end = None;
        for (at, c) in rest.char_indices() {
            match (escaped, c) {
                (true, 'n') => value.push('\n'),
                (true, other) => value.push(other),
                (false, '\\') => {
                    escaped = true;
                    continue;
                }
                (false, '"') => {
                    end = Some(at);
                    break;
                }
                (false, other) => value.push(other),
            }
            escaped = false;
        }
        labels.push((key.trim_start_matches(',').trim().to_owned(), value));
        text = rest.get(end? + 1..)?.trim_start_matches(',');
    }
    Some(labels)
}

/// One interval between two scrapes, at the time of the later one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerSample {
    /// Seconds since the opening (run time), when the interval ended.
    pub t_s: f64,
    /// Requests the server answered per second over the interval.
    pub requests_per_s: f64,
    /// Requests shed (503 overloaded) or rate-limited (429) per second.
    pub shed_per_s: f64,
    /// p99 of `POST /v1/reservations` as the server timed it, over the interval; 0 if none.
    pub reserve_p99_ms: f64,
    /// p99 of the log's `fsync` over the interval; 0 if none.
    pub fsync_p99_ms: f64,
    /// Requests in flight at the scrape.
    pub in_flight: f64,
    /// CPU cores the server used over the interval.
    pub cpu_cores: f64,
    /// Resident memory at the scrape, MiB.
    pub resident_mib: f64,
    /// Holders in the waiting rooms not yet admitted, at the scrape (0 without a room).
    #[serde(default)]
    pub queue_length: f64,
    /// Places the waiting rooms admitted per second over the interval.
    #[serde(default)]
    pub queue_admitted_per_s: f64,
    /// Median wait of the holders admitted over the interval, seconds; 0 if none.
    #[serde(default)]
    pub queue_wait_p50_s: f64,
}

/// What the sampler gathered.
#[derive(Debug, Clone, Default)]
pub struct ServerMetrics {
    /// `version (git_sha)` from `miqat_build_info`, if the server exports it.
    pub version: Option<String>,
    /// One per interval.
    pub samples: Vec<ServerSample>,
}

/// The cumulative figures of one scrape.
struct Scrape {
    t_s: f64,
    requests: f64,
    shed: f64,
    reserve: Vec<(f64, f64)>,
    fsync: Vec<(f64, f64)>,
    in_flight: f64,
    cpu_seconds: f64,
    resident_bytes: f64,
    queue_length: f64,
    queue_admitted: f64,
    queue_wait: Vec<(f64, f64)>,
}

impl Scrape {
    fn read(samples: &[Sample], t_s: f64) -> Scrape {
        let sum = |name: &str, keep: &dyn Fn(&Sample) -> bool| -> f64 {
            samples
                .iter()
                .filter(|s| s.name == name && keep(s))
                .map(|s| s.value)
                .sum()
        };
        Scrape {
            t_s,
            requests: sum("miqat_http_requests_total", &|_| true),
            shed: sum("miqat_admission_rejections_total", &|_| true),
            reserve: buckets(
                samples,
                "miqat_http_request_duration_seconds_bucket",
                &|s| {
                    s.label("route") == Some("/v1/reservations")
                        && s.label("method") == Some("POST")
                },
            ),
            fsync: buckets(samples, "miqat_wal_fsync_seconds_bucket", &|_| true),
            in_flight: sum("miqat_requests_in_flight", &|_| true),
            cpu_seconds: sum("process_cpu_seconds_total", &|_| true),
            resident_bytes: sum("process_resident_memory_bytes", &|_| true),
            queue_length: sum("miqat_queue_length", &|_| true),
            queue_admitted: sum("miqat_queue_admitted_total", &|_| true),
            queue_wait: buckets(samples, "miqat_queue_wait_seconds_bucket", &|_| true),
        }
    }
}

/// Cumulative `(upper bound in seconds, count)` of a histogram's series `keep` accepts,
/// summed over them, ascending (`+Inf` included).
fn buckets(samples: &[Sample], name: &str, keep: &dyn Fn(&Sample) -> bool) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for s in samples.iter().filter(|s| s.name == name && keep(s)) {
        let Some(le) = s.label("le").and_then(|le| match le {
            "+Inf" => Some(f64::INFINITY),
            other => other.parse::<f64>().ok(),
        }) else {
            continue;
        };
        match out.iter_mut().find(|(bound, _)| *bound == le) {
            Some((_, count)) => *count += s.value,
            None => out.push((le, s.value)),
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The `q` quantile (milliseconds) of the observations between two cumulative bucket
/// snapshots, interpolated within its bucket; 0 when there were none.
pub fn quantile_ms(q: f64, now: &[(f64, f64)], before: &[(f64, f64)]) -> f64 {
    let delta = |i: usize| {
        let earlier = before
            .iter()
            .find(|(bound, _)| *bound == now[i].0)
            .map_or(0.0, |(_, c)| *c);
        (now[i].1 - earlier).max(0.0)
    };
    let Some(total) = (!now.is_empty()).then(|| delta(now.len() - 1)) else {
        return 0.0;
    };
    if total <= 0.0 {
        return 0.0;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (i, &(upper, _)) in now.iter().enumerate() {
        let count = delta(i);
        if count >= rank {
            if !upper.is_finite() {
                // Beyond the last finite bound: that bound is all that can be said.
                return lower * 1000.0;
            }
            let within = count - below;
            let fraction = if within > 0.0 {
                (rank - below) / within
            } else {
                1.0
            };
            return (lower + (upper - lower) * fraction) * 1000.0;
        }
        lower = upper;
        below = count;
    }
    lower * 1000.0
}

fn interval(before: &Scrape, now: &Scrape) -> ServerSample {
    let seconds = (now.t_s - before.t_s).max(1e-3);
    let per_s = |a: f64, b: f64| ((a - b) / seconds).max(0.0);
    ServerSample {
        t_s: now.t_s,
        requests_per_s: per_s(now.requests, before.requests),
        shed_per_s: per_s(now.shed, before.shed),
        reserve_p99_ms: quantile_ms(0.99, &now.reserve, &before.reserve),
        fsync_p99_ms: quantile_ms(0.99, &now.fsync, &before.fsync),
        in_flight: now.in_flight,
        cpu_cores: per_s(now.cpu_seconds, before.cpu_seconds),
        resident_mib: now.resident_bytes / (1024.0 * 1024.0),
        queue_length: now.queue_length,
        queue_admitted_per_s: per_s(now.queue_admitted, before.queue_admitted),
        queue_wait_p50_s: quantile_ms(0.5, &now.queue_wait, &before.queue_wait) / 1000.0,
    }
}

/// `version (git_sha)` from `miqat_build_info`.
fn version(samples: &[Sample]) -> Option<String> {
    let info = samples.iter().find(|s| s.name == "miqat_build_info")?;
    let version = info.label("version")?;
    Some(match info.label("git_sha") {
        Some(sha) => format!("{version} ({sha})"),
        None => version.to_owned(),
    })
}

/// Scrapes `/metrics` every `every` until stopped; `t_s` counts from `opening`.
pub async fn sample(
    admin: Admin,
    opening: Instant,
    every: Duration,
    out: Arc<Mutex<ServerMetrics>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut previous: Option<Scrape> = None;
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        // One last scrape when stopped, so the final interval is not lost.
        if let Ok(raw) = admin.send(Method::GET, "/metrics", &[], None).await
            && raw.status == 200
        {
            let samples = parse_exposition(&String::from_utf8_lossy(&raw.body));
            let now = Instant::now();
            let t_s = if now >= opening {
                now.duration_since(opening).as_secs_f64()
            } else {
                -opening.duration_since(now).as_secs_f64()
            };
            let scrape = Scrape::read(&samples, t_s);
            let mut gathered = out.lock();
            if gathered.version.is_none() {
                gathered.version = version(&samples);
            }
            if let Some(before) = &previous {
                gathered.samples.push(interval(before, &scrape));
            }
            previous = Some(scrape);
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_with_escapes_commas_and_infinity() {
        let samples = parse_exposition(
            "# HELP x y\nx_total 3\ny{a=\"1\",b=\"q\\\"uo,te\"} 2.5\nh_bucket{le=\"+Inf\"} 7\nbad{a=1} 2\n",
        );
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].name, "x_total");
        assert_eq!(samples[0].value, 3.0);
        assert_eq!(samples[1].label("a"), Some("1"));
        assert_eq!(samples[1].label("b"), Some("q\"uo,te"));
        assert_eq!(samples[1].value, 2.5);
        assert_eq!(samples[2].label("le"), Some("+Inf"));
    }

    #[test]
    fn quantiles_come_from_the_interval_not_the_whole_run() {
        let before = [(0.001, 100.0), (0.01, 100.0), (f64::INFINITY, 100.0)];
        // The interval added 100 observations between 1 and 10 ms.
        let now = [(0.001, 100.0), (0.01, 200.0), (f64::INFINITY, 200.0)];
        let p99 = quantile_ms(0.99, &now, &before);
        assert!((p99 - 9.91).abs() < 1e-9, "{p99}");
        assert_eq!(quantile_ms(0.99, &before, &before), 0.0);
        assert_eq!(quantile_ms(0.5, &now, &[]), 1.0);
    }

    #[test]
    fn reads_rates_and_the_version_from_two_scrapes() {
        let first = "miqat_build_info{version=\"1.2.3\",git_sha=\"abc\"} 1\n\
                     miqat_http_requests_total{route=\"/a\"} 10\n\
                     process_cpu_seconds_total 1\n";
        let second = "miqat_http_requests_total{route=\"/a\"} 30\n\
                      miqat_http_requests_total{route=\"/b\"} 10\n\
                      miqat_admission_rejections_total{reason=\"overloaded\"} 4\n\
                      process_cpu_seconds_total 2\n";
        let a = parse_exposition(first);
        let b = parse_exposition(second);
        assert_eq!(version(&a).as_deref(), Some("1.2.3 (abc)"));
        let sample = interval(&Scrape::read(&a, 0.0), &Scrape::read(&b, 2.0));
        assert_eq!(sample.requests_per_s, 15.0);
        assert_eq!(sample.shed_per_s, 2.0);
        assert_eq!(sample.cpu_cores, 0.5);
    }
}
