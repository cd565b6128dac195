//! The leader's side of sessions and leases (docs/design/leases.md), around the pure
//! `LeaseTable`: session streams (keepalives, invalidations and their acknowledgements),
//! grants on reads, and the wait of a commit for the invalidations of the keys it writes.
//! Lease-table keys are protobuf-encoded `Key`s.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cffs_proto::error_code::status;
use cffs_proto::limits::{INLINE_DATA_MAX, NAME_LEN_MAX, TXN_BYTES_MAX, TXN_KEYS_MAX};
use cffs_proto::{
    session_event, session_request, CommitRequest, ErrorCode, Invalidate, KeepaliveAck, Key, LeaseGrant, LeaseMetrics,
    SessionEvent, SessionOpened, SessionRequest,
};
use futures::Stream;
use prost::Message;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tonic::Status;

use super::leases::{CommittedWrite, LeaseConfig, LeaseTable, OpenRefused, WriteRefused};
use super::read_index::ReadIndex;
use super::session_ids;
use crate::clock::Clock;
use crate::constants::{REQUEST_TIMEOUT, SESSION_EVENTS_QUEUE_MAX, SESSION_KEEPALIVES_IN_FLIGHT_MAX};
use crate::storage::fail_stop::Health;
use crate::storage::KvEngine;

pub type EventStream = Pin<Box<dyn Stream<Item = Result<SessionEvent, Status>> + Send>>;

/// The table key of a wire key.
pub fn lease_key(key: &Key) -> Vec<u8> {
    key.encode_to_vec()
}

/// Every key a commit writes (`CommitRequest::written_keys`), as the lease table names them.
pub fn written_keys(request: &CommitRequest) -> BTreeSet<Vec<u8>> {
    request.written_keys().iter().map(lease_key).collect()
}

struct State {
    table: LeaseTable,
    /// The cluster's stored settings are known here and equal this replica's: until then no
    /// session opens, no lease is granted and no commit is proposed (a predecessor may have
    /// leased keys under settings this replica has not applied yet).
    settings_confirmed: bool,
    streams: BTreeMap<u64, mpsc::Sender<Result<SessionEvent, Status>>>,
    commits_waited: u64,
    commit_wait: Duration,
    /// Keepalives answered with a renewal.
    keepalives: u64,
}

impl State {
    /// Syncs the table with `term`; a table that started over closes every stream.
    fn sync(&mut self, term: Option<u64>, now: Instant) {
        if self.table.sync_term(term, now) {
            self.streams.clear();
        }
    }
}

/// Shared by the metadata service's handlers.
#[derive(Clone)]
pub struct Sessions {
    state: Arc<Mutex<State>>,
    acked: Arc<Notify>,
    /// Where session-number reservations are recorded (`session_ids`).
    engine: Arc<dyn KvEngine>,
    /// This replica's clock: every instant in the table is one of its readings.
    clock: Clock,
    /// Tripped by a reservation that fails (an engine error or a record that fails its crc):
    /// the replica stops serving.
    health: Arc<Health>,
}

/// Marks a write's keys pending until dropped.
pub struct WriteGuard {
    sessions: Sessions,
    keys: BTreeSet<Vec<u8>>,
    /// The term this write began in: its invalidations were sent, and its keys marked, in
    /// that term's lease table. A new term starts a new table, so the write must be
    /// proposed in this term or not at all (`batcher.rs`).
    term: Option<u64>,
}

impl WriteGuard {
    pub fn term(&self) -> Option<u64> {
        self.term
    }

    /// Keeps the keys pending until this replica has applied every entry logged so far (an
    /// entry whose outcome is unknown may still apply), then releases them.
    pub fn release_when_applied(self, raft: crate::metadata::MetaRaft) {
        let logged = raft.metrics().borrow().last_log_index;
        tokio::spawn(async move {
            let _ = raft.wait(None).applied_index_at_least(logged, "lease: unknown outcome").await;
            drop(self);
        });
    }
}

