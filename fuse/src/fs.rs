//! The FUSE file system: the kernel's requests answered through a `cffs_client::Client`,
//! each in a tokio task of its own, so that a slow request (a block fetch, a commit) does not
//! hold the others up.
//!
//! Transaction scopes (ARCHITECTURE.md, "The mount"):
//! - `Scope::PerOperation` (`cffs mount`): a namespace change (mkdir, create, unlink, rename,
//!   link, symlink, chmod, truncate of a closed file) is a transaction of its own, committed
//!   before the reply; a read is one linearizable read (a warm cache answers it locally);
//!   data written to an open file is buffered and goes to a transaction of that file's,
//!   committed at `close` (FUSE flush) or `fsync`: close-to-open, each commit atomic. A
//!   commit that conflicts (another client changed the file meanwhile) is carried over onto
//!   the file as it now is: the ranges written here win, the rest is the other writer's.
//! - `Scope::OneTransaction` (`cffs run`): every request of the mount reads and writes one
//!   transaction, which the runner commits when the command exits 0, or drops.
//!
//! What the kernel may keep: attributes and entries are never cached (TTL 0, so every
//! lookup reaches the client's lease-checked cache), and an open drops the file's pages
//! (no `FOPEN_KEEP_CACHE`). While a file stays open, a lease invalidation of its inode drops
//! its pages (`inval_inode`), so a mount never serves data another client overwrote.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cffs_client::{Attr, Client, FsError, Kind, Outcome, RenameMode, SetAttr, Transaction};
use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};
use tokio::runtime::Handle;

use crate::write_buffer::WriteBuffer;

/// How long the kernel may keep an attribute or an entry: never (every lookup reaches the
/// client's cache, whose leases are what keep it right).
const TTL: Duration = Duration::ZERO;
/// Bytes buffered for one open file before they go to its transaction: a multiple of the
/// default block size (4 MiB), so that a sequential write fills whole blocks.
pub const WRITE_BUFFER_MAX: usize = 8 << 20;
/// Most times a close carries a conflicting write over onto the file as it now is.
pub const CARRY_OVER_ATTEMPTS: u32 = 8;
/// Bytes copied at a time when a write is carried over onto a newer file.
const CARRY_CHUNK: u64 = 4 << 20;
/// The block size `stat` reports: what `cp` and friends size their buffers by (the kernel's
/// largest write without FUSE_MAX_PAGES).
const PREFERRED_IO: u32 = 128 * 1024;
/// renameat2 flags.
const RENAME_NOREPLACE: u32 = 1;
const RENAME_EXCHANGE: u32 = 2;

/// What one request of the mount belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Each operation its own transaction; a file's data commits at close (`cffs mount`).
    PerOperation,
    /// Every operation in one transaction, committed by the runner (`cffs run`).
    OneTransaction,
}

/// A directory's entries as opendir took them: (inode, kind, name), `.` and `..` first.
type Listing = Vec<(u64, FileType, Vec<u8>)>;

/// Data written to one file and not yet committed.
struct Pending {
    txn: Transaction,
    buffer: WriteBuffer,
    /// Byte ranges written, merged where adjacent: what a carry-over copies.
    written: Vec<(u64, u64)>,
    /// The smallest size the file was cut to, if it was.
    cut_to: Option<u64>,
    /// Attribute changes made while the file had pending data (carried over too).
    attrs: SetAttr,
}

impl Pending {
    fn new(txn: Transaction) -> Pending {
        Pending { txn, buffer: WriteBuffer::default(), written: Vec::new(), cut_to: None, attrs: SetAttr::default() }
    }

    fn record_write(&mut self, offset: u64, len: u64) {
        match self.written.last_mut() {
            Some(last) if last.1 == offset => last.1 += len,
            _ => self.written.push((offset, offset + len)),
        }
    }

    /// Hands the buffered bytes to the transaction.
    async fn flush_buffer(&mut self, ino: u64) -> Result<(), FsError> {
        for (offset, bytes) in self.buffer.take() {
            self.txn.write_ino(ino, offset, &bytes).await?;
        }
        Ok(())
    }

