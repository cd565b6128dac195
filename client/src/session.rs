//! The client's side of the session stream (docs/design/leases.md): one background task per
//! `Client` that opens a session on the leader, renews it every quarter lease, applies the
//! leader's invalidations to the cache and acknowledges them. When the stream ends, the cache
//! is dropped and a new session is opened (with the new leader, once known).
//!
//! A session rests while its client is idle (`ClientOptions::session_rest_after` with no
//! transaction begun): it stops renewing, keeps applying and acknowledging invalidations
//! until its leases have surely run out on the leader too (two leases after its last
//! renewal), then ends its stream and drops the cache. So an idle client costs the leader no
//! message at all, and no writer ever waits for a resting client's leases. The next
//! transaction wakes it and a new session opens (that transaction reads without the cache).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use cffs_proto::{session_event, session_request, InvalidateAck, Keepalive, SessionOpen, SessionRequest};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cache::{Cache, CacheKey};
use crate::calls::{Calls, RPC_BACKOFF_MAX, RPC_BACKOFF_MIN, RPC_TIMEOUT};
use crate::error::FsError;

/// What `Client::on_invalidate` calls: the keys invalidated, or `None` for everything.
pub type InvalidationListener = Arc<dyn Fn(Option<&[CacheKey]>) + Send + Sync>;

/// How often a resting session looks whether its client is gone.
const REST_CHECK: Duration = Duration::from_secs(5);

/// When the client last began a transaction, for the session to tell when it is idle.
pub(crate) struct Activity {
    /// The clock reading the others count from.
    base: Instant,
    /// Milliseconds after `base` of the last transaction's start.
    last_ms: AtomicU64,
    /// Set while the session rests: the next transaction wakes it.
    resting: AtomicBool,
    wake: tokio::sync::Notify,
}

impl Activity {
    pub fn new() -> Self {
        Activity {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            resting: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// A transaction began.
    pub fn touch(&self) {
        // SeqCst, with `wait_for_work`'s store and load: one of the two sides always sees
        // the other's write, so a transaction beginning as the session rests wakes it.
        self.last_ms.store(self.base.elapsed().as_millis() as u64, Ordering::SeqCst);
        if self.resting.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    fn idle_for(&self) -> Duration {
        self.base.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::SeqCst)))
    }
}

/// How the session task reaches the rest of the client.
pub(crate) struct SessionLink {
    pub calls: Weak<Calls>,
    pub cache: Arc<Mutex<Cache>>,
    pub listener: Arc<Mutex<Option<InvalidationListener>>>,
    pub activity: Arc<Activity>,
    /// Rest after this long without a transaction (None: never).
    pub rest_after: Option<Duration>,
}

/// How a session ended.
enum Ended {
    /// The stream ended, or the leader stopped answering: open another at once.
    Lost,
    /// The client was idle: open another when a transaction begins.
    Rested,
}

impl SessionLink {
    fn idle(&self) -> bool {
        self.rest_after.is_some_and(|rest| self.activity.idle_for() >= rest)
    }

    /// Waits for the next transaction; false when the client is gone meanwhile.
    async fn wait_for_work(&self) -> bool {
        self.activity.resting.store(true, Ordering::SeqCst);
        // A transaction that began before the flag was set has touched already.
        while self.idle() {
            if self.calls.strong_count() == 0 {
                return false;
            }
            let _ = tokio::time::timeout(REST_CHECK, self.activity.wake.notified()).await;
        }
        self.activity.resting.store(false, Ordering::SeqCst);
        true
    }

    fn tell(&self, keys: Option<&[CacheKey]>) {
        let listener = self.listener.lock().expect("listener lock").clone();
        if let Some(listener) = listener {
            listener(keys);
        }
    }
}

/// Runs sessions for as long as the client exists.
pub(crate) async fn run(link: SessionLink) {
    let mut backoff = RPC_BACKOFF_MIN;
    let mut rotation = 0usize;
    loop {
        if link.calls.strong_count() == 0 {
            return; // the client is gone
        }
        let opened = one_session(&link, &mut rotation).await;
        link.cache.lock().expect("cache lock").session_lost();
        link.tell(None);
        match opened {
            Ok(Ended::Lost) => backoff = RPC_BACKOFF_MIN,
            Ok(Ended::Rested) => {
                tracing::debug!("session rested: the client is idle");
                if !link.wait_for_work().await {
                    return;
                }
                backoff = RPC_BACKOFF_MIN;
            }
            Err(error) => {
                tracing::debug!(%error, "session ended");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RPC_BACKOFF_MAX);
            }
        }
    }
}

