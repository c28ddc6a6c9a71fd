//! The check after a run, through the server's public and operator API: no caravan over
//! capacity, no holder with two live reservations, every acknowledged reservation present,
//! every unanswered request resolved by resending it with its key, seat counters that agree
//! with the reservations, and first-come-first-served order.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;

use crate::admin::{Admin, ExportedReservation, Wave};
use crate::dataset::{JalaliDay, parse_day};
use crate::recorder::{Acknowledged, Recorded};
use crate::summary::CheckReport;

/// Violations listed in full at most; the rest are counted.
const VIOLATIONS_LISTED_MAX: usize = 20;
/// Seated holders needed before the order check means anything.
const FCFS_SAMPLE_MIN: usize = 20;

/// What the check compares the server with.
pub struct CheckInput<'a> {
    /// The run's records.
    pub recorded: &'a Recorded,
    /// Capacity by caravan id from the data set; `None` trusts the server's lists.
    pub capacities: Option<HashMap<String, u32>>,
    /// The least rank correlation of arrival and seat order accepted.
    pub fcfs_min: f64,
    /// Province and receipt day of each holder by national ID, from the data set; `None`
    /// skips the schedule check.
    pub holders: Option<&'a HashMap<String, (u32, JalaliDay)>>,
    /// Reservations created before this instant (ms since the epoch) are left out of the
    /// schedule check: the schedule they were made under is not the one the run set.
    pub since_ms: Option<i64>,
}

/// Runs the check; `label` names the pass in reports. Fails only when the server cannot be
/// read; violations are in the report.
pub async fn check(
    admin: &Admin,
    label: &str,
    input: &CheckInput<'_>,
) -> anyhow::Result<CheckReport> {
    Ok(check_resolving(admin, label, input).await?.0)
}

/// [`check`], also returning the acknowledged reservations with those its resends added (a
/// cluster's other nodes are checked against them).
pub async fn check_resolving(
    admin: &Admin,
    label: &str,
    input: &CheckInput<'_>,
) -> anyhow::Result<(CheckReport, Vec<Acknowledged>)> {
    if !admin.is_operator() {
        anyhow::bail!("the after-run check needs the operator token (--operator-token)");
    }
    let mut violations = Vec::new();
    let mut acknowledged: Vec<Acknowledged> = input.recorded.acknowledged.clone();
    let resolved =
        resolve_unanswered(admin, input.recorded, &mut acknowledged, &mut violations).await?;
    let report = check_state(admin, label, input, &acknowledged, resolved, violations).await?;
    Ok((report, acknowledged))
}

/// Checks the state `admin` reads against `acknowledged`, resending nothing; `resolved` and
/// `violations` are carried from the resends before.
pub async fn check_state(
    admin: &Admin,
    label: &str,
    input: &CheckInput<'_>,
    acknowledged: &[Acknowledged],
    resolved: u64,
    mut violations: Vec<String>,
) -> anyhow::Result<CheckReport> {
    if !admin.is_operator() {
        anyhow::bail!("the after-run check needs the operator token (--operator-token)");
    }
    let before = caravan_counters(admin).await?;
    let export = admin.export().await?;
    let after = caravan_counters(admin).await?;
    let live = export.iter().filter(|r| r.is_live()).count() as u64;

    check_capacity(&export, input, &before, &after, &mut violations);
    check_one_live_per_holder(&export, &mut violations);
    check_acknowledged(&export, acknowledged, &mut violations);
    if let Some(holders) = input.holders {
        let waves = admin.waves().await?;
        check_schedule(&export, &waves, holders, input.since_ms, &mut violations)?;
    }
    let fcfs = fcfs_correlation(input.recorded);
    if let Some(rho) = fcfs
        && rho < input.fcfs_min
    {
        violations.push(format!(
            "first come, first served: rank correlation of arrival and seat order {rho:.3} \
                 is below {}",
            input.fcfs_min
        ));
    }
    let total = violations.len();
    if total > VIOLATIONS_LISTED_MAX {
        violations.truncate(VIOLATIONS_LISTED_MAX);
        violations.push(format!("... and {} more", total - VIOLATIONS_LISTED_MAX));
    }
    Ok(CheckReport {
        label: label.to_string(),
        passed: total == 0,
        violations,
        violation_count: total as u64,
        reservations: export.len() as u64,
        live,
        acknowledged: acknowledged.len() as u64,
        resolved,
        fcfs_rank_correlation: fcfs,
    })
}