    /// The file's attributes as this mount sees them: the transaction's, with the buffer.
    async fn attr(&self, ino: u64) -> Result<Attr, FsError> {
        let mut attr = self.txn.getattr(ino).await?;
        attr.size = attr.size.max(self.buffer.end());
        Ok(attr)
    }
}

/// A file open in this mount: how many opens, and its pending data.
#[derive(Default)]
struct OpenFile {
    opens: u32,
    pending: Option<Pending>,
    /// Its last name went while it was open here: the last close deletes it.
    unlinked: bool,
}

pub(crate) struct Shared {
    client: Client,
    scope: Scope,
    /// `Scope::OneTransaction`: the invocation's transaction (a new one per attempt).
    txn: Mutex<Option<Transaction>>,
    files: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<OpenFile>>>>,
    /// Listings taken at opendir, by handle: readdir pages through one consistent listing.
    dirs: Mutex<HashMap<u64, Arc<Listing>>>,
    next_fh: AtomicU64,
}

impl Shared {
    pub(crate) fn new(client: Client, scope: Scope) -> Shared {
        Shared {
            client,
            scope,
            txn: Mutex::new(None),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    /// The inodes open in this mount.
    pub(crate) fn open_inodes(&self) -> Vec<u64> {
        self.files.lock().expect("files lock").keys().copied().collect()
    }

    fn shared_txn(&self) -> Transaction {
        let mut txn = self.txn.lock().expect("txn lock");
        txn.get_or_insert_with(|| self.client.begin()).clone()
    }

    /// `Scope::OneTransaction`: starts a new attempt (the former one's transaction dropped).
    pub(crate) fn begin_attempt(&self) {
        *self.txn.lock().expect("txn lock") = Some(self.client.begin());
        self.files.lock().expect("files lock").clear();
    }

    /// `Scope::OneTransaction`: hands every buffered write to the transaction and commits it.
    pub(crate) async fn commit_attempt(&self) -> Result<Outcome, FsError> {
        let files: Vec<(u64, Arc<tokio::sync::Mutex<OpenFile>>)> =
            self.files.lock().expect("files lock").iter().map(|(ino, file)| (*ino, file.clone())).collect();
        for (ino, file) in files {
            if let Some(pending) = file.lock().await.pending.as_mut() {
                pending.flush_buffer(ino).await?;
            }
        }
        let txn = self.txn.lock().expect("txn lock").take().ok_or_else(|| FsError::Invalid("no attempt".into()))?;
        txn.commit().await
    }

    /// The transaction a read runs in: the invocation's, or a fresh one that is dropped after
    /// its one read (a single read is linearizable without a commit).
    fn read_txn(&self) -> Transaction {
        match self.scope {
            Scope::OneTransaction => self.shared_txn(),
            Scope::PerOperation => self.client.begin(),
        }
    }

    /// Runs a namespace change: committed now (re-run on conflict), or into the invocation.
    async fn change<T, F, Fut>(&self, function: F) -> Result<T, FsError>
    where
        F: FnMut(Transaction) -> Fut,
        Fut: std::future::Future<Output = Result<T, FsError>>,
    {
        let mut function = function;
        match self.scope {
            Scope::OneTransaction => function(self.shared_txn()).await,
            Scope::PerOperation => {
                // A file open here outlives its last name until its last close.
                let open: Vec<u64> = self.files.lock().expect("files lock").keys().copied().collect();
                if open.is_empty() {
                    return self.client.run(function).await;
                }
                let kept = Arc::new(Mutex::new(Vec::new()));
                let result = self
                    .client
                    .run(|txn| {
                        for &ino in &open {
                            txn.keep_unlinked(ino);
                        }
                        let (kept, done) = (kept.clone(), function(txn.clone()));
                        async move {
                            let out = done.await;
                            *kept.lock().expect("kept lock") = txn.kept_unlinked();
                            out
                        }
                    })
                    .await;
                if result.is_ok() {
                    let kept = std::mem::take(&mut *kept.lock().expect("kept lock"));
                    for ino in kept {
                        self.kept_after_unlink(ino).await;
                    }
                }
                result
            }
        }
    }

    /// `ino` lost its last name while open here: its last close deletes it, or, if that close
    /// came while the unlink was being committed, it goes now. Release decides under the
    /// same file lock, so one of the two sees the other.
    async fn kept_after_unlink(&self, ino: u64) {
        if let Some(file) = self.known_file(ino) {
            let mut open = file.lock().await;
            let current = self.files.lock().expect("files lock").get(&ino).is_some_and(|f| Arc::ptr_eq(f, &file));
            if current && open.opens > 0 {
                open.unlinked = true;
                return;
            }
        }
        self.remove_unlinked(ino).await;
    }

    /// Deletes `ino` if it has no name left (a failure leaves it unreachable, and is logged).
    async fn remove_unlinked(&self, ino: u64) {
        if let Err(error) = self.client.run(|txn| async move { txn.remove_if_unlinked(ino).await }).await {
            tracing::warn!(ino, %error, "an unlinked file outlived its last close");
        }
    }

    fn open_file(&self, ino: u64) -> Arc<tokio::sync::Mutex<OpenFile>> {
        self.files.lock().expect("files lock").entry(ino).or_default().clone()
    }

    fn known_file(&self, ino: u64) -> Option<Arc<tokio::sync::Mutex<OpenFile>>> {
        self.files.lock().expect("files lock").get(&ino).cloned()
    }

    fn write_txn(&self, ino: u64) -> Transaction {
        let txn = match self.scope {
            Scope::OneTransaction => self.shared_txn(),
            Scope::PerOperation => self.client.begin(),
        };
        txn.hold_open(ino);
        txn
    }

    async fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        if let Some(file) = self.known_file(ino) {
            if let Some(pending) = &file.lock().await.pending {
                let mine = pending.attr(ino).await?;
                if self.scope == Scope::OneTransaction {
                    return Ok(mine);
                }
                // The pending writer's snapshot is as old as its first write: what other
                // operations committed since (an unlink, a chmod) comes from a fresh read,
                // with the size and times of the data not committed yet.
                // This handle's own uncommitted chmod, chown and utimens stay on top.
                let own = &pending.attrs;
                return match self.read_txn().getattr(ino).await {
                    Ok(current) => Ok(Attr {
                        size: mine.size,
                        mode: own.mode.map_or(current.mode, |mode| (current.mode & !0o7777) | (mode & 0o7777)),
                        uid: own.uid.unwrap_or(current.uid),
                        gid: own.gid.unwrap_or(current.gid),
                        atime_ns: own.atime_ns.unwrap_or(current.atime_ns),
                        mtime_ns: own.mtime_ns.unwrap_or(mine.mtime_ns.max(current.mtime_ns)),
                        ctime_ns: mine.ctime_ns.max(current.ctime_ns),
                        ..current
                    }),
                    Err(FsError::NotFound) => Ok(mine),
                    Err(error) => Err(error),
                };
            }
        }
        self.read_txn().getattr(ino).await
    }

    async fn read(&self, ino: u64, offset: u64, len: usize) -> Result<Vec<u8>, FsError> {
        if let Some(file) = self.known_file(ino) {
            if let Some(pending) = &file.lock().await.pending {
                let size = pending.attr(ino).await?.size;
                let view = pending.txn.read_ino(ino, offset, len).await?;
                return Ok(pending.buffer.overlay(offset, len, view, size));
            }
        }
        self.read_txn().read_ino(ino, offset, len).await
    }

    async fn write(&self, ino: u64, offset: u64, data: &[u8]) -> Result<(), FsError> {
        let file = self.open_file(ino);
        let mut file = file.lock().await;
        let pending = file.pending.get_or_insert_with(|| Pending::new(self.write_txn(ino)));
        pending.buffer.write(offset, data);
        pending.record_write(offset, data.len() as u64);
        if pending.buffer.len() >= WRITE_BUFFER_MAX {
            pending.flush_buffer(ino).await?;
        }
        Ok(())
    }

    async fn setattr(&self, ino: u64, changes: SetAttr) -> Result<Attr, FsError> {
        if let Some(file) = self.known_file(ino) {
            if let Some(pending) = file.lock().await.pending.as_mut() {
                if changes.size.is_some() {
                    pending.flush_buffer(ino).await?;
                }
                pending.txn.set_attr(ino, changes).await?;
                if let Some(size) = changes.size {
                    pending.cut_to = Some(pending.cut_to.map_or(size, |cut| cut.min(size)));
                }
                let attrs = &mut pending.attrs;
                attrs.mode = changes.mode.or(attrs.mode);
                attrs.uid = changes.uid.or(attrs.uid);
                attrs.gid = changes.gid.or(attrs.gid);
                attrs.atime_ns = changes.atime_ns.or(attrs.atime_ns);
                attrs.mtime_ns = changes.mtime_ns.or(attrs.mtime_ns);
                return pending.attr(ino).await;
            }
        }
        self.change(|txn| async move { txn.set_attr(ino, changes).await }).await
    }

    /// Close or fsync: the file's data committed (`PerOperation`), or handed to the
    /// invocation's transaction (`OneTransaction`).
    async fn sync(&self, ino: u64) -> Result<(), FsError> {
        let Some(file) = self.known_file(ino) else { return Ok(()) };
        let mut file = file.lock().await;
        let Some(pending) = file.pending.as_mut() else { return Ok(()) };
        pending.flush_buffer(ino).await?;
        if self.scope == Scope::OneTransaction {
            return Ok(());
        }
        let pending = file.pending.take().expect("checked above");
        match self.commit_file(ino, pending).await {
            Ok(()) => Ok(()),
            Err((error, pending)) => {
                // Kept: a later close or fsync tries again.
                file.pending = Some(pending);
                Err(error)
            }
        }
    }

    /// Commits a file's pending data; on a conflict, carries the ranges written here over
    /// onto the file as it now is and tries again.
    async fn commit_file(&self, ino: u64, mut pending: Pending) -> Result<(), (FsError, Pending)> {
        for _ in 0..CARRY_OVER_ATTEMPTS {
            match pending.txn.commit().await {
                Ok(Outcome::Committed { .. }) => return Ok(()),
                Ok(Outcome::Conflict { key }) => {
                    tracing::debug!(ino, %key, "a file's commit conflicted: carrying its writes over");
                    let fresh = self.client.begin();
                    fresh.hold_open(ino);
                    match carry_over(&pending, &fresh, ino).await {
                        Ok(()) => pending.txn = fresh,
                        // Removed meanwhile: there is no file left to write.
                        Err(FsError::NotFound) => return Ok(()),
                        Err(error) => return Err((error, pending)),
                    }
                }
                Err(FsError::BlockMissing(why)) => return Err((FsError::BlockMissing(why), pending)),
                Err(error) => return Err((error, pending)),
            }
        }
        Err((FsError::Busy(format!("inode {ino}: commits kept conflicting")), pending))
    }
}

/// Applies what `pending` did to its file onto `fresh`'s view of it: the cut, the ranges
/// written (copied from `pending`'s view), the final size and the attributes set.
async fn carry_over(pending: &Pending, fresh: &Transaction, ino: u64) -> Result<(), FsError> {
    let ours = pending.txn.getattr(ino).await?;
    let base = fresh.getattr(ino).await?;
    if let Some(cut) = pending.cut_to.filter(|cut| *cut < base.size) {
        fresh.set_attr(ino, SetAttr { size: Some(cut), ..SetAttr::default() }).await?;
    }
    for &(start, end) in &pending.written {
        let mut at = start;
        while at < end.min(ours.size) {
            let len = (end.min(ours.size) - at).min(CARRY_CHUNK);
            let bytes = pending.txn.read_ino(ino, at, len as usize).await?;
            fresh.write_ino(ino, at, &bytes).await?;
            at += len;
        }
    }
    let size = match pending.cut_to {
        Some(_) => ours.size,
        None => ours.size.max(base.size),
    };
    fresh.set_attr(ino, SetAttr { size: Some(size), ..pending.attrs }).await?;
    Ok(())
}

fn system_time(ns: i64) -> SystemTime {
    match u64::try_from(ns) {
        Ok(ns) => UNIX_EPOCH + Duration::from_nanos(ns),
        Err(_) => UNIX_EPOCH,
    }
}

fn time_ns(time: TimeOrNow) -> i64 {
    let time = match time {
        TimeOrNow::SpecificTime(time) => time,
        TimeOrNow::Now => SystemTime::now(),
    };
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
    }
}

