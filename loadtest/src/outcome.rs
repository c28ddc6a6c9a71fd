//! Honest outcome classes: correct rejections are counted apart from failures, and the
//! endpoints the plan exercises.

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// 2xx.
    Ok,
    /// 304: the cached list was still current.
    NotModified,
    /// A correct refusal the plan expects in a rush (`caravan_full`, `already_reserved`,
    /// `not_called`, the planned wrong credentials, ...).
    Rejected,
    /// 429 or 503 carrying `Retry-After`: load shed as the contract says.
    Shed,
    /// A 4xx the client did nothing to deserve.
    Unexpected,
    /// 5xx (other than a 503 with `Retry-After`).
    ServerError,
    /// No answer within the timeout.
    Timeout,
    /// Connection refused or reset, or a broken answer.
    Transport,
}

impl Outcome {
    /// Every class, in report order.
    pub const ALL: [Outcome; 8] = [
        Outcome::Ok,
        Outcome::NotModified,
        Outcome::Rejected,
        Outcome::Shed,
        Outcome::Unexpected,
        Outcome::ServerError,
        Outcome::Timeout,
        Outcome::Transport,
    ];

    /// The class's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NotModified => "not_modified",
            Outcome::Rejected => "rejected",
            Outcome::Shed => "shed",
            Outcome::Unexpected => "unexpected",
            Outcome::ServerError => "server_error",
            Outcome::Timeout => "timeout",
            Outcome::Transport => "transport",
        }
    }

    /// Whether this class counts as a failure of the server.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Outcome::Unexpected | Outcome::ServerError | Outcome::Timeout | Outcome::Transport
        )
    }

    /// Classifies an answer. `wrong_credentials_planned`: the request carried credentials the
    /// plan made wrong on purpose, so 401 is the right answer.
    pub fn of_answer(
        status: u16,
        code: Option<&str>,
        has_retry_after: bool,
        wrong_credentials_planned: bool,
    ) -> Outcome {
        match status {
            200..=299 => Outcome::Ok,
            304 => Outcome::NotModified,
            429 | 503 if has_retry_after => Outcome::Shed,
            // Shedding without saying when to come back leaves clients to hammer.
            429 => Outcome::ServerError,
            401 if wrong_credentials_planned => Outcome::Rejected,
            403 | 409 if code.is_some_and(is_rush_refusal) => Outcome::Rejected,
            404 if code == Some("not_waiting") => Outcome::Rejected,
            400..=499 => Outcome::Unexpected,
            _ => Outcome::ServerError,
        }
    }
}

/// Codes a correct server gives during a rush to a well-behaved client.
fn is_rush_refusal(code: &str) -> bool {
    matches!(
        code,
        "caravan_full"
            | "already_reserved"
            | "seats_available"
            | "registration_not_open"
            | "not_called"
            | "receipt_needs_conversion"
            | "registration_ended"
            | "not_waiting"
            | "invalid_transition"
            // The waiting room: a sold-out province, or a wave without a room.
            | "province_sold_out"
            | "no_waiting_room"
    )
}

/// The endpoints a plan exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    /// `GET /v1/provinces/{id}/caravans?city=`.
    List,
    /// `POST /v1/reservations`.
    Reserve,
    /// `POST /v1/waitlist`.
    WaitlistJoin,
    /// `GET /v1/waitlist/me`.
    WaitlistPoll,
    /// `POST /v1/reservations/{id}/accept`.
    Accept,
    /// `DELETE /v1/reservations/{id}`.
    Cancel,
    /// `GET /v1/reservations/{id}`.
    Read,
    /// `POST /v1/reservations/{id}/events` (operator).
    Event,
    /// `POST /v1/queue`.
    QueueJoin,
    /// `GET /v1/queue/me`.
    QueuePoll,
}

impl Endpoint {
    /// Every endpoint, in report order.
    pub const ALL: [Endpoint; 10] = [
        Endpoint::List,
        Endpoint::Reserve,
        Endpoint::WaitlistJoin,
        Endpoint::WaitlistPoll,
        Endpoint::Accept,
        Endpoint::Cancel,
        Endpoint::Read,
        Endpoint::Event,
        Endpoint::QueueJoin,
        Endpoint::QueuePoll,
    ];

    /// The endpoint's name in reports and `--slo` gates.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::List => "list",
            Endpoint::Reserve => "reserve",
            Endpoint::WaitlistJoin => "waitlist_join",
            Endpoint::WaitlistPoll => "waitlist_poll",
            Endpoint::Accept => "accept",
            Endpoint::Cancel => "cancel",
            Endpoint::Read => "read",
            Endpoint::Event => "event",
            Endpoint::QueueJoin => "queue_join",
            Endpoint::QueuePoll => "queue_poll",
        }
    }

    /// The endpoint called `name`, if any.
    pub fn parse(name: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: u16, code: Option<&str>, retry: bool, wrong: bool, expect: Outcome) {
        assert_eq!(Outcome::of_answer(status, code, retry, wrong), expect);
    }

    #[test]
    fn refusals_are_told_from_failures() {
        check(201, None, false, false, Outcome::Ok);
        check(304, None, false, false, Outcome::NotModified);
        check(409, Some("caravan_full"), false, false, Outcome::Rejected);
        check(503, Some("overloaded"), true, false, Outcome::Shed);
        check(503, Some("overloaded"), false, false, Outcome::ServerError);
        check(
            429,
            Some("rate_limited"),
            false,
            false,
            Outcome::ServerError,
        );
        check(404, Some("not_waiting"), false, false, Outcome::Rejected);
        check(
            404,
            Some("reservation_not_found"),
            false,
            false,
            Outcome::Unexpected,
        );
        check(
            401,
            Some("invalid_credentials"),
            false,
            true,
            Outcome::Rejected,
        );
        check(
            401,
            Some("invalid_credentials"),
            false,
            false,
            Outcome::Unexpected,
        );
        check(
            403,
            Some("province_mismatch"),
            false,
            false,
            Outcome::Unexpected,
        );
        check(
            500,
            Some("internal_error"),
            false,
            false,
            Outcome::ServerError,
        );
    }
}