/// Resends every unanswered reservation with its key until it gets an answer. A 201 joins the
/// acknowledged set (it must then exist like any other).
async fn resolve_unanswered(
    admin: &Admin,
    recorded: &Recorded,
    acknowledged: &mut Vec<Acknowledged>,
    violations: &mut Vec<String>,
) -> anyhow::Result<u64> {
    let mut resolved = 0;
    for request in &recorded.unanswered {
        let mut headers = vec![("idempotency-key", request.key.as_str())];
        if let Some(pass) = &request.pass {
            headers.push(("miqat-queue-pass", pass.as_str()));
        }
        let mut answer = None;
        let give_up = std::time::Instant::now() + Duration::from_secs(60);
        while answer.is_none() && std::time::Instant::now() < give_up {
            let sent = admin
                .send(
                    Method::POST,
                    "/v1/reservations",
                    &headers,
                    Some(Bytes::from(request.body.clone())),
                )
                .await;
            match sent {
                Ok(raw) if raw.status == 429 || raw.status == 503 => {
                    let wait = raw.retry_after_s.unwrap_or(1.0).clamp(0.1, 10.0);
                    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
                }
                Ok(raw) => answer = Some(raw),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        let Some(raw) = answer else {
            violations.push(format!(
                "the reservation request with key {} (holder {}) is still unanswered",
                request.key, request.national_id
            ));
            continue;
        };
        resolved += 1;
        if raw.status == 201 {
            #[derive(serde::Deserialize)]
            struct Created {
                id: String,
                caravan_id: String,
            }
            match serde_json::from_slice::<Created>(&raw.body) {
                Ok(c) => acknowledged.push(Acknowledged {
                    id: c.id,
                    national_id: request.national_id.clone(),
                    caravan_id: c.caravan_id,
                }),
                Err(_) => violations.push(format!(
                    "resending key {} answered 201 without a reservation",
                    request.key
                )),
            }
        } else if !resend_refusal_is_legitimate(raw.status, &raw.body) {
            violations.push(format!(
                "resending key {} answered {} {}",
                request.key,
                raw.status,
                String::from_utf8_lossy(&raw.body)
            ));
        }
    }
    Ok(resolved)
}

/// Whether a refusal of a resent reservation is one a correct server may give: the caravan
/// filled, the holder holds (or held) another seat, or was never called, or the wrong
/// credentials were planned.
fn resend_refusal_is_legitimate(status: u16, body: &[u8]) -> bool {
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("code")?.as_str().map(str::to_owned));
    matches!(
        (status, code.as_deref()),
        (
            403 | 409,
            Some(
                "caravan_full"
                    | "already_reserved"
                    | "registration_ended"
                    | "registration_not_open"
                    | "not_called"
                    | "receipt_needs_conversion"
            )
        ) | (401, Some("invalid_credentials"))
    )
}

/// Capacity and free seats of every caravan, as the province lists show them.
async fn caravan_counters(admin: &Admin) -> anyhow::Result<HashMap<String, (u32, u32)>> {
    let mut out = HashMap::new();
    for province in admin.provinces().await? {
        for c in admin.caravans(province.id).await? {
            out.insert(c.id, (c.capacity, c.seats_free));
        }
    }
    Ok(out)
}

fn check_capacity(
    export: &[ExportedReservation],
    input: &CheckInput<'_>,
    before: &HashMap<String, (u32, u32)>,
    after: &HashMap<String, (u32, u32)>,
    violations: &mut Vec<String>,
) {
    let mut live: HashMap<&str, u32> = HashMap::new();
    for r in export.iter().filter(|r| r.is_live()) {
        *live.entry(r.caravan_id.as_str()).or_default() += 1;
    }
    let mut caravans: Vec<&String> = before.keys().collect();
    caravans.sort();
    for id in caravans {
        let (listed_capacity, free_before) = before[id];
        let capacity = input
            .capacities
            .as_ref()
            .and_then(|c| c.get(id).copied())
            .unwrap_or(listed_capacity);
        let taken = live.get(id.as_str()).copied().unwrap_or(0);
        if taken > capacity {
            violations.push(format!(
                "caravan {id} is over capacity: {taken} live reservations for {capacity} seats"
            ));
        }
        // Counters are compared only where nothing moved between the two reads (a deadline
        // may expire meanwhile).
        let stable = after.get(id).is_some_and(|(_, f)| *f == free_before);
        if stable && taken <= capacity && capacity - taken != free_before {
            violations.push(format!(
                "caravan {id}: the list shows {free_before} free seats but {taken} of {capacity} \
                 are reserved"
            ));
        }
    }
    for id in live.keys() {
        if !before.contains_key(*id) {
            violations.push(format!(
                "reservations in caravan {id}, which no province lists"
            ));
        }
    }
}

fn check_one_live_per_holder(export: &[ExportedReservation], violations: &mut Vec<String>) {
    let mut live: HashMap<&str, u32> = HashMap::new();
    for r in export.iter().filter(|r| r.is_live()) {
        *live.entry(r.national_id.as_str()).or_default() += 1;
    }
    let mut doubled: Vec<(&str, u32)> = live.into_iter().filter(|(_, n)| *n > 1).collect();
    doubled.sort();
    for (holder, n) in doubled {
        violations.push(format!("holder {holder} has {n} live reservations"));
    }
}

fn check_acknowledged(
    export: &[ExportedReservation],
    acknowledged: &[Acknowledged],
    violations: &mut Vec<String>,
) {
    let by_id: HashMap<&str, &ExportedReservation> =
        export.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut seen = HashSet::new();
    for ack in acknowledged {
        // One reservation may be acknowledged twice (a double submission); each distinct
        // claim about it is compared.
        if !seen.insert(ack) {
            continue;
        }
        match by_id.get(ack.id.as_str()) {
            None => violations.push(format!(
                "acknowledged reservation {} (holder {}, caravan {}) is missing",
                ack.id, ack.national_id, ack.caravan_id
            )),
            Some(r) if r.national_id != ack.national_id || r.caravan_id != ack.caravan_id => {
                violations.push(format!(
                    "reservation {} was acknowledged for holder {} in caravan {} but the server \
                     has holder {} in caravan {}",
                    ack.id, ack.national_id, ack.caravan_id, r.national_id, r.caravan_id
                ));
            }
            Some(_) => {}
        }
    }
}

/// Whether the schedule lets a holder of `province_id` with a receipt of `receipt` reserve at
/// `at_ms`. The waves that include the province and have the smallest cutoff on or after the
/// receipt call the holder; the holder may reserve once one of them has opened, or once any
/// wave that includes the province, reaches the receipt and admits earlier receipts has.
pub fn admitted(waves: &[Wave], province_id: u32, receipt: JalaliDay, at_ms: i64) -> bool {
    let reaching: Vec<(&Wave, JalaliDay, i64)> = waves
        .iter()
        .filter(|w| w.includes(province_id))
        .filter_map(|w| {
            let cutoff = parse_day(&w.receipts_until).ok()?;
            let opens = w.opens().ok()?.as_millisecond();
            (cutoff >= receipt).then_some((w, cutoff, opens))
        })
        .collect();
    let Some(calling_cutoff) = reaching.iter().map(|(_, c, _)| *c).min() else {
        return false;
    };
    reaching.iter().any(|(w, cutoff, opens)| {
        *opens <= at_ms && (*cutoff == calling_cutoff || w.admits_earlier_receipts)
    })
}

/// Every reservation made since `since_ms` was made while a wave admitting its holder was open.
fn check_schedule(
    export: &[ExportedReservation],
    waves: &[Wave],
    holders: &HashMap<String, (u32, JalaliDay)>,
    since_ms: Option<i64>,
    violations: &mut Vec<String>,
) -> anyhow::Result<()> {
    for r in export {
        let created: jiff::Timestamp = r.created_at.parse().map_err(|e| {
            anyhow::anyhow!("reservation {}: created_at {:?}: {e}", r.id, r.created_at)
        })?;
        let created_ms = created.as_millisecond();
        if since_ms.is_some_and(|since| created_ms < since) {
            continue;
        }
        let Some(&(province, receipt)) = holders.get(&r.national_id) else {
            violations.push(format!(
                "reservation {} is for holder {}, who is not in the data set",
                r.id, r.national_id
            ));
            continue;
        };
        if !admitted(waves, province, receipt, created_ms) {
            violations.push(format!(
                "reservation {} was made at {} for holder {} (province {province}, receipt \
                 {}/{:02}/{:02}) while no wave admitting them was open",
                r.id, r.created_at, r.national_id, receipt.0, receipt.1, receipt.2
            ));
        }
    }
    Ok(())
}

/// Spearman's rank correlation of intended send time and server creation time over the
/// seats taken directly; `None` with too few.
pub fn fcfs_correlation(recorded: &Recorded) -> Option<f64> {
    if recorded.arrivals.len() < FCFS_SAMPLE_MIN {
        return None;
    }
    let sent: Vec<f64> = recorded
        .arrivals
        .iter()
        .map(|a| a.intended_us as f64)
        .collect();
    let created: Vec<f64> = recorded
        .arrivals
        .iter()
        .map(|a| a.created_ms as f64)
        .collect();
    spearman(&sent, &created)
}

/// Spearman's rho (Pearson's correlation of average ranks); `None` if either side is constant.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    let (rx, ry) = (ranks(x), ranks(y));
    let n = rx.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in rx.iter().zip(&ry) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut out = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let average = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = average;
        }
        i = j + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{Wave, admitted, spearman};

    fn wave(
        name: &str,
        until: &str,
        opens: &str,
        provinces: Option<Vec<u32>>,
        admits: bool,
    ) -> Wave {
        Wave {
            name: name.to_string(),
            receipts_until: until.to_string(),
            opens_at: opens.to_string(),
            provinces,
            admits_earlier_receipts: admits,
            waiting_room: false,
        }
    }

    fn at(instant: &str) -> i64 {
        instant
            .parse::<jiff::Timestamp>()
            .map_or(i64::MIN, |t| t.as_millisecond())
    }

    #[test]
    fn a_receipt_is_admitted_by_its_calling_wave_or_a_wave_that_admits_earlier_ones() {
        let main = wave("main", "1386/01/31", "2026-03-01T06:30:00Z", None, false);
        let reserve = |admits| {
            wave(
                "reserve",
                "1386/02/15",
                "2026-02-01T06:30:00Z",
                None,
                admits,
            )
        };
        let before_main = at("2026-02-15T00:00:00Z");
        let after_main = at("2026-03-02T00:00:00Z");
        // A main-wave receipt is not admitted by an earlier-opening reserve wave...
        let waves = [main.clone(), reserve(false)];
        assert!(!admitted(&waves, 5, (1385, 1, 1), before_main));
        assert!(admitted(&waves, 5, (1385, 1, 1), after_main));
        // ... unless that wave says it admits earlier receipts.
        assert!(admitted(
            &[main.clone(), reserve(true)],
            5,
            (1385, 1, 1),
            before_main
        ));
        // A reserve receipt is called by the reserve wave; one past every cutoff never.
        assert!(admitted(&waves, 5, (1386, 2, 1), before_main));
        assert!(!admitted(&waves, 5, (1390, 1, 1), after_main));
        // A wave for other provinces neither calls nor admits.
        let staggered = [wave(
            "main",
            "1386/01/31",
            "2026-03-01T06:30:00Z",
            Some(vec![1]),
            false,
        )];
        assert!(admitted(&staggered, 1, (1385, 1, 1), after_main));
        assert!(!admitted(&staggered, 2, (1385, 1, 1), after_main));
    }

    #[test]
    fn spearman_sees_order_reversal_and_ties() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(spearman(&x, &[10.0, 20.0, 30.0, 40.0, 50.0]), Some(1.0));
        assert_eq!(spearman(&x, &[5.0, 4.0, 3.0, 2.0, 1.0]), Some(-1.0));
        assert_eq!(spearman(&x, &[1.0, 1.0, 1.0, 1.0, 1.0]), None);
        let tied = spearman(&x, &[1.0, 1.0, 2.0, 3.0, 3.0]).unwrap_or_default();
        assert!(tied > 0.9 && tied < 1.0, "{tied}");
    }
}
