//! Following a cluster (`--target URL1,URL2,URL3`): writes go to the node that last took
//! them, a `421 not_leader` is followed to the node its `Miqat-Leader` header names (or the
//! next target), a lost connection or a `503 outcome_unknown` resends the same request with
//! the same idempotency key, boundedly and with backoff; reads go round the nodes. The
//! ledger counts each write's final outcome as `ok`, `refused` or `unknown`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::Method;
use parking_lot::Mutex;

use crate::client::{Answer, Call, Http, NoAnswer};
use crate::summary::ClusterReport;
use crate::tls::check_target;

/// Sends of one write at most: the first and its resends after a redirect, a lost
/// connection or an unknown outcome (the request's timeout bounds them too). While a dead
/// leader is still named by the others, a write goes back and forth between them, one pause
/// per round: 24 sends span about 8 s of backoff, longer than an election takes.
const WRITE_SENDS_MAX: u32 = 24;
/// The first pause before a resend; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
/// The longest pause before a resend.
const BACKOFF_MAX: Duration = Duration::from_millis(800);

/// Splits `--target` on commas: each piece must be `http(s)://host:port`; at least one.
pub fn parse_targets(text: &str) -> anyhow::Result<Vec<String>> {
    let targets: Vec<String> = text
        .split(',')
        .map(|t| t.trim().trim_end_matches('/').to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    if targets.is_empty() {
        anyhow::bail!("--target names no server");
    }
    for target in &targets {
        check_target(target)?;
    }
    Ok(targets)
}

/// When a node of the cluster was killed during the run: whoever kills it marks the time,
/// and the run's report measures the failover gap from it.
#[derive(Debug, Clone, Default)]
pub struct FailoverMark(std::sync::Arc<Mutex<Option<Instant>>>);

impl FailoverMark {
    /// Marks now as the kill.
    pub fn mark_now(&self) {
        *self.0.lock() = Some(Instant::now());
    }

    /// The kill, if marked.
    pub fn get(&self) -> Option<Instant> {
        *self.0.lock()
    }
}

/// The nodes of a cluster and what the client learned of them.
pub struct Targets {
    bases: Vec<String>,
    leader: AtomicUsize,
    next_read: AtomicUsize,
    ledger: Ledger,
}

/// Final outcomes of writes, and the work it took to get them.
#[derive(Default)]
struct Ledger {
    ok: AtomicU64,
    refused: AtomicU64,
    unknown: AtomicU64,
    redirects: AtomicU64,
    resends: AtomicU64,
    /// When each acknowledged write was answered.
    acknowledged_at: Mutex<Vec<Instant>>,
}

impl Targets {
    /// The cluster of `bases` (two or more), the first presumed the leader until told.
    pub fn new(bases: Vec<String>) -> Targets {
        Targets {
            bases,
            leader: AtomicUsize::new(0),
            next_read: AtomicUsize::new(0),
            ledger: Ledger::default(),
        }
    }

    /// The nodes' base URLs.
    pub fn bases(&self) -> &[String] {
        &self.bases
    }

    /// The index of the target a `Miqat-Leader: host:port` header names, if it is one.
    pub fn index_of(&self, leader: &str) -> Option<usize> {
        let leader = leader.trim();
        self.bases.iter().position(|base| {
            base.split_once("://")
                .is_some_and(|(_, authority)| authority == leader)
        })
    }

    /// Sends `call` following the cluster (see the module's description).
    pub(crate) async fn exchange(&self, http: &Http, call: &Call<'_>) -> Result<Answer, NoAnswer> {
        if call.method == Method::GET || call.method == Method::HEAD {
            return self.read(http, call).await;
        }
        let mut node = self.leader.load(Ordering::Relaxed);
        let mut backoff = BACKOFF_FIRST;
        let mut last = Err(NoAnswer::Transport);
        for send in 0..WRITE_SENDS_MAX {
            if send > 0 {
                self.ledger.resends.fetch_add(1, Ordering::Relaxed);
            }
            let result = http.exchange_at(&self.bases[node], call).await;
            let pause = match &result {
                Ok(answer) if answer.status == 421 => {
                    self.ledger.redirects.fetch_add(1, Ordering::Relaxed);
                    let named = answer.leader.as_deref().and_then(|l| self.index_of(l));
                    let next = named
                        .filter(|n| *n != node)
                        .unwrap_or((node + 1) % self.bases.len());
                    // A named leader is tried at once; guessing waits for an election.
                    let pause = named.is_none().then_some(backoff);
                    node = next;
                    pause
                }
                Ok(answer) if answer.status == 503 && answer.code() == Some("outcome_unknown") => {
                    Some(backoff)
                }
                Ok(_) => return result,
                Err(_) => {
                    node = (node + 1) % self.bases.len();
                    Some(backoff)
                }
            };
            self.leader.store(node, Ordering::Relaxed);
            last = result;
            if let Some(pause) = pause {
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
        last
    }

    /// A read, from the nodes in turn; a node that does not answer passes it on.
    async fn read(&self, http: &Http, call: &Call<'_>) -> Result<Answer, NoAnswer> {
        let first = self.next_read.fetch_add(1, Ordering::Relaxed);
        let mut last = Err(NoAnswer::Transport);
        for offset in 0..self.bases.len() {
            let node = (first + offset) % self.bases.len();
            last = http.exchange_at(&self.bases[node], call).await;
            if last.is_ok() {
                return last;
            }
        }
        last
    }

    /// Enters a request's final result in the ledger (writes only).
    pub(crate) fn settle(&self, method: &Method, result: &Result<Answer, NoAnswer>) {
        if *method == Method::GET || *method == Method::HEAD {
            return;
        }
        let counter = match result {
            Ok(answer) if (200..300).contains(&answer.status) => {
                self.ledger.acknowledged_at.lock().push(Instant::now());
                &self.ledger.ok
            }
            // A 421 at the end means no node took it: nothing definite was said of it.
            Ok(answer) if (400..500).contains(&answer.status) && answer.status != 421 => {
                &self.ledger.refused
            }
            _ => &self.ledger.unknown,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The first acknowledged write answered at or after `since`.
    pub fn first_acknowledged_after(&self, since: Instant) -> Option<Instant> {
        self.ledger
            .acknowledged_at
            .lock()
            .iter()
            .copied()
            .filter(|t| *t >= since)
            .min()
    }

    /// [`Targets::report`] with the failover gap measured from `mark`, if marked.
    pub fn report_with(&self, mark: &FailoverMark) -> ClusterReport {
        let mut report = self.report();
        report.failover_gap_ms = mark.get().and_then(|killed| {
            self.first_acknowledged_after(killed)
                .map(|first| first.saturating_duration_since(killed).as_secs_f64() * 1000.0)
        });
        report
    }

    /// The ledger for `summary.json`.
    pub fn report(&self) -> ClusterReport {
        let mut acknowledged = self.ledger.acknowledged_at.lock().clone();
        acknowledged.sort_unstable();
        let longest_gap = acknowledged
            .windows(2)
            .map(|w| w[1].saturating_duration_since(w[0]))
            .max()
            .unwrap_or_default();
        ClusterReport {
            targets: self.bases.clone(),
            writes_ok: self.ledger.ok.load(Ordering::Relaxed),
            writes_refused: self.ledger.refused.load(Ordering::Relaxed),
            writes_unknown: self.ledger.unknown.load(Ordering::Relaxed),
            redirects: self.ledger.redirects.load(Ordering::Relaxed),
            resends: self.ledger.resends.load(Ordering::Relaxed),
            longest_write_gap_ms: longest_gap.as_secs_f64() * 1000.0,
            failover_gap_ms: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Targets, parse_targets};

    #[test]
    fn targets_split_on_commas_and_each_must_be_a_url() {
        assert_eq!(
            parse_targets("http://a:1, https://b:2/").expect("two targets"),
            vec!["http://a:1".to_owned(), "https://b:2".to_owned()]
        );
        assert!(parse_targets("http://a:1,ftp://b:2").is_err());
        assert!(parse_targets(" , ").is_err());
    }

    #[test]
    fn a_leader_header_names_the_target_with_that_address() {
        let targets = Targets::new(vec![
            "http://127.0.0.1:1".into(),
            "http://127.0.0.1:2".into(),
        ]);
        assert_eq!(targets.index_of("127.0.0.1:2"), Some(1));
        assert_eq!(targets.index_of("127.0.0.1:3"), None);
    }
}
