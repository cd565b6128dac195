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
//!
//! The warm read path is the reason for the layout: a hit allocates nothing and copies no
//! data. Entries live in a slab linked into an LRU list by index (a hit relinks two
//! neighbours); they are found through one map per kind, dentries by parent then name, so a
//! lookup borrows the name it is given ([`KeyRef`]); values share their inode and listing
//! (`Arc`), so a hit hands out a reference count, not a copy of a file's inline data.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use cffs_proto::{Dentry, Inode};
use tokio::time::Instant;

/// Default bound on the bytes the cache holds.
pub const CACHE_BYTES_DEFAULT: usize = 64 * 1024 * 1024;
/// Invalidations remembered (by sequence number) to refuse grants they overtook.
pub const INVALIDATIONS_REMEMBERED: usize = 4096;
/// Keys remembered with the end of this client's last commit that wrote them; beyond it, one
/// floor for all (reads sent before it are not cached).
pub const OWN_WRITES_REMEMBERED: usize = 4096;
/// Fixed overhead counted per entry, on top of its keys and values.
const ENTRY_OVERHEAD_BYTES: usize = 96;
/// No slot: the end of the LRU list.
const NIL: usize = usize::MAX;

/// A cached (and leased, and read-set) key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum CacheKey {
    Inode(u64),
    Dentry(u64, Vec<u8>),
    Listing(u64),
}

/// A key borrowed: what lookups take, so that finding a dentry allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRef<'a> {
    Inode(u64),
    Dentry(u64, &'a [u8]),
    Listing(u64),
}

impl KeyRef<'_> {
    /// The wire key (what the leader leases and invalidates).
    pub fn wire(self) -> cffs_proto::Key {
        match self {
            KeyRef::Inode(ino) => cffs_proto::Key::inode(ino),
            KeyRef::Dentry(parent, name) => cffs_proto::Key::dentry(parent, name),
            KeyRef::Listing(ino) => cffs_proto::Key::listing(ino),
        }
    }
}

