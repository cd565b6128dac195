//! Snapshots streamed through the engine, never whole in memory (docs/design/storage.md,
//! "Snapshots").
//!
//! A snapshot is a *file*: frames stored under `raft_meta/snapshot_frame` file:u64 n:u64,
//! each a `codec` record holding a run of the `state` family's pairs in key order (about
//! `SNAPSHOT_FRAME_BYTES` of them), the last one a trailer with the pair and frame counts.
//! `snapshot_file` names the current snapshot's file and each frame's length. What is sent to
//! a follower is the file's byte stream: each frame record prefixed by its length (u32).
//!
//! Built by paging through the state (one frame in memory at a time), sent by reading one
//! frame at a time (its crc checked before a byte of it is sent), received by parsing the
//! stream into frames as it arrives (each checked and stored at once), and installed frame by
//! frame in batches: an install writes a marker first and removes it in its last batch, and a
//! replica that restarts with the marker present installs the same (complete, durable) file
//! again. A file still being read is dropped only when its last reader is.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use openraft::{BasicNode, SnapshotMeta};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use crate::constants::{SNAPSHOT_FRAME_BYTES, SNAPSHOT_FRAME_RECORD_MAX};
use crate::storage::codec::{self, Kind};
use crate::storage::keys::{self, GroupKeys};
use crate::storage::{Cf, KvEngine, KvPairs, Pages, StorageError, WriteBatch};

type Meta = SnapshotMeta<u64, BasicNode>;

/// State pairs read per page while a snapshot is built.
pub const SCAN_PAGE_PAIRS: usize = 1024;

/// Where snapshot files live: shared by the state machine, its builders and the readers that
/// send snapshots to followers.
#[derive(Clone)]
pub struct SnapshotStore {
    engine: Arc<dyn KvEngine>,
    /// The group's keys: its frames and markers live under its id.
    keys: GroupKeys,
    next_file: Arc<AtomicU64>,
    files: Arc<Mutex<Files>>,
}

#[derive(Default)]
struct Files {
    /// Open readers, by file.
    readers: BTreeMap<u64, usize>,
    /// Files replaced while read: dropped when their last reader is.
    doomed: BTreeSet<u64>,
}

impl SnapshotStore {
    /// Opens group `keys`'s store on `engine`: new files are numbered after every file found.
    pub fn open(engine: Arc<dyn KvEngine>, keys: GroupKeys) -> Result<Self, StorageError> {
        let start = keys.snapshot_file_start(0);
        let end = keys.snapshot_file_start(u64::MAX);
        let next = match engine.last(Cf::RaftMeta, &start, &end)? {
            Some((key, _)) => keys.snapshot_frame_decode(&key)?.0 + 1,
            None => 1,
        };
        Ok(SnapshotStore { engine, keys, next_file: Arc::new(AtomicU64::new(next)), files: Arc::default() })
    }

    pub fn keys(&self) -> GroupKeys {
        self.keys
    }

    pub fn engine(&self) -> &Arc<dyn KvEngine> {
        &self.engine
    }

    /// A file number no other file has.
    pub fn allocate(&self) -> u64 {
        self.next_file.fetch_add(1, Ordering::Relaxed)
    }

    /// Writes the whole `state` family, as it is now, as file `file` (`write_pages`).
    pub fn write_state(&self, file: u64) -> Result<Vec<u32>, StorageError> {
        self.write_pages(file, self.engine.snapshot_pages(Cf::State, SCAN_PAGE_PAIRS)?)
    }

    /// Writes `pages` (a point-in-time view of the `state` family) as file `file`
    /// (unsynced: the batch that makes it current is synced), with one page and one frame in
    /// memory at a time. Returns its frame lengths.
    pub fn write_pages(&self, file: u64, pages: Pages) -> Result<Vec<u32>, StorageError> {
        let mut frames = FrameWriter::new(self.clone(), file);
        for page in pages {
            for (key, value) in page? {
                frames.push(key, value)?;
            }
        }
        frames.finish()
    }

