//! One holder's opening day played against the server: refresh the caravan list while
//! waiting, list and reserve at the planned moment, react to each answer as a person would
//! (alternatives or a re-list on `caravan_full`, `Retry-After` with jitter on 429/503, the same
//! `Idempotency-Key` on a retry), then wait-list, cancel or pass operator events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::client::{Answer, Call, Http, NoAnswer, query_value};
use crate::outcome::{Endpoint, Outcome};
use crate::plan::Journey;
use crate::recorder::{Acknowledged, Ending, Unanswered};

mod room;

/// Reservation attempts (caravans tried) per journey at most.
const RESERVE_ATTEMPTS_MAX: u32 = 6;
/// Retries of one request after 429/503 at most.
const SHED_RETRIES_MAX: u32 = 12;
/// Retries of one request after a timeout or a broken connection at most.
const TRANSPORT_RETRIES_MAX: u32 = 3;

/// What every journey of a run shares.
pub struct Context {
    /// The client.
    pub http: Arc<Http>,
    /// The wave's opening.
    pub opening: Instant,
    /// Prefix of every `Idempotency-Key`.
    pub key_prefix: String,
    /// `Bearer <token>` for operator events; `None` skips them.
    pub operator_authorization: Option<String>,
    /// The server's wave has a waiting room: holders join it and reserve with its pass.
    pub waiting_room: bool,
}

impl Context {
    /// The instant `ms` milliseconds after the opening (before it if negative).
    pub fn at(&self, ms: i64) -> Instant {
        let offset = Duration::from_millis(ms.unsigned_abs());
        if ms >= 0 {
            self.opening + offset
        } else {
            self.opening.checked_sub(offset).unwrap_or(self.opening)
        }
    }
}

#[derive(Deserialize)]
struct Listed {
    id: String,
    seats_free: u32,
}

#[derive(Deserialize)]
struct ReservationBody {
    id: String,
    caravan_id: String,
    created_at: String,
}

#[derive(Deserialize)]
struct WaitlistBody {
    offer: Option<ReservationBody>,
}

#[derive(Serialize)]
struct ReserveBody<'a> {
    national_id: &'a str,
    tracking_code: &'a str,
    caravan_id: &'a str,
}

#[derive(Serialize)]
struct CredentialsBody<'a> {
    national_id: &'a str,
    tracking_code: &'a str,
}

/// A journey in progress.
struct Walk<'a> {
    ctx: &'a Context,
    j: &'a Journey,
    rng: ChaCha8Rng,
    /// When the last answer arrived: a person does not click before seeing it.
    last_done: Instant,
    list: Vec<Listed>,
    etag: Option<String>,
    decided: Option<Instant>,
    /// Intended send time of the attempt that got the last answer.
    last_intended: Instant,
    /// Reservation attempts so far: each gets its own `Idempotency-Key`.
    attempts: u32,
    /// The waiting room's pass, once admitted.
    pass: Option<String>,
}

enum Seat {
    Taken { id: String, at: Instant },
    Lost(Ending),
}

/// Plays journey `j`; records its requests and ending.
pub async fn run(ctx: Arc<Context>, j: Journey) {
    let mut walk = Walk {
        ctx: &ctx,
        j: &j,
        rng: ChaCha8Rng::seed_from_u64(j.rng),
        last_done: ctx.at(j.start_ms),
        list: Vec::new(),
        etag: None,
        decided: None,
        last_intended: ctx.at(j.start_ms),
        attempts: 0,
        pass: None,
    };
    let (ending, seat) = walk.play().await;
    // Time to a seat measures the rush, so seats from a waiting list (minutes later) are not
    // in it.
    let time_to_seat = match (&seat, walk.decided, ending) {
        (Some((_, at)), Some(decided), Ending::Seated) => {
            Some(at.saturating_duration_since(decided))
        }
        _ => None,
    };
    ctx.http.recorder().ending(ending, time_to_seat);
    // Cancellations and stage events are planned to fit before the horizon from the
    // holder's moment to act; a seat from the waiting list comes too late for them, and
    // leaving them out by plan, not by clock, keeps the requests independent of timing.
    if let (Some((id, _)), Ending::Seated) = (seat, ending) {
        walk.after_seat(&id).await;
    }
}

