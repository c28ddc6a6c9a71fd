//! End-to-end test of replacing a node whose disk died: three real `miqat serve --peers`
//! processes; a follower killed and its data directory deleted; a replacement started empty
//! under a new id, added as a learner (it catches up by snapshot, the leader's log being
//! purged), promoted, and the dead id removed; every acknowledged reservation is then on the
//! new node and the nodes' states agree.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{miqat_cluster, reserve_all};
use crate::support::{
    DataSet, HolderRow, Http, OPERATOR_TOKEN, Server, ServerOptions, holder_headers,
    raw_get_status, stable_free_addr, text,
};

/// Entries between snapshots: small, so that the leader purges its log head early and a new
/// node can only catch up by snapshot.
const SNAPSHOT_EVERY: &str = "8";

/// One node of the test: its id, Raft address and process.
struct Node {
    id: u64,
    raft: SocketAddr,
    data_dir: PathBuf,
    server: Option<Server>,
}

impl Node {
    fn http(&self) -> Http {
        Http::new(self.server.as_ref().unwrap().addr)
    }

    fn api(&self) -> String {
        self.server.as_ref().unwrap().addr.to_string()
    }

    async fn status(&self) -> Option<Value> {
        let answer = self
            .http()
            .try_send(hyper::Method::GET, "/v1/cluster", &[], None)
            .await
            .ok()?;
        (answer.status == 200).then(|| answer.json())
    }
}

/// Starts node `id` on `data_dir` with `peers` and waits until it answers.
fn start(data: &DataSet, root: &Path, node: &mut Node, peers: &str) {
    let server = Server::spawn(&ServerOptions {
        catalog: data.path(),
        data_dir: &node.data_dir,
        log_dir: root,
        name: &format!("member-node{}", node.id),
        extra_args: vec![
            "--node-id".into(),
            node.id.to_string(),
            "--raft-listen".into(),
            node.raft.to_string(),
            "--peers".into(),
            peers.into(),
            "--raft-election-ms".into(),
            "700".into(),
            "--raft-snapshot-every".into(),
            SNAPSHOT_EVERY.into(),
        ],
    });
    let started = Instant::now();
    while raw_get_status(server.addr, "/healthz") != Some(200) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "node {} did not come up: {}",
            node.id,
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    node.server = Some(server);
}

