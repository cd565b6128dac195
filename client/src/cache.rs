//! The client cache (docs/design/leases.md): inodes, dentries (absent names too) and
//! directory listings, each kept only under a lease of the current session, bounded in bytes
//! with least-recently-used eviction.
//!
//! An entry is valid while its session is the current one and less than `D (1 − ρ)` has
//! passed, on this client's clock, since the entry's read was sent or since the send of the
//! session's latest acknowledged keepalive (whichever is later).
//!
//! The clock: the client's monotonic clock, read through `elapsed`, which in simulation runs
//! at a rate drawn per client within the drift bound (`1 ± ρ`), so that the simulated fleet
//! has the clock errors the protocol must tolerate. Every entry has a generation, new each time it is
//! stored; a transaction that read an entry checks at commit that the same generation is
//! still there and valid (then it was neither invalidated nor replaced) to commit locally.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use cffs_proto::{Dentry, Inode};
use tokio::time::Instant;

/// Default bound on the bytes the cache holds.
pub const CACHE_BYTES_DEFAULT: usize = 64 * 1024 * 1024;
/// Invalidations remembered (by sequence number) to refuse grants they overtook.
pub const INVALIDATIONS_REMEMBERED: usize = 4096;
/// Fixed overhead counted per entry, on top of its keys and values.
const ENTRY_OVERHEAD_BYTES: usize = 96;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum CacheKey {
    Inode(u64),
    Dentry(u64, Vec<u8>),
    Listing(u64),
}

impl CacheKey {
    /// The wire key (what the leader leases and invalidates).
    pub fn wire(&self) -> cffs_proto::Key {
        match self {
            CacheKey::Inode(ino) => cffs_proto::Key::inode(*ino),
            CacheKey::Dentry(parent, name) => cffs_proto::Key::dentry(*parent, name),
            CacheKey::Listing(ino) => cffs_proto::Key::listing(*ino),
        }
    }

    pub fn from_wire(key: &cffs_proto::Key) -> Option<CacheKey> {
        use cffs_proto::key::Kind;
        Some(match key.kind.as_ref()? {
            Kind::Inode(ino) => CacheKey::Inode(*ino),
            Kind::Dentry(dentry) => CacheKey::Dentry(dentry.parent, dentry.name.clone()),
            Kind::Listing(ino) => CacheKey::Listing(*ino),
        })
    }
}

/// A cached value with the version it was read at.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheValue {
    Inode(u64, Option<Inode>),
    Dentry(u64, Option<Dentry>),
    Listing(u64, BTreeMap<Vec<u8>, Dentry>),
}

impl CacheValue {
    fn bytes(&self) -> usize {
        use prost::Message;
        match self {
            CacheValue::Inode(_, inode) => inode.as_ref().map_or(0, |i| i.encoded_len()),
            CacheValue::Dentry(_, dentry) => dentry.as_ref().map_or(0, |d| d.encoded_len()),
            CacheValue::Listing(_, entries) => entries.iter().map(|(name, d)| name.len() + d.encoded_len() + 16).sum(),
        }
    }
}

#[derive(Debug)]
struct Entry {
    value: CacheValue,
    generation: u64,
    epoch: u64,
    read_sent: Instant,
    bytes: usize,
    tick: u64,
}

/// Counters, for `cffs bench` and the closing figures.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub local_commits: u64,
    pub invalidations_received: u64,
    pub invalidations_acked: u64,
    pub evictions: u64,
    pub entries: u64,
    pub bytes: u64,
}

/// The session as the cache sees it.
#[derive(Debug)]
struct Session {
    id: u64,
    /// New for every session; entries of older ones are dead.
    epoch: u64,
    /// Send time of the latest keepalive (or of the open) the leader acknowledged.
    renewed: Option<Instant>,
    /// `D (1 − ρ)`: how long the client trusts a grant or renewal, from its send time.
    trust: Duration,
    /// The rate of this client's clock against real time (1 outside simulation).
    rate: f64,
}

#[derive(Debug)]
pub struct Cache {
    session: Session,
    entries: BTreeMap<CacheKey, Entry>,
    lru: BTreeMap<u64, CacheKey>,
    /// Recent invalidations: (seq, key), oldest first; `forgotten` is the highest seq dropped.
    invalidations: VecDeque<(u64, CacheKey)>,
    forgotten: u64,
    bytes: usize,
    max_bytes: usize,
    next_generation: u64,
    tick: u64,
    stats: CacheStats,
}

impl Cache {
    pub fn new(max_bytes: usize) -> Cache {
        Cache {
            session: Session { id: 0, epoch: 0, renewed: None, trust: Duration::ZERO, rate: 1.0 },
            entries: BTreeMap::new(),
            lru: BTreeMap::new(),
            invalidations: VecDeque::new(),
            forgotten: 0,
            bytes: 0,
            max_bytes,
            next_generation: 1,
            tick: 0,
            stats: CacheStats::default(),
        }
    }

