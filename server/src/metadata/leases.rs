//! The leader's lease table (docs/design/leases.md): sessions, the leases granted to them on
//! keys, the writes pending on keys, and the invalidations a write waits for. Pure: time is
//! passed in, nothing is sent from here; the service sends what `begin_write` asks for and
//! reports acknowledgements back. Keys are state-family storage keys (`storage::keys`).
//!
//! Every operation names the term this replica leads (`None` when it does not lead). A
//! table that meets a new term starts over: sessions and leases from before are gone, and for
//! one lease span nothing is granted and no write may be proposed, since the previous
//! leader's grants are unknown here.
//!
//! Session ids are `term << 32 | n`, with `n` drawn from a range the caller reserved durably
//! for the term (`SessionIdRange`): a replica restarted into its stored term leads that term
//! again in a new process, and must never hand out an id its previous process gave to
//! another client (found by chaos seed 4494: a retried commit stamped with the old id dropped
//! the new holder's lease as the writer's own, without an invalidation).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::constants::{LEASED_KEYS_MAX, PENDING_WRITE_KEYS_MAX, SESSIONS_MAX, SESSION_INVALIDATIONS_UNACKED_MAX};

/// Lease settings, the same on the leader and (sent when a session opens) on its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    pub duration: Duration,
    /// The most a clock's rate may differ from real time, in parts per million.
    pub drift_ppm: u32,
}

impl LeaseConfig {
    /// How long the leader honours a grant or renewal: `duration × (1 + drift)` of its clock,
    /// at least `duration` of real time.
    pub fn server_span(&self) -> Duration {
        self.duration + self.duration.mul_f64(f64::from(self.drift_ppm) / 1e6)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Valid until its grant expiry or its session's expiry, whichever is later.
    Held { grant_expiry: Instant },
    /// Invalidated with sequence number `seq`: gone once acknowledged, or at expiry.
    Revoking { grant_expiry: Instant, seq: u64 },
}

impl Hold {
    fn grant_expiry(&self) -> Instant {
        match self {
            Hold::Held { grant_expiry } | Hold::Revoking { grant_expiry, .. } => *grant_expiry,
        }
    }
}

#[derive(Debug)]
struct Session {
    expiry: Instant,
    /// Since when an invalidation has been waiting for this session's acknowledgement.
    unacked_since: Option<Instant>,
    /// The sequence number of the last invalidation sent, and of the last acknowledged.
    sent: u64,
    acked: u64,
    /// The keys of each unacknowledged invalidation, by seq: an acknowledgement visits
    /// those keys only, not the whole table.
    revoking: BTreeMap<u64, Vec<Vec<u8>>>,
}

impl Session {
    /// Too many invalidations unanswered (`SESSION_INVALIDATIONS_UNACKED_MAX`): no more are
    /// sent, and nothing is renewed or granted, until it answers.
    fn saturated(&self) -> bool {
        self.revoking.len() >= SESSION_INVALIDATIONS_UNACKED_MAX
    }
}

/// What a write waits for on a saturated session: no acknowledgement can match it, so the
/// write waits for the session's leases on its keys to expire.
pub const WAIT_FOR_EXPIRY: u64 = u64::MAX;

/// An invalidation to send: `keys` to `session`, numbered `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    pub session: u64,
    pub seq: u64,
    pub keys: Vec<Vec<u8>>,
}

/// What a write must wait for before it is proposed: each (session, seq) acknowledged, or
/// the holder's lease expired.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteWait {
    pub send: Vec<Invalidation>,
    pub waits: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteRefused {
    /// This replica does not lead.
    NotLeader,
    /// A new leader's wait: no write before this instant.
    NewLeaderWait(Instant),
    /// Writes in flight already hold `PENDING_WRITE_KEYS_MAX` pending keys.
    TooManyPending,
}

/// Session numbers `next..end` that this table may hand out in `term`, reserved durably by
/// the caller (no process of this replica ever hands them out again in that term).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionIdRange {
    pub term: u64,
    pub next: u64,
    pub end: u64,
}

/// The most session numbers one term has: they are the low 32 bits of an id.
pub const SESSION_NUMBERS_PER_TERM_MAX: u64 = u32::MAX as u64;
/// The highest term whose session ids fit (the term is the high 32 bits of an id).
pub const SESSION_TERM_MAX: u64 = u32::MAX as u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenRefused {
    /// This replica does not lead.
    NotLeader,
    /// No reserved session number is left for `term`: the caller reserves more durably
    /// (`add_session_ids`) and tries again.
    NeedSessionIds { term: u64 },
    /// `SESSIONS_MAX` live sessions already.
    TooManySessions,
}