impl<'a> Walk<'a> {
    fn think(&mut self) -> Duration {
        let ms = f64::from(self.j.think_ms) * self.rng.random_range(0.5..1.5);
        Duration::from_millis(ms as u64)
    }

    fn next_after(&self, planned: Instant) -> Instant {
        planned.max(self.last_done)
    }

    async fn play(&mut self) -> (Ending, Option<(String, Instant)>) {
        if self.ctx.waiting_room {
            match self.through_room().await {
                room::Exit::Admitted | room::Exit::NoRoom => {}
                room::Exit::SoldOut if self.j.waitlist => return self.wait_list().await,
                room::Exit::SoldOut => return (Ending::SoldOut, None),
                room::Exit::Failed => return (Ending::Failed, None),
            }
        } else if let Some(seat) = self.wait_for_opening().await {
            return (Ending::Seated, Some(seat));
        }
        let act = self.next_after(self.ctx.at(self.j.act_ms));
        self.decided = Some(act);
        if self.list_caravans(act).await.is_err() {
            return (Ending::Failed, None);
        }
        if self.j.wrong_credentials {
            let at = self.last_done + self.think();
            let first = self.list.first().map(|c| c.id.clone());
            let pick = self.j.picks.first().cloned().or(first).unwrap_or_default();
            // A server that seats a holder on wrong credentials has still seated them.
            let answer = self.reserve_once(&pick, "wrong", true, at).await;
            if let Some(seat) = self.seated_by(answer) {
                return (Ending::Seated, Some(seat));
            }
        }
        match self.reserve_loop().await {
            Seat::Taken { id, at } => (Ending::Seated, Some((id, at))),
            Seat::Lost(Ending::SoldOut) if self.j.waitlist => self.wait_list().await,
            Seat::Lost(ending) => (ending, None),
        }
    }

    /// The seat a 201 gave, acknowledged; `None` for any other answer.
    fn seated_by(&mut self, answer: Result<Answer, NoAnswer>) -> Option<(String, Instant)> {
        let answer = answer.ok().filter(|a| a.status == 201)?;
        let id = self.acknowledge(&answer)?;
        Some((id, self.last_done))
    }

    /// Refreshes the list until the planned moment; an eager holder clicks once too early
    /// (and is seated if the server took it).
    async fn wait_for_opening(&mut self) -> Option<(String, Instant)> {
        // An eager click comes between refreshes, never before the holder arrived.
        let mut click = self.j.early_click_ms.map(|c| c.max(self.j.start_ms));
        if self.j.refresh_ms > 0 {
            let mut t = self.j.start_ms;
            while t < self.j.act_ms {
                if let Some(c) = click.filter(|c| *c <= t) {
                    click = None;
                    if let Some(seat) = self.click_early(c).await {
                        return Some(seat);
                    }
                }
                let at = self.next_after(self.ctx.at(t));
                let _ = self.list_caravans(at).await;
                // Every planned refresh is sent, none before the previous answer: a slow
                // answer delays the next ones (measured from their planned time) rather than
                // dropping them, so the requests a plan sends do not depend on timing.
                t += i64::from(self.j.refresh_ms);
            }
        }
        match click {
            Some(c) => self.click_early(c).await,
            None => None,
        }
    }

    async fn click_early(&mut self, click_ms: i64) -> Option<(String, Instant)> {
        // A holder whose city has no caravan has nothing to click.
        let caravan = self.j.picks.first().cloned()?;
        let at = self.next_after(self.ctx.at(click_ms));
        let answer = self.reserve_once(&caravan, "early", false, at).await;
        let seat = self.seated_by(answer);
        if seat.is_some() {
            self.decided = Some(at);
        }
        seat
    }

