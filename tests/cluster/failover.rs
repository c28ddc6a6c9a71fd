//! The failover test of a three-node cluster: open-loop reservations from a client pool that
//! keeps a ledger, while the leader is SIGKILLed and restarted again and again, frozen with
//! SIGSTOP, a follower is killed and all three die at once; then every acknowledged
//! reservation must be on every node, no caravan over capacity, one live reservation per
//! holder, retries with the original keys answered as the first time, and equal state
//! digests. It prints the write gap after each leader kill (a figure, never asserted).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::Method;
use parking_lot::Mutex;

use super::{Cluster, NODES, miqat_cluster};
use crate::support::{
    DataSet, HolderRow, Http, OPERATOR_TOKEN, holder_headers, reserve_body, text,
};

/// Leader SIGKILLs (each followed by a restart of the killed node).
const LEADER_KILLS: usize = 10;
/// Reservations sent per second, whatever the answers (open loop).
const RATE_PER_S: u64 = 40;
/// One HTTP exchange gives up after this: longer than the server's own write timeout (10 s),
/// so a live node always answers first; only a frozen one is given up on.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// A request retried this long without a definite answer is left unknown in the ledger.
const REQUEST_GIVE_UP: Duration = Duration::from_secs(60);
/// How long a fault may take to be recovered from before the test fails, on a busy machine.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);
/// Requests at once in the checks after the load.
const PARALLEL: usize = 32;
/// How long the leader stays frozen.
const FREEZE: Duration = Duration::from_secs(3);

/// Each node's current API address, `None` while it is down: what a client's service
/// discovery would tell it.
type Routes = Arc<Mutex<[Option<SocketAddr>; NODES]>>;

/// How one request ended.
#[derive(Debug, Clone)]
enum Outcome {
    /// `2xx`: the reservation, the node that answered and when.
    Ok {
        id: String,
        caravan: String,
        node: usize,
        at: Instant,
    },
    /// A `4xx` other than `421`: a definite refusal.
    Refused { status: u16, code: String },
    /// No definite answer before the request gave up.
    Unknown,
    /// A `5xx` that promises nothing (neither `outcome_unknown` nor `overloaded`): a bug.
    ServerError(String),
}

/// One line of the ledger.
#[derive(Debug, Clone)]
struct Entry {
    holder: HolderRow,
    key: String,
    caravan: String,
    outcome: Outcome,
    /// Answers on the way that said the outcome was unknown (`503 outcome_unknown` or no
    /// answer at all): each was retried with the same key.
    unknown_answers: u32,
}

/// A client that follows the leader: `421` hints first, else the next node.
struct Client {
    routes: Routes,
    guess: AtomicUsize,
    clients: Mutex<HashMap<SocketAddr, Http>>,
    /// Every `2xx` as it arrives: when and from which node.
    acks: Mutex<Vec<(Instant, usize)>>,
}

impl Client {
    fn new(routes: Routes) -> Client {
        Client {
            routes,
            guess: AtomicUsize::new(0),
            clients: Mutex::new(HashMap::new()),
            acks: Mutex::new(Vec::new()),
        }
    }

    fn http(&self, addr: SocketAddr) -> Http {
        self.clients
            .lock()
            .entry(addr)
            .or_insert_with(|| Http::new(addr).with_timeout(ATTEMPT_TIMEOUT))
            .clone()
    }

