//! Explicit, versioned encodings of every record a replica stores, each closed by a crc32
//! that is checked on every read (docs/design/storage.md has them byte by byte). A record is
//!
//! ```text
//! kind:u8  format:u8  body…  crc32:u32
//! ```
//!
//! with the crc (crc32fast, big-endian) over everything before it. Integers are big-endian
//! and fixed-width; byte strings are `len:u32` then the bytes. A record of the wrong kind,
//! an unknown format, a bad crc, a short or overlong body is a `Corruption` error, which stops
//! the replica (`fail_stop.rs`). openraft's own serde forms never reach the disk: the formats
//! here change only when this file does.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{BasicNode, Entry, EntryPayload, LeaderId, LogId, Membership, SnapshotMeta, StoredMembership, Vote};
use prost::Message;

use super::kv_engine::{KvPairs, StorageError};
use crate::raft::{GroupTypes, LogPayload};

/// The record kinds, one byte each, so that a value read under the wrong key is caught too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Vote = b'V',
    LogId = b'I',
    Entry = b'E',
    Membership = b'M',
    SnapshotMeta = b'S',
    SnapshotFrame = b'F',
    SnapshotTrailer = b'T',
    SnapshotFile = b'P',
    Versioned = b'v',
    NextIno = b'N',
    SessionIds = b'R',
    ClusterSettings = b'C',
    ClusterMap = b'B',
}

/// The only format of every kind so far.
pub const FORMAT: u8 = 1;

const CRC_LEN: usize = 4;

/// Builds one record's body.
#[derive(Default)]
pub struct Writer {
    bytes: Vec<u8>,
}

impl Writer {
    pub fn new(kind: Kind) -> Writer {
        Writer { bytes: vec![kind as u8, FORMAT] }
    }

    pub fn with_capacity(kind: Kind, capacity: usize) -> Writer {
        let mut bytes = Vec::with_capacity(capacity + 2 + CRC_LEN);
        bytes.extend_from_slice(&[kind as u8, FORMAT]);
        Writer { bytes }
    }

    pub fn u8(&mut self, value: u8) -> &mut Self {
        self.bytes.push(value);
        self
    }

    pub fn u32(&mut self, value: u32) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn u64(&mut self, value: u64) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn bytes(&mut self, value: &[u8]) -> &mut Self {
        let len = u32::try_from(value.len()).expect("a stored byte string is under 4 GiB");
        self.u32(len);
        self.bytes.extend_from_slice(value);
        self
    }

    /// The bytes to the end of the record, unprefixed (the record's last field).
    pub fn rest(&mut self, value: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(value);
        self
    }

    /// Closes the record with its crc.
    pub fn finish(mut self) -> Vec<u8> {
        let crc = crc32fast::hash(&self.bytes);
        self.bytes.extend_from_slice(&crc.to_be_bytes());
        self.bytes
    }
}

/// Reads one record's body, after its kind, format and crc were checked.
pub struct Reader<'a> {
    kind: Kind,
    body: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks `record`'s kind, format and crc.
    pub fn open(kind: Kind, record: &'a [u8]) -> Result<Reader<'a>, StorageError> {
        if record.len() < 2 + CRC_LEN {
            return Err(corruption(kind, "short record"));
        }
        let (framed, crc) = record.split_at(record.len() - CRC_LEN);
        #[cfg(madsim)]
        let checked = !crate::planted::armed(crate::planted::Bug::SkipChecksums);
        #[cfg(not(madsim))]
        let checked = true;
        if checked && crc32fast::hash(framed).to_be_bytes() != crc {
            return Err(corruption(kind, "crc mismatch"));
        }
        if framed[0] != kind as u8 {
            return Err(corruption(kind, format!("record of kind {:#04x}", framed[0])));
        }
        if framed[1] != FORMAT {
            return Err(corruption(kind, format!("unknown format {}", framed[1])));
        }
        Ok(Reader { kind, body: &framed[2..] })
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], StorageError> {
        if self.body.len() < len {
            return Err(corruption(self.kind, "body ends early"));
        }
        let (taken, rest) = self.body.split_at(len);
        self.body = rest;
        Ok(taken)
    }

    pub fn u8(&mut self) -> Result<u8, StorageError> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32, StorageError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    pub fn u64(&mut self) -> Result<u64, StorageError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], StorageError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// A count of items that each take at least `item_len_min` bytes: checked against what is
    /// left, so a corrupted count cannot make a reader allocate without bound.
    pub fn count(&mut self, item_len_min: usize) -> Result<usize, StorageError> {
        let count = self.u64()?;
        if count.saturating_mul(item_len_min.max(1) as u64) > self.body.len() as u64 {
            return Err(corruption(self.kind, format!("count {count} beyond the record")));
        }
        Ok(count as usize)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.body)
    }

    /// Ends the record: nothing may be left.
    pub fn end(self) -> Result<(), StorageError> {
        match self.body.is_empty() {
            true => Ok(()),
            false => Err(corruption(self.kind, "bytes after the last field")),
        }
    }
}