/// A committed write ending (`LeaseTable::end_write_granting`): the term it began in, its
/// writer's session, the keys it marked pending, and those it wrote whole.
#[derive(Debug, Clone, Copy)]
pub struct CommittedWrite<'a> {
    pub term: Option<u64>,
    pub writer: u64,
    pub keys: &'a BTreeSet<Vec<u8>>,
    pub leased: &'a [Vec<u8>],
}

#[derive(Debug)]
pub struct LeaseTable {
    config: LeaseConfig,
    term: Option<u64>,
    /// The session numbers this table may still hand out.
    session_ids: Option<SessionIdRange>,
    /// No grant and no write before this (a new leader's wait).
    quiet_until: Instant,
    sessions: BTreeMap<u64, Session>,
    leases: BTreeMap<Vec<u8>, BTreeMap<u64, Hold>>,
    pending: BTreeMap<Vec<u8>, u32>,
    /// When `expire` last swept the whole table.
    swept: Instant,
    /// Counters for metrics.
    pub granted: u64,
    pub invalidations_sent: u64,
    pub invalidations_acked: u64,
}

impl LeaseTable {
    pub fn new(config: LeaseConfig, now: Instant) -> Self {
        LeaseTable {
            config,
            term: None,
            quiet_until: now,
            session_ids: None,
            sessions: BTreeMap::new(),
            leases: BTreeMap::new(),
            pending: BTreeMap::new(),
            swept: now,
            granted: 0,
            invalidations_sent: 0,
            invalidations_acked: 0,
        }
    }

    pub fn config(&self) -> LeaseConfig {
        self.config
    }

    /// Brings the table to `term` (the term this replica leads now, if any). Returns true
    /// when it started over: every session before is gone (the caller closes their streams).
    pub fn sync_term(&mut self, term: Option<u64>, now: Instant) -> bool {
        if self.term == term {
            return false;
        }
        self.term = term;
        self.sessions.clear();
        self.leases.clear();
        // Pending writes of the old term are decided by their own callers; their marks must
        // not block the new term's grants forever.
        self.pending.clear();
        self.quiet_until = now + self.config.server_span();
        #[cfg(madsim)]
        if crate::planted::armed(crate::planted::Bug::SkipNewLeaderWait) {
            self.quiet_until = now;
        }
        true
    }

    /// Opens a session; its first expiry is one span from now (`now` follows the read-index
    /// round the caller ran for it). Its id comes from the range reserved for the term.
    pub fn open_session(&mut self, term: Option<u64>, now: Instant) -> Result<u64, OpenRefused> {
        self.sync_term(term, now);
        let Some(term) = term else { return Err(OpenRefused::NotLeader) };
        if self.sessions.len() >= SESSIONS_MAX {
            self.expire(now);
            if self.sessions.len() >= SESSIONS_MAX {
                return Err(OpenRefused::TooManySessions);
            }
        }
        let number = match &mut self.session_ids {
            Some(range) if range.term == term && range.next < range.end => {
                range.next += 1;
                range.next - 1
            }
            _ => return Err(OpenRefused::NeedSessionIds { term }),
        };
        assert!(term <= SESSION_TERM_MAX && (1..=SESSION_NUMBERS_PER_TERM_MAX).contains(&number));
        // Ids carry the term, so an id from an older term never names a newer session.
        let id = (term << 32) | number;
        let fresh = self.sessions.insert(
            id,
            Session {
                expiry: now + self.config.server_span(),
                unacked_since: None,
                sent: 0,
                acked: 0,
                revoking: BTreeMap::new(),
            },
        );
        assert!(fresh.is_none(), "session id {id} handed out twice");
        Ok(id)
    }

    /// Session numbers `range` may be handed out (the caller made the reservation durable).
    pub fn add_session_ids(&mut self, range: SessionIdRange) {
        assert!(range.next >= 1 && range.next <= range.end && range.end <= SESSION_NUMBERS_PER_TERM_MAX + 1);
        if let Some(old) = self.session_ids.filter(|old| old.term == range.term) {
            assert!(range.next >= old.end, "a reservation never goes back");
        }
        self.session_ids = Some(range);
    }

    /// Renews a session after a read-index round that started at `round_start`. False when
    /// the session is gone (expired, or from another term).
    pub fn renew(&mut self, term: Option<u64>, session: u64, round_start: Instant, now: Instant) -> bool {
        self.sync_term(term, now);
        self.sweep(now);
        match self.sessions.get_mut(&session) {
            // A session past its expiry is dead for good, even while a lease granted with a
            // read keeps it in the table: its other leases may already be forgotten, and a
            // renewal would make its client trust them again.
            // Nor is a session that leaves an invalidation unanswered for a whole lease: its
            // keepalives must not hold a writer back for ever.
            // Nor one with too many invalidations unanswered.
            Some(s)
                if s.expiry > now
                    && !s.saturated()
                    && s.unacked_since.is_none_or(|since| now < since + self.config.duration) =>
            {
                s.expiry = s.expiry.max(round_start + self.config.server_span());
                true
            }
            _ => false,
        }
    }

