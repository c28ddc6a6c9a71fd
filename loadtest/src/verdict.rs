//! The run's verdicts: correctness (the after-run checks and what the client saw), service
//! (failed journeys, timeouts, shed and failed requests, latency gates, each against a
//! threshold) and measurement validity (the generator's send lag), and the overall verdict,
//! which passes only if every verdict that was judged passed. Each carries the figures and
//! thresholds it was judged by, so `summary.json`, the terminal and the HTML report say the
//! same thing from the same lines.

use serde::{Deserialize, Serialize};

use crate::summary::Summary;

/// How one verdict came out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every figure within its threshold.
    Passed,
    /// At least one figure past its threshold.
    Failed,
    /// Nothing was asked or measured for this verdict (e.g. no after-run check ran).
    #[default]
    NotJudged,
}

/// Thresholds of the service verdict, each a share of journeys or requests in percent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct ServiceLimits {
    /// The service verdict fails when more than this share (%) of journeys failed (gave up
    /// after errors, timeouts or unexpected answers).
    #[arg(long, value_name = "PCT", default_value_t = 1.0)]
    pub max_failed_journeys_pct: f64,
    /// The service verdict fails when more than this share (%) of requests timed out.
    #[arg(long, value_name = "PCT", default_value_t = 1.0)]
    pub max_timeouts_pct: f64,
    /// The service verdict fails when more than this share (%) of requests were shed by
    /// overload (429/503 with `Retry-After`).
    #[arg(long, value_name = "PCT", default_value_t = 5.0)]
    pub max_shed_pct: f64,
    /// The service verdict fails when more than this share (%) of requests failed otherwise
    /// (unexpected 4xx, 5xx, refused or reset connections).
    #[arg(long, value_name = "PCT", default_value_t = 1.0)]
    pub max_errors_pct: f64,
}

impl Default for ServiceLimits {
    fn default() -> ServiceLimits {
        ServiceLimits {
            max_failed_journeys_pct: 1.0,
            max_timeouts_pct: 1.0,
            // Shedding with `Retry-After` is the contract's answer to a spike and its retries
            // usually succeed, so a little more of it is tolerated than of real failures.
            max_shed_pct: 5.0,
            max_errors_pct: 1.0,
        }
    }
}

impl ServiceLimits {
    /// Refuses thresholds that are not percentages.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, value) in [
            ("--max-failed-journeys-pct", self.max_failed_journeys_pct),
            ("--max-timeouts-pct", self.max_timeouts_pct),
            ("--max-shed-pct", self.max_shed_pct),
            ("--max-errors-pct", self.max_errors_pct),
        ] {
            if !(0.0..=100.0).contains(&value) {
                anyhow::bail!("{name} must be a percentage from 0 to 100, not {value}");
            }
        }
        Ok(())
    }
}

/// One figure a verdict was judged by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measure {
    /// What was measured (`failed journeys`, `timeouts`, `send lag p99`, ...).
    pub name: String,
    /// The figure, in `unit`.
    pub value: f64,
    /// The largest value that passes, in `unit` (values above it fail).
    pub limit: f64,
    /// `%`, `ms` or `` (a count).
    pub unit: String,
    /// For a share: how many were counted.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub count: Option<u64>,
    /// For a share: of how many `of_what`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub of: Option<u64>,
    /// For a share: what `of` counts (`journeys`, `requests`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub of_what: Option<String>,
    /// `value <= limit`.
    pub passed: bool,
}

impl Measure {
    fn share(name: &str, count: u64, of: u64, of_what: &str, limit_pct: f64) -> Measure {
        let value = if of == 0 {
            0.0
        } else {
            count as f64 * 100.0 / of as f64
        };
        Measure {
            name: name.to_string(),
            value,
            limit: limit_pct,
            unit: "%".to_string(),
            count: Some(count),
            of: Some(of),
            of_what: Some(of_what.to_string()),
            passed: value <= limit_pct,
        }
    }

    fn count(name: &str, value: u64) -> Measure {
        Measure {
            name: name.to_string(),
            value: value as f64,
            limit: 0.0,
            unit: String::new(),
            count: None,
            of: None,
            of_what: None,
            passed: value == 0,
        }
    }