    /// The current snapshot: its meta, file and frame lengths.
    pub fn current(&self) -> Result<Option<(Meta, u64, Vec<u32>)>, StorageError> {
        let meta = self.engine.get(Cf::RaftMeta, &self.keys.meta(keys::META_SNAPSHOT_META))?;
        let file = self.engine.get(Cf::RaftMeta, &self.keys.meta(keys::META_SNAPSHOT_FILE))?;
        let (Some(meta), Some(file)) = (meta, file) else { return Ok(None) };
        let meta = codec::snapshot_meta_decode(&meta)?;
        let (file, lens) = codec::snapshot_file_decode(&file)?;
        Ok(Some((meta, file, lens)))
    }

    /// Makes `file` the current snapshot with `meta`, in `batch` (synced), and drops the file
    /// it replaces (once nobody reads it). Unless `force`, a current snapshot of a later log
    /// id stays (a build that finished after an install of a newer snapshot): then false.
    pub fn make_current(
        &self,
        meta: &Meta,
        file: u64,
        lens: &[u32],
        mut batch: WriteBatch,
        force: bool,
    ) -> Result<bool, StorageError> {
        // One switch at a time, so that the check and the switch are one step.
        let mut files = self.files.lock().expect("snapshot files lock");
        let replaced = self.current()?;
        if let Some((current, _, _)) = &replaced {
            if !force && current.last_log_id > meta.last_log_id {
                return Ok(false);
            }
        }
        batch.put(Cf::RaftMeta, self.keys.meta(keys::META_SNAPSHOT_META), codec::snapshot_meta_encode(meta));
        batch.put(Cf::RaftMeta, self.keys.meta(keys::META_SNAPSHOT_FILE), codec::snapshot_file_encode(file, lens));
        self.engine.write(batch, true)?;
        if let Some((_, old, _)) = replaced.filter(|(_, old, _)| *old != file) {
            if files.readers.get(&old).is_some_and(|n| *n > 0) {
                files.doomed.insert(old);
            } else {
                self.remove(old)?;
            }
        }
        Ok(true)
    }

    /// Drops a file that will never be current (a build that lost to a newer snapshot, a
    /// receive that was abandoned), once nobody reads it.
    pub fn discard(&self, file: u64) -> Result<(), StorageError> {
        let mut files = self.files.lock().expect("snapshot files lock");
        if files.readers.get(&file).is_some_and(|n| *n > 0) {
            files.doomed.insert(file);
            return Ok(());
        }
        self.remove(file)
    }