    pub fn session_live(&self, session: u64, now: Instant) -> bool {
        self.sessions.get(&session).is_some_and(|s| s.expiry > now)
    }

    /// Grants `session` leases on `keys` for a read whose read-index round started at
    /// `round_start`; returns the session's invalidation sequence number at the grant, or
    /// None when nothing is granted (no live session, a new leader's wait, or a write
    /// pending on one of the keys: then no key is leased).
    pub fn grant(
        &mut self,
        term: Option<u64>,
        session: u64,
        keys: &[Vec<u8>],
        round_start: Instant,
        now: Instant,
    ) -> Option<u64> {
        self.sync_term(term, now);
        term?;
        if session == 0 || now < self.quiet_until || !self.session_live(session, now) {
            return None;
        }
        if self.sessions[&session].saturated() {
            return None;
        }
        if keys.iter().any(|key| self.pending.contains_key(key)) {
            return None;
        }
        if self.leases.len() + keys.len() > LEASED_KEYS_MAX {
            self.expire(now);
            if self.leases.len() + keys.len() > LEASED_KEYS_MAX {
                return None;
            }
        }
        let grant_expiry = round_start + self.config.server_span();
        for key in keys {
            let hold =
                self.leases.entry(key.clone()).or_default().entry(session).or_insert(Hold::Held { grant_expiry });
            // A key being revoked from this session stays revoking (its ack is awaited);
            // otherwise the grant is refreshed.
            if let Hold::Held { grant_expiry: old } = hold {
                *old = (*old).max(grant_expiry);
            }
        }
        self.granted += keys.len() as u64;
        Some(self.sessions[&session].sent)
    }

    /// Starts a write of `keys` by `writer` (its session, or 0): marks them pending, drops the
    /// writer's own leases on them, and says which invalidations to send and which to wait
    /// for. Refused when this replica does not lead or is in its new-leader wait.
    pub fn begin_write(
        &mut self,
        term: Option<u64>,
        writer: u64,
        keys: &BTreeSet<Vec<u8>>,
        now: Instant,
    ) -> Result<WriteWait, WriteRefused> {
        self.sync_term(term, now);
        if term.is_none() {
            return Err(WriteRefused::NotLeader);
        }
        if now < self.quiet_until {
            return Err(WriteRefused::NewLeaderWait(self.quiet_until));
        }
        if self.pending.len() + keys.len() > PENDING_WRITE_KEYS_MAX {
            return Err(WriteRefused::TooManyPending);
        }
        self.sweep(now);
        let mut to_send: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
        let mut waits: BTreeSet<(u64, u64)> = BTreeSet::new();
        for key in keys {
            *self.pending.entry(key.clone()).or_default() += 1;
            let Some(holders) = self.leases.get_mut(key) else { continue };
            holders.remove(&writer);
            for (session, hold) in holders.iter() {
                let saturated = self.sessions.get(session).is_some_and(Session::saturated);
                match hold {
                    Hold::Held { .. } if saturated => {
                        waits.insert((*session, WAIT_FOR_EXPIRY));
                    }
                    Hold::Held { .. } => to_send.entry(*session).or_default().push(key.clone()),
                    Hold::Revoking { seq, .. } => {
                        waits.insert((*session, *seq));
                    }
                }
            }
        }
        let mut send = Vec::new();
        for (session, keys) in to_send {
            let state = self.sessions.get_mut(&session).expect("leases belong to live sessions");
            state.sent += 1;
            state.unacked_since.get_or_insert(now);
            let seq = state.sent;
            for key in &keys {
                let hold = self.leases.get_mut(key).and_then(|h| h.get_mut(&session)).expect("collected above");
                if let Hold::Held { grant_expiry } = *hold {
                    *hold = Hold::Revoking { grant_expiry, seq };
                }
            }
            waits.insert((session, seq));
            self.invalidations_sent += 1;
            state.revoking.insert(seq, keys.clone());
            send.push(Invalidation { session, seq, keys });
        }
        // Only the written keys can have lost their last holder (the writer's own lease).
        for key in keys {
            if self.leases.get(key).is_some_and(BTreeMap::is_empty) {
                self.leases.remove(key);
            }
        }
        Ok(WriteWait { send, waits: waits.into_iter().collect() })
    }