fn corruption(kind: Kind, what: impl std::fmt::Display) -> StorageError {
    StorageError::corruption(format!("{kind:?} record: {what}"))
}

// Vote: term:u64 node:u64 committed:u8.

pub fn vote_encode(vote: &Vote<u64>) -> Vec<u8> {
    let mut w = Writer::new(Kind::Vote);
    w.u64(vote.leader_id.term).u64(vote.leader_id.node_id).u8(u8::from(vote.committed));
    w.finish()
}

pub fn vote_decode(record: &[u8]) -> Result<Vote<u64>, StorageError> {
    let mut r = Reader::open(Kind::Vote, record)?;
    let (term, node_id, committed) = (r.u64()?, r.u64()?, r.u8()?);
    r.end()?;
    match committed {
        0 => Ok(Vote::new(term, node_id)),
        1 => Ok(Vote::new_committed(term, node_id)),
        _ => Err(corruption(Kind::Vote, "committed flag")),
    }
}

// Log id: term:u64 node:u64 index:u64. An optional log id: present:u8, then the id.

fn log_id_write(w: &mut Writer, log_id: &LogId<u64>) {
    w.u64(log_id.leader_id.term).u64(log_id.leader_id.node_id).u64(log_id.index);
}

fn log_id_read(r: &mut Reader) -> Result<LogId<u64>, StorageError> {
    let (term, node_id, index) = (r.u64()?, r.u64()?, r.u64()?);
    Ok(LogId::new(LeaderId { term, node_id }, index))
}

fn log_id_option_write(w: &mut Writer, log_id: &Option<LogId<u64>>) {
    match log_id {
        None => {
            w.u8(0);
        }
        Some(id) => {
            w.u8(1);
            log_id_write(w, id);
        }
    }
}

fn log_id_option_read(r: &mut Reader) -> Result<Option<LogId<u64>>, StorageError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(log_id_read(r)?)),
        _ => Err(corruption(r.kind, "optional log id tag")),
    }
}

/// An optional log id as a record of its own (committed, purged, applied).
pub fn log_id_encode(log_id: &Option<LogId<u64>>) -> Vec<u8> {
    let mut w = Writer::new(Kind::LogId);
    log_id_option_write(&mut w, log_id);
    w.finish()
}

pub fn log_id_decode(record: &[u8]) -> Result<Option<LogId<u64>>, StorageError> {
    let mut r = Reader::open(Kind::LogId, record)?;
    let log_id = log_id_option_read(&mut r)?;
    r.end()?;
    Ok(log_id)
}

// Membership: configs:u64, each (voters:u64, each node:u64); nodes:u64, each (node:u64
// addr:bytes). A stored membership: an optional log id, then the membership.

fn membership_write(w: &mut Writer, membership: &Membership<u64, BasicNode>) {
    let configs = membership.get_joint_config();
    w.u64(configs.len() as u64);
    for config in configs {
        w.u64(config.len() as u64);
        for id in config {
            w.u64(*id);
        }
    }
    let nodes: Vec<_> = membership.nodes().collect();
    w.u64(nodes.len() as u64);
    for (id, node) in nodes {
        w.u64(*id).bytes(node.addr.as_bytes());
    }
}