    fn below(name: &str, value_ms: f64, limit_ms: f64, strict: bool) -> Measure {
        Measure {
            name: name.to_string(),
            value: value_ms,
            limit: limit_ms,
            unit: "ms".to_string(),
            count: None,
            of: None,
            of_what: None,
            passed: if strict {
                value_ms < limit_ms
            } else {
                value_ms <= limit_ms
            },
        }
    }

    /// The figure in words, e.g. `timeouts 40.00% (400 of 1000 requests; limit 1%)`, with
    /// `MISSED` after a figure past its limit.
    pub fn describe(&self) -> String {
        let mark = if self.passed { "" } else { " MISSED" };
        match (self.count, self.of, &self.of_what, self.unit.as_str()) {
            (Some(n), Some(of), Some(what), "%") => format!(
                "{} {:.2}% ({n} of {of} {what}; limit {}%){mark}",
                self.name,
                self.value,
                plain(self.limit)
            ),
            (_, _, _, "ms") => format!(
                "{} {:.1} ms (limit {} ms){mark}",
                self.name,
                self.value,
                plain(self.limit)
            ),
            _ => format!(
                "{} {} (limit {}){mark}",
                self.name,
                plain(self.value),
                plain(self.limit)
            ),
        }
    }
}

/// One verdict with the figures behind it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// How it came out.
    pub status: Status,
    /// The figures, each with its threshold.
    pub measures: Vec<Measure>,
    /// What the verdict means for this run, in a sentence.
    pub note: String,
}

/// The three verdicts and the overall one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Verdicts {
    /// Passed if and only if no verdict failed and at least one passed.
    pub overall: Status,
    /// The invariants: after-run checks and contradictions the client saw.
    pub correctness: Verdict,
    /// What users felt: failed journeys, timeouts, shed and failed requests, latency gates.
    pub service: Verdict,
    /// Whether the generator kept to the plan, so the figures measure the planned load.
    pub measurement: Verdict,
}

/// One line of the verdict as the reports print it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictLine {
    /// `correctness`, `service` or `measurement`.
    pub label: &'static str,
    /// `PASSED`, `FAILED`, `NOT CHECKED`, `VALID` or `INVALID`.
    pub word: &'static str,
    /// Whether the line is good news (`None` when not judged).
    pub good: Option<bool>,
    /// The figures and the note.
    pub detail: String,
}

impl Verdicts {
    /// Whether the run passed overall.
    pub fn passed(&self) -> bool {
        self.overall == Status::Passed
    }

    /// The headline: `PASSED` or `FAILED`, with the verdicts that failed.
    pub fn headline(&self) -> String {
        let failed: Vec<String> = self
            .lines()
            .iter()
            .filter(|l| l.good == Some(false))
            .map(|l| format!("{} {}", l.label, l.word))
            .collect();
        match self.overall {
            Status::Passed => "PASSED: every verdict that was judged passed".to_string(),
            Status::Failed => format!("FAILED: {}", failed.join(", ")),
            Status::NotJudged => "NOT JUDGED: nothing was checked or measured".to_string(),
        }
    }

    /// One line per verdict, in the order the reports show them.
    pub fn lines(&self) -> Vec<VerdictLine> {
        let words = [
            ("correctness", &self.correctness, "PASSED", "FAILED"),
            ("service", &self.service, "PASSED", "FAILED"),
            ("measurement", &self.measurement, "VALID", "INVALID"),
        ];
        words
            .iter()
            .map(|(label, verdict, pass, fail)| {
                let (word, good) = match verdict.status {
                    Status::Passed => (*pass, Some(true)),
                    Status::Failed => (*fail, Some(false)),
                    Status::NotJudged => ("NOT CHECKED", None),
                };
                let mut parts: Vec<String> =
                    verdict.measures.iter().map(Measure::describe).collect();
                if !verdict.note.is_empty() {
                    parts.push(verdict.note.clone());
                }
                VerdictLine {
                    label,
                    word,
                    good,
                    detail: parts.join("; "),
                }
            })
            .collect()
    }
}

