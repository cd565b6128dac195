//! A transaction: the POSIX-like namespace as one function invocation sees it.
//!
//! Reads go to the leader (linearizable) the first time a key is needed and are remembered
//! with their version in the read set; later reads of the key, and reads of the
//! transaction's own writes, are answered from the transaction's view. Writes only change the
//! view; `commit` sends the read set and the write set as one request, and the metadata group
//! validates and applies it atomically, in log order.
//!
//! Narrow conflicts (see docs/design/transactions.md):
//! - creating or removing a name writes its dentry blindly and updates the parent directory
//!   commutatively (nlink, mtime, listing version), without reading the parent's inode;
//! - `readdir` reads the listing version, so it conflicts with any change of the directory;
//! - every path resolution reads each dentry on the path, so a rename of a directory reads
//!   its destination's ancestor chain and two renames that would form a loop cannot both
//!   commit.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use cffs_proto::limits::{check_name, LOOKUP_PATH_COMPONENTS_MAX, ROOT_INO};
use cffs_proto::{
    commit_response, write_op, AdjustDir, CommitRequest, Dentry, DentryKey, FileKind, GetInodeRequest, Inode,
    LookupPathRequest, LookupRequest, PutDentry, ReadDirRequest, ReadEntry, WriteOp,
};

use crate::cache::{Cache, CacheKey, CacheValue, KeyRef};
use crate::client::Client;
use crate::error::FsError;
use crate::inode_ops::SetAttr;

/// Most symbolic links followed while resolving one path (Linux's MAXSYMLINKS).
pub const SYMLINK_FOLLOW_MAX: u32 = 40;
/// Longest path accepted, in bytes (PATH_MAX).
pub const PATH_LEN_MAX: usize = 4096;
/// Most times a directory listing is re-read because it changed between its pages.
pub const READDIR_RESTARTS_MAX: u32 = 8;

/// What a commit ended in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; `version` is the commit's log index (0 for a read-only commit).
    Committed { version: u64 },
    /// A key read by the transaction changed before the commit: nothing was applied.
    Conflict { key: String },
}

/// Attributes of a file, directory or symlink.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

impl Kind {
    pub(crate) fn from_wire(kind: i32) -> Result<Kind, FsError> {
        match FileKind::try_from(kind) {
            Ok(FileKind::Regular) => Ok(Kind::File),
            Ok(FileKind::Directory) => Ok(Kind::Dir),
            Ok(FileKind::Symlink) => Ok(Kind::Symlink),
            _ => Err(FsError::Internal(format!("unknown file kind {kind}"))),
        }
    }