impl WriteGuard {
    /// Ends the committed write and leases `leased` (what it wrote whole) to its writer's
    /// session when the table allows (`LeaseTable::end_write_granting`); `round_start` is a
    /// reading of this replica's clock taken before the commit was proposed, and
    /// `still_stored` checks, under the apply lock, that the state holds what it wrote.
    pub fn end_granting(
        mut self,
        current_term: Option<u64>,
        writer: u64,
        leased: &[Key],
        round_start: Instant,
        still_stored: impl FnOnce() -> bool,
    ) -> Option<LeaseGrant> {
        let keys = std::mem::take(&mut self.keys);
        let leased: Vec<Vec<u8>> = leased.iter().map(lease_key).collect();
        let now = self.sessions.clock.now();
        let mut state = self.sessions.lock();
        state.sync(current_term, now);
        if !state.settings_confirmed {
            state.table.end_write_in(self.term, &keys);
            return None;
        }
        let write = CommittedWrite { term: self.term, writer, keys: &keys, leased: &leased };
        let seq = state.table.end_write_granting(write, round_start, now, still_stored);
        seq.map(|seq| LeaseGrant { seq })
    }
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        // Only the marks of this write's own term (`LeaseTable::end_write_in`).
        self.sessions.lock().table.end_write_in(self.term, &self.keys);
    }
}

impl Sessions {
    pub fn new(config: LeaseConfig, engine: Arc<dyn KvEngine>, clock: Clock, health: Arc<Health>) -> Self {
        Sessions {
            state: Arc::new(Mutex::new(State {
                table: LeaseTable::new(config, clock.now()),
                settings_confirmed: false,
                streams: BTreeMap::new(),
                commits_waited: 0,
                keepalives: 0,
                commit_wait: Duration::ZERO,
            })),
            acked: Arc::new(Notify::new()),
            engine,
            clock,
            health,
        }
    }

    /// A reading of this replica's clock (the lease table's time).
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// The cluster's stored settings were applied here and match this replica's.
    pub fn confirm_settings(&self) {
        self.lock().settings_confirmed = true;
    }

    /// Opens a session in the table, reserving session numbers on disk first when the term
    /// has none left in memory. The reservation's fsync happens under the lock: once per
    /// `SESSION_IDS_RESERVED_PER_WRITE` sessions.
    fn open_session(&self, state: &mut State, term: Option<u64>, now: Instant) -> Result<u64, Status> {
        if !state.settings_confirmed {
            return Err(status(ErrorCode::Unavailable, "the cluster settings are not applied here yet"));
        }
        loop {
            match state.table.open_session(term, now) {
                Ok(id) => return Ok(id),
                Err(OpenRefused::NotLeader) => return Err(status(ErrorCode::NotLeader, "not the leader")),
                Err(OpenRefused::TooManySessions) => {
                    return Err(status(ErrorCode::Unavailable, "this leader holds its most sessions (SESSIONS_MAX)"))
                }
                Err(OpenRefused::NeedSessionIds { term }) => match session_ids::reserve(self.engine.as_ref(), term) {
                    Ok(Some(range)) => state.table.add_session_ids(range),
                    Ok(None) => {
                        tracing::warn!(term, "no session id left in this term; sessions resume in a later term");
                        return Err(status(ErrorCode::Unavailable, "this leader has no session id left in its term"));
                    }
                    Err(error) => {
                        let error = self.health.fail(error);
                        return Err(status(ErrorCode::Storage, format!("reserve session ids: {error}")));
                    }
                },
            }
        }
    }

