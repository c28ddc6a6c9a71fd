//! `miqat demo --cluster`: the opening day against three `miqat serve` nodes of one cluster,
//! started as child processes of the demo (each its own data folder and ports), through the
//! load tester following the leader; the leader is SIGKILLed mid-rush and restarted, and the
//! report shows the failover gap and the check of every node.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use miqat_loadtest::admin::Admin;
use miqat_loadtest::follow::FailoverMark;
use miqat_loadtest::run::RunOptions;
use miqat_loadtest::{Extras, dataset, plan};
use miqat_replication::node::{OperatorRequest, operator_call};

use super::{DEMO_MAX_IN_FLIGHT, DemoArgs, OPENS_IN, demo_params, ensure_data_set, operator_token};

/// Nodes of the demo's cluster.
const NODES: usize = 3;
/// Journeys and speed when not given: a rush three processes on a small machine carry.
/// (Three servers and the load tester share the machine: at 60x two cores fall behind the
/// plan, and the run's measurement would not be valid.)
const CLUSTER_JOURNEYS: usize = 3_000;
const CLUSTER_SPEED: f64 = 30.0;
/// The leader is killed this long after the opening (mid-rush), and restarted this long
/// after the kill.
const KILL_AFTER_OPENING: Duration = Duration::from_secs(2);
const RESTART_AFTER_KILL: Duration = Duration::from_secs(3);

/// One node: its addresses, folder and process.
struct Node {
    id: usize,
    api: SocketAddr,
    raft: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// SIGKILL: no drain, no goodbye.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The three nodes.
struct Cluster {
    nodes: Vec<Node>,
    peers: String,
    catalog: PathBuf,
    token: String,
}

impl Cluster {
    fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("finding the miqat binary")?;
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("opening {}", node.log.display()))?;
        let mut command = Command::new(exe);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MIQAT_") {
                command.env_remove(key);
            }
        }
        let child = command
            .arg("serve")
            .arg("--catalog")
            .arg(&self.catalog)
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--listen", &node.api.to_string()])
            .args(["--node-id", &node.id.to_string()])
            .args(["--raft-listen", &node.raft.to_string()])
            .args(["--peers", &self.peers])
            .args(["--max-in-flight", &DEMO_MAX_IN_FLIGHT.to_string()])
            .env("MIQAT_OPERATOR_TOKEN", &self.token)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting node {}", node.id))?;
        node.child = Some(child);
        Ok(())
    }

    fn targets(&self) -> String {
        self.nodes
            .iter()
            .map(Node::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Six ports: three for the APIs, three for Raft; from `first` on, or free ones.
fn ports(first: Option<u16>) -> anyhow::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    let mut held = Vec::new();
    for n in 0..2 * NODES {
        let port = match first {
            Some(p) => p
                .checked_add(n as u16)
                .context("--ports-from: the six ports must fit below 65536")?,
            None => 0,
        };
        let listener = TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("port {port} on 127.0.0.1 is taken"))?;
        out.push(listener.local_addr()?);
        // Held until all six are chosen, so the system does not hand one out twice.
        held.push(listener);
    }
    Ok(out)
}