    fn wire(self) -> FileKind {
        match self {
            Kind::File => FileKind::Regular,
            Kind::Dir => FileKind::Directory,
            Kind::Symlink => FileKind::Symlink,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DirEntry {
    pub name: String,
    pub ino: u64,
    pub kind: Kind,
}

/// A file opened in a transaction: it stays readable through the handle after its last
/// name is removed in the same transaction, as an open file does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHandle {
    pub ino: u64,
}

pub(crate) fn attr_of(inode: &Inode) -> Result<Attr, FsError> {
    Ok(Attr {
        ino: inode.ino,
        kind: Kind::from_wire(inode.kind)?,
        mode: inode.mode,
        uid: inode.uid,
        gid: inode.gid,
        size: inode.size,
        nlink: inode.nlink,
        atime_ns: inode.atime_ns,
        mtime_ns: inode.mtime_ns,
        ctime_ns: inode.ctime_ns,
    })
}

/// Wall-clock time for inode timestamps: the one clock read of the client (madsim replaces
/// the clock in simulation).
pub(crate) fn now_ns() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// A read: the version read and, when it was served under a lease, the cache entry's
/// generation (a read-only transaction whose every read is leased and still valid commits
/// locally).
#[derive(Debug, Clone, Copy)]
struct Read {
    version: u64,
    generation: Option<u64>,
}

/// Pending commutative update of a directory this transaction did not read.
#[derive(Debug, Default, Clone, Copy)]
struct DirUpdate {
    nlink_delta: i32,
    mtime_ns: i64,
    bump_listing: bool,
}

/// What the transaction sees of one inode or dentry: the value (None = absent or deleted),
/// the read it came from (None when only written), and whether the transaction wrote it.
/// The read set and the write set are the views' `read` and `dirty` marks (with the listings
/// read), so a read costs one map entry.
#[derive(Debug, Clone)]
struct View<T> {
    value: Option<T>,
    read: Option<Read>,
    dirty: bool,
}

/// A dentry fetched ahead: (version, dentry, cache generation if leased).
type Prefetched = (u64, Option<Dentry>, Option<u64>);

#[derive(Default)]
pub(crate) struct TxnState {
    /// Inodes read or written, shared with the cache where they came from it.
    inodes: BTreeMap<u64, View<Arc<Inode>>>,
    /// Dentries read or written, by parent then name (a lookup borrows the name).
    dentries: BTreeMap<u64, BTreeMap<Vec<u8>, View<Dentry>>>,
    /// Directory listings read (their version; no view: `readdir` overlays the dentries).
    listings: BTreeMap<u64, Read>,
    dir_updates: BTreeMap<u64, DirUpdate>,
    /// Dentries fetched ahead by a path lookup, not yet used: (version, dentry, cache
    /// generation if leased). A use moves one into the read set and the view, so only what
    /// resolution needed is validated.
    prefetched: BTreeMap<(u64, Vec<u8>), Prefetched>,
    /// Inodes created by this transaction: the server has nothing to say about them.
    created: BTreeSet<u64>,
    /// Files opened through `open`, and unlinked ones kept readable through their handle.
    pub(crate) open: BTreeSet<u64>,
    pub(crate) orphans: BTreeMap<u64, Inode>,
    /// Files open elsewhere (another transaction's handle, a mount's open descriptor):
    /// their last unlink stores them with nlink 0 instead of deleting them, and the
    /// handle's last close deletes them (`remove_if_unlinked`).
    pub(crate) keep_unlinked: BTreeSet<u64>,
    /// Those of them whose last name this transaction removed.
    pub(crate) kept_unlinked: BTreeSet<u64>,
    finished: bool,
    /// Bumped by every write to the view (puts and deletes): a resolution remembered at
    /// another value is stale, and a transaction at 0 with no directory update is read-only.
    view_changes: u64,
    /// The last path resolved (path, follow_last, view_changes then, result): a function
    /// that stats a file and then reads it resolves the path once.
    last_resolved: Option<(String, bool, u64, Arc<Resolved>)>,
    /// The instant cache hits are checked at, taken when a path walk starts (one clock read
    /// per walk, not per component). Checking a hit a little early is safe: a read-only
    /// transaction re-checks every lease with a fresh clock before it commits locally, and a
    /// read-write one has its reads validated by the leader.
    clock: Option<tokio::time::Instant>,
    /// Whether `create` may take a name that neither the view nor the cache knows to be
    /// absent, without asking the leader (`Transaction::create_assuming_absent`). Set by
    /// `Client::run` on a first attempt only: if the name did exist, the commit conflicts on
    /// it and the re-run looks it up.
    pub(crate) assume_new_names: bool,
}

impl TxnState {
    fn cache_clock(&mut self) -> tokio::time::Instant {
        *self.clock.get_or_insert_with(tokio::time::Instant::now)
    }

    fn dentry(&self, parent: u64, name: &[u8]) -> Option<&View<Dentry>> {
        self.dentries.get(&parent)?.get(name)
    }

    /// True when the transaction wrote nothing.
    fn is_read_only(&self) -> bool {
        self.view_changes == 0 && self.dir_updates.is_empty()
    }

    /// The read set: every key read, with its read, inodes first, then dentries, then
    /// listings (a fixed order, so the request is deterministic).
    fn reads(&self) -> impl Iterator<Item = (KeyRef<'_>, Read)> {
        let inodes = self.inodes.iter().filter_map(|(ino, view)| Some((KeyRef::Inode(*ino), view.read?)));
        let dentries = self.dentries.iter().flat_map(|(parent, names)| {
            names.iter().filter_map(|(name, view)| Some((KeyRef::Dentry(*parent, name), view.read?)))
        });
        let listings = self.listings.iter().map(|(ino, read)| (KeyRef::Listing(*ino), *read));
        inodes.chain(dentries).chain(listings)
    }

    /// Adds an inode read (at `version`; `generation` when under a lease) to the read set and
    /// the view, unless the view already has it (read concurrently through a clone of this
    /// transaction); returns the view's inode.
    fn record_inode(
        &mut self,
        ino: u64,
        version: u64,
        mut inode: Option<Arc<Inode>>,
        generation: Option<u64>,
    ) -> Option<Arc<Inode>> {
        if let Some(view) = self.inodes.get(&ino) {
            return view.value.clone();
        }
        // Commutative updates made before this read now apply to the inode read: they are
        // carried by the inode's put, validated by this read.
        let mut dirty = false;
        if let (Some(inode), Some(update)) = (inode.as_mut(), self.dir_updates.get_mut(&ino)) {
            let inode = Arc::make_mut(inode);
            inode.nlink = inode.nlink.saturating_add_signed(update.nlink_delta);
            inode.mtime_ns = inode.mtime_ns.max(update.mtime_ns);
            inode.ctime_ns = inode.ctime_ns.max(update.mtime_ns);
            update.nlink_delta = 0;
            dirty = true;
        }
        let read = Some(Read { version, generation });
        self.inodes.insert(ino, View { value: inode.clone(), read, dirty });
        inode
    }

    /// A dentry a path lookup fetched ahead, moved into the read set and the view.
    fn take_prefetched(&mut self, parent: u64, name: &[u8]) -> Option<Option<Dentry>> {
        if self.prefetched.is_empty() {
            return None; // the warm path: no key to build
        }
        let (version, dentry, generation) = self.prefetched.remove(&(parent, name.to_vec()))?;
        Some(self.record_dentry(parent, name, version, dentry, generation))
    }

    /// Adds a dentry read to the read set and the view, unless the view already has it.
    fn record_dentry(
        &mut self,
        parent: u64,
        name: &[u8],
        version: u64,
        dentry: Option<Dentry>,
        generation: Option<u64>,
    ) -> Option<Dentry> {
        if let Some(view) = self.dentry(parent, name) {
            return view.value;
        }
        let read = Some(Read { version, generation });
        self.dentries.entry(parent).or_default().insert(name.to_vec(), View { value: dentry, read, dirty: false });
        dentry
    }
}

/// One transaction. Cheap to clone: clones are the same transaction (as `run` hands one to
/// the function and keeps one to commit).
#[derive(Clone)]
pub struct Transaction {
    pub(crate) client: Client,
    txn_id: [u8; 16],
    state: Arc<Mutex<TxnState>>,
    /// Dropped with the last clone: the client's commits then tell the leader this
    /// transaction is settled.
    _open: Arc<Open>,
}

/// A transaction that may still send its commit.
struct Open {
    client: Client,
    txn_id: [u8; 16],
}

impl Drop for Open {
    fn drop(&mut self) {
        self.client.txn_ended(&self.txn_id);
    }
}

/// A commit's own write in flight, ended in the cache when dropped (answered, failed or
/// abandoned alike).
struct OwnWrite {
    cache: Arc<Mutex<Cache>>,
    keys: Vec<CacheKey>,
}

impl Drop for OwnWrite {
    fn drop(&mut self) {
        let now = tokio::time::Instant::now();
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).end_own_write(&self.keys, now);
    }
}

/// A resolved path: the parent directory and the final name (None for `/`), and what the
/// name points at, if anything.
#[derive(Debug, Clone)]
struct Resolved {
    parent: u64,
    name: Option<Vec<u8>>,
    target: Option<Dentry>,
    /// Every directory on the way from the root to `parent`, the root first.
    ancestors: Vec<u64>,
}

impl Resolved {
    fn ino(&self) -> Option<u64> {
        match &self.name {
            None => Some(ROOT_INO),
            Some(_) => self.target.as_ref().map(|d| d.ino),
        }
    }

    fn kind(&self) -> Option<i32> {
        match &self.name {
            None => Some(FileKind::Directory as i32),
            Some(_) => self.target.as_ref().map(|d| d.kind),
        }
    }

