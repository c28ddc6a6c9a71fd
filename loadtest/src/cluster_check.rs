//! The after-run check of a cluster: the unanswered writes are resolved and the full check
//! run through the leader, then every node is read and checked on its own against the same
//! acknowledged set, and the nodes' reservation lists are compared with each other (after
//! giving the followers time to apply what the leader committed).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::admin::{Admin, ExportedReservation};
use crate::check::{CheckInput, check_resolving, check_state};
use crate::summary::CheckReport;
use crate::tls::ClientTls;

/// How long the followers get to apply what the leader committed before disagreement is a
/// violation.
const AGREEMENT_WAIT: Duration = Duration::from_secs(30);
/// Differences listed in full at most.
const DIFFERENCES_LISTED_MAX: usize = 20;

/// Checks a cluster of `targets` after a run: one report through the leader, one per node,
/// one for the nodes' agreement. A node that cannot be read fails its report.
pub async fn check_cluster(
    targets: &[String],
    token: Option<&str>,
    tls: &ClientTls,
    input: &CheckInput<'_>,
) -> anyhow::Result<Vec<CheckReport>> {
    let through_leader = Admin::with_tls(&targets.join(","), token, tls);
    let (leader_report, acknowledged) =
        check_resolving(&through_leader, "after the run, through the leader", input).await?;
    let mut reports = vec![leader_report];
    let nodes: Vec<Admin> = targets
        .iter()
        .map(|t| Admin::with_tls(t, token, tls))
        .collect();
    let agreement = agree(targets, &nodes).await;
    for (target, node) in targets.iter().zip(&nodes) {
        let label = format!("after the run, node {target}");
        let report = match check_state(node, &label, input, &acknowledged, 0, Vec::new()).await {
            Ok(report) => report,
            Err(e) => unreadable(label, &e),
        };
        reports.push(report);
    }
    reports.push(agreement);
    Ok(reports)
}

fn unreadable(label: String, error: &anyhow::Error) -> CheckReport {
    CheckReport {
        label,
        passed: false,
        violations: vec![format!("the node could not be read: {error:#}")],
        violation_count: 1,
        ..CheckReport::default()
    }
}

/// A reservation as the comparison sees it.
type Row = (String, String, String);

/// Reads every node's export until they are the same or [`AGREEMENT_WAIT`] passed.
async fn agree(targets: &[String], nodes: &[Admin]) -> CheckReport {
    let label = "the nodes agree".to_string();
    let until = Instant::now() + AGREEMENT_WAIT;
    loop {
        let mut exports = Vec::with_capacity(nodes.len());
        let mut unread = None;
        for (target, node) in targets.iter().zip(nodes) {
            match node.export().await {
                Ok(rows) => exports.push(by_id(&rows)),
                Err(e) => {
                    unread = Some(format!("node {target} could not be read: {e:#}"));
                    break;
                }
            }
        }
        let differences = match unread {
            Some(why) => vec![why],
            None => differences(targets, &exports),
        };
        if differences.is_empty() || Instant::now() > until {
            let total = differences.len();
            let mut violations = differences;
            if total > DIFFERENCES_LISTED_MAX {
                violations.truncate(DIFFERENCES_LISTED_MAX);
                violations.push(format!("... and {} more", total - DIFFERENCES_LISTED_MAX));
            }
            return CheckReport {
                label,
                passed: total == 0,
                violations,
                violation_count: total as u64,
                reservations: exports.first().map_or(0, |e| e.len() as u64),
                live: 0,
                ..CheckReport::default()
            };
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn by_id(rows: &[ExportedReservation]) -> BTreeMap<String, Row> {
    rows.iter()
        .map(|r| {
            (
                r.id.clone(),
                (
                    r.national_id.clone(),
                    r.caravan_id.clone(),
                    r.status.clone(),
                ),
            )
        })
        .collect()
}

/// Each way a node's reservations differ from the first node's.
fn differences(targets: &[String], exports: &[BTreeMap<String, Row>]) -> Vec<String> {
    let mut out = Vec::new();
    let Some((first, others)) = exports.split_first() else {
        return out;
    };
    for (target, other) in targets.iter().skip(1).zip(others) {
        for (id, row) in first {
            match other.get(id) {
                None => out.push(format!(
                    "reservation {id} is on {} but not on {target}",
                    targets[0]
                )),
                Some(theirs) if theirs != row => out.push(format!(
                    "reservation {id} is {row:?} on {} but {theirs:?} on {target}",
                    targets[0]
                )),
                Some(_) => {}
            }
        }
        for id in other.keys().filter(|id| !first.contains_key(*id)) {
            out.push(format!(
                "reservation {id} is on {target} but not on {}",
                targets[0]
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::differences;

    fn node(rows: &[(&str, &str)]) -> BTreeMap<String, (String, String, String)> {
        rows.iter()
            .map(|(id, status)| {
                (
                    (*id).to_owned(),
                    ("h".to_owned(), "c".to_owned(), (*status).to_owned()),
                )
            })
            .collect()
    }

    #[test]
    fn nodes_that_differ_are_named_and_equal_nodes_pass() {
        let targets = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let same = node(&[("r1", "held"), ("r2", "confirmed")]);
        assert!(differences(&targets, &[same.clone(), same.clone(), same.clone()]).is_empty());
        let missing = node(&[("r1", "held")]);
        let changed = node(&[("r1", "cancelled"), ("r2", "confirmed"), ("r3", "held")]);
        let found = differences(&targets, &[same, missing, changed]);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].contains("r2") && found[0].contains("not on b"));
        assert!(found[1].contains("r1") && found[1].contains("on c"));
        assert!(found[2].contains("r3 is on c but not on a"));
    }
}