/// Judges `summary` by its own figures and thresholds.
pub fn judge(summary: &Summary) -> Verdicts {
    let correctness = correctness(summary);
    let service = service(summary);
    let measurement = measurement(summary);
    let statuses = [correctness.status, service.status, measurement.status];
    let overall = if statuses.contains(&Status::Failed) {
        Status::Failed
    } else if statuses.contains(&Status::Passed) {
        Status::Passed
    } else {
        Status::NotJudged
    };
    Verdicts {
        overall,
        correctness,
        service,
        measurement,
    }
}

fn correctness(summary: &Summary) -> Verdict {
    let mut measures: Vec<Measure> = summary
        .checks
        .iter()
        .map(|c| {
            let found = c.violation_count.max(u64::from(!c.passed));
            Measure::count(&format!("violations {}", c.label), found)
        })
        .collect();
    measures.push(Measure::count(
        "contradictions seen by the client",
        summary.client_violations.len() as u64,
    ));
    let failed = measures.iter().any(|m| !m.passed);
    let (status, note) = match (failed, summary.checks.is_empty()) {
        (true, _) => (
            Status::Failed,
            "the server broke a promise (see the checks)".to_string(),
        ),
        (false, true) => (
            Status::NotJudged,
            "no after-run check ran (it needs the operator token)".to_string(),
        ),
        (false, false) => (
            Status::Passed,
            "capacity, one live seat per holder, every 201 present, the schedule and FCFS held"
                .to_string(),
        ),
    };
    Verdict {
        status,
        measures,
        note,
    }
}

fn service(summary: &Summary) -> Verdict {
    let limits = &summary.limits;
    let outcome = |name: &str| summary.outcomes.get(name).copied().unwrap_or(0);
    let journeys: u64 = summary.journeys.endings.values().sum();
    let failed_journeys = summary.journeys.endings.get("failed").copied().unwrap_or(0);
    let requests = summary.requests;
    let errors = outcome("unexpected") + outcome("server_error") + outcome("transport");
    let mut measures = vec![
        Measure::share(
            "failed journeys",
            failed_journeys,
            journeys,
            "journeys",
            limits.max_failed_journeys_pct,
        ),
        Measure::share(
            "timeouts",
            outcome("timeout"),
            requests,
            "requests",
            limits.max_timeouts_pct,
        ),
        Measure::share(
            "shed by overload",
            outcome("shed"),
            requests,
            "requests",
            limits.max_shed_pct,
        ),
        Measure::share(
            "other failed requests",
            errors,
            requests,
            "requests",
            limits.max_errors_pct,
        ),
    ];
    for gate in &summary.slo {
        let mut m = Measure::below(
            &format!("SLO {}", gate.gate),
            gate.measured_ms,
            gate.bound_ms,
            true,
        );
        m.passed = gate.passed;
        measures.push(m);
    }
    let (status, note) = if requests == 0 {
        (Status::Failed, "no request was sent".to_string())
    } else if measures.iter().all(|m| m.passed) {
        (Status::Passed, String::new())
    } else {
        (
            Status::Failed,
            "a figure is past its threshold (MISSED above)".to_string(),
        )
    };
    Verdict {
        status,
        measures,
        note,
    }
}

fn measurement(summary: &Summary) -> Verdict {
    let lag = &summary.send_lag;
    let measure = Measure::below("send lag p99", lag.p99_ms, lag.limit_ms, false);
    let (status, note) = if measure.passed {
        (Status::Passed, "the generator kept to the plan".to_string())
    } else {
        (
            Status::Failed,
            format!(
                "the generator fell behind (requests left up to {:.0} ms late), so the server \
                 saw less than the planned load and the latency figures do not measure it",
                lag.max_ms
            ),
        )
    };
    Verdict {
        status,
        measures: vec![measure],
        note,
    }
}

