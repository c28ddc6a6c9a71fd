//! End-to-end tests of `miqat serve` as a real process over HTTP: crash safety under
//! concurrent load (SIGKILL mid-rush, restart, every acknowledged reservation back), the
//! waiting-list story with a short offer deadline, and start-up errors and warnings.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    DataSet, HolderRow, Http, HttpError, Server, ServerOptions, credentials_body, holder_headers,
    reserve_body, text,
};

/// Live statuses: the ones that occupy a seat.
fn is_live(status: &str) -> bool {
    matches!(status, "offered" | "held" | "confirmed")
}

fn str_of<'a>(json: &'a Value, field: &str) -> &'a str {
    json[field]
        .as_str()
        .unwrap_or_else(|| panic!("no string {field:?} in {json}"))
}

/// A deterministic pseudo-random number from `i` (splitmix64).
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One applicant of the rush.
struct Job {
    holder: HolderRow,
    caravan: String,
    key: Option<String>,
    /// Send the same request again after a 201: with a key, a replay; without, a refusal.
    again: bool,
}

/// A 201 the client received.
#[derive(Debug, Clone)]
struct Ack {
    id: String,
    national_id: String,
    tracking_code: String,
    caravan: String,
    key: Option<String>,
}

#[derive(Default)]
struct Tally {
    acks: Mutex<Vec<Ack>>,
    acked: AtomicUsize,
    refusals: Mutex<BTreeMap<String, usize>>,
    transport_failures: AtomicUsize,
    replays_checked: AtomicUsize,
    alternatives_taken: AtomicUsize,
}

impl Tally {
    fn refuse(&self, code: Option<String>, status: u16) {
        let key = code.unwrap_or_else(|| format!("status {status}"));
        *self.refusals.lock().unwrap().entry(key).or_default() += 1;
    }

    fn ack(&self, job: &Job, caravan: &str, json: &Value) -> String {
        assert_eq!(
            str_of(json, "national_id"),
            job.holder.national_id,
            "{json}"
        );
        assert_eq!(str_of(json, "caravan_id"), caravan, "{json}");
        assert_eq!(
            json["province_id"].as_u64(),
            Some(u64::from(job.holder.province_id)),
            "{json}"
        );
        assert_eq!(str_of(json, "status"), "held", "{json}");
        assert_eq!(str_of(json, "stage"), "documents", "{json}");
        let id = str_of(json, "id").to_owned();
        self.acks.lock().unwrap().push(Ack {
            id: id.clone(),
            national_id: job.holder.national_id.clone(),
            tracking_code: job.holder.tracking_code.clone(),
            caravan: caravan.to_owned(),
            key: job.key.clone(),
        });
        self.acked.fetch_add(1, Ordering::SeqCst);
        id
    }
}