    /// Sends a body-less request that carries the holder's credentials as headers.
    async fn send_as_holder(
        &mut self,
        endpoint: Endpoint,
        method: Method,
        path: &str,
        at: Instant,
    ) -> Result<Answer, NoAnswer> {
        let headers = self.credentials();
        self.send(Call {
            endpoint,
            method,
            path,
            body: None,
            headers: &headers,
            intended: at,
            wrong_credentials: false,
        })
        .await
    }

    fn credentials(&self) -> [(&'static str, &'a str); 2] {
        let j: &'a Journey = self.j;
        [
            ("x-national-id", j.national_id.as_str()),
            ("x-tracking-code", j.tracking_code.as_str()),
        ]
    }

    /// Sends one request, retrying after 429/503 (`Retry-After` plus jitter) and after lost
    /// answers (backoff), each retry identical to the first.
    async fn send(&mut self, first: Call<'_>) -> Result<Answer, NoAnswer> {
        let (mut intended, mut shed, mut lost) = (first.intended, 0, 0);
        loop {
            let result = self
                .ctx
                .http
                .call(Call {
                    method: first.method.clone(),
                    body: first.body.clone(),
                    intended,
                    ..first
                })
                .await;
            self.last_done = Instant::now();
            self.last_intended = intended;
            let recorder = self.ctx.http.recorder();
            match &result {
                Ok(a) if a.outcome == Outcome::Shed && shed < SHED_RETRIES_MAX => {
                    recorder.retry();
                    shed += 1;
                    let wait = a.retry_after_s.unwrap_or(1.0).clamp(0.0, 60.0)
                        * self.rng.random_range(1.0..1.5);
                    intended = self.last_done + Duration::from_secs_f64(wait);
                }
                Err(_) if lost < TRANSPORT_RETRIES_MAX => {
                    recorder.retry();
                    lost += 1;
                    let wait = 0.25 * f64::from(1u32 << lost) * self.rng.random_range(0.5..1.5);
                    intended = self.last_done + Duration::from_secs_f64(wait);
                }
                _ => return result,
            }
        }
    }

