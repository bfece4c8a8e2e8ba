//! What bounds a client connection, as pure decisions: the stage a connection is in, when that
//! stage expires, and which connection to shed when a pool is full. The accept loop
//! (`shell/serve.rs`) and the connection instrumentation (`shell/conn.rs`) feed events in and
//! act on the answers; everything here is plain data and `Instant`s, so every rule is
//! unit-tested.
//!
//! Stages, each bounded in time:
//! - `handshake`: TCP accepted, TLS not finished.
//! - `headers`: waiting for a request's headers: from the handshake for the first request; for
//!   later HTTP/1.1 requests from their first byte.
//! - `body`: headers in, until the handler has the body and has answered.
//! - `response`: the answer is being written (a client that stops reading stalls here).
//! - `idle`: a kept-alive connection with no request open.

use std::time::{Duration, Instant};

/// Time bounds per stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub handshake: Duration,
    pub headers: Duration,
    pub body: Duration,
    pub response: Duration,
    pub idle: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            handshake: Duration::from_secs(5),
            headers: Duration::from_secs(5),
            body: Duration::from_secs(10),
            response: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Handshake,
    Headers,
    Body,
    Response,
    Idle,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Handshake => "handshake",
            Stage::Headers => "headers",
            Stage::Body => "body",
            Stage::Response => "response",
            Stage::Idle => "idle",
        }
    }

    fn bound(self, bounds: &Bounds) -> Duration {
        match self {
            Stage::Handshake => bounds.handshake,
            Stage::Headers => bounds.headers,
            Stage::Body => bounds.body,
            Stage::Response => bounds.response,
            Stage::Idle => bounds.idle,
        }
    }
}

/// Identifies an open request within its connection.
pub type RequestId = u64;

/// Where one connection is, from the events its instrumentation reports.
#[derive(Debug, Clone)]
pub struct Progress {
    accepted: Instant,
    handshaken: bool,
    /// Requests answered in full on this connection.
    completed: u64,
    /// Open requests (one for HTTP/1.1; up to the stream limit for HTTP/2): stage and since.
    open: Vec<(RequestId, Stage, Instant)>,
    next_id: RequestId,
    /// With no request open: since when the connection waits, and whether bytes of the next
    /// request have arrived (HTTP/1.1), which turns the wait from `idle` into `headers`.
    waiting_since: Instant,
    next_request_started: bool,
}

/// How eagerly a connection is shed when a pool is full: lower first. `None`: never (the
/// server is writing an answer on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ShedRank {
    /// 0: has not completed a request yet; 1: has (it has proven to be a working client).
    class: u8,
    /// Since when the connection has been waiting on its client: the oldest go first.
    since: Instant,
}

impl Progress {
    pub fn new(accepted: Instant) -> Self {
        Self {
            accepted,
            handshaken: false,
            completed: 0,
            open: Vec::new(),
            next_id: 0,
            waiting_since: accepted,
            next_request_started: false,
        }
    }

    pub fn handshake_done(&mut self, now: Instant) {
        self.handshaken = true;
        self.waiting_since = now;
    }

    /// HTTP/1.1 bytes arrived. Returns true when that moved the deadline earlier (the watchdog
    /// must re-arm): an idle connection now owes its headers within the headers bound.
    pub fn bytes_read(&mut self, now: Instant) -> bool {
        if !self.handshaken || !self.open.is_empty() || self.completed == 0 {
            // The first request's headers are already timed from the handshake.
            return false;
        }
        if self.next_request_started {
            return false;
        }
        self.next_request_started = true;
        self.waiting_since = now;
        true
    }