    /// Stores frame `n` of `file` (unsynced: the batch that makes the file current, or marks
    /// its install, is synced after it).
    fn put_frame(&self, file: u64, n: usize, record: Vec<u8>) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put(Cf::RaftMeta, self.keys.snapshot_frame(file, n as u64), record);
        self.engine.write(batch, false)
    }

    fn remove(&self, file: u64) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.delete_range(Cf::RaftMeta, self.keys.snapshot_file_start(file), self.keys.snapshot_file_start(file + 1));
        self.engine.write(batch, false)
    }

    /// At start: drops every file that is neither the current snapshot nor one being
    /// installed (a build or a receive cut short by a crash), and the pre-frame format.
    pub fn collect_garbage(&self, keep: &[u64]) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let mut from = 0;
        for file in keep.iter().copied().collect::<BTreeSet<u64>>() {
            batch.delete_range(Cf::RaftMeta, self.keys.snapshot_file_start(from), self.keys.snapshot_file_start(file));
            from = file + 1;
        }
        batch.delete_range(Cf::RaftMeta, self.keys.snapshot_file_start(from), self.keys.snapshot_file_start(u64::MAX));
        batch.delete(Cf::RaftMeta, self.keys.meta(keys::META_SNAPSHOT_DATA_OLD));
        self.engine.write(batch, false)
    }

    /// Frame `n` of `file`, checked: its length as recorded, and its crc.
    fn frame(&self, file: u64, n: usize, len: u32, last: bool) -> Result<Vec<u8>, StorageError> {
        let record = self
            .engine
            .get(Cf::RaftMeta, &self.keys.snapshot_frame(file, n as u64))?
            .ok_or_else(|| StorageError::corruption(format!("snapshot file {file} has no frame {n}")))?;
        if record.len() != len as usize {
            return Err(StorageError::corruption(format!(
                "snapshot file {file}: frame {n} is {} bytes, not {len}",
                record.len()
            )));
        }
        codec::Reader::open(if last { Kind::SnapshotTrailer } else { Kind::SnapshotFrame }, &record)?;
        Ok(record)
    }

    /// Calls `f` with each frame's pairs of a complete file, in order, after checking the
    /// trailer against what came before it.
    pub fn for_each_frame(
        &self,
        file: u64,
        lens: &[u32],
        mut f: impl FnMut(KvPairs) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let Some((trailer_len, frame_lens)) = lens.split_last() else {
            return Err(StorageError::corruption(format!("snapshot file {file} has no trailer")));
        };
        let mut pairs = 0u64;
        for (n, len) in frame_lens.iter().enumerate() {
            let frame = codec::snapshot_frame_decode(&self.frame(file, n, *len, false)?)?;
            pairs += frame.len() as u64;
            f(frame)?;
        }
        let trailer = self.frame(file, frame_lens.len(), *trailer_len, true)?;
        if codec::snapshot_trailer_decode(&trailer)? != (pairs, frame_lens.len() as u64) {
            return Err(StorageError::corruption(format!(
                "snapshot file {file}: its trailer does not match its frames"
            )));
        }
        Ok(())
    }

    fn opened(&self, file: u64) {
        *self.files.lock().expect("snapshot files lock").readers.entry(file).or_default() += 1;
    }

    fn closed(&self, file: u64) {
        let mut files = self.files.lock().expect("snapshot files lock");
        let readers = files.readers.entry(file).or_default();
        *readers = readers.saturating_sub(1);
        if *readers == 0 {
            files.readers.remove(&file);
            if files.doomed.remove(&file) {
                if let Err(error) = self.remove(file) {
                    tracing::warn!(%error, file, "a replaced snapshot's frames were not dropped; they go at the next start");
                }
            }
        }
    }
}

/// Cuts pairs into frames and stores each as it fills.
struct FrameWriter {
    store: SnapshotStore,
    file: u64,
    frame: Vec<(Vec<u8>, Vec<u8>)>,
    frame_bytes: usize,
    pairs: u64,
    lens: Vec<u32>,
}

impl FrameWriter {
    fn new(store: SnapshotStore, file: u64) -> Self {
        FrameWriter { store, file, frame: Vec::new(), frame_bytes: 0, pairs: 0, lens: Vec::new() }
    }