fn membership_read(r: &mut Reader) -> Result<Membership<u64, BasicNode>, StorageError> {
    let mut configs = Vec::new();
    for _ in 0..r.count(8)? {
        let mut config = BTreeSet::new();
        for _ in 0..r.count(8)? {
            config.insert(r.u64()?);
        }
        configs.push(config);
    }
    let mut nodes = BTreeMap::new();
    for _ in 0..r.count(12)? {
        let id = r.u64()?;
        let addr = String::from_utf8(r.bytes()?.to_vec()).map_err(|_| corruption(r.kind, "node address"))?;
        nodes.insert(id, BasicNode { addr });
    }
    Ok(Membership::new(configs, nodes))
}

fn stored_membership_write(w: &mut Writer, membership: &StoredMembership<u64, BasicNode>) {
    log_id_option_write(w, membership.log_id());
    membership_write(w, membership.membership());
}

fn stored_membership_read(r: &mut Reader) -> Result<StoredMembership<u64, BasicNode>, StorageError> {
    let log_id = log_id_option_read(r)?;
    Ok(StoredMembership::new(log_id, membership_read(r)?))
}

pub fn membership_encode(membership: &StoredMembership<u64, BasicNode>) -> Vec<u8> {
    let mut w = Writer::new(Kind::Membership);
    stored_membership_write(&mut w, membership);
    w.finish()
}

pub fn membership_decode(record: &[u8]) -> Result<StoredMembership<u64, BasicNode>, StorageError> {
    let mut r = Reader::open(Kind::Membership, record)?;
    let membership = stored_membership_read(&mut r)?;
    r.end()?;
    Ok(membership)
}

// Log entry: log id, payload tag:u8 (0 blank, 1 command: the group's payload to the end, the
// metadata group's a protobuf `Command`; 2 membership).

const ENTRY_BLANK: u8 = 0;
const ENTRY_COMMAND: u8 = 1;
const ENTRY_MEMBERSHIP: u8 = 2;

pub fn entry_encode<C: GroupTypes>(entry: &Entry<C>) -> Vec<u8> {
    let mut w = Writer::new(Kind::Entry);
    log_id_write(&mut w, &entry.log_id);
    match &entry.payload {
        EntryPayload::Blank => {
            w.u8(ENTRY_BLANK);
        }
        EntryPayload::Normal(command) => {
            w.u8(ENTRY_COMMAND).rest(&command.encode_payload());
        }
        EntryPayload::Membership(membership) => {
            w.u8(ENTRY_MEMBERSHIP);
            membership_write(&mut w, membership);
        }
    }
    w.finish()
}

pub fn entry_decode<C: GroupTypes>(record: &[u8]) -> Result<Entry<C>, StorageError> {
    let mut r = Reader::open(Kind::Entry, record)?;
    let log_id = log_id_read(&mut r)?;
    let payload = match r.u8()? {
        ENTRY_BLANK => EntryPayload::Blank,
        ENTRY_COMMAND => {
            let payload =
                C::D::decode_payload(r.rest()).map_err(|e| corruption(Kind::Entry, format!("payload: {e}")))?;
            EntryPayload::Normal(payload)
        }
        ENTRY_MEMBERSHIP => EntryPayload::Membership(membership_read(&mut r)?),
        tag => return Err(corruption(Kind::Entry, format!("payload tag {tag}"))),
    };
    r.end()?;
    Ok(Entry { log_id, payload })
}

/// The log index a stored entry records, without decoding the payload.
pub fn entry_index(record: &[u8]) -> Result<LogId<u64>, StorageError> {
    let mut r = Reader::open(Kind::Entry, record)?;
    log_id_read(&mut r)
}

// Snapshot meta: optional last log id, stored membership, snapshot id:bytes.

pub fn snapshot_meta_encode(meta: &SnapshotMeta<u64, BasicNode>) -> Vec<u8> {
    let mut w = Writer::new(Kind::SnapshotMeta);
    log_id_option_write(&mut w, &meta.last_log_id);
    stored_membership_write(&mut w, &meta.last_membership);
    w.bytes(meta.snapshot_id.as_bytes());
    w.finish()
}