    /// A request's headers are complete: it is in the `body` stage.
    pub fn request_started(&mut self, now: Instant) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        self.open.push((id, Stage::Body, now));
        self.next_request_started = false;
        id
    }

    /// The handler answered: the response is being written.
    pub fn responding(&mut self, id: RequestId, now: Instant) {
        if let Some(entry) = self.open.iter_mut().find(|(i, _, _)| *i == id) {
            entry.1 = Stage::Response;
            entry.2 = now;
        }
    }

    /// The response was written in full (`completed`), or the request was abandoned.
    pub fn request_done(&mut self, id: RequestId, now: Instant, completed: bool) {
        self.open.retain(|(i, _, _)| *i != id);
        if completed {
            self.completed += 1;
        }
        if self.open.is_empty() {
            self.waiting_since = now;
            self.next_request_started = false;
        }
    }

    pub fn completed(&self) -> u64 {
        self.completed
    }

    pub fn open_requests(&self) -> usize {
        self.open.len()
    }

    /// The stage that expires first, and when.
    pub fn deadline(&self, bounds: &Bounds) -> (Stage, Instant) {
        if !self.handshaken {
            return (Stage::Handshake, self.accepted + bounds.handshake);
        }
        if let Some((stage, at)) = self
            .open
            .iter()
            .map(|&(_, stage, since)| (stage, since + stage.bound(bounds)))
            .min_by_key(|&(_, at)| at)
        {
            return (stage, at);
        }
        let stage = if self.completed == 0 || self.next_request_started {
            Stage::Headers
        } else {
            Stage::Idle
        };
        (stage, self.waiting_since + stage.bound(bounds))
    }

    /// The stage to report for this connection now (for logs and metrics when it is shed).
    pub fn stage(&self, bounds: &Bounds) -> Stage {
        self.deadline(bounds).0
    }

    /// How eagerly to shed this connection to make room for a new one.
    pub fn shed_rank(&self) -> Option<ShedRank> {
        if self
            .open
            .iter()
            .any(|(_, stage, _)| *stage == Stage::Response)
        {
            return None;
        }
        let since = self
            .open
            .iter()
            .map(|&(_, _, since)| since)
            .min()
            .unwrap_or(self.waiting_since);
        Some(if self.completed == 0 {
            ShedRank {
                class: 0,
                since: self.accepted,
            }
        } else {
            ShedRank { class: 1, since }
        })
    }

    /// Like [`Self::shed_rank`], for freeing request slots: only connections with a request
    /// still waiting on its client (body stage) qualify, the longest waiting first, whatever
    /// the connection did before (a slow body is no better for following a good request).
    pub fn request_shed_rank(&self) -> Option<ShedRank> {
        if self
            .open
            .iter()
            .any(|(_, stage, _)| *stage == Stage::Response)
        {
            return None;
        }
        let since = self
            .open
            .iter()
            .filter(|(_, stage, _)| *stage == Stage::Body)
            .map(|&(_, _, since)| since)
            .min()?;
        Some(ShedRank { class: 0, since })
    }
}