    /// Ends a committed write started by `begin_write` (`keys`, by session `writer`) and
    /// grants the writer leases on `leased` (some of `keys`: what it wrote whole), as if it
    /// had read them in a round that started at `round_start` (a reading taken before the
    /// commit was proposed: a quorum accepted the entry after it, so no other leader can have
    /// existed since). Granted only when this write is the only one pending on every leased
    /// key and `still_stored` says the state holds exactly what it wrote there (no later
    /// write applied and ended since): then the state's value is the writer's, and every
    /// later write of the keys begins after the grant and revokes it. Returns the session's
    /// invalidation sequence number at the grant, or None (the write ends either way).
    pub fn end_write_granting(
        &mut self,
        write: CommittedWrite<'_>,
        round_start: Instant,
        now: Instant,
        still_stored: impl FnOnce() -> bool,
    ) -> Option<u64> {
        let CommittedWrite { term, writer, keys, leased } = write;
        // A table of another term holds no pending marks of this write: nothing to end or
        // grant (the caller synced the table to the term it leads now).
        if self.term != term || term.is_none() {
            return None;
        }
        #[cfg(madsim)]
        let unchecked = crate::planted::armed(crate::planted::Bug::CommitLeaseUnchecked);
        #[cfg(not(madsim))]
        let unchecked = false;
        let grantable = writer != 0
            && !leased.is_empty()
            && now >= self.quiet_until
            && self.session_live(writer, now)
            && !self.sessions[&writer].saturated()
            && leased.iter().all(|key| keys.contains(key) && (unchecked || self.pending.get(key) == Some(&1)))
            && self.leases.len() + leased.len() <= LEASED_KEYS_MAX
            && (unchecked || still_stored());
        self.end_write(keys);
        if !grantable {
            return None;
        }
        let grant_expiry = round_start + self.config.server_span();
        for key in leased {
            self.leases.entry(key.clone()).or_default().insert(writer, Hold::Held { grant_expiry });
        }
        self.granted += leased.len() as u64;
        Some(self.sessions[&writer].sent)
    }

    /// Ends a write begun in `term` (whatever its outcome): nothing when the table has moved
    /// to another term since, whose pending marks belong to that term's writes (a replica
    /// that lost and regained leadership while the write was in flight).
    pub fn end_write_in(&mut self, term: Option<u64>, keys: &BTreeSet<Vec<u8>>) {
        if self.term == term {
            self.end_write(keys);
        }
    }

    /// Ends a write started by `begin_write` (whatever its outcome).
    pub fn end_write(&mut self, keys: &BTreeSet<Vec<u8>>) {
        for key in keys {
            if let Some(count) = self.pending.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    self.pending.remove(key);
                }
            }
        }
    }

    /// Records that `session` acknowledged every invalidation up to `seq`.
    pub fn acknowledge(&mut self, session: u64, seq: u64) {
        let Some(state) = self.sessions.get_mut(&session) else { return };
        if seq <= state.acked || seq > state.sent {
            return;
        }
        self.invalidations_acked += seq - state.acked;
        state.acked = seq;
        if state.acked == state.sent {
            state.unacked_since = None;
        }
        let still_revoking = state.revoking.split_off(&(seq + 1));
        let acknowledged = std::mem::replace(&mut state.revoking, still_revoking);
        for key in acknowledged.into_values().flatten() {
            let Some(holders) = self.leases.get_mut(&key) else { continue };
            if let Some(Hold::Revoking { seq: revoked, .. }) = holders.get(&session) {
                if *revoked <= seq {
                    holders.remove(&session);
                }
            }
            if holders.is_empty() {
                self.leases.remove(&key);
            }
        }
    }

    /// When a write may be proposed: None when every awaited invalidation is acknowledged or
    /// expired; else the latest instant it must still wait until (if no ack comes).
    pub fn write_blocked_until(&self, waits: &[(u64, u64)], keys: &BTreeSet<Vec<u8>>, now: Instant) -> Option<Instant> {
        let mut until: Option<Instant> = None;
        for &(session, seq) in waits {
            let Some(state) = self.sessions.get(&session) else { continue };
            if state.acked >= seq {
                continue;
            }
            // The latest expiry of this session's revoked leases on the written keys.
            let expiry = keys
                .iter()
                .filter_map(|key| self.leases.get(key).and_then(|holders| holders.get(&session)))
                .map(Hold::grant_expiry)
                .max()
                .map_or(state.expiry, |grant| grant.max(state.expiry));
            if expiry > now {
                until = Some(until.map_or(expiry, |u| u.max(expiry)));
            }
        }
        until
    }

    /// `expire`, at most every quarter lease: a sweep walks the whole table, which a commit
    /// or keepalive should not pay each time. Nothing depends on it for safety: a lease that
    /// ran out costs a needless invalidation at most (`write_blocked_until` checks expiry),
    /// and `renew` checks the session's own expiry.
    fn sweep(&mut self, now: Instant) {
        if now >= self.swept + self.config.duration / 4 {
            self.expire(now);
        }
    }

    /// Drops expired sessions and the leases nobody can hold any more.
    pub fn expire(&mut self, now: Instant) {
        self.swept = now;
        let sessions = &self.sessions;
        for holders in self.leases.values_mut() {
            holders
                .retain(|session, hold| sessions.get(session).is_some_and(|s| s.expiry.max(hold.grant_expiry()) > now));
        }
        self.leases.retain(|_, holders| !holders.is_empty());
        let leased: BTreeSet<u64> = self.leases.values().flat_map(|h| h.keys().copied()).collect();
        self.sessions.retain(|id, s| s.expiry > now || leased.contains(id));
    }

    /// True when `session` acknowledged invalidation `seq` (false for a session gone).
    pub fn acknowledged(&self, session: u64, seq: u64) -> bool {
        self.sessions.get(&session).is_some_and(|s| s.acked >= seq)
    }

    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    pub fn leased_keys(&self) -> usize {
        self.leases.len()
    }
}