    /// Follows this replica's leadership, so that a new term's quiet span starts when the
    /// term does (not at its first request) and a lost leadership closes every stream at once.
    pub fn watch_leadership(&self, raft: crate::metadata::MetaRaft) {
        let sessions = self.clone();
        tokio::spawn(async move {
            let mut metrics = raft.metrics();
            loop {
                let term = {
                    let m = metrics.borrow_and_update();
                    (m.state == openraft::ServerState::Leader).then_some(m.current_term)
                };
                sessions.lock().sync(term, sessions.clock.now());
                if metrics.changed().await.is_err() {
                    return; // the replica stopped
                }
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("sessions lock")
    }

    /// Grants `session` leases on `keys` for a read whose read-index round started at
    /// `round_start`. Call before reading the state.
    pub fn grant(&self, term: Option<u64>, session: u64, keys: &[Key], round_start: Instant) -> Option<LeaseGrant> {
        if session == 0 {
            return None;
        }
        let keys: Vec<Vec<u8>> = keys.iter().map(lease_key).collect();
        let now = self.clock.now();
        let mut state = self.lock();
        state.sync(term, now);
        if !state.settings_confirmed {
            return None;
        }
        state.table.grant(term, session, &keys, round_start, now).map(|seq| LeaseGrant { seq })
    }

    /// Before proposing a commit by `writer` that writes `keys`: waits out a new leader's
    /// quiet span, sends the invalidations, and waits for their acknowledgements or the
    /// leases' expiry. The guard keeps the keys pending (no new grants) until dropped.
    pub async fn before_write(
        &self,
        term: impl Fn() -> Option<u64>,
        writer: u64,
        keys: BTreeSet<Vec<u8>>,
    ) -> Result<WriteGuard, Status> {
        let deadline = self.clock.now() + REQUEST_TIMEOUT;
        let (wait, began_in) = loop {
            let now = self.clock.now();
            let term = term();
            let begun = {
                let mut state = self.lock();
                state.sync(term, now);
                if !state.settings_confirmed {
                    return Err(status(ErrorCode::Unavailable, "the cluster settings are not applied here yet"));
                }
                state.table.begin_write(term, writer, &keys, now)
            };
            match begun {
                Ok(wait) => break (wait, term),
                Err(WriteRefused::NotLeader) => return Err(status(ErrorCode::NotLeader, "not the leader")),
                Err(WriteRefused::NewLeaderWait(until)) if until <= deadline => self.clock.sleep_until(until).await,
                Err(WriteRefused::TooManyPending) => {
                    return Err(status(
                        ErrorCode::Unavailable,
                        "too many writes in flight on this leader (PENDING_WRITE_KEYS_MAX)",
                    ))
                }
                Err(WriteRefused::NewLeaderWait(_)) => {
                    return Err(status(ErrorCode::Unavailable, "a new leader is waiting out its predecessor's leases"))
                }
            }
        };
        let guard = WriteGuard { sessions: self.clone(), keys, term: began_in };
        {
            let state = self.lock();
            for invalidation in &wait.send {
                let Some(stream) = state.streams.get(&invalidation.session) else {
                    tracing::debug!(
                        session = invalidation.session,
                        seq = invalidation.seq,
                        "holder has no stream; waiting out its lease"
                    );
                    continue;
                };
                tracing::debug!(
                    session = invalidation.session,
                    seq = invalidation.seq,
                    keys = invalidation.keys.len(),
                    "invalidating"
                );
                let keys = invalidation.keys.iter().filter_map(|k| Key::decode(k.as_slice()).ok()).collect();
                let event = SessionEvent {
                    msg: Some(session_event::Msg::Invalidate(Invalidate { seq: invalidation.seq, keys })),
                };
                // A full or closed stream gets nothing: its lease then runs out instead.
                let _ = stream.try_send(Ok(event));
            }
        }
        let started = self.clock.now();
        let mut waited = false;
        #[cfg(madsim)]
        if crate::planted::armed(crate::planted::Bug::SkipLeaseWait) {
            return Ok(guard);
        }
        loop {
            let notified = self.acked.notified();
            let until = self.lock().table.write_blocked_until(&wait.waits, &guard.keys, self.clock.now());
            let Some(until) = until else { break };
            waited = true;
            tokio::select! {
                biased; // deterministic under madsim: no random branch order
                _ = notified => {}
                _ = self.clock.sleep_until(until) => {}
            }
        }
        tracing::debug!(
            waited,
            waits = wait.waits.len(),
            elapsed_ms = self.clock.since(started).as_millis() as u64,
            "write may proceed"
        );
        if waited {
            let mut state = self.lock();
            let blocked = state.table.write_blocked_until(&wait.waits, &guard.keys, self.clock.now());
            debug_assert!(blocked.is_none());
            // Counted as waiting for an expiry only when some holder never answered.
            if wait.waits.iter().any(|(session, seq)| !state.table.acknowledged(*session, *seq)) {
                state.commits_waited += 1;
                state.commit_wait += self.clock.since(started);
            }
        }
        Ok(guard)
    }

    /// Serves one session stream: opens the session (after a read-index round, so only a
    /// leader confirmed by a quorum opens one), then renews it on keepalives and records
    /// acknowledgements, until the client goes away or the session ends.
    pub fn serve(
        &self,
        term: impl Fn() -> Option<u64> + Send + Sync + 'static,
        read_index: ReadIndex,
        mut requests: impl Stream<Item = Result<SessionRequest, Status>> + Send + Unpin + 'static,
    ) -> EventStream {
        use futures::StreamExt;
        let (events, receiver) = mpsc::channel(SESSION_EVENTS_QUEUE_MAX);
        let sessions = self.clone();
        tokio::spawn(async move {
            let Some(Ok(SessionRequest { msg: Some(session_request::Msg::Open(_)) })) = requests.next().await else {
                let _ = events.send(Err(status(ErrorCode::InvalidArgument, "a session stream starts with open"))).await;
                return;
            };
            if let Err(error) = read_index.wait().await {
                let _ = events.send(Err(error.into_status())).await;
                return;
            }
            let opened = {
                let now = sessions.clock.now();
                let mut state = sessions.lock();
                state.sync(term(), now);
                let config = state.table.config();
                let id = sessions.open_session(&mut state, term(), now);
                if let Ok(id) = id {
                    state.streams.insert(id, events.clone());
                }
                id.map(|id| SessionOpened {
                    session_id: id,
                    lease_ms: config.duration.as_millis() as u64,
                    lease_drift_ppm: config.drift_ppm,
                    inline_data_max: INLINE_DATA_MAX as u64,
                    txn_keys_max: TXN_KEYS_MAX as u64,
                    txn_bytes_max: TXN_BYTES_MAX as u64,
                    name_len_max: NAME_LEN_MAX as u64,
                })
            };
            let opened = match opened {
                Ok(opened) => opened,
                Err(refused) => {
                    let _ = events.send(Err(refused)).await;
                    return;
                }
            };
            let id = opened.session_id;
            let _ = events.send(Ok(SessionEvent { msg: Some(session_event::Msg::Opened(opened)) })).await;
            // Keepalives wait for their read-index rounds concurrently with the stream, so an
            // acknowledgement behind a keepalive is recorded at once (a writer may be waiting
            // for it), not after the round.
            let mut rounds = futures::stream::FuturesOrdered::new();
            loop {
                tokio::select! {
                    biased; // deterministic under madsim: no random branch order
                    request = requests.next() => {
                        let Some(Ok(request)) = request else { break };
                        match request.msg {
                            Some(session_request::Msg::Keepalive(keepalive)) => {
                                if rounds.len() >= SESSION_KEEPALIVES_IN_FLIGHT_MAX {
                                    tracing::warn!(session = id, "keepalives sent faster than answered; closing the session");
                                    break;
                                }
                                let read_index = read_index.clone();
                                rounds.push_back(async move { (keepalive.seq, read_index.wait().await) });
                            }
                            Some(session_request::Msg::Ack(ack)) => {
                                sessions.lock().table.acknowledge(id, ack.seq);
                                sessions.acked.notify_waiters();
                            }
                            _ => break,
                        }
                    }
                    Some((seq, round)) = rounds.next(), if !rounds.is_empty() => {
                        let Ok(round_start) = round else { break }; // no longer the leader
                        let renewed = {
                            let mut state = sessions.lock();
                            state.keepalives += 1;
                            state.table.renew(term(), id, round_start, sessions.clock.now())
                        };
                        if !renewed {
                            break;
                        }
                        let ack = SessionEvent { msg: Some(session_event::Msg::KeepaliveAck(KeepaliveAck { seq })) };
                        if events.send(Ok(ack)).await.is_err() {
                            break;
                        }
                    }
                }
            }
            // The stream is gone: the session's leases now run out on their own (the client
            // may not have seen the end yet), so it is not closed here.
            sessions.lock().streams.remove(&id);
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
    }

    pub fn metrics(&self) -> LeaseMetrics {
        let state = self.lock();
        LeaseMetrics {
            sessions: state.table.sessions() as u64,
            leased_keys: state.table.leased_keys() as u64,
            granted: state.table.granted,
            invalidations_sent: state.table.invalidations_sent,
            invalidations_acked: state.table.invalidations_acked,
            commits_waited: state.commits_waited,
            commit_wait_ms: state.commit_wait.as_millis() as u64,
            streams: state.streams.len() as u64,
            keepalives: state.keepalives,
        }
    }
}