pub(crate) fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: attr.ino,
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: system_time(attr.atime_ns),
        mtime: system_time(attr.mtime_ns),
        ctime: system_time(attr.ctime_ns),
        crtime: system_time(attr.ctime_ns),
        kind: file_type(attr.kind),
        perm: (attr.mode & 0o7777) as u16,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: PREFERRED_IO,
        flags: 0,
    }
}

fn owner(uid: u32, gid: u32) -> SetAttr {
    SetAttr { uid: Some(uid), gid: Some(gid), ..SetAttr::default() }
}

/// The file system fuser drives; every request is answered from a task on `runtime`.
pub struct CffsFs {
    pub(crate) shared: Arc<Shared>,
    runtime: Handle,
}

impl CffsFs {
    pub(crate) fn new(shared: Arc<Shared>, runtime: Handle) -> CffsFs {
        CffsFs { shared, runtime }
    }

    fn spawn<F>(&self, task: impl FnOnce(Arc<Shared>) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        // Most requests are answered from the client's cache without waiting: polled once
        // here, on the session's thread, they reply with no hand-off to another thread
        // (which costs more than the work). One that must wait (a server round trip, a
        // lock) goes on to the runtime, which polls it again with a real waker.
        // A panic in that first poll is caught as a task's would be: the request's reply is
        // dropped with the future (the kernel gets EIO) and the session thread carries on.
        let _context = self.runtime.enter();
        let mut future = Box::pin(task(self.shared.clone()));
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            std::future::Future::poll(future.as_mut(), &mut context)
        }));
        match first {
            Ok(std::task::Poll::Pending) => {
                self.runtime.spawn(future);
            }
            Ok(std::task::Poll::Ready(())) => {}
            Err(_) => tracing::error!("a request's handler panicked; answered EIO"),
        }
    }
}