    fn is_dir(&self) -> bool {
        self.kind() == Some(FileKind::Directory as i32)
    }
}

/// Splits an absolute path into its components, checking each name.
fn components(path: &str) -> Result<Vec<&[u8]>, FsError> {
    if path.len() > PATH_LEN_MAX {
        return Err(FsError::NameTooLong);
    }
    if !path.starts_with('/') {
        return Err(FsError::Invalid(format!("'{path}' is a relative path; paths start with /")));
    }
    if path.as_bytes().contains(&0) {
        return Err(FsError::Invalid("path contains NUL".into()));
    }
    let mut parts = Vec::new();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part != ".." {
            check_name(part.as_bytes())?;
        }
        parts.push(part.as_bytes());
    }
    Ok(parts)
}

impl Transaction {
    pub(crate) fn new(client: Client, txn_id: [u8; 16]) -> Self {
        let open = Arc::new(Open { client: client.clone(), txn_id });
        Transaction { client, txn_id, state: Arc::new(Mutex::new(TxnState::default())), _open: open }
    }

    pub fn id(&self) -> [u8; 16] {
        self.txn_id
    }

    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, TxnState> {
        self.state.lock().expect("transaction lock")
    }

    /// A valid cached value of `key` at `now`, with its generation.
    fn cached(&self, key: KeyRef<'_>, now: tokio::time::Instant) -> Option<(CacheValue, u64)> {
        let cache = self.client.cache()?;
        cache.lock().expect("cache lock").get(key, now)
    }

    /// The session reads ask leases for (0: none yet, or no cache), and the send instant.
    fn lease_request(&self) -> (u64, tokio::time::Instant) {
        let session = self.client.cache().map_or(0, |cache| cache.lock().expect("cache lock").session_id());
        (session, tokio::time::Instant::now())
    }

    /// Caches a value read with `grant` (if any); returns its generation when cached.
    fn cache_insert(
        &self,
        key: CacheKey,
        value: CacheValue,
        (session, sent): (u64, tokio::time::Instant),
        grant: Option<cffs_proto::LeaseGrant>,
    ) -> Option<u64> {
        let grant = grant?;
        let cache = self.client.cache()?;
        cache.lock().expect("cache lock").insert(key, value, session, grant.seq, sent)
    }

    // ----------------------------------------------------------------------------------
    // Reads through the view
    //
    // Each read tries, under one lock of the transaction (and one of the cache), the view
    // and then the cache (the `_local` functions), and only then the leader. Lock order:
    // the transaction's state, then the cache.

    pub(crate) async fn inode(&self, ino: u64) -> Result<Option<Arc<Inode>>, FsError> {
        if let Some(inode) = self.inode_local(ino) {
            return Ok(inode);
        }
        let lease = self.lease_request();
        let session_id = lease.0;
        let response = self
            .client
            .call("get inode", false, |mut client| async move {
                client.get_inode(GetInodeRequest { ino, session_id }).await
            })
            .await?;
        let inode = response.inode.map(Arc::new);
        let generation = self.cache_insert(
            CacheKey::Inode(ino),
            CacheValue::Inode(response.version, inode.clone()),
            lease,
            response.lease,
        );
        Ok(self.state().record_inode(ino, response.version, inode, generation))
    }

    /// The inode from the view, or from the cache (then recorded as a leased read).
    fn inode_local(&self, ino: u64) -> Option<Option<Arc<Inode>>> {
        let mut state = self.state();
        if let Some(view) = state.inodes.get(&ino) {
            return Some(view.value.clone());
        }
        let now = state.cache_clock();
        match self.cached(KeyRef::Inode(ino), now)? {
            (CacheValue::Inode(version, inode), generation) => {
                Some(state.record_inode(ino, version, inode, Some(generation)))
            }
            _ => None,
        }
    }

    pub(crate) async fn existing_inode(&self, ino: u64) -> Result<Arc<Inode>, FsError> {
        // A dentry whose inode is gone means a concurrent change we raced with: the commit
        // will conflict, and `run` re-runs the function.
        self.inode(ino).await?.ok_or(FsError::NotFound)
    }

    /// An inode to change: the view's copy, unshared.
    pub(crate) async fn inode_to_write(&self, ino: u64) -> Result<Inode, FsError> {
        Ok(Arc::unwrap_or_clone(self.existing_inode(ino).await?))
    }

    /// The dentry from the view (absent under a directory this transaction created), from
    /// what a path lookup fetched ahead, or from the cache (then recorded as a leased read).
    pub(crate) fn lookup_local(&self, parent: u64, name: &[u8]) -> Option<Option<Dentry>> {
        let mut state = self.state();
        if let Some(view) = state.dentry(parent, name) {
            return Some(view.value);
        }
        if state.created.contains(&parent) {
            return Some(None);
        }
        if let Some(dentry) = state.take_prefetched(parent, name) {
            return Some(dentry);
        }
        let now = state.cache_clock();
        match self.cached(KeyRef::Dentry(parent, name), now)? {
            (CacheValue::Dentry(version, dentry), generation) => {
                Some(state.record_dentry(parent, name, version, dentry, Some(generation)))
            }
            _ => None,
        }
    }

    /// The dentry, from what a path lookup fetched ahead or from the leader; for names
    /// `lookup_local` did not have.
    pub(crate) async fn lookup_remote(&self, parent: u64, name: &[u8]) -> Result<Option<Dentry>, FsError> {
        if let Some(dentry) = self.state().take_prefetched(parent, name) {
            return Ok(dentry);
        }
        let lease = self.lease_request();
        let request = LookupRequest { key: Some(DentryKey { parent, name: name.to_vec() }), session_id: lease.0 };
        let response = self
            .client
            .call("lookup", false, |mut client| {
                let request = request.clone();
                async move { client.lookup(request).await }
            })
            .await?;
        let generation = self.cache_insert(
            CacheKey::Dentry(parent, name.to_vec()),
            CacheValue::Dentry(response.version, response.dentry),
            lease,
            response.lease,
        );
        Ok(self.state().record_dentry(parent, name, response.version, response.dentry, generation))
    }