    /// Lists the city's caravans (conditional on the last `ETag`).
    async fn list_caravans(&mut self, at: Instant) -> Result<(), NoAnswer> {
        let path = format!(
            "/v1/provinces/{}/caravans?city={}",
            self.j.province_id,
            query_value(&self.j.city)
        );
        let etag = self.etag.clone();
        let headers: Vec<(&'static str, &str)> = etag
            .as_deref()
            .map(|e| ("if-none-match", e))
            .into_iter()
            .collect();
        let answer = self
            .send(Call {
                endpoint: Endpoint::List,
                method: Method::GET,
                path: &path,
                body: None,
                headers: &headers,
                intended: at,
                wrong_credentials: false,
            })
            .await?;
        if answer.status == 200
            && let Ok(list) = serde_json::from_slice::<Vec<Listed>>(&answer.body)
        {
            self.list = list;
            self.etag = answer.etag;
        }
        Ok(())
    }

    fn choose(&self, tried: &[String]) -> Option<String> {
        let free = |id: &str| {
            !tried.iter().any(|t| t == id)
                && self.list.iter().any(|c| c.id == id && c.seats_free > 0)
        };
        self.j.picks.iter().find(|p| free(p)).cloned().or_else(|| {
            self.list
                .iter()
                .find(|c| c.seats_free > 0 && !tried.contains(&c.id))
                .map(|c| c.id.clone())
        })
    }

    async fn reserve_once(
        &mut self,
        caravan: &str,
        key_suffix: &str,
        wrong_credentials: bool,
        at: Instant,
    ) -> Result<Answer, NoAnswer> {
        let tracking_code = if wrong_credentials {
            "00000000"
        } else {
            self.j.tracking_code.as_str()
        };
        let body = reserve_body(&self.j.national_id, tracking_code, caravan);
        let key = format!("{}-{}-{key_suffix}", self.ctx.key_prefix, self.j.id);
        let pass = self.pass.clone();
        let mut headers = vec![("idempotency-key", key.as_str())];
        if let Some(pass) = &pass {
            headers.push((room::PASS_HEADER, pass.as_str()));
        }
        let answer = self
            .send(Call {
                endpoint: Endpoint::Reserve,
                method: Method::POST,
                path: "/v1/reservations",
                body: Some(body.clone()),
                headers: &headers,
                intended: at,
                wrong_credentials,
            })
            .await;
        if answer.is_err() {
            // The server may have reserved without answering: the check resends it.
            self.ctx.http.recorder().unanswered(Unanswered {
                key,
                body: String::from_utf8_lossy(&body).into_owned(),
                national_id: self.j.national_id.clone(),
                pass: self.pass.clone(),
            });
        }
        answer
    }

    async fn reserve_loop(&mut self) -> Seat {
        let mut tried: Vec<String> = Vec::new();
        let mut candidate = self.choose(&tried);
        for _ in 0..RESERVE_ATTEMPTS_MAX {
            let Some(caravan) = candidate.take() else {
                return Seat::Lost(Ending::SoldOut);
            };
            tried.push(caravan.clone());
            let at = self.last_done + self.think();
            // One key per attempt over the whole journey: a key never carries two bodies.
            let attempt = self.attempts;
            self.attempts += 1;
            let key_suffix = attempt.to_string();
            let answer = if self.j.double_submit && attempt == 0 {
                self.double_submit(&caravan, &key_suffix, at).await
            } else {
                self.reserve_once(&caravan, &key_suffix, false, at).await
            };
            let Ok(answer) = answer else {
                return Seat::Lost(Ending::Failed);
            };
            match (answer.status, answer.code()) {
                (201, _) => match self.acknowledge(&answer) {
                    Some(id) => {
                        return Seat::Taken {
                            id,
                            at: self.last_done,
                        };
                    }
                    None => return Seat::Lost(Ending::Failed),
                },
                (409, Some("caravan_full")) => {
                    candidate = if self.j.relist_on_full {
                        let at = self.last_done + self.think();
                        if self.list_caravans(at).await.is_err() {
                            return Seat::Lost(Ending::Failed);
                        }
                        self.choose(&tried)
                    } else {
                        let alternatives = answer.problem.map(|p| p.alternatives);
                        let fresh: Vec<String> = alternatives
                            .unwrap_or_default()
                            .into_iter()
                            .map(|a| a.id)
                            .filter(|id| !tried.contains(id))
                            .take(2)
                            .collect();
                        (!fresh.is_empty())
                            .then(|| fresh[self.rng.random_range(0..fresh.len())].clone())
                    };
                }
                (409, Some("already_reserved")) => {
                    let id = answer.problem.and_then(|p| p.reservation_id);
                    return match id {
                        Some(id) => Seat::Taken {
                            id,
                            at: self.last_done,
                        },
                        None => Seat::Lost(Ending::Failed),
                    };
                }
                (403, Some("registration_not_open")) => candidate = Some(caravan),
                (403, Some("not_called" | "receipt_needs_conversion")) => {
                    return Seat::Lost(Ending::NotCalled);
                }
                (409, Some("registration_ended")) => return Seat::Lost(Ending::SoldOut),
                (403, Some("queue_pass_required" | "queue_pass_expired")) => {
                    // The room (again): queue, then try the same caravan with the pass.
                    match self.through_room().await {
                        room::Exit::Admitted | room::Exit::NoRoom => candidate = Some(caravan),
                        room::Exit::SoldOut => return Seat::Lost(Ending::SoldOut),
                        room::Exit::Failed => return Seat::Lost(Ending::Failed),
                    }
                }
                _ => return Seat::Lost(Ending::Failed),
            }
        }
        Seat::Lost(Ending::SoldOut)
    }

    /// An impatient double click: the same request twice with one key; the answers must agree.
    async fn double_submit(
        &mut self,
        caravan: &str,
        key_suffix: &str,
        at: Instant,
    ) -> Result<Answer, NoAnswer> {
        let second_at = at + self.think() / 4;
        let mut twin = Walk {
            ctx: self.ctx,
            j: self.j,
            rng: ChaCha8Rng::seed_from_u64(self.j.rng ^ 0x5eed),
            last_done: self.last_done,
            list: Vec::new(),
            etag: None,
            decided: None,
            last_intended: self.last_intended,
            attempts: self.attempts,
            pass: self.pass.clone(),
        };
        let (first, second) = tokio::join!(
            self.reserve_once(caravan, key_suffix, false, at),
            twin.reserve_once(caravan, key_suffix, false, second_at)
        );
        self.last_done = self.last_done.max(twin.last_done);
        if let (Ok(a), Ok(b)) = (&first, &second)
            && let Some(text) = idempotency_disagreement(a, b)
        {
            self.ctx.http.recorder().violation(format!(
                "holder {}: one Idempotency-Key, two answers: {text}",
                self.j.national_id
            ));
        }
        match (&first, &second) {
            (Ok(a), _) if a.status == 201 => first,
            (_, Ok(b)) if b.status == 201 => second,
            (Err(_), Ok(_)) => second,
            _ => first,
        }
    }

    /// Records a 201 or accepted offer; returns the reservation id.
    fn acknowledge(&mut self, answer: &Answer) -> Option<String> {
        let recorder = self.ctx.http.recorder();
        let Ok(body) = serde_json::from_slice::<ReservationBody>(&answer.body) else {
            recorder.violation(format!(
                "holder {}: a {} without a reservation in its body",
                self.j.national_id, answer.status
            ));
            return None;
        };
        // First come, first served is judged on the attempt that was answered (after any
        // 429/503 retries), not on the first try.
        let intended = self.last_intended;
        if answer.status == 201
            && let Ok(ts) = body.created_at.parse::<jiff::Timestamp>()
        {
            recorder.arrival(intended, ts.as_millisecond());
        }
        recorder.acknowledged(Acknowledged {
            id: body.id.clone(),
            national_id: self.j.national_id.clone(),
            caravan_id: body.caravan_id,
        });
        Some(body.id)
    }

    async fn wait_list(&mut self) -> (Ending, Option<(String, Instant)>) {
        let body = Bytes::from(
            serde_json::to_vec(&CredentialsBody {
                national_id: &self.j.national_id,
                tracking_code: &self.j.tracking_code,
            })
            .unwrap_or_default(),
        );
        let at = self.last_done + self.think();
        let joined = self
            .send(Call {
                endpoint: Endpoint::WaitlistJoin,
                method: Method::POST,
                path: "/v1/waitlist",
                body: Some(body),
                headers: &[],
                intended: at,
                wrong_credentials: false,
            })
            .await;
        match joined {
            Ok(a) if a.status == 201 => {}
            Ok(a) if a.code() == Some("seats_available") => {
                // Seats came back while the list was stale: one more round.
                let at = self.last_done + self.think();
                if self.list_caravans(at).await.is_ok()
                    && let Seat::Taken { id, at } = self.reserve_loop().await
                {
                    return (Ending::Seated, Some((id, at)));
                }
                return (Ending::SoldOut, None);
            }
            Ok(a) if !a.outcome.is_failure() => return (Ending::SoldOut, None),
            _ => return (Ending::Failed, None),
        }
        for _ in 0..self.j.waitlist_polls {
            // Jitter only shortens the period, so the looks end within the planned hour.
            let period = f64::from(self.j.waitlist_poll_ms) * self.rng.random_range(0.5..1.0);
            let at = self.last_done + Duration::from_millis(period as u64);
            let Ok(answer) = self
                .send_as_holder(Endpoint::WaitlistPoll, Method::GET, "/v1/waitlist/me", at)
                .await
            else {
                continue;
            };
            let offer = serde_json::from_slice::<WaitlistBody>(&answer.body)
                .ok()
                .and_then(|w| w.offer);
            if let Some(offer) = offer
                && let Some(seat) = self.accept(&offer.id).await
            {
                return (Ending::SeatedFromWaitlist, Some(seat));
            }
        }
        (Ending::Waitlisted, None)
    }

    async fn accept(&mut self, id: &str) -> Option<(String, Instant)> {
        let at = self.last_done + self.think();
        let path = format!("/v1/reservations/{id}/accept");
        let answer = self
            .send_as_holder(Endpoint::Accept, Method::POST, &path, at)
            .await
            .ok()?;
        let answer = match answer.status {
            200 => answer,
            // A retried accept whose first try took effect is refused: read the offer back.
            409 => self.read_reservation(id).await.filter(|a| {
                serde_json::from_slice::<serde_json::Value>(&a.body)
                    .is_ok_and(|v| v["status"] == "held")
            })?,
            _ => return None,
        };
        let id = self.acknowledge(&answer)?;
        Some((id, self.last_done))
    }

    async fn read_reservation(&mut self, id: &str) -> Option<Answer> {
        let at = self.last_done;
        let path = format!("/v1/reservations/{id}");
        self.send_as_holder(Endpoint::Read, Method::GET, &path, at)
            .await
            .ok()
            .filter(|a| a.status == 200)
    }

    /// A cancellation, or the operator's stage events, on the holder's reservation.
    async fn after_seat(&mut self, id: &str) {
        let path = format!("/v1/reservations/{id}");
        if let Some(after_ms) = self.j.cancel_after_ms {
            let at = self.last_done + Duration::from_millis(u64::from(after_ms));
            let _ = self
                .send_as_holder(Endpoint::Cancel, Method::DELETE, &path, at)
                .await;
            return;
        }
        let Some(authorization) = self.ctx.operator_authorization.clone() else {
            return;
        };
        let path = format!("{path}/events");
        let headers = [("authorization", authorization.as_str())];
        for event in &self.j.events {
            let at = self.last_done + Duration::from_millis(u64::from(event.after_ms));
            let body = Bytes::from(
                serde_json::to_vec(&serde_json::json!({ "kind": event.kind })).unwrap_or_default(),
            );
            let answer = self
                .send(Call {
                    endpoint: Endpoint::Event,
                    method: Method::POST,
                    path: &path,
                    body: Some(body),
                    headers: &headers,
                    intended: at,
                    wrong_credentials: false,
                })
                .await;
            if !matches!(answer, Ok(ref a) if a.status == 200) {
                break;
            }
        }
    }
}

fn reserve_body(national_id: &str, tracking_code: &str, caravan_id: &str) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&ReserveBody {
            national_id,
            tracking_code,
            caravan_id,
        })
        .unwrap_or_default(),
    )
}

/// Why two answers to one `Idempotency-Key` contradict each other, if they do. A refusal
/// may be decided afresh on a retry (only acknowledgements are remembered), so only two
/// different reservations for one key, or a 201 beside another live reservation, contradict.
fn idempotency_disagreement(a: &Answer, b: &Answer) -> Option<String> {
    let id = |x: &Answer| {
        serde_json::from_slice::<ReservationBody>(&x.body)
            .ok()
            .map(|r| r.id)
    };
    match (a.status, b.status) {
        (201, 201) if id(a) != id(b) => Some("two different reservations".into()),
        (201, 409) | (409, 201) => {
            let (ok, refused) = if a.status == 201 { (a, b) } else { (b, a) };
            let live = refused
                .problem
                .as_ref()
                .and_then(|p| p.reservation_id.clone());
            (refused.code() == Some("already_reserved") && live != id(ok))
                .then(|| "201 beside already_reserved for another reservation".into())
        }
        _ => None,
    }
}