pub fn snapshot_meta_decode(record: &[u8]) -> Result<SnapshotMeta<u64, BasicNode>, StorageError> {
    let mut r = Reader::open(Kind::SnapshotMeta, record)?;
    let last_log_id = log_id_option_read(&mut r)?;
    let last_membership = stored_membership_read(&mut r)?;
    let snapshot_id =
        String::from_utf8(r.bytes()?.to_vec()).map_err(|_| corruption(Kind::SnapshotMeta, "snapshot id"))?;
    r.end()?;
    Ok(SnapshotMeta { last_log_id, last_membership, snapshot_id })
}

// Snapshot frame: pairs:u64, each (key:bytes value:bytes): a run of the `state` family in
// key order (`raft/snapshot_file.rs`). Each frame has its own crc, checked before any of its
// pairs is used.

pub fn snapshot_frame_encode(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let len: usize = pairs.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut w = Writer::with_capacity(Kind::SnapshotFrame, 8 + len);
    w.u64(pairs.len() as u64);
    for (key, value) in pairs {
        w.bytes(key).bytes(value);
    }
    w.finish()
}

pub fn snapshot_frame_decode(record: &[u8]) -> Result<KvPairs, StorageError> {
    let mut r = Reader::open(Kind::SnapshotFrame, record)?;
    let count = r.count(8)?;
    let mut pairs = Vec::with_capacity(count);
    for _ in 0..count {
        let key = r.bytes()?.to_vec();
        pairs.push((key, r.bytes()?.to_vec()));
    }
    r.end()?;
    Ok(pairs)
}

// Snapshot trailer, a snapshot's last frame: pairs:u64 frames:u64 (the frames before it), so
// a snapshot cut short or with a frame missing is never taken for whole.

pub fn snapshot_trailer_encode(pairs: u64, frames: u64) -> Vec<u8> {
    let mut w = Writer::new(Kind::SnapshotTrailer);
    w.u64(pairs).u64(frames);
    w.finish()
}

pub fn snapshot_trailer_decode(record: &[u8]) -> Result<(u64, u64), StorageError> {
    let mut r = Reader::open(Kind::SnapshotTrailer, record)?;
    let (pairs, frames) = (r.u64()?, r.u64()?);
    r.end()?;
    Ok((pairs, frames))
}

/// The kind of a frame record (its first byte), to tell a trailer from a frame.
pub fn record_kind(record: &[u8]) -> Option<u8> {
    record.first().copied()
}

// Snapshot file: file:u64 frames:u64, each len:u32 (the length of each stored frame record,
// the trailer last): where a complete snapshot's frames are and how long each is.

pub fn snapshot_file_encode(file: u64, lens: &[u32]) -> Vec<u8> {
    let mut w = Writer::with_capacity(Kind::SnapshotFile, 16 + 4 * lens.len());
    w.u64(file).u64(lens.len() as u64);
    for len in lens {
        w.u32(*len);
    }
    w.finish()
}

pub fn snapshot_file_decode(record: &[u8]) -> Result<(u64, Vec<u32>), StorageError> {
    let mut r = Reader::open(Kind::SnapshotFile, record)?;
    let file = r.u64()?;
    let count = r.count(4)?;
    let lens = (0..count).map(|_| r.u32()).collect::<Result<_, _>>()?;
    r.end()?;
    Ok((file, lens))
}

// A state value: version:u64, then the payload to the end.

pub fn versioned_encode(version: u64, payload: &[u8]) -> Vec<u8> {
    assert!(version > 0, "a stored key always has the version of the commit that wrote it");
    let mut w = Writer::with_capacity(Kind::Versioned, 8 + payload.len());
    w.u64(version).rest(payload);
    w.finish()
}

pub fn versioned_decode(record: &[u8]) -> Result<(u64, &[u8]), StorageError> {
    let mut r = Reader::open(Kind::Versioned, record)?;
    let version = r.u64()?;
    if version == 0 {
        return Err(corruption(Kind::Versioned, "version 0"));
    }
    Ok((version, r.rest()))
}