// Real time only: madsim's clock exists only inside a simulation.
#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    const TERM: Option<u64> = Some(3);

    fn config() -> LeaseConfig {
        LeaseConfig { duration: Duration::from_secs(1), drift_ppm: 10_000 }
    }

    fn keys(names: &[&str]) -> BTreeSet<Vec<u8>> {
        names.iter().map(|n| n.as_bytes().to_vec()).collect()
    }

    /// A table past its new-leader wait, with one session.
    fn table() -> (LeaseTable, Instant, u64) {
        let start = Instant::now();
        let mut table = LeaseTable::new(config(), start);
        table.add_session_ids(SessionIdRange { term: 3, next: 1, end: 100 });
        table.sync_term(TERM, start);
        let now = start + config().server_span();
        let session = table.open_session(TERM, now).unwrap();
        (table, now, session)
    }

    #[test]
    fn a_new_leader_grants_nothing_and_writes_nothing_for_one_span() {
        let start = Instant::now();
        let mut table = LeaseTable::new(config(), start);
        table.add_session_ids(SessionIdRange { term: 3, next: 1, end: 100 });
        let session = table.open_session(TERM, start).unwrap();
        assert_eq!(table.grant(TERM, session, &[b"k".to_vec()], start, start), None);
        let during = start + Duration::from_millis(500);
        assert!(matches!(table.begin_write(TERM, 0, &keys(&["k"]), during), Err(WriteRefused::NewLeaderWait(_))));
        let after = start + config().server_span();
        assert!(table.begin_write(TERM, 0, &keys(&["k"]), after).is_ok());
    }

    #[test]
    fn a_write_invalidates_other_holders_and_waits_for_their_ack() {
        let (mut table, now, reader) = table();
        let writer = table.open_session(TERM, now).unwrap();
        assert_eq!(table.grant(TERM, reader, &[b"k".to_vec()], now, now), Some(0));
        assert_eq!(table.grant(TERM, writer, &[b"k".to_vec()], now, now), Some(0));
        let written = keys(&["k"]);
        let wait = table.begin_write(TERM, writer, &written, now).unwrap();
        assert_eq!(wait.send, vec![Invalidation { session: reader, seq: 1, keys: vec![b"k".to_vec()] }]);
        assert!(table.write_blocked_until(&wait.waits, &written, now).is_some(), "blocked until acked");
        // While pending, no new lease on the key.
        assert_eq!(table.grant(TERM, reader, &[b"k".to_vec()], now, now), None);
        table.acknowledge(reader, 1);
        assert_eq!(table.write_blocked_until(&wait.waits, &written, now), None);
        table.end_write(&written);
        assert_eq!(table.grant(TERM, reader, &[b"k".to_vec()], now, now), Some(1));
    }

    #[test]
    fn a_committed_write_leases_its_keys_to_the_writer_and_a_later_write_revokes_them() {
        let (mut table, now, writer) = table();
        let other = table.open_session(TERM, now).unwrap();
        let written = keys(&["inode", "parent"]);
        let leased = vec![b"inode".to_vec()];
        table.begin_write(TERM, writer, &written, now).unwrap();
        let seq = table.end_write_granting(
            CommittedWrite { term: TERM, writer, keys: &written, leased: &leased },
            now,
            now,
            || true,
        );
        assert_eq!(seq, Some(0));
        assert_eq!(table.leased_keys(), 1, "only the key written whole is leased");
        // The write ended: its keys are grantable again (to another reader).
        assert_eq!(table.grant(TERM, other, &[b"parent".to_vec()], now, now), Some(0));
        // Another session's write of the key revokes the writer's lease.
        let wait = table.begin_write(TERM, other, &keys(&["inode"]), now).unwrap();
        assert_eq!(wait.send, vec![Invalidation { session: writer, seq: 1, keys: leased.clone() }]);
    }

    #[test]
    fn no_lease_on_commit_while_another_write_is_pending_or_the_value_changed() {
        let (mut table, now, writer) = table();
        let other = table.open_session(TERM, now).unwrap();
        let written = keys(&["k"]);
        let leased = vec![b"k".to_vec()];
        // Two writes of the key in flight: the first to end leases nothing.
        table.begin_write(TERM, writer, &written, now).unwrap();
        table.begin_write(TERM, other, &written, now).unwrap();
        assert_eq!(
            table.end_write_granting(
                CommittedWrite { term: TERM, writer, keys: &written, leased: &leased },
                now,
                now,
                || true
            ),
            None
        );
        table.end_write(&written);
        assert_eq!(table.leased_keys(), 0);
        // Alone, but the state no longer holds what it wrote (a later write applied and
        // ended): nothing.
        table.begin_write(TERM, writer, &written, now).unwrap();
        let mut checked = false;
        let seq = table.end_write_granting(
            CommittedWrite { term: TERM, writer, keys: &written, leased: &leased },
            now,
            now,
            || {
                checked = true;
                false
            },
        );
        assert!(checked && seq.is_none());
        // No session, or a key it did not write: nothing; and the write still ends.
        table.begin_write(TERM, 0, &written, now).unwrap();
        assert_eq!(
            table.end_write_granting(
                CommittedWrite { term: TERM, writer: 0, keys: &written, leased: &leased },
                now,
                now,
                || true
            ),
            None
        );
        table.begin_write(TERM, writer, &written, now).unwrap();
        let stray = vec![b"other".to_vec()];
        assert_eq!(
            table.end_write_granting(
                CommittedWrite { term: TERM, writer, keys: &written, leased: &stray },
                now,
                now,
                || true
            ),
            None
        );
        assert!(table.grant(TERM, other, &leased, now, now).is_some(), "no write is left pending");
        // A write of an earlier term ends nothing and grants nothing in a new term's table.
        table.begin_write(TERM, writer, &written, now).unwrap();
        table.sync_term(Some(4), now);
        table.add_session_ids(SessionIdRange { term: 4, next: 1, end: 100 });
        let later = now + config().server_span();
        let session = table.open_session(Some(4), later).unwrap();
        table.begin_write(Some(4), session, &written, later).unwrap();
        assert_eq!(
            table.end_write_granting(
                CommittedWrite { term: TERM, writer, keys: &written, leased: &leased },
                later,
                later,
                || true
            ),
            None
        );
        table.end_write_in(TERM, &written);
        assert_eq!(table.grant(Some(4), other, &leased, later, later), None, "the new term's write is still pending");
    }

    #[test]
    fn an_acknowledgement_releases_exactly_the_keys_it_acknowledges() {
        let (mut table, now, reader) = table();
        let other = table.open_session(TERM, now).unwrap();
        let all: Vec<Vec<u8>> = ["a", "b", "c"].iter().map(|k| k.as_bytes().to_vec()).collect();
        table.grant(TERM, reader, &all, now, now);
        table.grant(TERM, other, &all, now, now);
        let first = table.begin_write(TERM, 0, &keys(&["a"]), now).unwrap();
        table.end_write(&keys(&["a"]));
        let second = table.begin_write(TERM, 0, &keys(&["b"]), now).unwrap();
        table.end_write(&keys(&["b"]));
        assert_eq!(first.send.len() + second.send.len(), 4, "both holders, two writes");
        // The reader acknowledges the first only: it still holds b (revoking) and c.
        table.acknowledge(reader, 1);
        assert!(table.write_blocked_until(&first.waits, &keys(&["a"]), now).is_some(), "other has not acked");
        table.acknowledge(other, 2);
        assert_eq!(table.write_blocked_until(&first.waits, &keys(&["a"]), now), None);
        assert!(table.write_blocked_until(&second.waits, &keys(&["b"]), now).is_some(), "reader has not acked b");
        assert_eq!(table.leased_keys(), 2, "b (reader revoking) and c (both); a has no holder left");
        table.acknowledge(reader, 2);
        assert_eq!(table.write_blocked_until(&second.waits, &keys(&["b"]), now), None);
        assert_eq!(table.leased_keys(), 1, "c only");
        // c is still held by both: a write of it invalidates both again.
        let third = table.begin_write(TERM, 0, &keys(&["c"]), now).unwrap();
        assert_eq!(third.send.len(), 2);
    }

    #[test]
    fn a_silent_holder_blocks_a_write_only_until_its_lease_expires() {
        let (mut table, now, reader) = table();
        table.grant(TERM, reader, &[b"k".to_vec()], now, now);
        let written = keys(&["k"]);
        let wait = table.begin_write(TERM, 0, &written, now).unwrap();
        let until = table.write_blocked_until(&wait.waits, &written, now).expect("blocked");
        assert_eq!(until, now + config().server_span());
        assert_eq!(table.write_blocked_until(&wait.waits, &written, until), None);
    }

    #[test]
    fn a_second_write_waits_for_the_first_ones_invalidation() {
        let (mut table, now, reader) = table();
        table.grant(TERM, reader, &[b"k".to_vec()], now, now);
        let written = keys(&["k"]);
        let first = table.begin_write(TERM, 0, &written, now).unwrap();
        let second = table.begin_write(TERM, 0, &written, now).unwrap();
        assert!(second.send.is_empty(), "already being revoked");
        assert_eq!(second.waits, first.waits);
        assert!(table.write_blocked_until(&second.waits, &written, now).is_some());
    }

    #[test]
    fn keepalives_extend_a_session_and_its_leases() {
        let (mut table, now, reader) = table();
        table.grant(TERM, reader, &[b"k".to_vec()], now, now);
        let later = now + Duration::from_millis(900);
        assert!(table.renew(TERM, reader, later, later));
        let after_grant = now + config().server_span() + Duration::from_millis(1);
        table.expire(after_grant);
        assert_eq!(table.leased_keys(), 1, "the renewed session still holds the key");
        let after_renewal = later + config().server_span() + Duration::from_millis(1);
        table.expire(after_renewal);
        assert_eq!(table.leased_keys(), 0);
        assert_eq!(table.sessions(), 0);
        assert!(!table.renew(TERM, reader, after_renewal, after_renewal), "an expired session is gone");
    }

    #[test]
    fn a_session_past_its_expiry_cannot_be_renewed_even_while_a_grant_keeps_it() {
        let (mut table, now, reader) = table();
        let late = now + config().server_span() - Duration::from_millis(1);
        table.grant(TERM, reader, &[b"late".to_vec()], late, late);
        let expired = now + config().server_span() + Duration::from_millis(1);
        assert!(!table.renew(TERM, reader, expired, expired));
    }

    #[test]
    fn a_session_that_leaves_an_invalidation_unanswered_for_a_lease_is_not_renewed() {
        let (mut table, now, reader) = table();
        table.grant(TERM, reader, &[b"k".to_vec()], now, now);
        let written = keys(&["k"]);
        table.begin_write(TERM, 0, &written, now).unwrap();
        let soon = now + Duration::from_millis(100);
        assert!(table.renew(TERM, reader, soon, soon), "an answer may still come");
        let late = now + config().duration;
        assert!(!table.renew(TERM, reader, late, late));
    }

    #[test]
    fn a_new_term_forgets_every_session() {
        let (mut table, now, reader) = table();
        table.grant(TERM, reader, &[b"k".to_vec()], now, now);
        assert!(table.sync_term(Some(4), now));
        assert!(!table.session_live(reader, now));
        assert_eq!(table.grant(Some(4), reader, &[b"k".to_vec()], now, now), None);
        assert!(matches!(table.begin_write(None, 0, &keys(&["k"]), now), Err(WriteRefused::NotLeader)));
    }

    #[test]
    fn session_ids_come_only_from_a_reserved_range_of_the_term() {
        let start = Instant::now();
        let mut table = LeaseTable::new(config(), start);
        assert_eq!(table.open_session(TERM, start), Err(OpenRefused::NeedSessionIds { term: 3 }));
        assert_eq!(table.open_session(None, start), Err(OpenRefused::NotLeader));
        table.add_session_ids(SessionIdRange { term: 3, next: 7, end: 9 });
        assert_eq!(table.open_session(TERM, start), Ok((3 << 32) | 7));
        assert_eq!(table.open_session(TERM, start), Ok((3 << 32) | 8));
        assert_eq!(table.open_session(TERM, start), Err(OpenRefused::NeedSessionIds { term: 3 }));
        // A range reserved for another term is no use in this one.
        assert_eq!(table.open_session(Some(4), start), Err(OpenRefused::NeedSessionIds { term: 4 }));
        table.add_session_ids(SessionIdRange { term: 4, next: 1, end: 2 });
        assert_eq!(table.open_session(Some(4), start), Ok((4 << 32) | 1));
    }

    #[test]
    fn sessions_and_leased_keys_are_bounded() {
        let start = Instant::now();
        let mut table = LeaseTable::new(config(), start);
        table.add_session_ids(SessionIdRange { term: 3, next: 1, end: SESSIONS_MAX as u64 + 10 });
        for _ in 0..SESSIONS_MAX {
            table.open_session(TERM, start).unwrap();
        }
        assert_eq!(table.open_session(TERM, start), Err(OpenRefused::TooManySessions));
        // Once the sessions have expired, a sweep makes room.
        let later = start + config().server_span() + Duration::from_millis(1);
        let session = table.open_session(TERM, later).unwrap();
        let keys: Vec<Vec<u8>> = (0..LEASED_KEYS_MAX as u32).map(|i| i.to_be_bytes().to_vec()).collect();
        assert!(table.grant(TERM, session, &keys, later, later).is_some());
        assert_eq!(table.grant(TERM, session, &[b"one more".to_vec()], later, later), None);
    }

    #[test]
    fn pending_write_keys_are_bounded() {
        let (mut table, quiet, _) = table();
        let keys: BTreeSet<Vec<u8>> = (0..PENDING_WRITE_KEYS_MAX as u32).map(|i| i.to_be_bytes().to_vec()).collect();
        assert!(table.begin_write(TERM, 0, &keys, quiet).is_ok());
        let more: BTreeSet<Vec<u8>> = [b"one more".to_vec()].into();
        assert_eq!(table.begin_write(TERM, 0, &more, quiet).err(), Some(WriteRefused::TooManyPending));
        // A write that ends makes room again.
        table.end_write(&keys);
        assert!(table.begin_write(TERM, 0, &more, quiet).is_ok());
    }

    #[test]
    fn a_session_that_leaves_too_many_invalidations_unanswered_gets_no_more() {
        let (mut table, now, session) = table();
        let key = |i: usize| format!("k{i}").into_bytes();
        let max = SESSION_INVALIDATIONS_UNACKED_MAX;
        for i in 0..max {
            assert!(table.grant(TERM, session, &[key(i)], now, now).is_some());
            let wait = table.begin_write(TERM, 0, &[key(i)].into(), now).unwrap();
            assert_eq!(wait.send.len(), 1, "invalidation {i} is sent");
            table.end_write(&[key(i)].into());
        }
        // At the bound: nothing more is granted, nothing renewed.
        assert_eq!(table.grant(TERM, session, &[b"fresh".to_vec()], now, now), None);
        assert!(!table.renew(TERM, session, now, now));
        // A lease it still holds is waited out, not invalidated.
        table.acknowledge(session, 1);
        assert!(table.grant(TERM, session, &[b"held".to_vec()], now, now).is_some());
        let held: BTreeSet<Vec<u8>> = [b"held".to_vec()].into();
        // One more unanswered invalidation brings it back to the bound.
        assert!(table.grant(TERM, session, &[key(max)], now, now).is_some());
        assert_eq!(table.begin_write(TERM, 0, &[key(max)].into(), now).unwrap().send.len(), 1);
        table.end_write(&[key(max)].into());
        let wait = table.begin_write(TERM, 0, &held, now).unwrap();
        assert!(wait.send.is_empty(), "{wait:?}");
        assert_eq!(wait.waits, vec![(session, WAIT_FOR_EXPIRY)]);
        let expiry = table.write_blocked_until(&wait.waits, &held, now).expect("waits for the lease");
        assert!(expiry > now);
        // An acknowledgement of everything sent does not release a wait for expiry.
        table.acknowledge(session, max as u64 + 1);
        assert_eq!(table.write_blocked_until(&wait.waits, &held, now), Some(expiry));
        assert_eq!(table.write_blocked_until(&wait.waits, &held, expiry), None);
        table.end_write(&held);
        // Answered, the session is served again.
        assert!(table.renew(TERM, session, now, now));
        assert!(table.grant(TERM, session, &[b"fresh".to_vec()], now, now).is_some());
    }

    #[test]
    #[should_panic(expected = "a reservation never goes back")]
    fn a_reservation_of_the_same_term_never_goes_back() {
        let mut table = LeaseTable::new(config(), Instant::now());
        table.add_session_ids(SessionIdRange { term: 3, next: 10, end: 20 });
        table.add_session_ids(SessionIdRange { term: 3, next: 5, end: 30 });
    }
}