    /// Fetches `name` in `parent` and then `ahead` (the following components) with one
    /// `LookupPath` call; for a name `lookup_local` did not have.
    async fn prefetch(&self, parent: u64, name: &[u8], ahead: Vec<Vec<u8>>) -> Result<(), FsError> {
        if ahead.is_empty() {
            return Ok(()); // one name: a plain lookup
        }
        let mut names = vec![name.to_vec()];
        names.extend(ahead.into_iter().take(LOOKUP_PATH_COMPONENTS_MAX - 1));
        let lease = self.lease_request();
        let request = LookupPathRequest { parent, names, session_id: lease.0 };
        let response = self
            .client
            .call("lookup path", false, |mut client| {
                let request = request.clone();
                async move { client.lookup_path(request).await }
            })
            .await?;
        for step in response.steps {
            let generation = self.cache_insert(
                CacheKey::Dentry(step.parent, step.name.clone()),
                CacheValue::Dentry(step.version, step.dentry),
                lease,
                response.lease,
            );
            self.state().prefetched.entry((step.parent, step.name)).or_insert((step.version, step.dentry, generation));
        }
        Ok(())
    }

    /// Resolves `path`. Symlinks met on the way are followed; the last component is followed
    /// only when `follow_last` is set.
    async fn resolve(&self, path: &str, follow_last: bool) -> Result<Arc<Resolved>, FsError> {
        let changes = {
            let state = self.state();
            if let Some((last, follow, changes, resolved)) = &state.last_resolved {
                if last == path && *follow == follow_last && *changes == state.view_changes {
                    return Ok(resolved.clone());
                }
            }
            state.view_changes
        };
        let resolved = Arc::new(self.walk(path, follow_last).await?);
        let mut state = self.state();
        if state.view_changes == changes {
            state.last_resolved = Some((path.to_owned(), follow_last, changes, resolved.clone()));
        }
        Ok(resolved)
    }

    /// `resolve`, component by component through the view, the cache and the leader.
    async fn walk(&self, path: &str, follow_last: bool) -> Result<Resolved, FsError> {
        self.state().clock = Some(tokio::time::Instant::now());
        // A stack: the next component is at the end. Borrowed from `path`, owned when a
        // symlink's target was pushed.
        let mut pending: Vec<Cow<'_, [u8]>> = components(path)?.into_iter().rev().map(Cow::Borrowed).collect();
        let mut ancestors: Vec<u64> = vec![ROOT_INO];
        let mut followed = 0u32;
        loop {
            let Some(name) = pending.pop() else {
                // The path named a directory reached by the stack (`/`, or ending in `..`).
                let ino = *ancestors.last().expect("the root is never popped");
                if ino == ROOT_INO {
                    return Ok(Resolved { parent: ROOT_INO, name: None, target: None, ancestors: vec![] });
                }
                ancestors.pop();
                let parent = *ancestors.last().expect("the root is never popped");
                // Find the name of `ino` in `parent` is not needed: report it as a directory.
                return Ok(Resolved {
                    parent,
                    name: Some(Vec::new()),
                    target: Some(Dentry { ino, kind: FileKind::Directory as i32 }),
                    ancestors,
                });
            };
            if *name == *b".." {
                if ancestors.len() > 1 {
                    ancestors.pop();
                }
                continue;
            }
            let parent = *ancestors.last().expect("the root is never popped");
            let dentry = match self.lookup_local(parent, &name) {
                Some(dentry) => dentry,
                None => {
                    // Fetch this component and the plain names after it in one round trip.
                    let ahead: Vec<Vec<u8>> =
                        pending.iter().rev().take_while(|n| n.as_ref() != b"..").map(|n| n.to_vec()).collect();
                    self.prefetch(parent, &name, ahead).await?;
                    self.lookup_remote(parent, &name).await?
                }
            };
            let is_last = pending.is_empty();
            match dentry {
                None if is_last => {
                    return Ok(Resolved { parent, name: Some(name.into_owned()), target: None, ancestors })
                }
                None => return Err(FsError::NotFound),
                Some(dentry) if dentry.kind == FileKind::Symlink as i32 && (!is_last || follow_last) => {
                    followed += 1;
                    if followed > SYMLINK_FOLLOW_MAX {
                        return Err(FsError::Loop);
                    }
                    let link = self.existing_inode(dentry.ino).await?;
                    let target = String::from_utf8_lossy(&link.symlink_target).into_owned();
                    if target.starts_with('/') {
                        ancestors.truncate(1);
                    }
                    let target = format!("/{target}");
                    let rest = components(&target)?;
                    pending.extend(rest.into_iter().rev().map(|part| Cow::Owned(part.to_vec())));
                }
                Some(dentry) if is_last => {
                    return Ok(Resolved { parent, name: Some(name.into_owned()), target: Some(dentry), ancestors })
                }
                Some(dentry) if dentry.kind == FileKind::Directory as i32 => ancestors.push(dentry.ino),
                Some(_) => return Err(FsError::NotDir),
            }
        }
    }

    /// Resolves the parent of a name to create or remove: the name itself must be a plain
    /// name (not `/`, not ending in `..`).
    async fn resolve_entry(&self, path: &str) -> Result<(Arc<Resolved>, Vec<u8>), FsError> {
        let resolved = self.resolve(path, false).await?;
        match resolved.name.clone() {
            Some(name) if !name.is_empty() => Ok((resolved, name)),
            _ => Err(FsError::Invalid(format!("'{path}' names no directory entry"))),
        }
    }

    // ----------------------------------------------------------------------------------
    // Writes to the view

    pub(crate) fn put_inode(&self, inode: Inode) {
        let mut state = self.state();
        state.view_changes += 1;
        let read = state.inodes.get(&inode.ino).and_then(|view| view.read);
        state.inodes.insert(inode.ino, View { value: Some(Arc::new(inode)), read, dirty: true });
    }

    pub(crate) fn delete_inode(&self, ino: u64) {
        let mut state = self.state();
        state.view_changes += 1;
        let read = state.inodes.get(&ino).and_then(|view| view.read);
        state.inodes.insert(ino, View { value: None, read, dirty: true });
        // A deleted directory takes its pending updates with it.
        state.dir_updates.remove(&ino);
    }