impl CacheKey {
    pub fn as_ref(&self) -> KeyRef<'_> {
        match self {
            CacheKey::Inode(ino) => KeyRef::Inode(*ino),
            CacheKey::Dentry(parent, name) => KeyRef::Dentry(*parent, name),
            CacheKey::Listing(ino) => KeyRef::Listing(*ino),
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

/// A cached value with the version it was read at. Cloning it is cheap: inodes and
/// listings are shared.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheValue {
    Inode(u64, Option<Arc<Inode>>),
    Dentry(u64, Option<Dentry>),
    Listing(u64, Arc<BTreeMap<Vec<u8>, Dentry>>),
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
}

/// A slab slot: an entry, its key, and its neighbours in the LRU list (`prev` is the more
/// recently used one).
#[derive(Debug)]
struct Slot {
    key: CacheKey,
    entry: Entry,
    prev: usize,
    next: usize,
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
    /// The entries; `None` marks a free slot (listed in `free`).
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    inodes: BTreeMap<u64, usize>,
    dentries: BTreeMap<u64, BTreeMap<Vec<u8>, usize>>,
    listings: BTreeMap<u64, usize>,
    /// The LRU list's ends: the most and the least recently used slot.
    head: usize,
    tail: usize,
    /// Recent invalidations: (seq, key), oldest first; `invalidated` holds the highest
    /// remembered seq of each key, `forgotten` the highest seq dropped.
    invalidations: VecDeque<(u64, CacheKey)>,
    invalidated: BTreeMap<CacheKey, u64>,
    forgotten: u64,
    /// This client's own commits: the keys of those in flight (with how many), and when the
    /// last one writing each key ended. The leader drops the writer's own lease on what it
    /// writes instead of invalidating it, so a read of such a key sent before the commit
    /// ended may carry a lease the leader no longer tracks, on a value the commit replaced:
    /// it is not cached (see `insert`).
    own_writes_in_flight: BTreeMap<CacheKey, u32>,
    own_writes_ended: BTreeMap<CacheKey, Instant>,
    own_writes_floor: Option<Instant>,
    bytes: usize,
    max_bytes: usize,
    next_generation: u64,
    stats: CacheStats,
}

impl Cache {
    pub fn new(max_bytes: usize) -> Cache {
        Cache {
            session: Session { id: 0, epoch: 0, renewed: None, trust: Duration::ZERO, rate: 1.0 },
            slots: Vec::new(),
            free: Vec::new(),
            inodes: BTreeMap::new(),
            dentries: BTreeMap::new(),
            listings: BTreeMap::new(),
            head: NIL,
            tail: NIL,
            invalidations: VecDeque::new(),
            invalidated: BTreeMap::new(),
            forgotten: 0,
            own_writes_in_flight: BTreeMap::new(),
            own_writes_ended: BTreeMap::new(),
            own_writes_floor: None,
            bytes: 0,
            max_bytes,
            next_generation: 1,
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
        self.invalidated.clear();
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
        self.slots.clear();
        self.free.clear();
        self.inodes.clear();
        self.dentries.clear();
        self.listings.clear();
        self.head = NIL;
        self.tail = NIL;
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

    /// The cached value of `key` if it is valid now, with its generation (a hit moves it to
    /// the front of the LRU list; an expired entry is dropped).
    pub fn get(&mut self, key: KeyRef<'_>, now: Instant) -> Option<(CacheValue, u64)> {
        let Some(index) = self.index(key) else {
            self.stats.misses += 1;
            return None;
        };
        if !self.valid(&self.slot(index).entry, now) {
            self.remove_slot(index);
            self.stats.misses += 1;
            return None;
        }
        self.stats.hits += 1;
        if self.head != index {
            self.unlink(index);
            self.push_front(index);
        }
        let entry = &self.slot(index).entry;
        Some((entry.value.clone(), entry.generation))
    }

    /// True when `key` has a valid entry now (not counted as a hit or miss).
    pub fn peek(&self, key: KeyRef<'_>, now: Instant) -> bool {
        self.index(key).is_some_and(|index| self.valid(&self.slot(index).entry, now))
    }

    /// True when `key` still holds generation `generation`, valid now.
    pub fn still_valid(&self, key: KeyRef<'_>, generation: u64, now: Instant) -> bool {
        self.index(key).is_some_and(|index| {
            let entry = &self.slot(index).entry;
            entry.generation == generation && self.valid(entry, now)
        })
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
        if !self.grant_holds(&key, session, grant_seq) || self.overlaps_own_write(&key, sent) {
            return None;
        }
        self.place(key, value, sent)
    }

    /// Caches what this client's own commit (sent at `sent`, still in flight here: its
    /// `begin_own_write` not ended) wrote whole to `key`, under the lease the leader granted
    /// with the commit's answer (docs/design/leases.md, "Leases on commit"). Refused when
    /// another commit of this client writing `key` was in flight after `sent` (its value may
    /// be the later one), and, as any grant, when an invalidation may have overtaken it.
    pub fn insert_own_write(
        &mut self,
        key: CacheKey,
        value: CacheValue,
        session: u64,
        grant_seq: u64,
        sent: Instant,
    ) -> Option<u64> {
        if !self.grant_holds(&key, session, grant_seq) {
            return None;
        }
        let only_this = self.own_writes_in_flight.get(&key) == Some(&1)
            && self.own_writes_ended.get(&key).is_none_or(|ended| sent > *ended)
            && self.own_writes_floor.is_none_or(|floor| sent > floor);
        if !only_this {
            return None;
        }
        self.place(key, value, sent)
    }

    /// True when a grant to `session` at invalidation number `grant_seq` still holds for
    /// `key`: the session is the current one and no invalidation of the key numbered above
    /// the grant arrived (or may have been forgotten).
    fn grant_holds(&self, key: &CacheKey, session: u64, grant_seq: u64) -> bool {
        session != 0
            && session == self.session.id
            // Below `forgotten`: an invalidation that overtook it may have been dropped.
            && grant_seq >= self.forgotten
            && self.invalidated.get(key).is_none_or(|seq| *seq <= grant_seq)
    }

    /// Stores `value` under `key` (replacing any entry), read or written at `sent`; returns
    /// its generation, or None when it is larger than the whole cache.
    fn place(&mut self, key: CacheKey, value: CacheValue, sent: Instant) -> Option<u64> {
        self.remove(key.as_ref());
        let bytes = value.bytes() + ENTRY_OVERHEAD_BYTES + key_bytes(&key);
        if bytes > self.max_bytes {
            return None;
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let entry = Entry { value, generation, epoch: self.session.epoch, read_sent: sent, bytes };
        let slot = Slot { key: key.clone(), entry, prev: NIL, next: NIL };
        let index = match self.free.pop() {
            Some(index) => {
                self.slots[index] = Some(slot);
                index
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        match key {
            CacheKey::Inode(ino) => self.inodes.insert(ino, index),
            CacheKey::Dentry(parent, name) => self.dentries.entry(parent).or_default().insert(name, index),
            CacheKey::Listing(ino) => self.listings.insert(ino, index),
        };
        self.push_front(index);
        self.bytes += bytes;
        while self.bytes > self.max_bytes && self.tail != NIL {
            self.remove_slot(self.tail);
            self.stats.evictions += 1;
        }
        Some(generation)
    }

    /// True when a commit of this client writing `key` was in flight at some point after
    /// `sent`: a read sent then may have been granted a lease the commit dropped.
    fn overlaps_own_write(&self, key: &CacheKey, sent: Instant) -> bool {
        #[cfg(madsim)]
        if crate::planted::no_own_write_fence() {
            return false;
        }
        self.own_writes_in_flight.contains_key(key)
            || self.own_writes_ended.get(key).is_some_and(|ended| sent <= *ended)
            || self.own_writes_floor.is_some_and(|floor| sent <= floor)
    }

    /// A commit of this client that writes `keys` is about to be sent: their entries go
    /// (the leader drops, rather than invalidates, the writer's leases on them), and no read
    /// of them is cached until it ends.
    pub fn begin_own_write(&mut self, keys: &[CacheKey]) {
        for key in keys {
            self.remove(key.as_ref());
            *self.own_writes_in_flight.entry(key.clone()).or_insert(0) += 1;
        }
    }

    /// The commit of `begin_own_write(keys)` ended (answered, failed or abandoned) at `now`.
    pub fn end_own_write(&mut self, keys: &[CacheKey], now: Instant) {
        for key in keys {
            if let Some(count) = self.own_writes_in_flight.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    self.own_writes_in_flight.remove(key);
                }
            }
            self.own_writes_ended.insert(key.clone(), now);
        }
        if self.own_writes_ended.len() > OWN_WRITES_REMEMBERED {
            self.own_writes_ended.clear();
            self.own_writes_floor = Some(now);
        }
    }

    /// Drops `key` (written by this client, or invalidated).
    pub fn remove(&mut self, key: KeyRef<'_>) {
        if let Some(index) = self.index(key) {
            self.remove_slot(index);
        }
    }

    /// The leader invalidated `keys` with sequence number `seq`.
    pub fn invalidate(&mut self, seq: u64, keys: Vec<CacheKey>) {
        self.stats.invalidations_received += 1;
        for key in keys {
            self.remove(key.as_ref());
            let latest = self.invalidated.entry(key.clone()).or_insert(seq);
            *latest = (*latest).max(seq);
            self.invalidations.push_back((seq, key));
        }
        while self.invalidations.len() > INVALIDATIONS_REMEMBERED {
            let Some((seq, key)) = self.invalidations.pop_front() else { break };
            self.forgotten = self.forgotten.max(seq);
            // Entries of this key with a lower seq may remain in the queue; they no longer
            // matter: every grant they could refuse is older than `forgotten` and refused.
            if self.invalidated.get(&key) == Some(&seq) {
                self.invalidated.remove(&key);
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
        let entries = (self.slots.len() - self.free.len()) as u64;
        CacheStats { entries, bytes: self.bytes as u64, ..self.stats }
    }

    // ----------------------------------------------------------------------------------
    // The slab and its LRU list

    fn index(&self, key: KeyRef<'_>) -> Option<usize> {
        match key {
            KeyRef::Inode(ino) => self.inodes.get(&ino).copied(),
            KeyRef::Dentry(parent, name) => self.dentries.get(&parent)?.get(name).copied(),
            KeyRef::Listing(ino) => self.listings.get(&ino).copied(),
        }
    }

    fn slot(&self, index: usize) -> &Slot {
        self.slots[index].as_ref().expect("an indexed slot is occupied")
    }

    fn slot_mut(&mut self, index: usize) -> &mut Slot {
        self.slots[index].as_mut().expect("an indexed slot is occupied")
    }

    fn unlink(&mut self, index: usize) {
        let (prev, next) = {
            let slot = self.slot(index);
            (slot.prev, slot.next)
        };
        match prev {
            NIL => self.head = next,
            prev => self.slot_mut(prev).next = next,
        }
        match next {
            NIL => self.tail = prev,
            next => self.slot_mut(next).prev = prev,
        }
    }

    fn push_front(&mut self, index: usize) {
        let head = self.head;
        {
            let slot = self.slot_mut(index);
            slot.prev = NIL;
            slot.next = head;
        }
        match head {
            NIL => self.tail = index,
            head => self.slot_mut(head).prev = index,
        }
        self.head = index;
    }

    fn remove_slot(&mut self, index: usize) {
        self.unlink(index);
        let slot = self.slots[index].take().expect("an indexed slot is occupied");
        self.free.push(index);
        self.bytes -= slot.entry.bytes;
        match slot.key {
            CacheKey::Inode(ino) => {
                self.inodes.remove(&ino);
            }
            CacheKey::Dentry(parent, name) => {
                if let Some(names) = self.dentries.get_mut(&parent) {
                    names.remove(&name);
                    if names.is_empty() {
                        self.dentries.remove(&parent);
                    }
                }
            }
            CacheKey::Listing(ino) => {
                self.listings.remove(&ino);
            }
        }
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
        CacheValue::Inode(3, Some(Arc::new(Inode { ino, ..Default::default() })))
    }

    #[test]
    fn an_entry_is_valid_until_its_lease_runs_out_unless_renewed() {
        let now = Instant::now();
        let mut cache = Cache::new(CACHE_BYTES_DEFAULT);
        opened(&mut cache, now);
        let generation = cache.insert(CacheKey::Inode(5), inode(5), 7, 0, now).unwrap();
        assert!(cache.get(KeyRef::Inode(5), now + Duration::from_millis(980)).is_some());
        assert!(cache.still_valid(KeyRef::Inode(5), generation, now + Duration::from_millis(980)));
        assert!(!cache.still_valid(KeyRef::Inode(5), generation, now + Duration::from_millis(991)));
        cache.renewed(7, now + Duration::from_millis(500));
        assert!(cache.get(KeyRef::Inode(5), now + Duration::from_millis(1400)).is_some());
        assert!(cache.get(KeyRef::Inode(5), now + Duration::from_millis(1500)).is_none());
        assert_eq!(cache.stats().entries, 0, "the expired entry was dropped");
    }

    #[test]
    fn a_read_that_overlaps_this_clients_own_commit_of_the_key_is_not_cached() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut cache = Cache::new(CACHE_BYTES_DEFAULT);
        opened(&mut cache, t0);
        cache.insert(CacheKey::Inode(5), inode(5), 7, 0, t0).unwrap();
        // A read of inode 5 is sent at 1 ms (granted before the commit reaches the leader);
        // the commit writing inode 5 is sent at 2 ms and ends at 4 ms.
        cache.begin_own_write(&[CacheKey::Inode(5)]);
        assert!(cache.get(KeyRef::Inode(5), ms(2)).is_none(), "the writer's own entry goes");
        assert_eq!(cache.insert(CacheKey::Inode(5), inode(5), 7, 0, ms(1)), None, "during the commit");
        assert_eq!(cache.insert(CacheKey::Inode(5), inode(5), 7, 0, ms(3)), None, "a read sent during it");
        assert!(cache.insert(CacheKey::Inode(6), inode(6), 7, 0, ms(3)).is_some(), "other keys are cached");
        cache.end_own_write(&[CacheKey::Inode(5)], ms(4));
        assert_eq!(cache.insert(CacheKey::Inode(5), inode(5), 7, 0, ms(1)), None, "its reply after the commit");
        assert_eq!(cache.insert(CacheKey::Inode(5), inode(5), 7, 0, ms(4)), None, "sent as the commit ended");
        assert!(cache.insert(CacheKey::Inode(5), inode(5), 7, 0, ms(5)).is_some(), "a read sent after it");
        // Two commits of one key at once: the fence holds until both end.
        cache.begin_own_write(&[CacheKey::Inode(7)]);
        cache.begin_own_write(&[CacheKey::Inode(7)]);
        cache.end_own_write(&[CacheKey::Inode(7)], ms(6));
        assert_eq!(cache.insert(CacheKey::Inode(7), inode(7), 7, 0, ms(7)), None, "one still in flight");
        cache.end_own_write(&[CacheKey::Inode(7)], ms(8));
        assert!(cache.insert(CacheKey::Inode(7), inode(7), 7, 0, ms(9)).is_some());
    }

    #[test]
    fn own_writes_beyond_the_bound_become_one_floor() {
        let t0 = Instant::now();
        let mut cache = Cache::new(CACHE_BYTES_DEFAULT);
        opened(&mut cache, t0);
        let keys: Vec<CacheKey> = (0..=OWN_WRITES_REMEMBERED as u64).map(CacheKey::Inode).collect();
        cache.begin_own_write(&keys);
        cache.end_own_write(&keys, t0 + Duration::from_millis(5));
        let other = CacheKey::Inode(1 << 40);
        assert_eq!(
            cache.insert(other.clone(), inode(1), 7, 0, t0 + Duration::from_millis(5)),
            None,
            "before the floor"
        );
        assert!(cache.insert(other, inode(1), 7, 0, t0 + Duration::from_millis(6)).is_some(), "after it");
    }

    #[test]
    fn an_invalidation_drops_the_entry_and_refuses_the_grant_it_overtook() {
        let now = Instant::now();
        let mut cache = Cache::new(CACHE_BYTES_DEFAULT);
        opened(&mut cache, now);
        let generation = cache.insert(CacheKey::Inode(5), inode(5), 7, 0, now).unwrap();
        cache.invalidate(1, vec![CacheKey::Inode(5)]);
        assert!(!cache.still_valid(KeyRef::Inode(5), generation, now));
        // A reply granted before invalidation 1 arrives after it: not cached.
        assert_eq!(cache.insert(CacheKey::Inode(5), inode(5), 7, 0, now), None);
        // Granted after it: cached.
        assert!(cache.insert(CacheKey::Inode(5), inode(5), 7, 1, now).is_some());
    }

    #[test]
    fn forgotten_invalidations_refuse_every_grant_older_than_them() {
        let now = Instant::now();
        let mut cache = Cache::new(CACHE_BYTES_DEFAULT);
        opened(&mut cache, now);
        for seq in 1..=INVALIDATIONS_REMEMBERED as u64 + 10 {
            cache.invalidate(seq, vec![CacheKey::Inode(seq % 3)]);
        }
        // Seq 10 is forgotten: a grant older than it is refused whatever its key.
        assert_eq!(cache.insert(CacheKey::Inode(99), inode(99), 7, 9, now), None);
        // Key 1 was invalidated recently (at the last seq that is 1 mod 3): refused below it.
        let last = INVALIDATIONS_REMEMBERED as u64 + 10;
        let last_of_1 = (1..=last).rev().find(|seq| seq % 3 == 1).unwrap();
        assert_eq!(cache.insert(CacheKey::Inode(1), inode(1), 7, last_of_1 - 1, now), None);
        assert!(cache.insert(CacheKey::Inode(1), inode(1), 7, last_of_1, now).is_some());
    }

    #[test]
    fn a_lost_session_drops_everything_and_grants_of_other_sessions_are_refused() {
        let now = Instant::now();
        let mut cache = Cache::new(CACHE_BYTES_DEFAULT);
        opened(&mut cache, now);
        cache.insert(CacheKey::Inode(5), inode(5), 7, 0, now).unwrap();
        cache.session_lost();
        assert!(cache.get(KeyRef::Inode(5), now).is_none());
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
        assert!(cache.get(KeyRef::Inode(999), now).is_some(), "the newest entry stays");
        assert!(cache.get(KeyRef::Inode(0), now).is_none(), "the oldest went first");
    }

    /// The slab and LRU list against a plain model (a list in recency order), over random
    /// inserts, hits, removals and invalidations with a bound that forces evictions.
    #[test]
    fn eviction_follows_least_recent_use_exactly() {
        use rand::{Rng, SeedableRng};
        let now = Instant::now();
        let entry_bytes = |key: &CacheKey| {
            let value = match key {
                CacheKey::Dentry(..) => CacheValue::Dentry(1, Some(Dentry { ino: 9, kind: 1 })),
                _ => inode(1),
            };
            value.bytes() + ENTRY_OVERHEAD_BYTES + key_bytes(key)
        };
        for seed in 0..20u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let max_bytes = 1200;
            let mut cache = Cache::new(max_bytes);
            opened(&mut cache, now);
            let mut model: VecDeque<CacheKey> = VecDeque::new(); // most recent first
            let mut seq = 0;
            for _ in 0..2000 {
                let key = match rng.gen_range(0..3) {
                    0 => CacheKey::Inode(rng.gen_range(0..12)),
                    1 => CacheKey::Dentry(rng.gen_range(0..3), vec![b'a' + rng.gen_range(0..4)]),
                    _ => CacheKey::Listing(rng.gen_range(0..4)),
                };
                let value = match &key {
                    CacheKey::Dentry(..) => CacheValue::Dentry(1, Some(Dentry { ino: 9, kind: 1 })),
                    _ => inode(1),
                };
                match rng.gen_range(0..10) {
                    0..=4 => {
                        cache.insert(key.clone(), value, 7, seq, now).expect("cacheable");
                        model.retain(|k| *k != key);
                        model.push_front(key);
                        let mut bytes: usize = model.iter().map(entry_bytes).sum();
                        while bytes > max_bytes {
                            bytes -= entry_bytes(&model.pop_back().unwrap());
                        }
                    }
                    5..=7 => {
                        let hit = cache.get(key.as_ref(), now).is_some();
                        let position = model.iter().position(|k| *k == key);
                        assert_eq!(hit, position.is_some(), "seed {seed}: {key:?}");
                        if let Some(position) = position {
                            let key = model.remove(position).unwrap();
                            model.push_front(key);
                        }
                    }
                    8 => {
                        cache.remove(key.as_ref());
                        model.retain(|k| *k != key);
                    }
                    _ => {
                        seq += 1;
                        cache.invalidate(seq, vec![key.clone()]);
                        model.retain(|k| *k != key);
                    }
                }
                // Same keys, same recency order, same byte count.
                let mut order = Vec::new();
                let mut index = cache.head;
                while index != NIL {
                    order.push(cache.slot(index).key.clone());
                    index = cache.slot(index).next;
                }
                assert_eq!(order, Vec::from(model.clone()), "seed {seed}");
                assert_eq!(cache.stats().bytes as usize, model.iter().map(entry_bytes).sum::<usize>());
                assert_eq!(cache.stats().entries as usize, model.len());
            }
        }
    }
}