/// The candidate to shed: lowest rank (not-yet-working clients first, then the longest
/// waiting); `None` when no candidate may be shed.
pub fn pick_victim<K>(candidates: impl IntoIterator<Item = (K, Option<ShedRank>)>) -> Option<K> {
    candidates
        .into_iter()
        .filter_map(|(key, rank)| Some((rank?, key)))
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, key)| key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn bounds() -> Bounds {
        Bounds {
            handshake: secs(1),
            headers: secs(2),
            body: secs(3),
            response: secs(4),
            idle: secs(50),
        }
    }

    #[test]
    fn each_stage_has_its_own_deadline() {
        let t0 = Instant::now();
        let b = bounds();
        let mut p = Progress::new(t0);
        assert_eq!(p.deadline(&b), (Stage::Handshake, t0 + secs(1)));
        p.handshake_done(t0 + secs(1));
        // The first request's headers are due from the handshake, bytes or not.
        assert_eq!(p.deadline(&b), (Stage::Headers, t0 + secs(3)));
        assert!(!p.bytes_read(t0 + secs(2)));
        assert_eq!(p.deadline(&b), (Stage::Headers, t0 + secs(3)));
        let id = p.request_started(t0 + secs(2));
        assert_eq!(p.deadline(&b), (Stage::Body, t0 + secs(5)));
        p.responding(id, t0 + secs(3));
        assert_eq!(p.deadline(&b), (Stage::Response, t0 + secs(7)));
        p.request_done(id, t0 + secs(4), true);
        assert_eq!(p.deadline(&b), (Stage::Idle, t0 + secs(54)));
        // The next request's first byte: its headers are due within the headers bound.
        assert!(p.bytes_read(t0 + secs(10)), "deadline moved earlier");
        assert_eq!(p.deadline(&b), (Stage::Headers, t0 + secs(12)));
        assert!(
            !p.bytes_read(t0 + secs(11)),
            "the first byte counts, not the last"
        );
        assert_eq!(p.deadline(&b), (Stage::Headers, t0 + secs(12)));
        let id = p.request_started(t0 + secs(11));
        assert_eq!(p.deadline(&b), (Stage::Body, t0 + secs(14)));
        p.request_done(id, t0 + secs(12), true);
        assert_eq!(p.completed(), 2);
        assert_eq!(p.deadline(&b), (Stage::Idle, t0 + secs(62)));
    }

    #[test]
    fn bytes_before_the_handshake_or_during_a_request_change_nothing() {
        let t0 = Instant::now();
        let b = bounds();
        let mut p = Progress::new(t0);
        assert!(!p.bytes_read(t0));
        p.handshake_done(t0);
        let id = p.request_started(t0);
        assert!(!p.bytes_read(t0 + secs(1)));
        assert_eq!(p.deadline(&b), (Stage::Body, t0 + secs(3)));
        p.request_done(id, t0 + secs(1), true);
        assert_eq!(p.stage(&b), Stage::Idle);
    }

    #[test]
    fn concurrent_streams_expire_by_the_earliest() {
        let t0 = Instant::now();
        let b = bounds();
        let mut p = Progress::new(t0);
        p.handshake_done(t0);
        let a = p.request_started(t0);
        let c = p.request_started(t0 + secs(2));
        p.responding(a, t0 + secs(1));
        // a: response due at 5; c: body due at 5 too, then a finishes.
        assert_eq!(p.deadline(&b).1, t0 + secs(5));
        p.request_done(a, t0 + secs(2), true);
        assert_eq!(p.deadline(&b), (Stage::Body, t0 + secs(5)));
        assert_eq!(p.open_requests(), 1);
        p.request_done(c, t0 + secs(3), false);
        assert_eq!(p.completed(), 1, "an abandoned request is not completed");
        assert_eq!(p.deadline(&b), (Stage::Idle, t0 + secs(53)));
    }

    #[test]
    fn connections_that_never_answered_are_shed_first_then_the_longest_waiting() {
        let t0 = Instant::now();
        let fresh = |at: u64| {
            let mut p = Progress::new(t0 + secs(at));
            p.handshake_done(t0 + secs(at));
            p
        };
        let worked = |accepted: u64, idle_from: u64| {
            let mut p = fresh(accepted);
            let id = p.request_started(t0 + secs(accepted));
            p.request_done(id, t0 + secs(idle_from), true);
            p
        };
        let handshaking = Progress::new(t0 + secs(9));
        let stalled_first_body = {
            let mut p = fresh(8);
            p.request_started(t0 + secs(8));
            p
        };
        let busy = {
            let mut p = fresh(0);
            let id = p.request_started(t0);
            p.responding(id, t0);
            p
        };
        let idle_long = worked(1, 2);
        let idle_short = worked(0, 7);

        let rank = |p: &Progress| p.shed_rank();
        assert_eq!(
            pick_victim([
                ("idle_long", rank(&idle_long)),
                ("handshaking", rank(&handshaking)),
                ("stalled_first_body", rank(&stalled_first_body)),
                ("busy", rank(&busy)),
            ]),
            Some("stalled_first_body"),
            "of the two that never completed a request, the older goes first"
        );
        assert_eq!(
            pick_victim([
                ("idle_short", rank(&idle_short)),
                ("idle_long", rank(&idle_long)),
                ("busy", rank(&busy))
            ]),
            Some("idle_long")
        );
        assert_eq!(pick_victim([("busy", rank(&busy))]), None);
        assert_eq!(pick_victim::<&str>([]), None);

        // Freeing a request slot: only connections holding a request in its body stage, the
        // longest waiting first, even one that completed requests before.
        assert_eq!(idle_long.request_shed_rank(), None);
        assert_eq!(busy.request_shed_rank(), None);
        let stalled_later_body = {
            let mut p = worked(0, 1);
            p.request_started(t0 + secs(2));
            p
        };
        let rank = |p: &Progress| p.request_shed_rank();
        assert_eq!(
            pick_victim([
                ("stalled_first_body", rank(&stalled_first_body)),
                ("stalled_later_body", rank(&stalled_later_body)),
                ("idle_long", rank(&idle_long)),
            ]),
            Some("stalled_later_body")
        );
    }
}