    pub(crate) fn put_dentry(&self, parent: u64, name: &[u8], dentry: Option<Dentry>) {
        let mut state = self.state();
        state.view_changes += 1;
        let names = state.dentries.entry(parent).or_default();
        let read = names.get(name).and_then(|view| view.read);
        names.insert(name.to_vec(), View { value: dentry, read, dirty: true });
    }

    /// Updates directory `ino` commutatively: nlink by `nlink_delta`, mtime/ctime to now,
    /// and its listing version (every change of its entries).
    pub(crate) fn update_dir(&self, ino: u64, nlink_delta: i32) {
        let now = now_ns();
        let mut state = self.state();
        let update = state.dir_updates.entry(ino).or_default();
        update.mtime_ns = update.mtime_ns.max(now);
        update.bump_listing = true;
        match state.inodes.get_mut(&ino) {
            Some(View { value: Some(inode), dirty, .. }) => {
                // Read (or created) by this transaction: change it in place; the put carries it.
                let inode = Arc::make_mut(inode);
                inode.nlink = inode.nlink.saturating_add_signed(nlink_delta);
                inode.mtime_ns = inode.mtime_ns.max(now);
                inode.ctime_ns = inode.ctime_ns.max(now);
                *dirty = true;
            }
            _ => state.dir_updates.get_mut(&ino).expect("inserted above").nlink_delta += nlink_delta,
        }
    }

    pub(crate) fn new_inode(&self, ino: u64, kind: Kind, mode: u32) -> Inode {
        let now = now_ns();
        Inode {
            ino,
            kind: kind.wire() as i32,
            mode: mode & 0o7777,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            atime_ns: now,
            mtime_ns: now,
            ctime_ns: now,
            ..Default::default()
        }
    }

    pub(crate) fn create_entry(&self, parent: u64, name: &[u8], mut inode: Inode) {
        let kind = inode.kind;
        let is_dir = kind == FileKind::Directory as i32;
        if is_dir {
            inode.parent = parent;
        }
        let ino = inode.ino;
        self.state().created.insert(ino);
        self.put_inode(inode);
        self.put_dentry(parent, name, Some(Dentry { ino, kind }));
        self.update_dir(parent, if is_dir { 1 } else { 0 });
    }

    // ----------------------------------------------------------------------------------
    // Namespace operations

    /// Attributes of `path`, following symlinks.
    pub async fn stat(&self, path: &str) -> Result<Attr, FsError> {
        let resolved = self.resolve(path, true).await?;
        let ino = resolved.ino().ok_or(FsError::NotFound)?;
        attr_of(&*self.existing_inode(ino).await?)
    }

    /// Attributes of `path`, not following a final symlink.
    pub async fn lstat(&self, path: &str) -> Result<Attr, FsError> {
        let resolved = self.resolve(path, false).await?;
        let ino = resolved.ino().ok_or(FsError::NotFound)?;
        attr_of(&*self.existing_inode(ino).await?)
    }

    /// True when `path` names something (following symlinks).
    pub async fn exists(&self, path: &str) -> Result<bool, FsError> {
        match self.stat(path).await {
            Ok(_) => Ok(true),
            Err(FsError::NotFound) => Ok(false),
            Err(error) => Err(error),
        }
    }

    pub async fn mkdir(&self, path: &str, mode: u32) -> Result<Attr, FsError> {
        let (resolved, name) = self.resolve_entry(path).await?;
        self.mkdir_at(resolved.parent, &name, mode).await
    }