/// Waits until exactly one live node leads and every live node names it; its index.
async fn leader(nodes: &[Node]) -> usize {
    let started = Instant::now();
    loop {
        let mut leaders = Vec::new();
        let mut views = Vec::new();
        let live: Vec<usize> = (0..nodes.len())
            .filter(|i| nodes[*i].server.is_some())
            .collect();
        for &i in &live {
            if let Some(status) = nodes[i].status().await {
                if status["role"] == "leader" {
                    leaders.push(i);
                }
                views.push(status["leader"].as_u64());
            }
        }
        if let [leader] = leaders[..]
            && views.len() == live.len()
            && views.iter().all(|v| *v == Some(nodes[leader].id))
        {
            return leader;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no single leader after 30 s: leaders {leaders:?}, views {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `node`'s status until `done` holds of it; panics with `what` after 60 s.
async fn wait_for(node: &Node, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let status = node.status().await;
        if let Some(status) = status.as_ref().filter(|s| done(s)) {
            return status.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "node {}: {what}; last status {status:?}",
            node.id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `miqat cluster SUBCOMMAND --node API --id ID [more]` as the operator.
fn membership(verb: &str, api: &str, id: u64, more: &[&str]) -> std::process::Output {
    let id = id.to_string();
    let mut args = vec![verb, "--node", api, "--id", &id, "--token", OPERATOR_TOKEN];
    args.extend_from_slice(more);
    miqat_cluster(&args)
}

/// Every reservation a node holds, as `(id, caravan, status)`, sorted: what the nodes must
/// agree on.
async fn state_of(http: &Http) -> Vec<(String, String, String)> {
    let mut list: Vec<(String, String, String)> = http
        .all_reservations(1_000)
        .await
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                r["caravan_id"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    list.sort();
    list
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_died_is_replaced_under_a_new_id_and_loses_nothing() {
    let _cores = crate::support::cores_alone().await;
    let data = DataSet::generate(3_000, 600, 23);
    let root = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (1..=4)
        .map(|id| Node {
            id,
            raft: stable_free_addr(),
            data_dir: root.path().join(format!("node{id}")),
            server: None,
        })
        .collect();
    let peers_of = |ids: &[usize]| {
        ids.iter()
            .map(|&i| format!("{}={}", nodes[i].id, nodes[i].raft))
            .collect::<Vec<_>>()
            .join(",")
    };
    let founders = peers_of(&[0, 1, 2]);
    // The replacement names itself among its peers.
    let peers = peers_of(&[0, 1, 2, 3]);
    for node in nodes.iter_mut().take(3) {
        start(&data, root.path(), node, &founders);
    }
    let init = miqat_cluster(&["init", "--node", &nodes[0].raft.to_string()]);
    assert!(init.status.success(), "{}", text(&init.stderr));
    let leader = leader(&nodes).await;

    let by_city = data.caravans_by_city();
    let eligible: Vec<(HolderRow, String)> = data
        .holders
        .iter()
        .filter(|h| h.eligible())
        .filter_map(|h| {
            let caravans = by_city.get(&(h.province_id, h.city.clone()))?;
            Some((h.clone(), caravans.first()?.id.clone()))
        })
        .take(80)
        .collect();
    assert_eq!(
        eligible.len(),
        80,
        "the data set has enough eligible holders"
    );

    // Enough entries, one write at a time, for snapshots and a purged log head.
    let mut acknowledged = BTreeMap::new();
    for chunk in eligible[..40].chunks(2) {
        acknowledged.extend(reserve_all(&nodes[leader].http(), chunk).await);
    }
    let purged = wait_for(
        &nodes[leader],
        "the leader never purged its log head",
        |s| s["purged_index"].as_u64().is_some_and(|p| p > 0),
    )
    .await["purged_index"]
        .as_u64()
        .unwrap();

    // A follower's disk dies: the process is killed and its data directory is gone.
    let dead = (leader + 1) % 3;
    let survivor = 3 - leader - dead;
    nodes[dead].server.take().unwrap().kill();
    std::fs::remove_dir_all(&nodes[dead].data_dir).unwrap();
    acknowledged.extend(reserve_all(&nodes[leader].http(), &eligible[40..50]).await);

    // The replacement starts empty under a new id.
    let replacement = 3;
    start(&data, root.path(), &mut nodes[replacement], &peers);
    let new_id = nodes[replacement].id;
    let new_raft = nodes[replacement].raft.to_string();

    // Only the leader changes members; a follower names it.
    let refused = membership(
        "add-learner",
        &nodes[survivor].api(),
        new_id,
        &["--raft-addr", &new_raft],
    );
    assert!(!refused.status.success());
    let said = text(&refused.stderr);
    assert!(
        said.contains("is not the leader") && said.contains(&nodes[leader].api()),
        "{said}"
    );

    let added = membership(
        "add-learner",
        &nodes[leader].api(),
        new_id,
        &["--raft-addr", &new_raft],
    );
    assert!(added.status.success(), "{}", text(&added.stderr));
    let again = membership(
        "add-learner",
        &nodes[leader].api(),
        new_id,
        &["--raft-addr", &new_raft],
    );
    assert!(!again.status.success(), "a member is not added twice");

    // The learner catches up: from a snapshot, since the leader's log no longer starts at 1.
    let learner = wait_for(&nodes[replacement], "the learner did not catch up", |s| {
        s["role"] == "learner" && s["snapshot_index"].as_u64().is_some_and(|i| i >= purged)
    })
    .await;
    assert_eq!(learner["leader"].as_u64(), Some(nodes[leader].id));

    // Promote it once it has caught up (refused as `learner_behind` until then).
    let started = Instant::now();
    loop {
        let promoted = membership("promote", &nodes[leader].api(), new_id, &[]);
        if promoted.status.success() {
            break;
        }
        let said = text(&promoted.stderr);
        assert!(
            said.contains("behind") || said.contains("has not answered"),
            "{said}"
        );
        assert!(started.elapsed() < Duration::from_secs(60), "{said}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dead_id = nodes[dead].id;
    let removed = membership("remove", &nodes[leader].api(), dead_id, &[]);
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    let unknown = membership("remove", &nodes[leader].api(), dead_id, &[]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown.stderr).contains(&format!("node {dead_id} is not a member")),
        "{}",
        text(&unknown.stderr)
    );

    // The new cluster: the two founders left and the replacement, all voters.
    let status = wait_for(&nodes[leader], "the membership did not settle", |s| {
        s["members"].as_array().is_some_and(|m| m.len() == 3)
    })
    .await;
    let mut voters: Vec<u64> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["voter"] == true)
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    voters.sort_unstable();
    let mut expected = vec![nodes[leader].id, nodes[survivor].id, new_id];
    expected.sort_unstable();
    assert_eq!(voters, expected);

    // The new cluster takes writes.
    acknowledged.extend(reserve_all(&nodes[leader].http(), &eligible[50..80]).await);
    let applied = nodes[leader].status().await.unwrap()["applied_index"]
        .as_u64()
        .unwrap();
    for i in [leader, survivor, replacement] {
        wait_for(&nodes[i], "did not apply the leader's log", |s| {
            s["applied_index"].as_u64().is_some_and(|a| a >= applied)
        })
        .await;
    }

    // Every acknowledged reservation is on the new node, and the three states agree.
    let holders: BTreeMap<&str, &HolderRow> = data
        .holders
        .iter()
        .map(|h| (h.national_id.as_str(), h))
        .collect();
    let http = nodes[replacement].http();
    for (national_id, (id, caravan)) in &acknowledged {
        let answer = http
            .get(
                &format!("/v1/reservations/{id}"),
                &holder_headers(holders[national_id.as_str()]),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.describe());
        assert_eq!(answer.json()["caravan_id"].as_str(), Some(caravan.as_str()));
    }
    let states = [
        state_of(&nodes[leader].http()).await,
        state_of(&nodes[survivor].http()).await,
        state_of(&http).await,
    ];
    assert_eq!(states[0].len(), acknowledged.len());
    assert!(
        states.windows(2).all(|w| w[0] == w[1]),
        "the nodes disagree"
    );
}