/// A number without trailing zeros (`1`, `2.5`).
fn plain(value: f64) -> String {
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    text.to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::summary::{CheckReport, LagSummary};

    /// A finished run of 1,000 requests and 100 journeys: `timeouts` of the requests timed
    /// out and `failed` journeys gave up; the check passed and the generator kept up.
    fn run(timeouts: u64, failed: u64) -> Summary {
        let mut summary = Summary {
            requests: 1000,
            outcomes: BTreeMap::from([
                ("ok".to_string(), 1000 - timeouts),
                ("timeout".to_string(), timeouts),
            ]),
            send_lag: LagSummary {
                p50_ms: 0.2,
                p99_ms: 3.0,
                max_ms: 9.0,
                limit_ms: 50.0,
                valid: true,
            },
            checks: vec![CheckReport {
                label: "after the run".to_string(),
                passed: true,
                ..CheckReport::default()
            }],
            ..Summary::default()
        };
        summary.journeys.endings = BTreeMap::from([
            ("seated".to_string(), 100 - failed),
            ("failed".to_string(), failed),
        ]);
        summary
    }

    fn check(summary: &Summary, expect: [Status; 4]) {
        let v = summary.verdicts();
        let got = [
            v.correctness.status,
            v.service.status,
            v.measurement.status,
            v.overall,
        ];
        assert_eq!(got, expect, "{}", summary.to_text());
    }

    use Status::{Failed, NotJudged, Passed};

    #[test]
    fn forty_percent_timeouts_fail_the_service_and_the_run() {
        let summary = run(400, 42);
        check(&summary, [Passed, Failed, Passed, Failed]);
        assert!(!summary.passed());
        let text = summary.to_text();
        assert!(text.contains("verdict    FAILED: service FAILED"), "{text}");
        assert!(!text.contains("PASSED: every"), "{text}");
        assert!(text.contains("timeouts 40.00% (400 of 1000 requests; limit 1%) MISSED"));
    }

    #[test]
    fn a_clean_run_passes_and_thresholds_are_the_users() {
        check(&run(0, 0), [Passed, Passed, Passed, Passed]);
        // 2% timeouts: over the default 1%, within a threshold of 5%.
        let mut summary = run(20, 0);
        check(&summary, [Passed, Failed, Passed, Failed]);
        summary.limits.max_timeouts_pct = 5.0;
        check(&summary, [Passed, Passed, Passed, Passed]);
    }

    #[test]
    fn a_late_generator_or_a_violation_fails_the_run_and_no_check_is_not_a_pass() {
        let mut late = run(0, 0);
        late.send_lag.p99_ms = 80.0;
        check(&late, [Passed, Passed, Failed, Failed]);
        assert!(late.to_text().contains("measurement  INVALID"));

        let mut violated = run(0, 0);
        violated.checks[0].passed = false;
        violated.checks[0].violation_count = 3;
        check(&violated, [Failed, Passed, Passed, Failed]);

        let mut unchecked = run(0, 0);
        unchecked.checks.clear();
        check(&unchecked, [NotJudged, Passed, Passed, Passed]);
        unchecked
            .client_violations
            .push("key k answered r1 and r2".to_string());
        check(&unchecked, [Failed, Passed, Passed, Failed]);
    }

    #[test]
    fn the_text_the_html_and_the_json_say_the_same() {
        for summary in [run(400, 42), run(0, 0)] {
            let verdicts = summary.verdicts();
            let text = summary.to_text();
            let page = crate::html::render(&summary);
            for line in verdicts.lines() {
                let detail_html = line.detail.replace('\'', "&#39;");
                assert!(text.contains(&line.detail), "{text}");
                assert!(page.contains(&detail_html), "{}", line.detail);
                assert!(page.contains(&format!(">{}</span>", line.word)));
            }
            assert!(text.contains(&verdicts.headline()));
            assert!(page.contains(&verdicts.headline()));
            let mut judged = summary.clone();
            judged.judge();
            let json = serde_json::to_value(&judged).unwrap_or_default();
            let overall = if summary.passed() { "passed" } else { "failed" };
            assert_eq!(json["verdict"]["overall"], overall);
            assert_eq!(json["verdict"]["service"]["measures"][1]["limit"], 1.0);
        }
        let page = crate::html::render(&run(400, 42));
        assert!(
            !page.contains("verdict pass"),
            "no green banner beside 40% timeouts"
        );
    }
}