    /// Creates every missing directory on `path` (`mkdir -p`).
    pub async fn mkdir_all(&self, path: &str, mode: u32) -> Result<(), FsError> {
        let parts = components(path)?;
        let mut prefix = String::new();
        for part in parts {
            prefix.push('/');
            prefix.push_str(&String::from_utf8_lossy(part));
            match self.stat(&prefix).await {
                Ok(attr) if attr.kind == Kind::Dir => {}
                Ok(_) => return Err(FsError::NotDir),
                Err(FsError::NotFound) => {
                    self.mkdir(&prefix, mode).await?;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Creates a regular file. With `exclusive`, an existing name is `Exists`; without, an
    /// existing file is kept as it is (O_CREAT without O_EXCL).
    pub async fn create(&self, path: &str, mode: u32, exclusive: bool) -> Result<Attr, FsError> {
        if let Some(attr) = self.create_assuming_absent(path, mode).await? {
            return Ok(attr);
        }
        let resolved = self.resolve(path, true).await?;
        if let Some(dentry) = &resolved.target {
            if exclusive {
                return Err(FsError::Exists);
            }
            if dentry.kind == FileKind::Directory as i32 {
                return Err(FsError::IsDir);
            }
            return attr_of(&*self.existing_inode(dentry.ino).await?);
        }
        let name = match resolved.name.clone() {
            Some(name) if !name.is_empty() => name,
            _ => return Err(FsError::IsDir),
        };
        self.create_at(resolved.parent, &name, mode, exclusive).await
    }

    /// A create that sends no lookup: on a `run`'s first attempt (`assume_new_names`), a
    /// final name that neither the view nor the cache knows is taken to be absent, and the
    /// read set records it so (version 0, unleased): the leader checks at commit that it
    /// still is. A function creating fresh names (the common case: a new output file, a new
    /// entry in a busy shared directory, whose listing other creates keep invalidating)
    /// then commits with one request instead of two. If the name did exist, the commit
    /// conflicts on its dentry and `run` re-runs the function, which then looks the name up
    /// (and, say, returns `Exists`). None: the ordinary path decides (no assumption allowed,
    /// the name is known here, or the parent is not a plain directory).
    async fn create_assuming_absent(&self, path: &str, mode: u32) -> Result<Option<Attr>, FsError> {
        if !self.state().assume_new_names || path.ends_with('/') {
            return Ok(None);
        }
        let Some(&name) = components(path)?.last() else { return Ok(None) };
        if name == b".." {
            return Ok(None);
        }
        let dir = match path.rsplit_once('/') {
            Some(("", _)) | None => "/",
            Some((dir, _)) => dir,
        };
        let parent = self.resolve(dir, true).await?;
        let (Some(parent_ino), Some(kind)) = (parent.ino(), parent.kind()) else { return Ok(None) };
        if kind != FileKind::Directory as i32 || self.lookup_local(parent_ino, name).is_some() {
            return Ok(None);
        }
        self.state().record_dentry(parent_ino, name, 0, None, None);
        let inode = self.new_inode(self.client.allocate_ino().await?, Kind::File, mode);
        let attr = attr_of(&inode)?;
        self.create_entry(parent_ino, name, inode);
        Ok(Some(attr))
    }

    /// The regular file `path` names (following symlinks), created when missing if `create`.
    pub(crate) async fn file_inode(&self, path: &str, create: bool) -> Result<Arc<Inode>, FsError> {
        let resolved = self.resolve(path, true).await?;
        let ino = match resolved.ino() {
            Some(ino) => ino,
            None if create => self.create(path, 0o644, false).await?.ino,
            None => return Err(FsError::NotFound),
        };
        let inode = self.existing_inode(ino).await?;
        match Kind::from_wire(inode.kind)? {
            Kind::File => Ok(inode),
            Kind::Dir => Err(FsError::IsDir),
            Kind::Symlink => Err(FsError::Loop),
        }
    }

    pub async fn chmod(&self, path: &str, mode: u32) -> Result<(), FsError> {
        let ino = self.resolve(path, true).await?.ino().ok_or(FsError::NotFound)?;
        self.set_attr(ino, SetAttr { mode: Some(mode), ..SetAttr::default() }).await.map(drop)
    }

    /// Sets access and modification times (nanoseconds since the epoch).
    pub async fn utimens(&self, path: &str, atime_ns: i64, mtime_ns: i64) -> Result<(), FsError> {
        let ino = self.resolve(path, true).await?.ino().ok_or(FsError::NotFound)?;
        let times = SetAttr { atime_ns: Some(atime_ns), mtime_ns: Some(mtime_ns), ..SetAttr::default() };
        self.set_attr(ino, times).await.map(drop)
    }

    /// The entries of the directory at `path`, in name order (`.` and `..` not included).
    pub async fn readdir(&self, path: &str) -> Result<Vec<DirEntry>, FsError> {
        let resolved = self.resolve(path, true).await?;
        let ino = resolved.ino().ok_or(FsError::NotFound)?;
        if !resolved.is_dir() {
            return Err(FsError::NotDir);
        }
        let mut entries: BTreeMap<Vec<u8>, Dentry> = self.list_dir(ino).await?;
        // Overlay this transaction's own changes in that directory.
        for (name, dentry) in self.own_entries(ino) {
            match dentry {
                Some(dentry) => entries.insert(name, dentry),
                None => entries.remove(&name),
            };
        }
        entries
            .into_iter()
            .map(|(name, dentry)| {
                Ok(DirEntry {
                    name: String::from_utf8_lossy(&name).into_owned(),
                    ino: dentry.ino,
                    kind: Kind::from_wire(dentry.kind)?,
                })
            })
            .collect()
    }

    /// The directory's entries as committed, read page by page under one listing version,
    /// which joins the read set.
    pub(crate) async fn list_dir(&self, ino: u64) -> Result<BTreeMap<Vec<u8>, Dentry>, FsError> {
        if self.state().created.contains(&ino) {
            return Ok(BTreeMap::new());
        }
        if let Some((CacheValue::Listing(version, entries), generation)) =
            self.cached(KeyRef::Listing(ino), tokio::time::Instant::now())
        {
            self.record_listing(ino, version, Some(generation))?;
            return Ok(Arc::unwrap_or_clone(entries));
        }
        for _ in 0..READDIR_RESTARTS_MAX {
            let mut entries = BTreeMap::new();
            let mut version = None;
            let mut start_after = Vec::new();
            let lease = self.lease_request();
            // The listing is cached only when every page came with a lease; the first
            // page's grant is the earliest, so it is the one checked against invalidations.
            let mut first_grant = None;
            let mut every_page_leased = true;
            let consistent = loop {
                let request = ReadDirRequest { ino, start_after: start_after.clone(), limit: 0, session_id: lease.0 };
                let page = self
                    .client
                    .call("readdir", false, |mut client| {
                        let request = request.clone();
                        async move { client.read_dir(request).await }
                    })
                    .await?;
                if *version.get_or_insert(page.listing_version) != page.listing_version {
                    break false; // changed between pages: read it again
                }
                every_page_leased &= page.lease.is_some();
                if first_grant.is_none() {
                    first_grant = page.lease;
                }
                for entry in page.entries {
                    start_after = entry.name.clone();
                    if let Some(dentry) = entry.dentry {
                        entries.insert(entry.name, dentry);
                    }
                }
                if !page.more {
                    break true;
                }
            };
            if consistent {
                let version = version.expect("at least one page");
                let grant = first_grant.filter(|_| every_page_leased);
                let generation = self.cache_insert(
                    CacheKey::Listing(ino),
                    CacheValue::Listing(version, Arc::new(entries.clone())),
                    lease,
                    grant,
                );
                self.record_listing(ino, version, generation)?;
                return Ok(entries);
            }
        }
        Err(FsError::Busy("directory keeps changing while it is listed".into()))
    }

    fn record_listing(&self, ino: u64, version: u64, generation: Option<u64>) -> Result<(), FsError> {
        let mut state = self.state();
        let recorded = state.listings.entry(ino).or_insert(Read { version, generation });
        if recorded.version != version {
            // Listed twice in one transaction and it changed: the commit must fail.
            return Err(FsError::Busy("directory changed during the transaction".into()));
        }
        recorded.generation = recorded.generation.or(generation);
        Ok(())
    }

    /// Removes the name of a non-directory (POSIX unlink).
    pub async fn unlink(&self, path: &str) -> Result<(), FsError> {
        let (resolved, name) = self.resolve_entry(path).await?;
        self.unlink_at(resolved.parent, &name).await
    }

    /// One fewer name for a non-directory inode: deleted with its last name (kept readable
    /// through an open handle until the transaction ends).
    pub(crate) async fn drop_link(&self, ino: u64) -> Result<(), FsError> {
        let mut inode = self.inode_to_write(ino).await?;
        inode.nlink = inode.nlink.saturating_sub(1);
        inode.ctime_ns = now_ns();
        if inode.nlink == 0 && self.state().keep_unlinked.contains(&ino) {
            self.state().kept_unlinked.insert(ino);
            self.put_inode(inode);
        } else if inode.nlink == 0 {
            let open = self.state().open.contains(&ino);
            if open {
                self.state().orphans.insert(ino, inode);
            }
            self.delete_inode(ino);
        } else {
            self.put_inode(inode);
        }
        Ok(())
    }

    /// Removes an empty directory.
    pub async fn rmdir(&self, path: &str) -> Result<(), FsError> {
        let resolved = self.resolve(path, false).await?;
        let Some(name) = resolved.name.clone().filter(|n| !n.is_empty()) else {
            return Err(FsError::Busy("cannot remove the root or a path ending in '..'".into()));
        };
        self.rmdir_at(resolved.parent, &name).await
    }

    /// The names in directory `ino`, with this transaction's own changes.
    pub(crate) async fn readdir_ino(&self, ino: u64) -> Result<Vec<Vec<u8>>, FsError> {
        let mut names: BTreeSet<Vec<u8>> = self.list_dir(ino).await?.into_keys().collect();
        for (name, dentry) in self.own_entries(ino) {
            match dentry {
                Some(_) => names.insert(name),
                None => names.remove(&name),
            };
        }
        Ok(names.into_iter().collect())
    }

    /// The entries of directory `ino` this transaction wrote (None: removed).
    pub(crate) fn own_entries(&self, ino: u64) -> Vec<(Vec<u8>, Option<Dentry>)> {
        let state = self.state();
        let names = state.dentries.get(&ino).into_iter().flatten();
        names.filter(|(_, view)| view.dirty).map(|(name, view)| (name.clone(), view.value)).collect()
    }

    /// Renames `source` to `target` with POSIX rules: a file may replace a file, a directory
    /// may replace an empty directory, and a directory never moves under itself.
    pub async fn rename(&self, source: &str, target: &str) -> Result<(), FsError> {
        let (from, from_name) = self.resolve_entry(source).await?;
        let moved = from.target.ok_or(FsError::NotFound)?;
        let (to, to_name) = self.resolve_entry(target).await?;
        let moved_is_dir = moved.kind == FileKind::Directory as i32;
        #[cfg(madsim)]
        let check_ancestors = !crate::planted::rename_without_ancestor_check();
        #[cfg(not(madsim))]
        let check_ancestors = true;
        if check_ancestors && moved_is_dir && (to.ancestors.contains(&moved.ino) || to.parent == moved.ino) {
            return Err(FsError::Invalid(format!("cannot move '{source}' into its own subdirectory '{target}'")));
        }
        self.rename_entry(from.parent, &from_name, moved, to.parent, &to_name, to.target).await
    }

    /// Makes `new` another name of the non-directory `existing` (a hard link).
    pub async fn link(&self, existing: &str, new: &str) -> Result<(), FsError> {
        let source = self.resolve(existing, false).await?;
        let dentry = source.target.ok_or(FsError::NotFound)?;
        if dentry.kind == FileKind::Directory as i32 {
            return Err(FsError::NotPermitted);
        }
        let (to, name) = self.resolve_entry(new).await?;
        self.link_at(dentry.ino, to.parent, &name).await.map(drop)
    }

    /// Creates a symbolic link at `link_path` pointing at `target` (not checked to exist).
    pub async fn symlink(&self, target: &str, link_path: &str) -> Result<(), FsError> {
        if target.is_empty() {
            return Err(FsError::NotFound);
        }
        let (to, name) = self.resolve_entry(link_path).await?;
        self.symlink_at(to.parent, &name, target.as_bytes()).await.map(drop)
    }

    pub async fn readlink(&self, path: &str) -> Result<String, FsError> {
        let resolved = self.resolve(path, false).await?;
        let ino = resolved.ino().ok_or(FsError::NotFound)?;
        let inode = self.existing_inode(ino).await?;
        if inode.kind != FileKind::Symlink as i32 {
            return Err(FsError::Invalid(format!("'{path}' is not a symbolic link")));
        }
        Ok(String::from_utf8_lossy(&inode.symlink_target).into_owned())
    }

    /// Opens the regular file at `path`: the handle reads it even after its name is removed
    /// within this transaction.
    pub async fn open(&self, path: &str) -> Result<FileHandle, FsError> {
        let inode = self.file_inode(path, false).await?;
        self.state().open.insert(inode.ino);
        Ok(FileHandle { ino: inode.ino })
    }

    // ----------------------------------------------------------------------------------
    // Commit

    /// The commit request: the read set and the write set. Inodes and dentries are written
    /// in full; directories this transaction did not read get commutative updates.
    fn request(&self) -> CommitRequest {
        let state = self.state();
        let reads =
            state.reads().map(|(key, read)| ReadEntry { key: Some(key.wire()), version: read.version }).collect();
        let mut writes = Vec::new();
        for (ino, view) in state.inodes.iter().filter(|(_, view)| view.dirty) {
            let op = match &view.value {
                Some(inode) => write_op::Op::PutInode(Inode::clone(inode)),
                None if state.created.contains(ino) => continue, // created and deleted here
                None => write_op::Op::DeleteInode(*ino),
            };
            writes.push(WriteOp { op: Some(op) });
        }
        for (parent, names) in &state.dentries {
            for (name, view) in names.iter().filter(|(_, view)| view.dirty) {
                let key = DentryKey { parent: *parent, name: name.clone() };
                let op = match view.value {
                    Some(dentry) => write_op::Op::PutDentry(PutDentry { key: Some(key), dentry: Some(dentry) }),
                    None => write_op::Op::DeleteDentry(key),
                };
                writes.push(WriteOp { op: Some(op) });
            }
        }
        for (ino, update) in &state.dir_updates {
            if state.inodes.get(ino).is_some_and(|view| view.value.is_none()) {
                continue; // deleted by this transaction
            }
            writes.push(WriteOp {
                op: Some(write_op::Op::AdjustDir(AdjustDir {
                    ino: *ino,
                    nlink_delta: update.nlink_delta,
                    mtime_ns: update.mtime_ns,
                    bump_listing: update.bump_listing,
                })),
            });
        }
        let session_id = self.client.cache().map_or(0, |cache| cache.lock().expect("cache lock").session_id());
        CommitRequest {
            txn_id: self.txn_id.to_vec(),
            reads,
            writes,
            session_id,
            blocks_checked_at: 0,
            lease_writes: session_id != 0 && self.client.lease_writes(),
            // Set as it is sent (`Client::commit_request`).
            settled_below: 0,
        }
    }

    /// True when the transaction wrote nothing.
    pub fn is_read_only(&self) -> bool {
        self.state().is_read_only()
    }

    /// Commits: applies every write atomically if no read changed, else nothing. A commit
    /// whose reply is lost is retried with the same transaction id and applied at most once;
    /// `OutcomeUnknown` means the retries ran out before the outcome was learned.
    pub async fn commit(&self) -> Result<Outcome, FsError> {
        {
            let mut state = self.state();
            if state.finished {
                return Err(FsError::Invalid("transaction already committed".into()));
            }
            state.finished = true;
            // A read-only transaction under valid leases commits here, before any request is
            // built.
            if state.is_read_only() && self.commits_locally(&state) {
                return Ok(Outcome::Committed { version: 0 });
            }
        }
        let request = self.request();
        if request.reads.is_empty() && request.writes.is_empty() {
            return Ok(Outcome::Committed { version: 0 });
        }
        // This client's own entries for what it writes go now, and no read of them is
        // cached until the commit ends: the leader drops, rather than invalidates, the
        // writer's leases on them.
        let own_write = self.client.cache_shared().map(|cache| {
            let keys: Vec<CacheKey> = request.written_keys().iter().filter_map(CacheKey::from_wire).collect();
            cache.lock().expect("cache lock").begin_own_write(&keys);
            OwnWrite { cache, keys }
        });
        let sent = tokio::time::Instant::now();
        let response = self.send_request(&request).await?;
        // What the commit wrote whole, cached under the lease its answer carries (if any).
        if let (Some(own), Some(grant), Some(commit_response::Outcome::CommittedVersion(version))) =
            (&own_write, response.lease.as_ref(), response.outcome.as_ref())
        {
            let mut cache = own.cache.lock().expect("cache lock");
            for write in request.leased_writes() {
                let Some(key) = CacheKey::from_wire(&write.key()) else { continue };
                let value = match write {
                    cffs_proto::LeasedWrite::Inode(inode) => CacheValue::Inode(*version, Some(Arc::new(inode.clone()))),
                    cffs_proto::LeasedWrite::Dentry(_, dentry) => CacheValue::Dentry(*version, Some(*dentry)),
                };
                cache.insert_own_write(key, value, request.session_id, grant.seq, sent);
            }
        }
        drop(own_write);
        outcome_of(response)
    }

    /// True when every read holds a valid lease that was not invalidated since the read
    /// (docs/design/leases.md): the transaction serializes now, with no round trip.
    fn commits_locally(&self, state: &TxnState) -> bool {
        let Some(cache) = self.client.cache() else { return false };
        if state.reads().next().is_none() {
            return false; // nothing read: nothing to commit, locally or not
        }
        let now = tokio::time::Instant::now();
        let mut cache = cache.lock().expect("cache lock");
        let all_leased = state
            .reads()
            .all(|(key, read)| read.generation.is_some_and(|generation| cache.still_valid(key, generation, now)));
        if all_leased {
            cache.local_commit();
        }
        all_leased
    }

    /// Checks the read set without writing anything (a read-only commit of the reads).
    pub async fn validate(&self) -> Result<Outcome, FsError> {
        let mut request = self.request();
        request.writes.clear();
        if request.reads.is_empty() {
            return Ok(Outcome::Committed { version: 0 });
        }
        self.send(request).await
    }

    async fn send(&self, request: CommitRequest) -> Result<Outcome, FsError> {
        outcome_of(self.send_request(&request).await?)
    }

    async fn send_request(&self, request: &CommitRequest) -> Result<cffs_proto::CommitResponse, FsError> {
        let names_blocks = request
            .writes
            .iter()
            .any(|w| matches!(&w.op, Some(cffs_proto::write_op::Op::PutInode(inode)) if !inode.blocks.is_empty()));
        let response = self.client.commit_request(request).await;
        // A commit that names blocks fails when they were written with a cluster map older
        // than a change of their group (checked against the new members, or checked before
        // the change): the re-run reads the map again.
        if names_blocks
            && !matches!(
                response,
                Ok(cffs_proto::CommitResponse { outcome: Some(commit_response::Outcome::CommittedVersion(_)), .. })
            )
        {
            self.client.forget_cluster_map();
        }
        response
    }
}

fn outcome_of(response: cffs_proto::CommitResponse) -> Result<Outcome, FsError> {
    match response.outcome {
        Some(commit_response::Outcome::CommittedVersion(version)) => Ok(Outcome::Committed { version }),
        Some(commit_response::Outcome::Conflict(conflict)) => {
            Ok(Outcome::Conflict { key: conflict.key.map(|k| k.to_string()).unwrap_or_default() })
        }
        None => Err(FsError::Internal("commit answered without an outcome".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_absolute_and_checked() {
        assert_eq!(components("/").unwrap(), Vec::<&[u8]>::new());
        assert_eq!(components("//a/./b/").unwrap(), vec![b"a".as_slice(), b"b".as_slice()]);
        assert_eq!(components("/a/../b").unwrap().len(), 3);
        assert!(matches!(components("a/b"), Err(FsError::Invalid(_))));
        assert!(matches!(components(&format!("/{}", "x".repeat(256))), Err(FsError::NameTooLong)));
        assert!(matches!(components("/a\0b"), Err(FsError::Invalid(_))));
        assert!(matches!(components(&"/x".repeat(3000)), Err(FsError::NameTooLong)));
    }
}