    fn push(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StorageError> {
        self.frame_bytes += 8 + key.len() + value.len();
        self.frame.push((key, value));
        if self.frame_bytes >= SNAPSHOT_FRAME_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StorageError> {
        if self.frame.is_empty() {
            return Ok(());
        }
        self.pairs += self.frame.len() as u64;
        let record = codec::snapshot_frame_encode(&self.frame);
        self.frame.clear();
        self.frame_bytes = 0;
        self.store(record)
    }

    fn store(&mut self, record: Vec<u8>) -> Result<(), StorageError> {
        let len = u32::try_from(record.len())
            .ok()
            .filter(|len| *len as usize <= SNAPSHOT_FRAME_RECORD_MAX)
            .ok_or_else(|| StorageError::corruption(format!("a snapshot frame of {} bytes", record.len())))?;
        self.store.put_frame(self.file, self.lens.len(), record)?;
        self.lens.push(len);
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<u32>, StorageError> {
        self.flush()?;
        let frames = self.lens.len() as u64;
        self.store(codec::snapshot_trailer_encode(self.pairs, frames))?;
        Ok(self.lens)
    }
}

/// openraft's `SnapshotData`: a stored file read as a byte stream (to send it), or a stream
/// being received into a new file.
pub struct SnapshotFile {
    store: SnapshotStore,
    file: u64,
    mode: Mode,
}

enum Mode {
    Reading {
        lens: Vec<u32>,
        /// Where each frame's length prefix starts in the stream.
        starts: Vec<u64>,
        end: u64,
        pos: u64,
        /// The frame last loaded, with its length prefix.
        loaded: Option<(usize, Vec<u8>)>,
    },
    Writing {
        /// Stream bytes taken so far (parsed, or waiting in `partial`).
        taken: u64,
        partial: Vec<u8>,
        /// Frame pairs seen (checked against the trailer).
        pairs: u64,
        lens: Vec<u32>,
        complete: bool,
        pos: u64,
    },
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn storage_io(error: StorageError) -> io::Error {
    io::Error::other(error.to_string())
}

impl SnapshotFile {
    /// Reads complete file `file` (its frame lengths `lens`).
    pub fn reader(store: SnapshotStore, file: u64, lens: Vec<u32>) -> Self {
        let mut starts = Vec::with_capacity(lens.len());
        let mut end = 0u64;
        for len in &lens {
            starts.push(end);
            end += 4 + u64::from(*len);
        }
        store.opened(file);
        SnapshotFile { store, file, mode: Mode::Reading { lens, starts, end, pos: 0, loaded: None } }
    }

    /// Receives a stream into new file `file`.
    pub fn writer(store: SnapshotStore, file: u64) -> Self {
        let mode = Mode::Writing { taken: 0, partial: Vec::new(), pairs: 0, lens: Vec::new(), complete: false, pos: 0 };
        SnapshotFile { store, file, mode }
    }

    /// The file and its frame lengths, once the whole stream (through its trailer) is here.
    pub fn complete(&self) -> Result<(u64, Vec<u32>), StorageError> {
        match &self.mode {
            Mode::Reading { lens, .. } => Ok((self.file, lens.clone())),
            Mode::Writing { complete: true, lens, .. } => Ok((self.file, lens.clone())),
            Mode::Writing { .. } => Err(StorageError::corruption("a snapshot stream that ended before its trailer")),
        }
    }
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        if matches!(self.mode, Mode::Reading { .. }) {
            self.store.closed(self.file);
        }
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Mode::Reading { lens, starts, end, pos, loaded } = &mut this.mode else {
            return Poll::Ready(Err(io::Error::other("a snapshot being received is not read")));
        };
        if *pos >= *end || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let n = starts.partition_point(|start| *start <= *pos) - 1;
        if loaded.as_ref().is_none_or(|(at, _)| *at != n) {
            let last = n + 1 == lens.len();
            let record = match this.store.frame(this.file, n, lens[n], last) {
                Ok(record) => record,
                Err(error) => return Poll::Ready(Err(storage_io(error))),
            };
            let mut framed = Vec::with_capacity(4 + record.len());
            framed.extend_from_slice(&lens[n].to_be_bytes());
            framed.extend_from_slice(&record);
            *loaded = Some((n, framed));
        }
        let (_, framed) = loaded.as_ref().expect("loaded above");
        let from = (*pos - starts[n]) as usize;
        let take = (framed.len() - from).min(buf.remaining());
        buf.put_slice(&framed[from..from + take]);
        *pos += take as u64;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Mode::Writing { taken, partial, pairs, lens, complete, pos } = &mut this.mode else {
            return Poll::Ready(Err(io::Error::other("a stored snapshot is not written")));
        };
        // A chunk sent again (after a lost reply) repeats bytes already taken: the same
        // snapshot's bytes, skipped.
        let skip = (taken.saturating_sub(*pos) as usize).min(buf.len());
        *pos += skip as u64;
        let fresh = &buf[skip..];
        if fresh.is_empty() {
            return Poll::Ready(Ok(buf.len()));
        }
        if *pos > *taken {
            return Poll::Ready(Err(invalid(format!("a gap in the snapshot stream at {taken}, written at {pos}"))));
        }
        if *complete {
            return Poll::Ready(Err(invalid("snapshot bytes after its trailer")));
        }
        partial.extend_from_slice(fresh);
        *pos += fresh.len() as u64;
        *taken += fresh.len() as u64;
        while partial.len() >= 4 {
            let len = u32::from_be_bytes(partial[..4].try_into().expect("4 bytes")) as usize;
            if len > SNAPSHOT_FRAME_RECORD_MAX {
                return Poll::Ready(Err(invalid(format!("a snapshot frame of {len} bytes"))));
            }
            if partial.len() < 4 + len {
                break;
            }
            let record = &partial[4..4 + len];
            let checked = match codec::record_kind(record) {
                Some(kind) if kind == Kind::SnapshotTrailer as u8 => {
                    codec::snapshot_trailer_decode(record).and_then(|t| match t == (*pairs, lens.len() as u64) {
                        true => Ok(None),
                        false => Err(StorageError::corruption("a snapshot trailer that does not match its frames")),
                    })
                }
                _ => codec::snapshot_frame_decode(record).map(|frame| Some(frame.len() as u64)),
            };
            let frame_pairs = match checked {
                Ok(frame_pairs) => frame_pairs,
                Err(error) => return Poll::Ready(Err(invalid(error.to_string()))),
            };
            if let Err(error) = this.store.put_frame(this.file, lens.len(), record.to_vec()) {
                return Poll::Ready(Err(storage_io(error)));
            }
            lens.push(len as u32);
            match frame_pairs {
                Some(n) => *pairs += n,
                None => *complete = true,
            }
            partial.drain(..4 + len);
            if *complete && !partial.is_empty() {
                return Poll::Ready(Err(invalid("snapshot bytes after its trailer")));
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The stream's end: it must have brought its trailer.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.mode {
            Mode::Writing { complete: false, .. } => {
                Poll::Ready(Err(invalid("a snapshot stream that ended before its trailer")))
            }
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        let (pos, end) = match &mut self.get_mut().mode {
            Mode::Reading { pos, end, .. } => (pos, *end),
            Mode::Writing { pos, taken, .. } => {
                let end = *taken;
                (pos, end)
            }
        };
        let target = match position {
            io::SeekFrom::Start(n) => Some(n),
            io::SeekFrom::End(d) => end.checked_add_signed(d),
            io::SeekFrom::Current(d) => pos.checked_add_signed(d),
        };
        *pos = target.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a seek before the start"))?;
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        match &self.mode {
            Mode::Reading { pos, .. } | Mode::Writing { pos, .. } => Poll::Ready(Ok(*pos)),
        }
    }
}

/// Installs complete file `file` as the state (`state` family replaced, applied id and
/// membership from `meta`), frame by frame, under the marker a restart finishes it from.
/// Returns the batch that ends it (unsynced writes before it; the caller adds the snapshot's
/// switch and syncs).
pub fn install_frames(store: &SnapshotStore, file: u64, lens: &[u32], meta: &Meta) -> Result<WriteBatch, StorageError> {
    let engine = store.engine();
    let mut first = WriteBatch::default();
    first.delete_range(Cf::State, Vec::new(), vec![0xff; 16]);
    let mut pending = Some(first);
    #[cfg(madsim)]
    let (frames, mut n) = (lens.len().saturating_sub(1), 0);
    store.for_each_frame(file, lens, |pairs| {
        let mut batch = pending.take().unwrap_or_default();
        #[cfg(madsim)]
        let pairs = {
            n += 1;
            match n == frames && crate::planted::armed(crate::planted::Bug::SnapshotFrameSkipped) {
                true => Vec::new(),
                false => pairs,
            }
        };
        for (key, value) in pairs {
            batch.put(Cf::State, key, value);
        }
        engine.write(batch, false)
    })?;
    // The snapshot's own applied id and membership are in its pairs; written as the meta
    // says, so the two can never disagree.
    let mut last = pending.unwrap_or_default();
    last.put(Cf::State, keys::SYSTEM_APPLIED.to_vec(), codec::log_id_encode(&meta.last_log_id));
    last.put(Cf::State, keys::SYSTEM_MEMBERSHIP.to_vec(), codec::membership_encode(&meta.last_membership));
    last.delete(Cf::RaftMeta, store.keys.meta(keys::META_SNAPSHOT_INSTALLING));
    last.delete(Cf::RaftMeta, store.keys.meta(keys::META_SNAPSHOT_INSTALLING_META));
    Ok(last)
}

/// The install a crash cut short, if any: its meta, file and frame lengths.
pub fn installing(engine: &dyn KvEngine, keys: GroupKeys) -> Result<Option<(Meta, u64, Vec<u32>)>, StorageError> {
    let file = engine.get(Cf::RaftMeta, &keys.meta(keys::META_SNAPSHOT_INSTALLING))?;
    let meta = engine.get(Cf::RaftMeta, &keys.meta(keys::META_SNAPSHOT_INSTALLING_META))?;
    match (file, meta) {
        (Some(file), Some(meta)) => {
            let (file, lens) = codec::snapshot_file_decode(&file)?;
            Ok(Some((codec::snapshot_meta_decode(&meta)?, file, lens)))
        }
        (None, None) => Ok(None),
        _ => Err(StorageError::corruption("half of a snapshot install's marker")),
    }
}

/// Marks the start of an install of `file` (synced: its frames, written before, are durable
/// with it).
pub fn mark_installing(
    engine: &dyn KvEngine,
    keys: GroupKeys,
    meta: &Meta,
    file: u64,
    lens: &[u32],
) -> Result<(), StorageError> {
    let mut batch = WriteBatch::default();
    batch.put(Cf::RaftMeta, keys.meta(keys::META_SNAPSHOT_INSTALLING), codec::snapshot_file_encode(file, lens));
    batch.put(Cf::RaftMeta, keys.meta(keys::META_SNAPSHOT_INSTALLING_META), codec::snapshot_meta_encode(meta));
    engine.write(batch, true)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::storage::sim_disk::SimDisk;
    use futures::executor::block_on;
    use openraft::{CommittedLeaderId, LogId, StoredMembership};
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    /// A store whose state holds `pairs` pairs of about 500 bytes: several frames.
    pub(crate) fn store_with_state(pairs: usize) -> SnapshotStore {
        store_on(Arc::new(SimDisk::new()), pairs)
    }

    fn store_on(disk: Arc<dyn KvEngine>, pairs: usize) -> SnapshotStore {
        let mut batch = WriteBatch::default();
        for i in 0..pairs {
            batch.put(Cf::State, format!("k{i:06}").into_bytes(), vec![(i % 251) as u8; 500]);
        }
        disk.write(batch, true).unwrap();
        SnapshotStore::open(disk, GroupKeys::new(0)).unwrap()
    }

    pub(crate) fn meta(index: u64) -> Meta {
        Meta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(2, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("2-1-{index}"),
        }
    }

    fn state(store: &SnapshotStore) -> KvPairs {
        store.engine().scan(Cf::State, &[], None, usize::MAX).unwrap()
    }

    /// Builds a snapshot of `store` and returns its byte stream.
    pub(crate) fn build(store: &SnapshotStore) -> (u64, Vec<u32>, Vec<u8>) {
        let file = store.allocate();
        let lens = store.write_state(file).unwrap();
        assert!(store.make_current(&meta(10), file, &lens, WriteBatch::default(), false).unwrap());
        let mut bytes = Vec::new();
        block_on(SnapshotFile::reader(store.clone(), file, lens.clone()).read_to_end(&mut bytes)).unwrap();
        (file, lens, bytes)
    }

    /// A snapshot is written from the view taken when its pages were: what is written to
    /// the state after (apply going on during the build) is not in it.
    #[test]
    fn a_snapshot_holds_the_state_as_it_was_when_its_view_was_taken() {
        let store = store_with_state(3_000);
        let before = state(&store);
        let pages = store.engine().snapshot_pages(Cf::State, SCAN_PAGE_PAIRS).unwrap();
        let mut batch = WriteBatch::default();
        batch.put(Cf::State, b"k000001".to_vec(), b"written during the build".to_vec());
        batch.put(Cf::State, b"z".to_vec(), b"new".to_vec());
        store.engine().write(batch, false).unwrap();
        let file = store.allocate();
        let lens = store.write_pages(file, pages).unwrap();
        let mut written = Vec::new();
        store
            .for_each_frame(file, &lens, |pairs| {
                written.extend(pairs);
                Ok(())
            })
            .unwrap();
        assert_eq!(written, before);
    }

    #[test]
    fn a_snapshot_streams_from_one_replica_into_another_in_frames() {
        streams_between(store_with_state(2_000), store_with_state(3));
    }

    /// The same on RocksDB, whose range deletes and reverse seeks the store relies on.
    #[cfg(not(madsim))]
    #[test]
    fn a_snapshot_streams_between_rocksdb_replicas() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let open = |dir: &tempfile::TempDir| -> Arc<dyn KvEngine> {
            Arc::new(crate::storage::rocks::RocksEngine::open(dir.path()).unwrap())
        };
        let follower = store_on(open(&b), 3);
        streams_between(store_on(open(&a), 2_000), follower.clone());
        // Reopened, the store numbers new files after the current one, and keeps it.
        let current = follower.current().unwrap().unwrap().1;
        let reopened = SnapshotStore::open(follower.engine().clone(), GroupKeys::new(0)).unwrap();
        assert!(reopened.allocate() > current);
    }

    fn streams_between(leader: SnapshotStore, follower: SnapshotStore) {
        let (_, lens, bytes) = build(&leader);
        assert!(lens.len() >= 4, "about 1 MB of pairs makes several frames: {lens:?}");
        let mut received = SnapshotFile::writer(follower.clone(), follower.allocate());
        // Sent in chunks, one of them sent twice (a lost reply), as openraft may.
        let chunk = 100_000;
        for start in (0..bytes.len()).step_by(chunk) {
            let end = (start + chunk).min(bytes.len());
            block_on(async {
                received.seek(io::SeekFrom::Start(start as u64)).await?;
                received.write_all(&bytes[start..end]).await?;
                if start == chunk {
                    received.seek(io::SeekFrom::Start(start as u64)).await?;
                    received.write_all(&bytes[start..end]).await?;
                }
                Ok::<_, io::Error>(())
            })
            .unwrap();
        }
        block_on(received.shutdown()).unwrap();
        let (file, received_lens) = received.complete().unwrap();
        assert_eq!(received_lens, lens);
        mark_installing(follower.engine().as_ref(), follower.keys(), &meta(10), file, &received_lens).unwrap();
        let last = install_frames(&follower, file, &received_lens, &meta(10)).unwrap();
        follower.make_current(&meta(10), file, &received_lens, last, true).unwrap();
        let mut expected = state(&leader);
        expected.retain(|(k, _)| !k.starts_with(keys::SYSTEM_APPLIED) && !k.starts_with(keys::SYSTEM_MEMBERSHIP));
        let mut installed = state(&follower);
        installed.retain(|(k, _)| !k.starts_with(keys::SYSTEM_APPLIED) && !k.starts_with(keys::SYSTEM_MEMBERSHIP));
        assert_eq!(installed, expected);
        assert!(installing(follower.engine().as_ref(), follower.keys()).unwrap().is_none(), "the marker is gone");
    }

    #[test]
    fn a_stream_cut_short_or_with_a_gap_is_refused() {
        let leader = store_with_state(2_000);
        let (_, _, bytes) = build(&leader);
        let follower = store_with_state(0);
        let mut cut = SnapshotFile::writer(follower.clone(), follower.allocate());
        block_on(cut.write_all(&bytes[..bytes.len() - 10])).unwrap();
        assert!(block_on(cut.shutdown()).is_err(), "no trailer");
        assert!(cut.complete().is_err());
        let mut gap = SnapshotFile::writer(follower.clone(), follower.allocate());
        let error = block_on(async {
            gap.write_all(&bytes[..1000]).await?;
            gap.seek(io::SeekFrom::Start(2000)).await?;
            gap.write_all(&bytes[2000..3000]).await
        })
        .unwrap_err();
        assert!(error.to_string().contains("gap"), "{error}");
    }

    #[test]
    fn a_corrupted_frame_is_never_sent_nor_taken() {
        let leader = store_with_state(2_000);
        let (file, lens, bytes) = build(&leader);
        // A byte flipped in the stream: the receiver refuses the frame.
        let follower = store_with_state(0);
        let mut flipped = bytes.clone();
        flipped[100] ^= 0x01;
        let mut received = SnapshotFile::writer(follower.clone(), follower.allocate());
        assert!(block_on(received.write_all(&flipped)).is_err());
        // A byte flipped on the leader's disk: the reader refuses to send the frame.
        let key = leader.keys().snapshot_frame(file, 1);
        let mut record = leader.engine().get(Cf::RaftMeta, &key).unwrap().unwrap();
        record[10] ^= 0x80;
        let mut batch = WriteBatch::default();
        batch.put(Cf::RaftMeta, key, record);
        leader.engine().write(batch, true).unwrap();
        let mut sent = Vec::new();
        assert!(block_on(SnapshotFile::reader(leader.clone(), file, lens).read_to_end(&mut sent)).is_err());
        assert!(sent.len() < bytes.len());
    }

    pub(crate) fn state_of_without_system(store: &SnapshotStore) -> KvPairs {
        let mut pairs = state(store);
        pairs.retain(|(k, _)| !k.starts_with(keys::SYSTEM_APPLIED) && !k.starts_with(keys::SYSTEM_MEMBERSHIP));
        pairs
    }

    #[test]
    fn a_replaced_snapshot_is_dropped_when_its_last_reader_is() {
        let store = store_with_state(10);
        let (old, old_lens, _) = build(&store);
        let reading = SnapshotFile::reader(store.clone(), old, old_lens.clone());
        let new = store.allocate();
        let lens = store.write_state(new).unwrap();
        assert!(store.make_current(&meta(20), new, &lens, WriteBatch::default(), false).unwrap());
        let frame = store.keys().snapshot_frame(old, 0);
        assert!(store.engine().get(Cf::RaftMeta, &frame).unwrap().is_some(), "still read");
        drop(reading);
        assert!(store.engine().get(Cf::RaftMeta, &frame).unwrap().is_none(), "dropped with its reader");
        // An older build finishing late does not replace a newer snapshot, and is discarded
        // when its reader goes.
        let late = store.allocate();
        let late_lens = store.write_state(late).unwrap();
        assert!(!store.make_current(&meta(15), late, &late_lens, WriteBatch::default(), false).unwrap());
        assert_eq!(store.current().unwrap().unwrap().1, new);
        let late_reader = SnapshotFile::reader(store.clone(), late, late_lens.clone());
        store.discard(late).unwrap();
        assert!(store.engine().get(Cf::RaftMeta, &store.keys().snapshot_frame(late, 0)).unwrap().is_some());
        drop(late_reader);
        assert!(store.engine().get(Cf::RaftMeta, &store.keys().snapshot_frame(late, 0)).unwrap().is_none());
        // Another late one stays until the start's collection.
        let late = store.allocate();
        store.write_state(late).unwrap();
        // At start, files that are not current go.
        store.collect_garbage(&[new]).unwrap();
        assert!(store.engine().get(Cf::RaftMeta, &store.keys().snapshot_frame(late, 0)).unwrap().is_none());
        assert!(store.engine().get(Cf::RaftMeta, &store.keys().snapshot_frame(new, 0)).unwrap().is_some());
        assert!(
            SnapshotStore::open(store.engine().clone(), GroupKeys::new(0)).unwrap().allocate() > new,
            "numbered after every file left"
        );
    }
}