/// One session, from open to the end of its stream. `Ok` when a session was opened.
async fn one_session(link: &SessionLink, rotation: &mut usize) -> Result<Ended, FsError> {
    let (client, cache) = (&link.calls, &*link.cache);
    // Held only while opening: the session must not keep its client alive.
    let Some(inner) = client.upgrade() else { return Ok(Ended::Lost) };
    let addr = match inner.leader() {
        Some(leader) => leader,
        None => {
            *rotation += 1;
            inner.endpoints()[*rotation % inner.endpoints().len()].clone()
        }
    };
    let mut grpc = inner.channel(&addr)?;
    let (requests, receiver) = mpsc::channel::<SessionRequest>(64);
    let sent = Instant::now();
    requests
        .send(SessionRequest { msg: Some(session_request::Msg::Open(SessionOpen {})) })
        .await
        .map_err(|_| FsError::Internal("session request queue closed".into()))?;
    let call = grpc.session(tokio_stream::wrappers::ReceiverStream::new(receiver));
    let mut events = match tokio::time::timeout(RPC_TIMEOUT, call).await {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => return Err(follow_hint(&inner, &addr, &status)),
        Err(_) => return Err(FsError::Unavailable(format!("session to {addr} timed out"))),
    };
    let opened = match tokio::time::timeout(RPC_TIMEOUT, events.message()).await {
        Ok(Ok(Some(event))) => match event.msg {
            Some(session_event::Msg::Opened(opened)) => opened,
            _ => return Err(FsError::Internal("a session must open with `opened`".into())),
        },
        Ok(Ok(None)) => return Err(FsError::Unavailable(format!("{addr} closed the session"))),
        Ok(Err(status)) => return Err(follow_hint(&inner, &addr, &status)),
        Err(_) => return Err(FsError::Unavailable(format!("session to {addr} timed out"))),
    };
    let session = opened.session_id;
    let lease = Duration::from_millis(opened.lease_ms);
    cache.lock().expect("cache lock").session_opened(session, lease, opened.lease_drift_ppm, sent);
    inner.set_leader(&addr);
    drop(inner);
    tracing::debug!(session, %addr, "session opened");

    let mut ticker = tokio::time::interval(lease / 4);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate
    let mut keepalives: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut seq = 0u64;
    // When the last renewal (or the open) was answered.
    let mut last_renewal = Instant::now();
    loop {
        tokio::select! {
            biased; // deterministic under madsim: no random branch order
            _ = ticker.tick() => {
                if client.strong_count() == 0 {
                    return Ok(Ended::Lost); // the client is gone
                }
                // A leader that stopped answering keepalives for a whole lease is gone.
                if keepalives.first_key_value().is_some_and(|(_, sent)| sent.elapsed() > lease) {
                    return Ok(Ended::Lost);
                }
                if link.idle() {
                    // Resting: no renewal; the stream ends once the leader's view of the
                    // session has surely expired (its span is the lease plus drift).
                    if keepalives.is_empty() && last_renewal.elapsed() > lease * 2 {
                        return Ok(Ended::Rested);
                    }
                    continue;
                }
                seq += 1;
                keepalives.insert(seq, Instant::now());
                let keepalive = SessionRequest { msg: Some(session_request::Msg::Keepalive(Keepalive { seq })) };
                if requests.send(keepalive).await.is_err() {
                    return Ok(Ended::Lost);
                }
            }
            event = events.message() => {
                let Ok(Some(event)) = event else { return Ok(Ended::Lost) };
                match event.msg {
                    Some(session_event::Msg::KeepaliveAck(ack)) => {
                        if let Some(sent) = keepalives.remove(&ack.seq) {
                            cache.lock().expect("cache lock").renewed(session, sent);
                            last_renewal = Instant::now();
                        }
                        keepalives.retain(|seq, _| *seq > ack.seq);
                    }
                    Some(session_event::Msg::Invalidate(invalidate)) => {
                        let keys: Vec<CacheKey> = invalidate.keys.iter().filter_map(CacheKey::from_wire).collect();
                        tracing::debug!(session, seq = invalidate.seq, ?keys, "invalidation received");
                        #[cfg(madsim)]
                        let keys = if crate::planted::ignore_invalidations() { Vec::new() } else { keys };
                        link.tell(Some(&keys));
                        cache.lock().expect("cache lock").invalidate(invalidate.seq, keys);
                        let ack = SessionRequest {
                            msg: Some(session_request::Msg::Ack(InvalidateAck { seq: invalidate.seq })),
                        };
                        if requests.send(ack).await.is_err() {
                            return Ok(Ended::Lost);
                        }
                        cache.lock().expect("cache lock").acked();
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Follows a leader hint in a refusal; returns the error.
fn follow_hint(inner: &Calls, addr: &str, status: &tonic::Status) -> FsError {
    let detail = cffs_proto::error_code::detail(status);
    if cffs_proto::error_code::detail_code(&detail) == cffs_proto::ErrorCode::NotLeader
        && !detail.leader_addr.is_empty()
        && detail.leader_addr != addr
    {
        inner.set_leader(&detail.leader_addr);
    } else {
        inner.forget_leader();
    }
    FsError::from_status(status)
}