// The next free inode number: u64.

pub fn next_ino_encode(next: u64) -> Vec<u8> {
    let mut w = Writer::new(Kind::NextIno);
    w.u64(next);
    w.finish()
}

pub fn next_ino_decode(record: &[u8]) -> Result<u64, StorageError> {
    let mut r = Reader::open(Kind::NextIno, record)?;
    let next = r.u64()?;
    r.end()?;
    Ok(next)
}

// The cluster-wide settings (`metadata/settings.rs`): lease_ms:u64 lease_drift_ppm:u32.

pub fn cluster_settings_encode(settings: &cffs_proto::ClusterSettings) -> Vec<u8> {
    let mut w = Writer::new(Kind::ClusterSettings);
    w.u64(settings.lease_ms).u32(settings.lease_drift_ppm);
    w.finish()
}

pub fn cluster_settings_decode(record: &[u8]) -> Result<cffs_proto::ClusterSettings, StorageError> {
    let mut r = Reader::open(Kind::ClusterSettings, record)?;
    let (lease_ms, lease_drift_ppm) = (r.u64()?, r.u32()?);
    r.end()?;
    Ok(cffs_proto::ClusterSettings { lease_ms, lease_drift_ppm })
}

// The cluster map (`ClusterMap`, prost): where file data lives.

pub fn cluster_map_encode(map: &cffs_proto::ClusterMap) -> Vec<u8> {
    let body = map.encode_to_vec();
    let mut w = Writer::with_capacity(Kind::ClusterMap, body.len());
    w.rest(&body);
    w.finish()
}

pub fn cluster_map_decode(record: &[u8]) -> Result<cffs_proto::ClusterMap, StorageError> {
    let mut r = Reader::open(Kind::ClusterMap, record)?;
    let map =
        cffs_proto::ClusterMap::decode(r.rest()).map_err(|e| corruption(Kind::ClusterMap, format!("map: {e}")))?;
    r.end()?;
    Ok(map)
}

// The session-number reservation (`metadata/session_ids.rs`): term:u64 end:u64.

pub fn session_ids_encode(term: u64, end: u64) -> Vec<u8> {
    let mut w = Writer::new(Kind::SessionIds);
    w.u64(term).u64(end);
    w.finish()
}