/// Which node leads, by asking each; waits up to `limit`.
async fn leader(cluster_urls: &[String], limit: Duration) -> anyhow::Result<usize> {
    let until = Instant::now() + limit;
    loop {
        for (i, url) in cluster_urls.iter().enumerate() {
            let admin = Admin::new(url, None);
            if let Ok(raw) = admin
                .send(hyper::Method::GET, "/v1/cluster", &[], None)
                .await
                && raw.status == 200
                && serde_json::from_slice::<serde_json::Value>(&raw.body)
                    .is_ok_and(|v| v["role"] == "leader")
                && admin
                    .send(hyper::Method::GET, "/readyz", &[], None)
                    .await
                    .is_ok_and(|r| r.status == 200)
            {
                return Ok(i);
            }
        }
        if Instant::now() > until {
            bail!("no node became the leader within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `miqat demo --cluster`.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("miqat-demo"));
    let data_dir = dir.join("data");
    let cluster_dir = dir.join("cluster");
    let report_dir = dir.join("report");
    println!("Miqat demo: an opening day against a three-node cluster on one machine\n");
    args.limits.validate()?;
    let journeys = args.journeys.unwrap_or(CLUSTER_JOURNEYS);
    let speed = args.speed.unwrap_or(CLUSTER_SPEED);
    let seats = args
        .seats
        .unwrap_or_else(|| ((journeys as f64 * 0.7 / 500.0).round() as u64 * 500).max(1_000));
    ensure_data_set(&data_dir, args.holders, seats, args.seed)?;
    if cluster_dir.exists() {
        std::fs::remove_dir_all(&cluster_dir)
            .with_context(|| format!("clearing {}", cluster_dir.display()))?;
    }
    std::fs::create_dir_all(&cluster_dir)?;
    let addrs = ports(args.ports_from)?;
    let (api, raft) = addrs.split_at(NODES);
    let peers = raft
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let token = operator_token();
    let mut cluster = Cluster {
        nodes: (0..NODES)
            .map(|i| Node {
                id: i + 1,
                api: api[i],
                raft: raft[i],
                data_dir: cluster_dir.join(format!("node{}", i + 1)),
                log: cluster_dir.join(format!("node{}.log", i + 1)),
                child: None,
            })
            .collect(),
        peers,
        catalog: data_dir.clone(),
        token: token.clone(),
    };
    for i in 0..NODES {
        cluster.start(i)?;
    }
    let client = miqat_loadtest::client_runtime(None)?;
    let urls: Vec<String> = cluster.nodes.iter().map(Node::url).collect();
    client.block_on(async {
        for url in &urls {
            let admin = Admin::new(url, None);
            let until = Instant::now() + Duration::from_secs(60);
            while !admin
                .send(hyper::Method::GET, "/healthz", &[], None)
                .await
                .is_ok_and(|r| r.status == 200)
            {
                if Instant::now() > until {
                    bail!("node {url} did not come up; see {}", cluster_dir.display());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let answer = operator_call(OperatorRequest {
            addr: &cluster.nodes[0].raft.to_string(),
            method: hyper::Method::POST,
            path: "/cluster/init",
            bearer: None,
            json: None,
        })
        .await
        .map_err(anyhow::Error::msg)?;
        if !(200..300).contains(&answer.status) {
            bail!("cluster init answered {}: {}", answer.status, answer.body);
        }
        anyhow::Ok(())
    })?;
    let first_leader = client.block_on(leader(&urls, Duration::from_secs(30)))?;
    for node in &cluster.nodes {
        println!(
            "node {}     {} (raft {}), {}",
            node.id,
            node.url(),
            node.raft,
            if node.id == first_leader + 1 {
                "the leader"
            } else {
                "a follower"
            }
        );
    }

    let data = dataset::load(&data_dir)?;
    let params = demo_params(args, speed, Some(journeys))?;
    let plan = plan::generate(&data, &params)?;
    let reschedule_in = OPENS_IN + Duration::from_millis(plan.lead_ms().unsigned_abs());
    println!(
        "plan       {} journeys (seed {}), {:.0}x; the wave opens {:.0} s from now; the leader \
         is killed {} s after the opening and restarted {} s later",
        plan.journeys.len(),
        params.seed,
        params.speed,
        reschedule_in.as_secs_f64(),
        KILL_AFTER_OPENING.as_secs(),
        RESTART_AFTER_KILL.as_secs()
    );
    let mark = FailoverMark::default();
    let options = RunOptions {
        target: cluster.targets(),
        operator_token: Some(token.clone()),
        reschedule_in: Some(reschedule_in),
        live: !args.quiet,
        max_lag_ms: args.max_lag_ms,
        failover_mark: mark.clone(),
        ..RunOptions::default()
    };
    let extras = Extras {
        fcfs_min: 0.8,
        check: true,
        capacities: Some(data.capacities()),
        limits: args.limits,
        holders: Some(Arc::new(data.holder_receipts())),
        ..Extras::default()
    };
    let opening = Instant::now() + reschedule_in;
    let (summary, killed) = client.block_on(async {
        let run = miqat_loadtest::execute_with_records(&plan, &options, &extras);
        let chaos = async {
            tokio::time::sleep_until((opening + KILL_AFTER_OPENING).into()).await;
            let victim = leader(&urls, Duration::from_secs(10)).await?;
            mark.mark_now();
            cluster.nodes[victim].kill();
            tokio::time::sleep(RESTART_AFTER_KILL).await;
            cluster.start(victim)?;
            anyhow::Ok(victim)
        };
        let (played, killed) = tokio::join!(run, chaos);
        anyhow::Ok((played?.0, killed))
    })?;
    let killed = killed.context("killing and restarting the leader")?;
    let report_path = miqat_loadtest::write_reports(&summary, &report_dir)?;

    print!("\n{}", summary.to_text());
    println!(
        "failover   node {} (the leader) SIGKILLed {} s after the opening, restarted {} s later",
        killed + 1,
        KILL_AFTER_OPENING.as_secs(),
        RESTART_AFTER_KILL.as_secs()
    );
    match summary.cluster.as_ref().and_then(|c| c.failover_gap_ms) {
        Some(gap) => println!(
            "           {gap:.0} ms from the kill to the first acknowledged write after it"
        ),
        None => println!("           no write was acknowledged after the kill"),
    }
    println!("report     {}", report_path.display());
    println!("nodes      {}", cluster_dir.display());
    let verdicts = summary.verdicts();
    let all_checked = summary.checks.len() == NODES + 2 && summary.checks.iter().all(|c| c.passed);
    if verdicts.passed() && all_checked {
        println!("verdict    PASSED");
        Ok(())
    } else if !all_checked {
        bail!("the check across the nodes FAILED")
    } else {
        bail!("the run {}", verdicts.headline())
    }
}