    /// Moves the guess off `node` (unless another request already did).
    fn next_node(&self, node: usize) {
        let _ = self.guess.compare_exchange(
            node,
            (node + 1) % NODES,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Reserves `caravan` for `holder` under `key`, retrying with the same key until a
    /// definite answer or `give_up`.
    async fn reserve(
        &self,
        holder: &HolderRow,
        key: &str,
        caravan: &str,
        give_up: Duration,
    ) -> Entry {
        let started = Instant::now();
        let body = reserve_body(holder, caravan);
        let mut unknown_answers = 0;
        let entry = |outcome, unknown_answers| Entry {
            holder: holder.clone(),
            key: key.to_owned(),
            caravan: caravan.to_owned(),
            outcome,
            unknown_answers,
        };
        let mut pause_ms = 20;
        loop {
            if started.elapsed() > give_up {
                return entry(Outcome::Unknown, unknown_answers);
            }
            let node = self.guess.load(Ordering::Acquire);
            let Some(addr) = self.routes.lock()[node] else {
                self.next_node(node);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let answer = self
                .http(addr)
                .try_send(
                    Method::POST,
                    "/v1/reservations",
                    &[("idempotency-key", key)],
                    Some(&body),
                )
                .await;
            let answer = match answer {
                Ok(answer) => answer,
                Err(_) => {
                    unknown_answers += 1;
                    self.next_node(node);
                    tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                    pause_ms = (pause_ms * 2).min(500);
                    continue;
                }
            };
            match answer.status {
                200 | 201 => {
                    let at = Instant::now();
                    self.acks.lock().push((at, node));
                    let json = answer.json();
                    let outcome = Outcome::Ok {
                        id: json["id"].as_str().unwrap().to_owned(),
                        caravan: json["caravan_id"].as_str().unwrap().to_owned(),
                        node,
                        at,
                    };
                    return entry(outcome, unknown_answers);
                }
                421 => {
                    let hint = answer.header("miqat-leader").map(str::to_owned);
                    let routes = *self.routes.lock();
                    let hinted = hint.and_then(|hint| {
                        (0..NODES).find(|i| routes[*i].is_some_and(|a| a.to_string() == hint))
                    });
                    match hinted {
                        Some(leader) => self.guess.store(leader, Ordering::Release),
                        None => {
                            // No leader yet, or one the client has no address for.
                            self.next_node(node);
                            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                            pause_ms = (pause_ms * 2).min(500);
                        }
                    }
                }
                503 | 429 => {
                    if answer.code().as_deref() == Some("outcome_unknown") {
                        unknown_answers += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                    pause_ms = (pause_ms * 2).min(500);
                }
                status @ 400..=499 => {
                    let code = answer.code().unwrap_or_default();
                    return entry(Outcome::Refused { status, code }, unknown_answers);
                }
                _ => return entry(Outcome::ServerError(answer.describe()), unknown_answers),
            }
        }
    }

    /// The first `2xx` received after `after` from another node than `not_from`.
    fn first_ack_after(&self, after: Instant, not_from: Option<usize>) -> Option<Instant> {
        self.acks
            .lock()
            .iter()
            .filter(|(at, node)| *at > after && Some(*node) != not_from)
            .map(|(at, _)| *at)
            .min()
    }

    /// Waits for [`Client::first_ack_after`]; fails the test after [`RECOVERY_LIMIT`].
    async fn wait_ack_after(
        &self,
        after: Instant,
        not_from: Option<usize>,
        what: &str,
    ) -> Duration {
        loop {
            if let Some(at) = self.first_ack_after(after, not_from) {
                return at - after;
            }
            assert!(
                after.elapsed() < RECOVERY_LIMIT,
                "{what}: no write acknowledged within {RECOVERY_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What the load sends: holders with the caravans of their city.
struct Plan {
    pool: Vec<(HolderRow, Vec<String>)>,
}

impl Plan {
    /// Request `i`: mostly a holder not tried yet, every eighth one a holder already tried
    /// again under a new key (the engine must refuse a second seat); half of them ask for
    /// their city's first caravan, so those fill up and refuse.
    fn request(&self, i: usize) -> (&HolderRow, String, String) {
        let fresh = i - i / 8;
        let index = if i % 8 == 7 { (i * 7) % fresh } else { fresh };
        let (holder, caravans) = &self.pool[index % self.pool.len()];
        let caravan = if i.is_multiple_of(2) {
            &caravans[0]
        } else {
            &caravans[i % caravans.len()]
        };
        (holder, format!("failover-{i}"), caravan.clone())
    }
}

/// The open-loop load on its own thread and runtime (the test's runtime blocks while it
/// starts processes).
struct Load {
    client: Arc<Client>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Entry>>,
}

impl Load {
    fn start(plan: Plan, routes: Routes) -> Load {
        let client = Arc::new(Client::new(routes));
        let stop = Arc::new(AtomicBool::new(false));
        let (load_client, load_stop) = (Arc::clone(&client), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let plan = Arc::new(plan);
                let mut tick = tokio::time::interval(Duration::from_millis(1_000 / RATE_PER_S));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut tasks = tokio::task::JoinSet::new();
                let mut ledger = Vec::new();
                let mut i = 0;
                while !load_stop.load(Ordering::Acquire) {
                    tick.tick().await;
                    let (client, plan) = (Arc::clone(&load_client), Arc::clone(&plan));
                    tasks.spawn(async move {
                        let (holder, key, caravan) = plan.request(i);
                        client
                            .reserve(holder, &key, &caravan, REQUEST_GIVE_UP)
                            .await
                    });
                    i += 1;
                    while let Some(done) = tasks.try_join_next() {
                        ledger.push(done.unwrap());
                    }
                }
                while let Some(done) = tasks.join_next().await {
                    ledger.push(done.unwrap());
                }
                ledger
            })
        });
        Load {
            client,
            stop,
            thread,
        }
    }

    fn finish(self) -> Vec<Entry> {
        self.stop.store(true, Ordering::Release);
        self.thread.join().unwrap()
    }
}

/// Sends `signal` (e.g. `STOP`, `CONT`, `KILL`) to the processes `pids` in one `kill` call.
fn signal(signal: &str, pids: &[u32]) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .args(pids.iter().map(u32::to_string))
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pids:?}: {status}");
}

impl Cluster<'_> {
    /// Publishes node `i`'s current address (or its absence) to the clients.
    fn publish(&self, routes: &Routes, i: usize) {
        routes.lock()[i] = self.nodes[i].as_ref().map(|s| s.addr);
    }

    /// Restarts node `i` on its own disk, publishes it and waits until it follows the
    /// leader and has applied what the leader had.
    async fn rejoin(&mut self, routes: &Routes, i: usize) {
        self.start(i);
        self.publish(routes, i);
        let leader = self.leader().await;
        self.caught_up(leader).await;
    }

    fn pid(&self, i: usize) -> u32 {
        self.nodes[i].as_ref().unwrap().pid()
    }

    /// The node's `GET /cluster/digest` on its Raft listener: applied index and digest.
    async fn digest(&self, i: usize) -> (u64, String) {
        let answer = Http::new(self.raft[i]).get("/cluster/digest", &[]).await;
        assert_eq!(answer.status, 200, "node {}: {}", i + 1, answer.describe());
        let json = answer.json();
        (
            json["applied_index"].as_u64().unwrap(),
            json["digest"].as_str().unwrap().to_owned(),
        )
    }
}

/// Runs `work` on every item, [`PARALLEL`] at a time; the results in the items' order.
async fn in_parallel<T, R, F, Fut>(items: Vec<T>, work: F) -> Vec<R>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = R> + Send + 'static,
    R: Send + 'static,
{
    let limit = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut tasks = tokio::task::JoinSet::new();
    for (n, item) in items.into_iter().enumerate() {
        let permit = Arc::clone(&limit).acquire_owned().await.unwrap();
        let job = work(item);
        tasks.spawn(async move {
            let result = job.await;
            drop(permit);
            (n, result)
        });
    }
    let mut results = Vec::new();
    while let Some(done) = tasks.join_next().await {
        results.push(done.unwrap());
    }
    results.sort_by_key(|(n, _)| *n);
    results.into_iter().map(|(_, r)| r).collect()
}

fn median_and_max(gaps: &[Duration]) -> (Duration, Duration) {
    let mut sorted = gaps.to_vec();
    sorted.sort();
    let median = if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2
    };
    (median, *sorted.last().unwrap())
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1_000.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "three minutes of faults: run by .ci/run as its own step"]
async fn repeated_leader_kills_a_freeze_and_a_full_outage_lose_no_acknowledged_reservation() {
    let _cores = crate::support::cores_alone().await;
    let data = DataSet::generate(20_000, 6_000, 29);
    let root = tempfile::tempdir().unwrap();
    // Snapshots every few hundred entries, so restarts also start from a snapshot.
    let mut cluster = Cluster::with_args(&data, root.path(), &["--raft-snapshot-every", "200"]);
    let init = miqat_cluster(&["init", "--node", &cluster.raft[0].to_string()]);
    assert!(init.status.success(), "{}", text(&init.stderr));
    cluster.leader().await;

    let by_city = data.caravans_by_city();
    let pool: Vec<(HolderRow, Vec<String>)> = data
        .holders
        .iter()
        .filter(|h| h.eligible())
        .filter_map(|h| {
            let caravans = by_city.get(&(h.province_id, h.city.clone()))?;
            Some((h.clone(), caravans.iter().map(|c| c.id.clone()).collect()))
        })
        .collect();
    assert!(
        pool.len() > 5_000,
        "too few eligible holders: {}",
        pool.len()
    );
    let routes: Routes = Arc::new(Mutex::new([None; NODES]));
    for i in 0..NODES {
        cluster.publish(&routes, i);
    }
    let started = Instant::now();
    let load = Load::start(Plan { pool }, Arc::clone(&routes));
    let client = Arc::clone(&load.client);
    client
        .wait_ack_after(started, None, "the first write")
        .await;

    // The leader dies again and again; each time the others take over and it comes back.
    let mut leader_gaps = Vec::new();
    for round in 1..=LEADER_KILLS {
        let leader = cluster.leader().await;
        let killed_at = Instant::now();
        cluster.kill(leader);
        cluster.publish(&routes, leader);
        let what = format!("leader kill {round} (node {})", leader + 1);
        let successor = cluster.leader().await;
        let elected = killed_at.elapsed();
        let gap = client.wait_ack_after(killed_at, Some(leader), &what).await;
        println!(
            "{what}: node {} seen leading after {}, first write acknowledged after {}",
            successor + 1,
            ms(elected),
            ms(gap)
        );
        leader_gaps.push(gap);
        cluster.rejoin(&routes, leader).await;
    }

    // The leader freezes past the election timeout, then resumes: whatever it answers then
    // must be the committed truth (checked below with every other acknowledgement).
    let frozen = cluster.leader().await;
    let frozen_at = Instant::now();
    signal("STOP", &[cluster.pid(frozen)]);
    tokio::time::sleep(FREEZE).await;
    signal("CONT", &[cluster.pid(frozen)]);
    let resumed_at = Instant::now();
    // Leadership may stay with it (no election before it resumed) or move: either way
    // writes must go on.
    let freeze_gap = client
        .wait_ack_after(resumed_at, None, "after the frozen leader resumed")
        .await
        + (resumed_at - frozen_at);
    let after_freeze = cluster.leader().await;
    cluster.caught_up(after_freeze).await;
    println!(
        "leader node {} frozen for {FREEZE:?}: first write acknowledged after the freeze began {}; leader now node {}",
        frozen + 1,
        ms(freeze_gap),
        after_freeze + 1
    );

    // A follower dies and comes back; writes go on meanwhile.
    let leader = cluster.leader().await;
    let follower = (leader + 1) % NODES;
    let killed_at = Instant::now();
    cluster.kill(follower);
    cluster.publish(&routes, follower);
    client
        .wait_ack_after(killed_at, Some(follower), "follower killed")
        .await;
    cluster.rejoin(&routes, follower).await;

    // All three die at once and restart on their disks.
    let pids: Vec<u32> = (0..NODES).map(|i| cluster.pid(i)).collect();
    signal("KILL", &pids);
    for i in 0..NODES {
        cluster.kill(i);
        cluster.publish(&routes, i);
    }
    // Every process has exited: any acknowledgement from now on comes from a restarted one.
    let outage_at = Instant::now();
    for i in 0..NODES {
        cluster.start(i);
        cluster.publish(&routes, i);
    }
    let outage_gap = client
        .wait_ack_after(outage_at, None, "all three killed")
        .await;
    let leader = cluster.leader().await;
    cluster.caught_up(leader).await;
    println!(
        "all three killed: first write acknowledged {} after the last one exited (restarts included)",
        ms(outage_gap)
    );

    let ledger = load.finish();
    let load_time = started.elapsed();

    // Requests left unknown are retried with their keys until they have an answer.
    let closing = Arc::new(Client::new(Arc::clone(&routes)));
    let retry = |entry: Entry| {
        let closing = Arc::clone(&closing);
        async move {
            let again = closing
                .reserve(&entry.holder, &entry.key, &entry.caravan, RECOVERY_LIMIT)
                .await;
            (entry, again)
        }
    };
    let (unknown, mut ledger): (Vec<Entry>, Vec<Entry>) = ledger
        .into_iter()
        .partition(|e| matches!(e.outcome, Outcome::Unknown));
    let left_unknown = unknown.len();
    for (mut entry, again) in in_parallel(unknown, retry).await {
        assert!(
            !matches!(again.outcome, Outcome::Unknown),
            "{}: still unknown after {RECOVERY_LIMIT:?}",
            entry.key
        );
        entry.outcome = again.outcome;
        ledger.push(entry);
    }
    let errors: Vec<(&str, &str)> = ledger
        .iter()
        .filter_map(|e| match &e.outcome {
            Outcome::ServerError(answer) => Some((e.key.as_str(), answer.as_str())),
            _ => None,
        })
        .collect();
    assert!(errors.is_empty(), "server errors: {errors:?}");

    // Retries with the original keys answer as the first time: the same reservation for
    // every acknowledged one, never a seat for a refused one.
    for (entry, again) in in_parallel(ledger.clone(), retry).await {
        match (&entry.outcome, &again.outcome) {
            (Outcome::Ok { id, .. }, Outcome::Ok { id: same, .. }) => {
                assert_eq!(
                    id, same,
                    "{}: a retry answered another reservation",
                    entry.key
                );
            }
            (Outcome::Refused { .. }, Outcome::Refused { .. }) => {}
            (first, again) => panic!("{}: first {first:?}, retried {again:?}", entry.key),
        }
    }
    let acknowledged: BTreeMap<String, (&Entry, String)> = ledger
        .iter()
        .filter_map(|e| match &e.outcome {
            Outcome::Ok { id, caravan, .. } => Some((id.clone(), (e, caravan.clone()))),
            _ => None,
        })
        .collect();
    let ok_count = ledger
        .iter()
        .filter(|e| matches!(e.outcome, Outcome::Ok { .. }))
        .count();
    assert_eq!(
        acknowledged.len(),
        ok_count,
        "two keys acknowledged with one id"
    );

    // Every node at the same applied index has the same state digest.
    let started_digest = Instant::now();
    let digests = loop {
        let mut digests = Vec::new();
        for i in 0..NODES {
            digests.push(cluster.digest(i).await);
        }
        if digests.iter().all(|d| d.0 == digests[0].0) {
            break digests;
        }
        assert!(
            started_digest.elapsed() < RECOVERY_LIMIT,
            "the nodes do not reach one applied index: {digests:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        digests.iter().all(|d| d.1 == digests[0].1),
        "the replicas' state digests differ at index {}: {digests:?}",
        digests[0].0
    );

    // The operator's command prints the same.
    let shown = miqat_cluster(&["digest", "--node", &cluster.raft[0].to_string()]);
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["applied_index"].as_u64(), Some(digests[0].0));
    assert_eq!(shown["digest"].as_str(), Some(digests[0].1.as_str()));

    // Every node's export is the same, byte for byte, and holds exactly the acknowledged
    // reservations: none lost, none from nowhere, no caravan over capacity, one live
    // reservation per holder.
    let capacities = data.capacities();
    let auth = format!("Bearer {OPERATOR_TOKEN}");
    let mut exports = Vec::new();
    for i in 0..NODES {
        let answer = cluster
            .http(i)
            .get(
                "/v1/admin/reservations",
                &[("authorization", auth.as_str()), ("accept", "text/csv")],
            )
            .await;
        assert_eq!(answer.status, 200, "node {}: {}", i + 1, answer.describe());
        exports.push(text(&answer.body));
    }
    for (i, export) in exports.iter().enumerate().skip(1) {
        assert!(
            *export == exports[0],
            "node {}'s export differs from node 1's",
            i + 1
        );
    }
    let mut exported = BTreeMap::new();
    let mut live_by_caravan: BTreeMap<String, u32> = BTreeMap::new();
    let mut live_by_holder: BTreeMap<String, u32> = BTreeMap::new();
    for line in exports[0].lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let (id, national_id, caravan, status) = (fields[0], fields[1], fields[2], fields[4]);
        if matches!(status, "held" | "confirmed" | "offered") {
            *live_by_caravan.entry(caravan.to_owned()).or_default() += 1;
            *live_by_holder.entry(national_id.to_owned()).or_default() += 1;
        }
        exported.insert(id.to_owned(), (national_id.to_owned(), caravan.to_owned()));
    }
    for (id, (entry, caravan)) in &acknowledged {
        let found = exported.get(id);
        assert_eq!(
            found,
            Some(&(entry.holder.national_id.clone(), caravan.clone())),
            "acknowledged reservation {id} ({}) is not as acknowledged",
            entry.key
        );
    }
    let extra: BTreeSet<&String> = exported
        .keys()
        .filter(|id| !acknowledged.contains_key(*id))
        .collect();
    assert!(
        extra.is_empty(),
        "reservations nobody was told of: {extra:?}"
    );
    for (caravan, live) in &live_by_caravan {
        assert!(
            live <= &capacities[caravan],
            "caravan {caravan}: {live} live reservations"
        );
    }
    let doubles: Vec<_> = live_by_holder.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubles.is_empty(),
        "holders with two live reservations: {doubles:?}"
    );

    // Each holder reads their own reservation on every node.
    let reads: Vec<(usize, String, HolderRow, String)> = (0..NODES)
        .flat_map(|i| {
            acknowledged.iter().map(move |(id, (entry, caravan))| {
                (i, id.clone(), entry.holder.clone(), caravan.clone())
            })
        })
        .collect();
    let https: Vec<Http> = (0..NODES).map(|i| cluster.http(i)).collect();
    let read = |(i, id, holder, caravan): (usize, String, HolderRow, String)| {
        let http = https[i].clone();
        async move {
            let answer = http
                .get(&format!("/v1/reservations/{id}"), &holder_headers(&holder))
                .await;
            assert_eq!(answer.status, 200, "node {}: {}", i + 1, answer.describe());
            assert_eq!(answer.json()["caravan_id"].as_str(), Some(caravan.as_str()));
        }
    };
    in_parallel(reads, read).await;

    // The report: figures for docs/performance.md, not assertions.
    let refused: BTreeMap<String, usize> = ledger.iter().fold(BTreeMap::new(), |mut m, e| {
        if let Outcome::Refused { status, code } = &e.outcome {
            *m.entry(format!("{status} {code}")).or_default() += 1;
        }
        m
    });
    let saw_unknown = ledger.iter().filter(|e| e.unknown_answers > 0).count();
    let frozen_acks = ledger
        .iter()
        .filter(|e| matches!(e.outcome, Outcome::Ok { node, at, .. } if node == frozen && at >= resumed_at && at < resumed_at + Duration::from_secs(5)))
        .count();
    let (median, max) = median_and_max(&leader_gaps);
    println!(
        "== failover report ({} requests over {:.0} s at {RATE_PER_S}/s)",
        ledger.len(),
        load_time.as_secs_f64()
    );
    println!(
        "acknowledged {ok_count}, refused {}, unknown at the end of the load {left_unknown} (all resolved by retries)",
        refused.values().sum::<usize>()
    );
    println!("refusals: {refused:?}");
    println!(
        "requests that met an unknown outcome on the way and were retried with their key: {saw_unknown}"
    );
    println!(
        "acknowledgements from the frozen leader in the 5 s after it resumed: {frozen_acks} (all in the final state)"
    );
    println!(
        "write gap after a leader SIGKILL over {} kills: median {}, max {}; each: {}",
        leader_gaps.len(),
        ms(median),
        ms(max),
        leader_gaps
            .iter()
            .map(|g| ms(*g))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "replicas at applied index {}: digest {}",
        digests[0].0, digests[0].1
    );
}