    /// The current session id (0: none; reads then ask for no lease).
    pub fn session_id(&self) -> u64 {
        self.session.id
    }

    /// A session opened: `lease` and `drift_ppm` as the leader sent them, the session open
    /// request sent at `sent`. Everything cached before is dropped.
    pub fn session_opened(&mut self, id: u64, lease: Duration, drift_ppm: u32, sent: Instant) {
        self.clear();
        self.session.epoch += 1;
        self.session.id = id;
        let drift = f64::from(drift_ppm) / 1e6;
        self.session.trust = lease.mul_f64((1.0 - drift).max(0.0));
        self.session.renewed = Some(sent);
        self.session.rate = clock_rate(drift);
        self.invalidations.clear();
        self.forgotten = 0;
    }

    /// The session ended (stream gone): nothing cached can be trusted any more.
    pub fn session_lost(&mut self) {
        self.clear();
        self.session.epoch += 1;
        self.session.id = 0;
        self.session.renewed = None;
    }

    /// A keepalive sent at `sent` was acknowledged.
    pub fn renewed(&mut self, session: u64, sent: Instant) {
        if session == self.session.id && session != 0 {
            self.session.renewed = Some(self.session.renewed.map_or(sent, |renewed| renewed.max(sent)));
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.lru.clear();
        self.bytes = 0;
    }

    fn valid(&self, entry: &Entry, now: Instant) -> bool {
        entry.epoch == self.session.epoch
            && self.session.id != 0
            && (self.elapsed(entry.read_sent, now) < self.session.trust
                || self.session.renewed.is_some_and(|renewed| self.elapsed(renewed, now) < self.session.trust))
    }

    /// The time from `since` to `now` as this client's clock measures it.
    fn elapsed(&self, since: Instant, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(since);
        if self.session.rate == 1.0 {
            return elapsed; // a real clock: no float round trip on the hot path
        }
        elapsed.mul_f64(self.session.rate)
    }

    /// The cached value of `key` if it is valid now, with its generation.
    pub fn get(&mut self, key: &CacheKey, now: Instant) -> Option<(CacheValue, u64)> {
        let valid = self.entries.get(key).map(|entry| self.valid(entry, now));
        match valid {
            Some(true) => {
                self.tick += 1;
                let tick = self.tick;
                let entry = self.entries.get_mut(key).expect("checked above");
                self.lru.remove(&entry.tick);
                entry.tick = tick;
                self.lru.insert(tick, key.clone());
                self.stats.hits += 1;
                Some((entry.value.clone(), entry.generation))
            }
            Some(false) => {
                self.remove(key);
                self.stats.misses += 1;
                None
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// True when `key` has a valid entry now (not counted as a hit or miss).
    pub fn peek(&self, key: &CacheKey, now: Instant) -> bool {
        self.entries.get(key).is_some_and(|entry| self.valid(entry, now))
    }

    /// True when `key` still holds generation `generation`, valid now.
    pub fn still_valid(&self, key: &CacheKey, generation: u64, now: Instant) -> bool {
        self.entries.get(key).is_some_and(|entry| entry.generation == generation && self.valid(entry, now))
    }

    /// Stores `value` read under a lease granted at invalidation sequence number `grant_seq`
    /// to session `session`, the read sent at `sent`. Returns the entry's generation, or None
    /// when it may not be cached (another session, or an invalidation of the key overtook
    /// the reply).
    pub fn insert(
        &mut self,
        key: CacheKey,
        value: CacheValue,
        session: u64,
        grant_seq: u64,
        sent: Instant,
    ) -> Option<u64> {
        if session == 0 || session != self.session.id {
            return None;
        }
        if grant_seq < self.forgotten {
            return None; // cannot tell whether an invalidation overtook it
        }
        if self.invalidations.iter().any(|(seq, invalidated)| *seq > grant_seq && *invalidated == key) {
            return None;
        }
        self.remove(&key);
        let bytes = value.bytes() + ENTRY_OVERHEAD_BYTES + key_bytes(&key);
        if bytes > self.max_bytes {
            return None;
        }
        self.tick += 1;
        let generation = self.next_generation;
        self.next_generation += 1;
        self.lru.insert(self.tick, key.clone());
        self.entries.insert(
            key,
            Entry { value, generation, epoch: self.session.epoch, read_sent: sent, bytes, tick: self.tick },
        );
        self.bytes += bytes;
        while self.bytes > self.max_bytes {
            let Some((_, oldest)) = self.lru.pop_first() else { break };
            if let Some(entry) = self.entries.remove(&oldest) {
                self.bytes -= entry.bytes;
                self.stats.evictions += 1;
            }
        }
        Some(generation)
    }

    /// Drops `key` (written by this client, or invalidated).
    pub fn remove(&mut self, key: &CacheKey) {
        if let Some(entry) = self.entries.remove(key) {
            self.lru.remove(&entry.tick);
            self.bytes -= entry.bytes;
        }
    }

    /// The leader invalidated `keys` with sequence number `seq`.
    pub fn invalidate(&mut self, seq: u64, keys: Vec<CacheKey>) {
        self.stats.invalidations_received += 1;
        for key in keys {
            self.remove(&key);
            self.invalidations.push_back((seq, key));
        }
        while self.invalidations.len() > INVALIDATIONS_REMEMBERED {
            if let Some((seq, _)) = self.invalidations.pop_front() {
                self.forgotten = self.forgotten.max(seq);
            }
        }
    }

    pub fn acked(&mut self) {
        self.stats.invalidations_acked += 1;
    }

    pub fn local_commit(&mut self) {
        self.stats.local_commits += 1;
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats { entries: self.entries.len() as u64, bytes: self.bytes as u64, ..self.stats }
    }
}

/// This client's clock rate: exactly 1 on real machines (their clocks drift on their own); in
/// simulation, drawn per client from the seed within `1 ± drift`, the bound leases allow for.
fn clock_rate(drift: f64) -> f64 {
    #[cfg(madsim)]
    {
        use rand::Rng;
        1.0 + drift * madsim::rand::thread_rng().gen_range(-1.0..=1.0)
    }
    #[cfg(not(madsim))]
    {
        let _ = drift;
        1.0
    }
}

fn key_bytes(key: &CacheKey) -> usize {
    match key {
        CacheKey::Dentry(_, name) => 8 + name.len(),
        _ => 8,
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    fn opened(cache: &mut Cache, now: Instant) {
        cache.session_opened(7, Duration::from_secs(1), 10_000, now);
    }

    fn inode(ino: u64) -> CacheValue {
        CacheValue::Inode(3, Some(Inode { ino, ..Default::default() }))
    }

    #[test]
    fn an_entry_is_valid_until_its_lease_runs_out_unless_renewed() {
        let now = Instant::now();
        let mut cache = Cache::new(CACHE_BYTES_DEFAULT);
        opened(&mut cache, now);
        let generation = cache.insert(CacheKey::Inode(5), inode(5), 7, 0, now).unwrap();
        assert!(cache.get(&CacheKey::Inode(5), now + Duration::from_millis(980)).is_some());
        assert!(cache.still_valid(&CacheKey::Inode(5), generation, now + Duration::from_millis(980)));
        assert!(!cache.still_valid(&CacheKey::Inode(5), generation, now + Duration::from_millis(991)));
        cache.renewed(7, now + Duration::from_millis(500));
        assert!(cache.get(&CacheKey::Inode(5), now + Duration::from_millis(1400)).is_some());
        assert!(cache.get(&CacheKey::Inode(5), now + Duration::from_millis(1500)).is_none());
    }

    #[test]
    fn an_invalidation_drops_the_entry_and_refuses_the_grant_it_overtook() {
        let now = Instant::now();
        let mut cache = Cache::new(CACHE_BYTES_DEFAULT);
        opened(&mut cache, now);
        let generation = cache.insert(CacheKey::Inode(5), inode(5), 7, 0, now).unwrap();
        cache.invalidate(1, vec![CacheKey::Inode(5)]);
        assert!(!cache.still_valid(&CacheKey::Inode(5), generation, now));
        // A reply granted before invalidation 1 arrives after it: not cached.
        assert_eq!(cache.insert(CacheKey::Inode(5), inode(5), 7, 0, now), None);
        // Granted after it: cached.
        assert!(cache.insert(CacheKey::Inode(5), inode(5), 7, 1, now).is_some());
    }

    #[test]
    fn a_lost_session_drops_everything_and_grants_of_other_sessions_are_refused() {
        let now = Instant::now();
        let mut cache = Cache::new(CACHE_BYTES_DEFAULT);
        opened(&mut cache, now);
        cache.insert(CacheKey::Inode(5), inode(5), 7, 0, now).unwrap();
        cache.session_lost();
        assert!(cache.get(&CacheKey::Inode(5), now).is_none());
        assert_eq!(cache.insert(CacheKey::Inode(5), inode(5), 7, 0, now), None);
    }

    #[test]
    fn the_cache_stays_within_its_byte_bound() {
        let now = Instant::now();
        let mut cache = Cache::new(4 * 1024);
        opened(&mut cache, now);
        for ino in 0..1000 {
            cache.insert(CacheKey::Inode(ino), inode(ino), 7, 0, now);
        }
        let stats = cache.stats();
        assert!(stats.bytes <= 4 * 1024, "{stats:?}");
        assert!(stats.evictions > 0);
        assert!(cache.get(&CacheKey::Inode(999), now).is_some(), "the newest entry stays");
        assert!(cache.get(&CacheKey::Inode(0), now).is_none(), "the oldest went first");
    }
}