/// One applicant's attempt: reserve, maybe retry, maybe take an alternative when full.
async fn run_job(http: &Http, job: &Job, city_caravans: &BTreeSet<String>, tally: &Tally) {
    let body = reserve_body(&job.holder, &job.caravan);
    let key_header;
    let headers: Vec<(&str, &str)> = match &job.key {
        Some(key) => {
            key_header = key.clone();
            vec![("idempotency-key", key_header.as_str())]
        }
        None => Vec::new(),
    };
    let path = "/v1/reservations";
    let answer = match http
        .try_send(hyper::Method::POST, path, &headers, Some(&body))
        .await
    {
        Ok(answer) => answer,
        Err(HttpError::Transport(_) | HttpError::Timeout) => {
            tally.transport_failures.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    match answer.status {
        201 => {
            let id = tally.ack(job, &job.caravan, &answer.json());
            if !job.again {
                return;
            }
            let Ok(again) = http
                .try_send(hyper::Method::POST, path, &headers, Some(&body))
                .await
            else {
                tally.transport_failures.fetch_add(1, Ordering::SeqCst);
                return;
            };
            if job.key.is_some() {
                assert_eq!(again.status, 201, "replay: {}", again.describe());
                assert_eq!(
                    str_of(&again.json(), "id"),
                    id,
                    "a replay answers the same id"
                );
                assert_eq!(again.header("idempotent-replayed"), Some("true"));
            } else {
                assert_eq!(again.status, 409, "second try: {}", again.describe());
                let json = again.json();
                assert_eq!(str_of(&json, "code"), "already_reserved");
                assert_eq!(str_of(&json, "reservation_id"), id);
            }
            tally.replays_checked.fetch_add(1, Ordering::SeqCst);
        }
        409 if answer.code().as_deref() == Some("caravan_full") => {
            tally.refuse(answer.code(), 409);
            let json = answer.json();
            let alternatives = json["alternatives"].as_array().unwrap();
            assert!(alternatives.len() <= 5, "{json}");
            for alternative in alternatives {
                let id = str_of(alternative, "id");
                assert!(
                    city_caravans.contains(id),
                    "alternative {id} is not of the holder's city: {json}"
                );
                assert_ne!(id, job.caravan, "the full caravan offered as alternative");
            }
            let Some(first) = alternatives.first() else {
                return;
            };
            let caravan = str_of(first, "id").to_owned();
            let body = reserve_body(&job.holder, &caravan);
            match http
                .try_send(hyper::Method::POST, path, &[], Some(&body))
                .await
            {
                Ok(a) if a.status == 201 => {
                    tally.ack(job, &caravan, &a.json());
                    tally.alternatives_taken.fetch_add(1, Ordering::SeqCst);
                }
                Ok(a) => tally.refuse(a.code(), a.status),
                Err(_) => {
                    tally.transport_failures.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        409 => tally.refuse(answer.code(), 409),
        _ => panic!(
            "unexpected answer to {} for {}: {}",
            job.caravan,
            job.holder.national_id,
            answer.describe()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_reservations_survive_sigkill_under_concurrent_load() {
    const HOLDERS: usize = 3_000;
    const TASKS: usize = 64;
    const KILL_AFTER: usize = 500;
    let started = Instant::now();
    let data = DataSet::generate(20_000, 1_500, 11);
    let work = tempfile::tempdir().unwrap();
    let data_dir = work.path().join("data");
    let by_city = data.caravans_by_city();
    let capacities = data.capacities();

    // Contention first: every eligible holder of the cities with at most 20 seats, and 200
    // of each city with several caravans (most of whom want its first caravan, so it fills
    // and the alternatives are taken), then everyone else, up to HOLDERS applicants.
    let city_seats = |h: &HolderRow| -> u32 {
        by_city[&(h.province_id, h.city.clone())]
            .iter()
            .map(|c| c.capacity)
            .sum()
    };
    let city_size = |h: &HolderRow| by_city[&(h.province_id, h.city.clone())].len();
    let eligible: Vec<&HolderRow> = data.holders.iter().filter(|h| h.eligible()).collect();
    let mut per_city: BTreeMap<(u32, &str), usize> = BTreeMap::new();
    let (mut first, mut then) = (Vec::new(), Vec::new());
    for h in eligible {
        let seen = per_city.entry((h.province_id, &h.city)).or_default();
        *seen += 1;
        if city_seats(h) <= 20 || (city_size(h) > 1 && *seen <= 200) {
            first.push(h);
        } else {
            then.push(h);
        }
    }
    let contended = first.len();
    let jobs: Vec<Job> = first
        .into_iter()
        .chain(then)
        .take(HOLDERS)
        .enumerate()
        .map(|(i, h)| {
            let caravans = &by_city[&(h.province_id, h.city.clone())];
            let r = mix(i as u64);
            let choice = if r.is_multiple_of(5) {
                (r / 5 % caravans.len() as u64) as usize
            } else {
                0
            };
            Job {
                holder: h.clone(),
                caravan: caravans[choice].id.clone(),
                key: (i % 3 == 0).then(|| format!("rush-{i}-{}", r % 1_000_000)),
                again: i % 10 == 0 || i % 10 == 5,
            }
        })
        .collect();
    assert_eq!(
        jobs.len(),
        HOLDERS,
        "too few eligible holders in the data set"
    );
    let city_caravans: Arc<BTreeMap<(u32, String), BTreeSet<String>>> = Arc::new(
        by_city
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().map(|c| c.id.clone()).collect()))
            .collect(),
    );

    let mut server = Server::start(&ServerOptions {
        catalog: data.path(),
        data_dir: &data_dir,
        log_dir: work.path(),
        name: "first",
        extra_args: Vec::new(),
    });
    let ready_first = started.elapsed();
    let http = Http::new(server.addr);

    let jobs = Arc::new(jobs);
    let next = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let rush = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (http, jobs, next, killed, tally, city_caravans) = (
            http.clone(),
            Arc::clone(&jobs),
            Arc::clone(&next),
            Arc::clone(&killed),
            Arc::clone(&tally),
            Arc::clone(&city_caravans),
        );
        tasks.push(tokio::spawn(async move {
            while !killed.load(Ordering::SeqCst) {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(job) = jobs.get(i) else { break };
                let caravans = &city_caravans[&(job.holder.province_id, job.holder.city.clone())];
                run_job(&http, job, caravans, &tally).await;
            }
        }));
    }
    // Kill the server mid-rush, with requests in flight.
    let deadline = Instant::now() + Duration::from_secs(60);
    while tally.acked.load(Ordering::SeqCst) < KILL_AFTER {
        assert!(
            Instant::now() < deadline,
            "only {} reservations acknowledged after 60 s; server stderr:\n{}",
            tally.acked.load(Ordering::SeqCst),
            server.stderr()
        );
        assert!(
            next.load(Ordering::SeqCst) < jobs.len() + TASKS,
            "the rush ended before {KILL_AFTER} acknowledgements"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let acked_at_kill = tally.acked.load(Ordering::SeqCst);
    let sent_at_kill = next.load(Ordering::SeqCst);
    server.kill();
    killed.store(true, Ordering::SeqCst);
    let rush_time = rush.elapsed();
    for task in tasks {
        task.await.unwrap();
    }
    let failures = tally.transport_failures.load(Ordering::SeqCst);
    let acks = tally.acks.lock().unwrap().clone();
    assert!(acks.len() >= KILL_AFTER);
    let full = tally
        .refusals
        .lock()
        .unwrap()
        .get("caravan_full")
        .copied()
        .unwrap_or(0);
    assert!(full > 0, "no caravan filled up before the kill");
    assert!(
        tally.alternatives_taken.load(Ordering::SeqCst) > 0,
        "no alternative taken before the kill"
    );
    assert!(
        failures >= 1,
        "SIGKILL with {TASKS} clients busy cut no request short"
    );

    // Restart on the same data directory.
    let restart = Instant::now();
    let server = Server::start(&ServerOptions {
        catalog: data.path(),
        data_dir: &data_dir,
        log_dir: work.path(),
        name: "second",
        extra_args: Vec::new(),
    });
    let recovery_time = restart.elapsed();
    let http = Http::new(server.addr);

    let all = http.all_reservations(250).await;
    let mut by_id: BTreeMap<&str, &Value> = BTreeMap::new();
    for r in &all {
        assert!(
            by_id.insert(str_of(r, "id"), r).is_none(),
            "reservation listed twice: {r}"
        );
    }
    // Every acknowledged reservation came back, unchanged.
    let mut acked_by_holder: BTreeMap<&str, &str> = BTreeMap::new();
    for ack in &acks {
        if let Some(previous) = acked_by_holder.insert(&ack.national_id, &ack.id) {
            assert_eq!(
                previous, ack.id,
                "holder {} was acknowledged two different reservations",
                ack.national_id
            );
        }
        let r = by_id.get(ack.id.as_str()).unwrap_or_else(|| {
            panic!(
                "acknowledged reservation {} of {} lost after SIGKILL and restart \
                 ({} acknowledged, {} listed)",
                ack.id,
                ack.national_id,
                acks.len(),
                all.len()
            )
        });
        assert_eq!(str_of(r, "national_id"), ack.national_id, "{r}");
        assert_eq!(str_of(r, "caravan_id"), ack.caravan, "{r}");
        assert_eq!(str_of(r, "status"), "held", "{r}");
    }
    // No caravan over capacity, no holder with two live reservations, and the public seat
    // counts agree with the list.
    let mut live_per_caravan: BTreeMap<&str, u32> = BTreeMap::new();
    let mut live_per_holder: BTreeMap<&str, u32> = BTreeMap::new();
    for r in &all {
        if is_live(str_of(r, "status")) {
            *live_per_caravan.entry(str_of(r, "caravan_id")).or_default() += 1;
            *live_per_holder.entry(str_of(r, "national_id")).or_default() += 1;
        }
    }
    for (holder, live) in &live_per_holder {
        assert_eq!(*live, 1, "holder {holder} has {live} live reservations");
    }
    for (caravan, capacity) in &capacities {
        let live = live_per_caravan.get(caravan.as_str()).copied().unwrap_or(0);
        assert!(
            live <= *capacity,
            "caravan {caravan} over capacity: {live} live of {capacity}"
        );
        let answer = http.get(&format!("/v1/caravans/{caravan}"), &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.describe());
        let json = answer.json();
        assert_eq!(json["capacity"].as_u64(), Some(u64::from(*capacity)));
        assert_eq!(
            json["seats_free"].as_u64(),
            Some(u64::from(capacity - live)),
            "seats_free of {caravan} disagrees with its {live} live reservations: {json}"
        );
    }
    let stats = http.get_operator("/v1/admin/stats").await.json();
    let live_total: u32 = live_per_caravan.values().sum();
    assert_eq!(
        stats["seats_free"].as_u64(),
        Some(1_500 - u64::from(live_total)),
        "{stats}"
    );

    // The holders see their own reservations; nobody else does.
    let holder_of = |ack: &Ack| HolderRow {
        national_id: ack.national_id.clone(),
        tracking_code: ack.tracking_code.clone(),
        receipt_date: String::new(),
        receipt_status: String::new(),
        province_id: 0,
        city: String::new(),
    };
    for ack in acks.iter().step_by(acks.len() / 25 + 1) {
        let path = format!("/v1/reservations/{}", ack.id);
        let answer = http.get_as(&holder_of(ack), &path).await;
        assert_eq!(answer.status, 200, "{}", answer.describe());
        let json = answer.json();
        assert_eq!(str_of(&json, "id"), ack.id);
        assert_eq!(str_of(&json, "national_id"), ack.national_id);
        assert_eq!(str_of(&json, "caravan_id"), ack.caravan);
        assert_eq!(str_of(&json, "status"), "held");
        let other = acks
            .iter()
            .find(|a| a.national_id != ack.national_id)
            .unwrap();
        let answer = http.get_as(&holder_of(other), &path).await;
        assert_eq!(answer.status, 404, "{}", answer.describe());
        assert_eq!(answer.code().as_deref(), Some("reservation_not_found"));
    }
    // An idempotent retry after the crash still answers the original reservation.
    let mut retried = 0;
    for ack in acks.iter().filter(|a| a.key.is_some()).take(20) {
        let key = ack.key.as_deref().unwrap();
        let body = reserve_body(&holder_of(ack), &ack.caravan);
        let answer = http
            .post("/v1/reservations", &[("idempotency-key", key)], &body)
            .await;
        assert_eq!(answer.status, 201, "{}", answer.describe());
        assert_eq!(str_of(&answer.json(), "id"), ack.id);
        assert_eq!(answer.header("idempotent-replayed"), Some("true"));
        retried += 1;
    }
    assert!(retried > 0, "no keyed acknowledgement to retry");

    // SIGTERM: drain, flush, exit 0.
    let mut server = server;
    let stop = Instant::now();
    server.terminate();
    let status = server.wait_exit(Duration::from_secs(30));
    let stderr = server.stderr();
    let status = status.unwrap_or_else(|| panic!("no exit 30 s after SIGTERM; stderr:\n{stderr}"));
    assert!(
        status.success(),
        "exit {status} after SIGTERM; stderr:\n{stderr}"
    );
    assert!(stderr.contains("stopped cleanly"), "stderr:\n{stderr}");
    drop(http);

    eprintln!(
        "crash test: ready in {ready_first:?}; {contended} contended applicants first; \
         {sent_at_kill} applicants sent, {acked_at_kill} \
         acknowledged in {rush_time:?} when SIGKILLed; {} acknowledgements in all \
         ({} through alternatives), {failures} requests cut short, refusals {:?}, {} \
         retries checked; restart ready in {recovery_time:?}; {} reservations listed; \
         SIGTERM exit in {:?}; total {:?}",
        acks.len(),
        tally.alternatives_taken.load(Ordering::SeqCst),
        tally.refusals.lock().unwrap(),
        tally.replays_checked.load(Ordering::SeqCst),
        all.len(),
        stop.elapsed(),
        started.elapsed()
    );
}

/// The seats free in the caravans of `city` of `province`, through the public list.
async fn city_seats_free(http: &Http, province: u32, city: &str) -> u64 {
    // The list is a cache at most a few milliseconds stale; read each caravan itself, which is
    // always current, so the count reflects the decision just made.
    let answer = http
        .get(
            &format!("/v1/provinces/{province}/caravans?city={city}"),
            &[],
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.describe());
    let list = answer.json();
    let list = list.as_array().unwrap();
    assert!(!list.is_empty(), "no caravan listed for {city}");
    let mut free = 0;
    for caravan in list {
        let id = caravan["id"].as_str().unwrap();
        let one = http.get(&format!("/v1/caravans/{id}"), &[]).await;
        assert_eq!(one.status, 200, "{}", one.describe());
        free += one.json()["seats_free"].as_u64().unwrap();
    }
    free
}

/// The holder's `GET /v1/waitlist/me`.
async fn waitlist_me(http: &Http, holder: &HolderRow) -> (u16, Value) {
    let answer = http.get_as(holder, "/v1/waitlist/me").await;
    let json = answer.json();
    (answer.status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_list_offers_pass_on_accept_and_expire_over_http() {
    let started = Instant::now();
    let data = DataSet::generate(20_000, 1_500, 11);
    let work = tempfile::tempdir().unwrap();
    // The generated season, with offers that expire after 2 s.
    let season = std::fs::read_to_string(data.path().join("season.toml")).unwrap();
    assert!(season.contains("offer_deadline = \"24h\""), "{season}");
    assert!(season.contains("documents = \"72h\""), "{season}");
    let season = season.replace("offer_deadline = \"24h\"", "offer_deadline = \"2s\"");
    let season_path = work.path().join("season.toml");
    std::fs::write(&season_path, season).unwrap();

    // The city with the fewest seats that still has three more eligible holders than seats.
    let by_city = data.caravans_by_city();
    let ((province, city), seats, holders) = by_city
        .iter()
        .map(|(key, caravans)| {
            let seats: u32 = caravans.iter().map(|c| c.capacity).sum();
            let holders: Vec<HolderRow> = data
                .holders
                .iter()
                .filter(|h| h.eligible() && h.province_id == key.0 && h.city == key.1)
                .cloned()
                .collect();
            (key.clone(), seats, holders)
        })
        .filter(|(_, seats, holders)| holders.len() >= *seats as usize + 3)
        .min_by_key(|(_, seats, _)| *seats)
        .unwrap();
    assert!(seats >= 2, "the story needs two seats to cancel");
    assert!(seats <= 60, "no small city in the data set ({seats} seats)");
    let caravans: Vec<String> = by_city[&(province, city.clone())]
        .iter()
        .flat_map(|c| std::iter::repeat_n(c.id.clone(), c.capacity as usize))
        .collect();

    let server = Server::start(&ServerOptions {
        catalog: data.path(),
        data_dir: &work.path().join("data"),
        log_dir: work.path(),
        name: "waitlist",
        extra_args: vec!["--season".into(), season_path.display().to_string()],
    });
    let http = Http::new(server.addr);

    // Fill every seat of the city.
    let (owners, rest) = holders.split_at(seats as usize);
    let mut reservations = Vec::new();
    for (holder, caravan) in owners.iter().zip(&caravans) {
        let answer = http
            .post("/v1/reservations", &[], &reserve_body(holder, caravan))
            .await;
        assert_eq!(answer.status, 201, "{}", answer.describe());
        reservations.push(str_of(&answer.json(), "id").to_owned());
    }
    assert_eq!(city_seats_free(&http, province, &city).await, 0);
    let answer = http
        .post(
            "/v1/reservations",
            &[],
            &reserve_body(&rest[0], &caravans[0]),
        )
        .await;
    assert_eq!(answer.status, 409, "{}", answer.describe());
    assert_eq!(answer.code().as_deref(), Some("caravan_full"));
    assert_eq!(answer.json()["alternatives"], serde_json::json!([]));

    // Three holders join, latest receipt first, so that join order and receipt order differ.
    let mut waiters: Vec<HolderRow> = rest[..3].to_vec();
    waiters.sort_by(|a, b| b.receipt_date.cmp(&a.receipt_date));
    let mut joined: Vec<(String, usize)> = Vec::new(); // (receipt date, join order)
    for (order, waiter) in waiters.iter().enumerate() {
        let answer = http
            .post("/v1/waitlist", &[], &credentials_body(waiter))
            .await;
        assert_eq!(answer.status, 201, "{}", answer.describe());
        let json = answer.json();
        joined.push((waiter.receipt_date.clone(), order));
        let ahead = joined
            .iter()
            .filter(|&&(ref d, o)| (d, o) < (&waiter.receipt_date, order))
            .count();
        assert_eq!(json["position"].as_u64(), Some(ahead as u64 + 1), "{json}");
        assert_eq!(json["province_id"].as_u64(), Some(u64::from(province)));
    }
    // The queue: receipt date, then join order.
    let mut queue: Vec<usize> = (0..3).collect();
    queue.sort_by(|&a, &b| (&waiters[a].receipt_date, a).cmp(&(&waiters[b].receipt_date, b)));
    let queue: Vec<&HolderRow> = queue.iter().map(|&i| &waiters[i]).collect();
    for (i, waiter) in queue.iter().enumerate() {
        let (status, json) = waitlist_me(&http, waiter).await;
        assert_eq!(status, 200, "{json}");
        assert_eq!(json["position"].as_u64(), Some(i as u64 + 1), "{json}");
        assert!(json.get("offer").is_none_or(Value::is_null), "{json}");
    }

    // The first cancellation: the head waiter is offered the seat and accepts.
    let answer = http
        .delete(
            &format!("/v1/reservations/{}", reservations[0]),
            &holder_headers(&owners[0]),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.describe());
    assert_eq!(str_of(&answer.json(), "status"), "cancelled");
    assert_eq!(city_seats_free(&http, province, &city).await, 0);
    let (status, json) = waitlist_me(&http, queue[0]).await;
    assert_eq!(status, 200, "{json}");
    let offer = &json["offer"];
    assert_eq!(str_of(offer, "status"), "offered", "{json}");
    assert_eq!(str_of(offer, "national_id"), queue[0].national_id);
    assert!(offer["deadline"].is_string(), "{json}");
    let offer_id = str_of(offer, "id").to_owned();
    for (i, waiter) in queue[1..].iter().enumerate() {
        let (status, json) = waitlist_me(&http, waiter).await;
        assert_eq!(status, 200, "{json}");
        assert_eq!(json["position"].as_u64(), Some(i as u64 + 1), "{json}");
    }
    let answer = http
        .post(
            &format!("/v1/reservations/{offer_id}/accept"),
            &[],
            &credentials_body(queue[0]),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.describe());
    let json = answer.json();
    assert_eq!(str_of(&json, "status"), "held", "{json}");
    assert_eq!(str_of(&json, "stage"), "documents", "{json}");
    assert_eq!(city_seats_free(&http, province, &city).await, 0);
    let (status, json) = waitlist_me(&http, queue[0]).await;
    assert_eq!(status, 404, "{json}");
    assert_eq!(str_of(&json, "code"), "not_waiting");

    // The second cancellation: the next waiter is offered the seat and lets it expire.
    let answer = http
        .delete(
            &format!("/v1/reservations/{}", reservations[1]),
            &holder_headers(&owners[1]),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.describe());
    let offered_at = Instant::now();
    assert_eq!(city_seats_free(&http, province, &city).await, 0);
    let (status, json) = waitlist_me(&http, queue[1]).await;
    assert_eq!(status, 200, "{json}");
    let second_offer = str_of(&json["offer"], "id").to_owned();
    assert_eq!(str_of(&json["offer"], "status"), "offered", "{json}");
    let (status, json) = waitlist_me(&http, queue[2]).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["position"].as_u64(), Some(1), "{json}");
    tokio::time::sleep(Duration::from_millis(2_500).saturating_sub(offered_at.elapsed())).await;
    let answer = http
        .get_as(queue[1], &format!("/v1/reservations/{second_offer}"))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.describe());
    let json = answer.json();
    assert_eq!(
        str_of(&json, "status"),
        "expired",
        "offer not expired 2.5 s after it was made with a 2 s deadline: {json}"
    );
    assert_eq!(city_seats_free(&http, province, &city).await, 0);
    let (status, json) = waitlist_me(&http, queue[2]).await;
    assert_eq!(status, 200, "{json}");
    let third_offer = &json["offer"];
    assert_eq!(str_of(third_offer, "status"), "offered", "{json}");
    assert_eq!(str_of(third_offer, "national_id"), queue[2].national_id);
    let third_offer = str_of(third_offer, "id").to_owned();
    // Accepting the expired offer is refused.
    let answer = http
        .post(
            &format!("/v1/reservations/{second_offer}/accept"),
            &[],
            &credentials_body(queue[1]),
        )
        .await;
    assert_eq!(answer.status, 409, "{}", answer.describe());
    assert_eq!(answer.code().as_deref(), Some("invalid_transition"));

    // The last waiter declines: nobody waits any more, so the seat goes back to the pool.
    let answer = http
        .delete(
            &format!("/v1/reservations/{third_offer}"),
            &holder_headers(queue[2]),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.describe());
    assert_eq!(str_of(&answer.json(), "status"), "cancelled");
    assert_eq!(city_seats_free(&http, province, &city).await, 1);
    eprintln!(
        "waiting-list test: {city} (province {province}, {seats} seats); joined with receipts \
         {:?}, queue {:?}; total {:?}",
        waiters.iter().map(|w| &w.receipt_date).collect::<Vec<_>>(),
        queue.iter().map(|w| &w.receipt_date).collect::<Vec<_>>(),
        started.elapsed()
    );
}

#[test]
fn serve_refuses_a_missing_catalog_and_warns_without_durability() {
    let work = tempfile::tempdir().unwrap();
    let missing = work.path().join("no-such-catalog");
    let out = Command::new(crate::support::miqat_bin())
        .arg("serve")
        .arg("--catalog")
        .arg(&missing)
        .arg("--data-dir")
        .arg(work.path().join("data"))
        .arg("--listen")
        .arg(crate::support::free_addr().to_string())
        .env_remove("MIQAT_DURABILITY")
        .env_remove("MIQAT_SEASON")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "started without a catalog: {stderr}");
    assert!(
        stderr.contains(missing.to_str().unwrap()),
        "the error does not name {}: {stderr}",
        missing.display()
    );

    let data = DataSet::generate(2_000, 300, 5);
    let mut server = Server::start(&ServerOptions {
        catalog: data.path(),
        data_dir: &work.path().join("data"),
        log_dir: work.path(),
        name: "no-durability",
        extra_args: vec!["--durability".into(), "none".into()],
    });
    let stderr = server.stderr();
    assert!(
        stderr.contains("WARNING") && stderr.contains("durability none"),
        "no loud warning: {stderr}"
    );
    server.terminate();
    let status = server.wait_exit(Duration::from_secs(30));
    let stderr = server.stderr();
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?} after SIGTERM: {stderr}"
    );
    assert!(stderr.contains("stopped cleanly"), "{stderr}");
}

/// The waiting room as a holder meets it: the generated season with a room on its main wave
/// (open already), a reservation refused without a pass, joining, polling as `Retry-After`
/// says until admitted, and reserving with the pass; another holder cannot use it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waiting_room_admits_holders_who_then_reserve_with_their_pass_over_http() {
    let data = DataSet::generate(5_000, 900, 12);
    let work = tempfile::tempdir().unwrap();
    let mut season = std::fs::read_to_string(data.path().join("season.toml")).unwrap();
    let second_wave = season.match_indices("\n[[wave]]").nth(1).unwrap().0 + 1;
    season.insert_str(
        second_wave,
        "[wave.room]\noutflow = 50\npass_lifetime = \"5m\"\n\n",
    );
    let season_path = work.path().join("season.toml");
    std::fs::write(&season_path, season).unwrap();
    let server = Server::start(&ServerOptions {
        catalog: data.path(),
        data_dir: &work.path().join("data"),
        log_dir: work.path(),
        name: "room",
        extra_args: vec!["--season".into(), season_path.display().to_string()],
    });
    let http = Http::new(server.addr);
    let waves = http.get("/v1/waves", &[]).await.json();
    assert_eq!(waves[0]["waiting_room"], true, "{waves}");

    let by_city = data.caravans_by_city();
    let mut eligible = data
        .holders
        .iter()
        .filter(|h| h.eligible() && by_city.contains_key(&(h.province_id, h.city.clone())));
    let holder = eligible.next().unwrap().clone();
    let other = eligible.next().unwrap().clone();
    let caravan = by_city[&(holder.province_id, holder.city.clone())][0]
        .id
        .clone();

    let refused = http
        .post("/v1/reservations", &[], &reserve_body(&holder, &caravan))
        .await;
    assert_eq!(refused.status, 403, "{}", refused.describe());
    assert_eq!(refused.code().as_deref(), Some("queue_pass_required"));

    let joined = http
        .post("/v1/queue", &[], &credentials_body(&holder))
        .await;
    assert_eq!(joined.status, 200, "{}", joined.describe());
    let mut pass = None;
    for _ in 0..60 {
        let me = http.get("/v1/queue/me", &holder_headers(&holder)).await;
        assert_eq!(me.status, 200, "{}", me.describe());
        let json = me.json();
        if json["status"] == "admitted" {
            pass = json["pass"].as_str().map(str::to_owned);
            break;
        }
        let wait: u64 = me
            .header("retry-after")
            .and_then(|s| s.parse().ok())
            .unwrap();
        tokio::time::sleep(Duration::from_secs(wait.min(2))).await;
    }
    let pass = pass.expect("admitted within a minute at 50 places a second");
    let not_yours = http
        .post(
            "/v1/reservations",
            &[("miqat-queue-pass", &pass)],
            &reserve_body(&other, &caravan),
        )
        .await;
    assert_eq!(not_yours.code().as_deref(), Some("queue_pass_not_yours"));
    let reserved = http
        .post(
            "/v1/reservations",
            &[("miqat-queue-pass", &pass)],
            &reserve_body(&holder, &caravan),
        )
        .await;
    assert_eq!(reserved.status, 201, "{}", reserved.describe());
    let metrics = http.get("/metrics", &[]).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(text.contains("miqat_queue_admitted_total"), "{text}");
    assert!(text.contains("# HELP miqat_queue_wait_seconds"), "{text}");
}