pub fn session_ids_decode(record: &[u8]) -> Result<(u64, u64), StorageError> {
    let mut r = Reader::open(Kind::SessionIds, record)?;
    let (term, end) = (r.u64()?, r.u64()?);
    r.end()?;
    Ok((term, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::raft_types::{RaftCommand, TypeConfig};
    use cffs_proto::Command;

    fn membership() -> StoredMembership<u64, BasicNode> {
        let nodes: BTreeMap<u64, BasicNode> =
            (1..=4).map(|id| (id, BasicNode { addr: format!("10.0.0.{id}:7101") })).collect();
        let configs = vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([2, 3, 4])];
        StoredMembership::new(Some(LogId::new(LeaderId { term: 2, node_id: 1 }, 9)), Membership::new(configs, nodes))
    }

    /// Every byte of a record matters: flipping any one is a corruption error.
    fn every_byte_flip_is_caught<T>(record: &[u8], decode: impl Fn(&[u8]) -> Result<T, StorageError>) {
        assert!(decode(record).is_ok());
        for i in 0..record.len() {
            for bit in [0x01, 0x80] {
                let mut bad = record.to_vec();
                bad[i] ^= bit;
                assert!(decode(&bad).is_err(), "byte {i} flipped with {bit:#x} went unnoticed");
            }
        }
        assert!(decode(&record[..record.len() - 1]).is_err(), "a torn record");
    }

    #[test]
    fn votes_round_trip_and_corruption_is_caught() {
        for vote in [Vote::new(7, 2), Vote::new_committed(8, 3)] {
            let record = vote_encode(&vote);
            assert_eq!(vote_decode(&record).unwrap(), vote);
            every_byte_flip_is_caught(&record, vote_decode);
        }
    }

    #[test]
    fn entries_round_trip_and_corruption_is_caught() {
        let log_id = LogId::new(LeaderId { term: 3, node_id: 1 }, 42);
        let command = Command {
            kind: Some(cffs_proto::command::Kind::AllocateInodes(cffs_proto::AllocateInodesRequest { count: 7 })),
        };
        for payload in [
            EntryPayload::Blank,
            EntryPayload::Normal(RaftCommand(command)),
            EntryPayload::Membership(membership().membership().clone()),
        ] {
            let entry: Entry<TypeConfig> = Entry { log_id, payload };
            let record = entry_encode(&entry);
            assert_eq!(entry_decode(&record).unwrap(), entry);
            assert_eq!(entry_index(&record).unwrap(), log_id);
            every_byte_flip_is_caught(&record, entry_decode::<TypeConfig>);
        }
    }

    #[test]
    fn log_ids_memberships_and_snapshot_meta_round_trip() {
        for log_id in [None, Some(LogId::new(LeaderId { term: 1, node_id: 1 }, 5))] {
            assert_eq!(log_id_decode(&log_id_encode(&log_id)).unwrap(), log_id);
        }
        let stored = membership();
        let record = membership_encode(&stored);
        assert_eq!(membership_decode(&record).unwrap(), stored);
        every_byte_flip_is_caught(&record, membership_decode);
        let meta = SnapshotMeta { last_log_id: *stored.log_id(), last_membership: stored, snapshot_id: "2-9".into() };
        let record = snapshot_meta_encode(&meta);
        assert_eq!(snapshot_meta_decode(&record).unwrap(), meta);
    }

    #[test]
    fn snapshot_records_and_state_values_round_trip_and_corruption_is_caught() {
        let pairs = vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), Vec::new())];
        let record = snapshot_frame_encode(&pairs);
        assert_eq!(snapshot_frame_decode(&record).unwrap(), pairs);
        every_byte_flip_is_caught(&record, snapshot_frame_decode);
        let record = snapshot_trailer_encode(2, 1);
        assert_eq!(snapshot_trailer_decode(&record).unwrap(), (2, 1));
        every_byte_flip_is_caught(&record, snapshot_trailer_decode);
        let record = snapshot_file_encode(7, &[120, 20]);
        assert_eq!(snapshot_file_decode(&record).unwrap(), (7, vec![120, 20]));
        every_byte_flip_is_caught(&record, snapshot_file_decode);
        let record = versioned_encode(42, b"payload");
        assert_eq!(versioned_decode(&record).unwrap(), (42, &b"payload"[..]));
        every_byte_flip_is_caught(&record, |r| versioned_decode(r).map(|(v, p)| (v, p.to_vec())));
        every_byte_flip_is_caught(&next_ino_encode(16), next_ino_decode);
        let record = session_ids_encode(7, 4097);
        assert_eq!(session_ids_decode(&record).unwrap(), (7, 4097));
        every_byte_flip_is_caught(&record, session_ids_decode);
        let settings = cffs_proto::ClusterSettings { lease_ms: 250, lease_drift_ppm: 10_000 };
        let record = cluster_settings_encode(&settings);
        assert_eq!(cluster_settings_decode(&record).unwrap(), settings);
        every_byte_flip_is_caught(&record, cluster_settings_decode);
    }

    #[test]
    fn a_record_read_under_the_wrong_kind_is_corruption() {
        let record = next_ino_encode(16);
        assert!(log_id_decode(&record).is_err());
        assert!(versioned_decode(&vote_encode(&Vote::new(1, 1))).is_err());
    }

    #[test]
    fn a_corrupted_count_cannot_allocate_without_bound() {
        let mut w = Writer::new(Kind::SnapshotFrame);
        w.u64(u64::MAX);
        assert!(snapshot_frame_decode(&w.finish()).is_err());
        let mut w = Writer::new(Kind::SnapshotFile);
        w.u64(1).u64(u64::MAX);
        assert!(snapshot_file_decode(&w.finish()).is_err());
    }
}
