//! A holder's way through the waiting room, as the protocol asks: join (`POST /v1/queue`) on
//! arrival, poll `GET /v1/queue/me` no sooner than its `Retry-After` says (with its `ETag`),
//! and keep the pass it gives once admitted for the reservation. A holder told their
//! province is sold out stops waiting.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use rand::Rng;
use serde::Deserialize;

use super::{CredentialsBody, Walk};
use crate::client::{Answer, Call};
use crate::outcome::Endpoint;

/// The header a reservation carries its pass in.
pub(super) const PASS_HEADER: &str = "miqat-queue-pass";
/// How long a holder keeps waiting in the room at most.
const WAIT_MAX: Duration = Duration::from_secs(30 * 60);
/// The poll interval when the server gives none, in seconds.
const POLL_DEFAULT_S: f64 = 1.0;

/// How a holder left the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Exit {
    /// Admitted: the pass is kept.
    Admitted,
    /// Every seat of the province is taken.
    SoldOut,
    /// The holder's wave has no room (another wave admits them): reserve without a pass.
    NoRoom,
    /// No answer, or one the protocol does not expect.
    Failed,
}

#[derive(Deserialize)]
struct Standing {
    status: String,
    pass: Option<String>,
}

impl Walk<'_> {
    /// Joins the room at the holder's arrival and polls until admitted (the pass is then in
    /// `self.pass`), told the province is sold out, or [`WAIT_MAX`] passed.
    pub(super) async fn through_room(&mut self) -> Exit {
        let give_up = Instant::now() + WAIT_MAX;
        let mut at = self.next_after(self.ctx.at(self.j.start_ms));
        let body = Bytes::from(
            serde_json::to_vec(&CredentialsBody {
                national_id: &self.j.national_id,
                tracking_code: &self.j.tracking_code,
            })
            .unwrap_or_default(),
        );
        // Join, waiting for the pre-queue window to open if the holder came before it.
        loop {
            let Ok(answer) = self
                .send(Call {
                    endpoint: Endpoint::QueueJoin,
                    method: Method::POST,
                    path: "/v1/queue",
                    body: Some(body.clone()),
                    headers: &[],
                    intended: at,
                    wrong_credentials: false,
                })
                .await
            else {
                return Exit::Failed;
            };
            match (answer.status, answer.code()) {
                (200, _) => match self.admitted(&answer) {
                    Some(exit) => return exit,
                    None => break,
                },
                (409, Some("queue_not_open")) if Instant::now() < give_up => {
                    at = self.last_done + self.poll_wait(&answer);
                }
                (409, Some("province_sold_out")) => return Exit::SoldOut,
                (409, Some("no_waiting_room")) => return Exit::NoRoom,
                _ => return Exit::Failed,
            }
        }
        let mut etag: Option<String> = None;
        let mut wait = POLL_DEFAULT_S;
        while Instant::now() < give_up {
            let at = self.last_done + self.jittered(wait);
            let mut headers = self.credentials().to_vec();
            if let Some(tag) = &etag {
                headers.push(("if-none-match", tag.as_str()));
            }
            let Ok(answer) = self
                .send(Call {
                    endpoint: Endpoint::QueuePoll,
                    method: Method::GET,
                    path: "/v1/queue/me",
                    body: None,
                    headers: &headers,
                    intended: at,
                    wrong_credentials: false,
                })
                .await
            else {
                return Exit::Failed;
            };
            wait = answer.retry_after_s.unwrap_or(wait).max(0.1);
            match answer.status {
                304 => {}
                200 => {
                    if let Some(exit) = self.admitted(&answer) {
                        return exit;
                    }
                    etag = answer.etag.clone();
                }
                _ => return Exit::Failed,
            }
        }
        Exit::Failed
    }

    /// What a standing answer ends in: admitted (keeping the pass) or sold out; `None` to go
    /// on waiting.
    fn admitted(&mut self, answer: &Answer) -> Option<Exit> {
        let standing: Standing = match serde_json::from_slice(&answer.body) {
            Ok(standing) => standing,
            Err(_) => return Some(Exit::Failed),
        };
        match standing.status.as_str() {
            "admitted" => match standing.pass {
                Some(pass) => {
                    self.pass = Some(pass);
                    Some(Exit::Admitted)
                }
                None => Some(Exit::Failed),
            },
            "sold_out" => Some(Exit::SoldOut),
            _ => None,
        }
    }

    /// How long to wait before asking again after `answer`: its `Retry-After`, jittered.
    fn poll_wait(&mut self, answer: &Answer) -> Duration {
        self.jittered(answer.retry_after_s.unwrap_or(POLL_DEFAULT_S))
    }

    /// `seconds`, stretched by up to a fifth at random, so polls do not arrive in step.
    fn jittered(&mut self, seconds: f64) -> Duration {
        Duration::from_secs_f64(seconds.clamp(0.0, 60.0) * self.rng.random_range(1.0..1.2))
    }
}