fn errno(error: &FsError) -> i32 {
    tracing::debug!(%error, "request failed");
    error.errno()
}

fn reply_entry(reply: ReplyEntry, result: Result<Attr, FsError>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &file_attr(&attr), 0),
        Err(error) => reply.error(errno(&error)),
    }
}

fn reply_empty(reply: ReplyEmpty, result: Result<(), FsError>) {
    match result {
        Ok(()) => reply.ok(),
        Err(error) => reply.error(errno(&error)),
    }
}

/// A name from the kernel, as the client takes it.
fn name_of(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

impl Filesystem for CffsFs {
    fn init(&mut self, _req: &Request<'_>, _config: &mut KernelConfig) -> Result<(), libc::c_int> {
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let name = name_of(name);
        self.spawn(|fs| async move {
            let txn = fs.read_txn();
            let result = match txn.lookup_at(parent, &name).await {
                Ok(Some(entry)) => fs.getattr(entry.ino).await,
                Ok(None) => Err(FsError::NotFound),
                Err(error) => Err(error),
            };
            reply_entry(reply, result);
        });
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        self.spawn(|fs| async move {
            match fs.getattr(ino).await {
                Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
                Err(error) => reply.error(errno(&error)),
            }
        });
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let changes = SetAttr { mode, uid, gid, size, atime_ns: atime.map(time_ns), mtime_ns: mtime.map(time_ns) };
        self.spawn(|fs| async move {
            match fs.setattr(ino, changes).await {
                Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
                Err(error) => reply.error(errno(&error)),
            }
        });
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        self.spawn(|fs| async move {
            match fs.read_txn().readlink_at(ino).await {
                Ok(target) => reply.data(&target),
                Err(error) => reply.error(errno(&error)),
            }
        });
    }

    fn mknod(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            // Devices, fifos and sockets have no place in CFFS.
            reply.error(libc::EPERM);
            return;
        }
        let (name, uid, gid) = (name_of(name), req.uid(), req.gid());
        self.spawn(|fs| async move {
            let result = fs
                .change(|txn| {
                    let name = name.clone();
                    async move {
                        let attr = txn.create_at(parent, &name, mode & !umask & 0o7777, true).await?;
                        txn.set_attr(attr.ino, owner(uid, gid)).await
                    }
                })
                .await;
            reply_entry(reply, result);
        });
    }

    fn mkdir(&mut self, req: &Request<'_>, parent: u64, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let (name, uid, gid) = (name_of(name), req.uid(), req.gid());
        self.spawn(|fs| async move {
            let result = fs
                .change(|txn| {
                    let name = name.clone();
                    async move {
                        let attr = txn.mkdir_at(parent, &name, mode & !umask & 0o7777).await?;
                        txn.set_attr(attr.ino, owner(uid, gid)).await
                    }
                })
                .await;
            reply_entry(reply, result);
        });
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let name = name_of(name);
        self.spawn(|fs| async move {
            let result = fs
                .change(|txn| {
                    let name = name.clone();
                    async move { txn.unlink_at(parent, &name).await }
                })
                .await;
            reply_empty(reply, result);
        });
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let name = name_of(name);
        self.spawn(|fs| async move {
            let result = fs
                .change(|txn| {
                    let name = name.clone();
                    async move { txn.rmdir_at(parent, &name).await }
                })
                .await;
            reply_empty(reply, result);
        });
    }

    fn symlink(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let (name, target, uid, gid) =
            (name_of(link_name), target.as_os_str().as_bytes().to_vec(), req.uid(), req.gid());
        self.spawn(|fs| async move {
            let result = fs
                .change(|txn| {
                    let (name, target) = (name.clone(), target.clone());
                    async move {
                        let attr = txn.symlink_at(parent, &name, &target).await?;
                        txn.set_attr(attr.ino, owner(uid, gid)).await
                    }
                })
                .await;
            reply_entry(reply, result);
        });
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let mode = match flags {
            0 => RenameMode::Replace,
            RENAME_NOREPLACE => RenameMode::NoReplace,
            RENAME_EXCHANGE => RenameMode::Exchange,
            _ => {
                reply.error(libc::EINVAL); // RENAME_WHITEOUT, or flags combined
                return;
            }
        };
        let (name, newname) = (name_of(name), name_of(newname));
        self.spawn(|fs| async move {
            let result = fs
                .change(|txn| {
                    let (name, newname) = (name.clone(), newname.clone());
                    async move { txn.rename_at(parent, &name, newparent, &newname, mode).await }
                })
                .await;
            reply_empty(reply, result);
        });
    }

    fn link(&mut self, _req: &Request<'_>, ino: u64, newparent: u64, newname: &OsStr, reply: ReplyEntry) {
        let newname = name_of(newname);
        self.spawn(|fs| async move {
            let result = fs
                .change(|txn| {
                    let newname = newname.clone();
                    async move { txn.link_at(ino, newparent, &newname).await }
                })
                .await;
            reply_entry(reply, result);
        });
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        self.spawn(|fs| async move {
            match fs.getattr(ino).await {
                Ok(attr) if attr.kind == Kind::File => {
                    fs.open_file(ino).lock().await.opens += 1;
                    if fs.scope == Scope::OneTransaction {
                        fs.shared_txn().hold_open(ino);
                    }
                    reply.opened(fs.next_fh.fetch_add(1, Ordering::Relaxed), 0);
                }
                Ok(attr) if attr.kind == Kind::Dir => reply.error(libc::EISDIR),
                Ok(_) => reply.error(libc::ELOOP),
                Err(error) => reply.error(errno(&error)),
            }
        });
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (name, uid, gid) = (name_of(name), req.uid(), req.gid());
        let exclusive = flags & libc::O_EXCL != 0;
        self.spawn(|fs| async move {
            let result = fs
                .change(|txn| {
                    let name = name.clone();
                    async move {
                        match txn.lookup_at(parent, &name).await? {
                            Some(_) if exclusive => Err(FsError::Exists),
                            Some(entry) if entry.kind == Kind::Dir => Err(FsError::IsDir),
                            Some(entry) => txn.getattr(entry.ino).await,
                            None => {
                                let attr = txn.create_at(parent, &name, mode & !umask & 0o7777, true).await?;
                                txn.set_attr(attr.ino, owner(uid, gid)).await
                            }
                        }
                    }
                })
                .await;
            match result {
                Ok(attr) => {
                    fs.open_file(attr.ino).lock().await.opens += 1;
                    if fs.scope == Scope::OneTransaction {
                        fs.shared_txn().hold_open(attr.ino);
                    }
                    let fh = fs.next_fh.fetch_add(1, Ordering::Relaxed);
                    reply.created(&TTL, &file_attr(&attr), 0, fh, 0);
                }
                Err(error) => reply.error(errno(&error)),
            }
        });
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Ok(offset) = u64::try_from(offset) else {
            reply.error(libc::EINVAL);
            return;
        };
        self.spawn(|fs| async move {
            match fs.read(ino, offset, size as usize).await {
                Ok(data) => reply.data(&data),
                Err(error) => reply.error(errno(&error)),
            }
        });
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let Ok(offset) = u64::try_from(offset) else {
            reply.error(libc::EINVAL);
            return;
        };
        let data = data.to_vec();
        self.spawn(|fs| async move {
            match fs.write(ino, offset, &data).await {
                Ok(()) => reply.written(data.len() as u32),
                Err(error) => reply.error(errno(&error)),
            }
        });
    }

    fn flush(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _lock_owner: u64, reply: ReplyEmpty) {
        self.spawn(|fs| async move { reply_empty(reply, fs.sync(ino).await) });
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        self.spawn(|fs| async move { reply_empty(reply, fs.sync(ino).await) });
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(|fs| async move {
            let result = fs.sync(ino).await;
            if let Some(file) = fs.known_file(ino) {
                let mut file = file.lock().await;
                file.opens = file.opens.saturating_sub(1);
                // The invocation's files stay until its commit hands their data over.
                if file.opens == 0 && file.pending.is_none() && fs.scope == Scope::PerOperation {
                    fs.files.lock().expect("files lock").remove(&ino);
                    let unlinked = file.unlinked;
                    drop(file);
                    // Its last name went while it was open: it goes now (unless a link
                    // made since gave it a name again).
                    if unlinked {
                        fs.remove_unlinked(ino).await;
                    }
                }
            }
            reply_empty(reply, result);
        });
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        self.spawn(|fs| async move {
            let txn = fs.read_txn();
            let listing = async {
                let attr = txn.getattr(ino).await?;
                let parent = match attr.kind {
                    Kind::Dir => txn.parent_of(ino).await?,
                    _ => return Err(FsError::NotDir),
                };
                let mut entries =
                    vec![(ino, FileType::Directory, b".".to_vec()), (parent, FileType::Directory, b"..".to_vec())];
                for entry in txn.list_at(ino).await? {
                    entries.push((entry.ino, file_type(entry.kind), entry.name.into_bytes()));
                }
                Ok(entries)
            };
            match listing.await {
                Ok(entries) => {
                    let fh = fs.next_fh.fetch_add(1, Ordering::Relaxed);
                    fs.dirs.lock().expect("dirs lock").insert(fh, Arc::new(entries));
                    reply.opened(fh, 0);
                }
                Err(error) => reply.error(errno(&error)),
            }
        });
    }

    fn readdir(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, offset: i64, mut reply: ReplyDirectory) {
        let Some(entries) = self.shared.dirs.lock().expect("dirs lock").get(&fh).cloned() else {
            reply.error(libc::EBADF);
            return;
        };
        let skip = usize::try_from(offset).unwrap_or(0);
        for (index, (ino, kind, name)) in entries.iter().enumerate().skip(skip) {
            if reply.add(*ino, index as i64 + 1, *kind, OsStr::from_bytes(name)) {
                break; // the kernel's buffer is full: it asks again from here
            }
        }
        reply.ok();
    }

    fn releasedir(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _flags: i32, reply: ReplyEmpty) {
        self.shared.dirs.lock().expect("dirs lock").remove(&fh);
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        // The cluster's capacity is its block servers' disks, which a statfs does not ask
        // about: report a large, constant space so that tools that check it proceed.
        const BLOCKS: u64 = 1 << 40; // 4 PiB in 4 KiB blocks
        reply.statfs(BLOCKS, BLOCKS, BLOCKS, 1 << 40, 1 << 40, 4096, 255, 4096);
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        // Mounted with default_permissions: the kernel checks modes itself.
        reply.ok();
    }
}
