//! openraft's type configuration for the metadata group. The log entry payload is a
//! `cffs.v1.Command` (protobuf: a versioned, explicit record, since it is stored in the log);
//! the apply result is a `CommandOutcome`. The async runtime is the glue's (tokio for real
//! runs, madsim under `cfg(madsim)`).

use std::fmt;

use cffs_proto::{AllocateInodesResponse, Command, CommitResponse};
use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::txn::CommandOutcome;
use crate::raft::LogPayload;

openraft::declare_raft_types!(
    pub TypeConfig:
        D = RaftCommand,
        R = RaftOutcome,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::raft::snapshot_file::SnapshotFile,
        AsyncRuntime = crate::raft::Runtime,
);

pub type MetaRaft = openraft::Raft<TypeConfig>;

/// A log entry payload. Serialized (in the log and on the wire) as protobuf bytes.
#[derive(Clone, PartialEq)]
pub struct RaftCommand(pub Command);

impl fmt::Debug for RaftCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.kind {
            Some(cffs_proto::command::Kind::Commit(c)) => {
                write!(f, "Commit(reads={}, writes={})", c.reads.len(), c.writes.len())
            }
            Some(cffs_proto::command::Kind::AllocateInodes(a)) => write!(f, "AllocateInodes({})", a.count),
            Some(cffs_proto::command::Kind::ClusterSettings(s)) => {
                write!(f, "ClusterSettings(lease {} ms, drift {} ppm)", s.lease_ms, s.lease_drift_ppm)
            }
            Some(cffs_proto::command::Kind::AddBlockGroup(g)) => {
                write!(f, "AddBlockGroup({} servers)", g.members.len())
            }
            Some(cffs_proto::command::Kind::ReplaceBlockServer(r)) => write!(
                f,
                "ReplaceBlockServer(group {}: {} -> {})",
                r.group,
                r.old,
                r.new_member.as_ref().map_or(0, |m| m.id)
            ),
            Some(cffs_proto::command::Kind::RefillDone(d)) => {
                write!(f, "RefillDone(group {}, change at {})", d.group, d.changed_at)
            }
            Some(cffs_proto::command::Kind::TombstoneBlocks(b)) => write!(f, "TombstoneBlocks({})", b.ids.len()),
            Some(cffs_proto::command::Kind::DropTombstones(b)) => write!(f, "DropTombstones({})", b.ids.len()),
            Some(cffs_proto::command::Kind::CommitBatch(b)) => write!(f, "CommitBatch({} commits)", b.commits.len()),
            None => write!(f, "Empty"),
        }
    }
}

/// In the log: the protobuf `Command` (storage/codec.rs puts it in an entry record).
impl LogPayload for RaftCommand {
    fn encode_payload(&self) -> Vec<u8> {
        self.0.encode_to_vec()
    }

    fn decode_payload(bytes: &[u8]) -> Result<Self, String> {
        Command::decode(bytes).map(RaftCommand).map_err(|e| e.to_string())
    }
}

impl fmt::Display for RaftCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl Serialize for RaftCommand {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0.encode_to_vec())
    }
}

impl<'de> Deserialize<'de> for RaftCommand {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: Vec<u8> = serde_bytes_vec(deserializer)?;
        Command::decode(bytes.as_slice()).map(RaftCommand).map_err(serde::de::Error::custom)
    }
}

fn serde_bytes_vec<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    struct BytesVisitor;
    impl<'de> serde::de::Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut bytes = Vec::new();
            while let Some(b) = seq.next_element()? {
                bytes.push(b);
            }
            Ok(bytes)
        }
    }
    deserializer.deserialize_byte_buf(BytesVisitor)
}

/// The result of applying one entry, handed back to the proposer. It never leaves the node,
/// but openraft asks for serde: it is encoded as a tag byte and protobuf bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct RaftOutcome(pub Option<CommandOutcome>);

