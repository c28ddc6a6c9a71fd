//! Latency gates: `--slo 'reserve:p99<50ms'` fails the run when the endpoint's percentile is
//! not below the bound.

use anyhow::{Context, bail};

use crate::outcome::Endpoint;
use crate::summary::{Percentiles, SloResult, Summary};

/// A parsed gate.
#[derive(Debug, Clone, PartialEq)]
pub struct Slo {
    /// The gate as written.
    pub text: String,
    /// An endpoint name, or `seat` for the journey's time to a seat.
    pub target: String,
    /// The percentile: `p50`, `p90`, `p99`, `p99.9` or `max`.
    pub percentile: String,
    /// The bound in milliseconds.
    pub bound_ms: f64,
}

/// Parses `target:percentile<value unit` (units `us`, `ms`, `s`).
pub fn parse(text: &str) -> anyhow::Result<Slo> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let (target, rest) = compact
        .split_once(':')
        .with_context(|| format!("--slo {text:?}: expected e.g. 'reserve:p99<50ms'"))?;
    let (percentile, bound) = rest
        .split_once('<')
        .with_context(|| format!("--slo {text:?}: expected '<' and a bound"))?;
    if target != "seat" && Endpoint::parse(target).is_none() {
        let names: Vec<&str> = Endpoint::ALL.iter().map(|e| e.name()).collect();
        bail!(
            "--slo {text:?}: unknown target {target:?} (one of {}, seat)",
            names.join(", ")
        );
    }
    if !matches!(percentile, "p50" | "p90" | "p99" | "p99.9" | "p999" | "max") {
        bail!("--slo {text:?}: unknown percentile {percentile:?} (p50, p90, p99, p99.9, max)");
    }
    let split = bound
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .with_context(|| format!("--slo {text:?}: the bound needs a unit (us, ms, s)"))?;
    let (number, unit) = bound.split_at(split);
    let value: f64 = number
        .parse()
        .with_context(|| format!("--slo {text:?}: {number:?} is not a number"))?;
    let bound_ms = match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        _ => bail!("--slo {text:?}: unknown unit {unit:?} (us, ms, s)"),
    };
    Ok(Slo {
        text: text.to_string(),
        target: target.to_string(),
        percentile: percentile.to_string(),
        bound_ms,
    })
}

/// Evaluates `slo` against `summary`.
pub fn evaluate(slo: &Slo, summary: &Summary) -> SloResult {
    let latency = if slo.target == "seat" {
        Some(summary.journeys.time_to_seat)
    } else {
        summary
            .endpoints
            .iter()
            .find(|e| e.name == slo.target)
            .map(|e| e.latency)
    };
    let measured_ms = latency.map_or(f64::INFINITY, |l| pick(&l, &slo.percentile));
    SloResult {
        gate: slo.text.clone(),
        measured_ms,
        bound_ms: slo.bound_ms,
        passed: measured_ms < slo.bound_ms,
    }
}

fn pick(l: &Percentiles, percentile: &str) -> f64 {
    match percentile {
        "p50" => l.p50_ms,
        "p90" => l.p90_ms,
        "p99" => l.p99_ms,
        "p99.9" | "p999" => l.p999_ms,
        _ => l.max_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_parse_with_units_and_refuse_nonsense() {
        let slo = parse("reserve:p99<50ms").ok();
        assert_eq!(
            slo.map(|s| (s.target, s.bound_ms)),
            Some(("reserve".into(), 50.0))
        );
        assert_eq!(
            parse("list: p50 < 2s").ok().map(|s| s.bound_ms),
            Some(2000.0)
        );
        assert_eq!(parse("seat:max<500us").ok().map(|s| s.bound_ms), Some(0.5));
        for bad in [
            "reserve",
            "reserve:p99",
            "nope:p99<1ms",
            "reserve:p42<1ms",
            "reserve:p99<5",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_missing_endpoint_fails_its_gate() {
        let slo = parse("cancel:p99<1s").ok();
        let result = slo.map(|s| evaluate(&s, &Summary::default()));
        assert_eq!(result.map(|r| r.passed), Some(false));
    }
}