impl Serialize for RaftOutcome {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (tag, bytes): (u8, Vec<u8>) = match &self.0 {
            None => (0, Vec::new()),
            Some(CommandOutcome::Commit(r)) => (1, r.encode_to_vec()),
            Some(CommandOutcome::AllocateInodes(r)) => (2, r.encode_to_vec()),
            Some(CommandOutcome::Rejected(why)) => (3, why.as_bytes().to_vec()),
            Some(CommandOutcome::Settings(s)) => (4, s.encode_to_vec()),
            Some(CommandOutcome::ClusterMap(m)) => (5, m.encode_to_vec()),
            Some(CommandOutcome::Tombstoned(ids)) => (6, cffs_proto::BlockIds { ids: ids.clone() }.encode_to_vec()),
            Some(CommandOutcome::TombstonesDropped) => (7, Vec::new()),
            Some(CommandOutcome::Commits(outcomes)) => (8, batch_outcome_encode(outcomes).encode_to_vec()),
        };
        (tag, serde_bytes_wrap(bytes)).serialize(serializer)
    }
}

fn batch_outcome_encode(outcomes: &[CommandOutcome]) -> cffs_proto::CommitBatchOutcome {
    use cffs_proto::commit_batch_item::Outcome;
    let item = |outcome: &CommandOutcome| cffs_proto::CommitBatchItem {
        outcome: Some(match outcome {
            CommandOutcome::Commit(response) => Outcome::Commit(response.clone()),
            CommandOutcome::Rejected(why) => Outcome::Rejected(why.clone()),
            other => Outcome::Rejected(format!("not a commit's outcome: {other:?}")),
        }),
    };
    cffs_proto::CommitBatchOutcome { outcomes: outcomes.iter().map(item).collect() }
}

fn batch_outcome_decode(outcome: cffs_proto::CommitBatchOutcome) -> CommandOutcome {
    use cffs_proto::commit_batch_item::Outcome;
    CommandOutcome::Commits(
        outcome
            .outcomes
            .into_iter()
            .map(|item| match item.outcome {
                Some(Outcome::Commit(response)) => CommandOutcome::Commit(response),
                Some(Outcome::Rejected(why)) => CommandOutcome::Rejected(why),
                None => CommandOutcome::Rejected("empty outcome".into()),
            })
            .collect(),
    )
}

#[derive(Serialize, Deserialize)]
struct BytesWrap(Vec<u8>);

fn serde_bytes_wrap(bytes: Vec<u8>) -> BytesWrap {
    BytesWrap(bytes)
}

impl<'de> Deserialize<'de> for RaftOutcome {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let (tag, BytesWrap(bytes)) = <(u8, BytesWrap)>::deserialize(deserializer)?;
        let outcome = match tag {
            0 => None,
            1 => Some(CommandOutcome::Commit(CommitResponse::decode(bytes.as_slice()).map_err(D::Error::custom)?)),
            2 => Some(CommandOutcome::AllocateInodes(
                AllocateInodesResponse::decode(bytes.as_slice()).map_err(D::Error::custom)?,
            )),
            3 => Some(CommandOutcome::Rejected(String::from_utf8_lossy(&bytes).into_owned())),
            4 => Some(CommandOutcome::Settings(
                cffs_proto::ClusterSettings::decode(bytes.as_slice()).map_err(D::Error::custom)?,
            )),
            5 => Some(CommandOutcome::ClusterMap(
                cffs_proto::ClusterMap::decode(bytes.as_slice()).map_err(D::Error::custom)?,
            )),
            6 => Some(CommandOutcome::Tombstoned(
                cffs_proto::BlockIds::decode(bytes.as_slice()).map_err(D::Error::custom)?.ids,
            )),
            7 => Some(CommandOutcome::TombstonesDropped),
            8 => Some(batch_outcome_decode(
                cffs_proto::CommitBatchOutcome::decode(bytes.as_slice()).map_err(D::Error::custom)?,
            )),
            _ => return Err(D::Error::custom("unknown outcome tag")),
        };
        Ok(RaftOutcome(outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_and_outcome_roundtrip_through_bincode() {
        let command = RaftCommand(Command {
            kind: Some(cffs_proto::command::Kind::AllocateInodes(cffs_proto::AllocateInodesRequest { count: 7 })),
        });
        let bytes = bincode::serialize(&command).unwrap();
        assert_eq!(bincode::deserialize::<RaftCommand>(&bytes).unwrap(), command);
        let outcome = RaftOutcome(Some(CommandOutcome::AllocateInodes(AllocateInodesResponse { first: 16, count: 7 })));
        let bytes = bincode::serialize(&outcome).unwrap();
        assert_eq!(bincode::deserialize::<RaftOutcome>(&bytes).unwrap(), outcome);
    }
}
