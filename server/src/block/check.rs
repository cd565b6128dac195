//! The metadata leader's check, before it proposes a commit, that every block the commit
//! newly references is stored, with its length and crc, on a majority of its group. A block
//! the committed inode already references is not checked again: it was checked when it was
//! first committed, and the collector never deletes a referenced block.
//!
//! Connections to block servers are kept, one channel per address.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use cffs_proto::block_client::BlockClient;
use cffs_proto::error_code::status;
use cffs_proto::{write_op, BlockRef, ClusterMap, CommitRequest, ErrorCode, StatBlocksRequest};
use tonic::transport::Channel;
use tonic::Status;

use super::store::block_id_hex;
use crate::metadata::state;
use crate::storage::{KvEngine, StorageError};

/// How long one block server has to answer a check.
pub const BLOCK_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The blocks `request` puts that the committed inodes it overwrites do not reference.
pub fn new_blocks(engine: &dyn KvEngine, request: &CommitRequest) -> Result<Vec<BlockRef>, StorageError> {
    let mut fresh = Vec::new();
    for op in request.writes.iter().filter_map(|w| w.op.as_ref()) {
        let write_op::Op::PutInode(inode) = op else { continue };
        if inode.blocks.is_empty() {
            continue;
        }
        let (_, current) = state::read_inode(engine, inode.ino)?;
        let known: std::collections::BTreeSet<&[u8]> =
            current.as_ref().map(|c| c.blocks.iter().map(|b| b.id.as_slice()).collect()).unwrap_or_default();
        fresh.extend(inode.blocks.iter().filter(|b| !known.contains(b.id.as_slice())).cloned());
    }
    Ok(fresh)
}

#[derive(Default)]
pub struct BlockCheck {
    channels: Mutex<BTreeMap<String, Channel>>,
}

impl BlockCheck {
    pub fn client(&self, addr: &str) -> Result<BlockClient<Channel>, Status> {
        let mut channels = self.channels.lock().expect("block channels");
        let channel = match channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let channel = crate::raft::network::channel(addr)
                    .map_err(|e| status(ErrorCode::Unavailable, format!("block server {addr}: {e}")))?;
                channels.insert(addr.to_string(), channel.clone());
                channel
            }
        };
        Ok(BlockClient::new(channel)
            .max_decoding_message_size(cffs_proto::limits::RPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(cffs_proto::limits::RPC_MESSAGE_BYTES_MAX))
    }

    /// Refuses a replacement that would leave the group unable to store blocks: the new
    /// server must answer, and so must a majority of the group's members after the change
    /// (a block write needs a majority of them).
    pub async fn check_replacement_quorum(
        &self,
        map: &ClusterMap,
        request: &cffs_proto::ReplaceBlockServerRequest,
    ) -> Result<(), String> {
        let group = map.groups.iter().find(|g| g.id == request.group).ok_or("no such block group")?;
        let new = request.new_member.as_ref().ok_or("the new block server is missing")?;
        let after: Vec<&cffs_proto::BlockMember> =
            group.members.iter().filter(|m| m.id != request.old).chain(std::iter::once(new)).collect();
        let calls = after.iter().map(|member| {
            let client = self.client(&member.addr);
            async move {
                let mut client = client.ok()?;
                let call = client.block_status(cffs_proto::BlockStatusRequest {});
                tokio::time::timeout(BLOCK_CHECK_TIMEOUT, call).await.ok()?.ok().map(|_| member.id)
            }
        });
        let answered: Vec<u64> = futures::future::join_all(calls).await.into_iter().flatten().collect();
        let silent: Vec<u64> = after.iter().map(|m| m.id).filter(|id| !answered.contains(id)).collect();
        if !answered.contains(&new.id) {
            return Err(format!(
                "refused: the new block server {} at {} did not answer; start it first (`cffs-server block`)",
                new.id, new.addr
            ));
        }
        let majority = after.len() / 2 + 1;
        if answered.len() < majority {
            return Err(format!(
                "refused: after the change, group {} would have {} of {} servers answering (not answering: {silent:?}); \
                 a block write needs {majority}",
                group.id,
                answered.len(),
                after.len()
            ));
        }
        Ok(())
    }

    /// Ok when every block is stored with its length and crc on a majority of its group;
    /// else `BLOCK_MISSING` (or `INVALID_ARGUMENT` for a group the map does not have).
    pub async fn check(&self, map: &ClusterMap, blocks: &[BlockRef]) -> Result<(), Status> {
        let mut by_group: BTreeMap<u32, Vec<&BlockRef>> = BTreeMap::new();
        for block in blocks {
            by_group.entry(block.group).or_default().push(block);
        }
        for (group_id, blocks) in by_group {
            let Some(group) = map.groups.iter().find(|g| g.id == group_id) else {
                return Err(status(
                    ErrorCode::InvalidArgument,
                    format!("a block names group {group_id}, which the cluster map does not have"),
                ));
            };
            let ids: Vec<Vec<u8>> = blocks.iter().map(|b| b.id.clone()).collect();
            let calls = group.members.iter().map(|member| {
                let request = StatBlocksRequest { ids: ids.clone() };
                let client = self.client(&member.addr);
                async move {
                    let mut client = client.ok()?;
                    let reply = tokio::time::timeout(BLOCK_CHECK_TIMEOUT, client.stat_blocks(request)).await;
                    let held = reply.ok()?.ok()?.into_inner().blocks;
                    Some(held.into_iter().map(|info| (info.id, (info.len, info.crc))).collect::<BTreeMap<_, _>>())
                }
            });
            let answers: Vec<_> = futures::future::join_all(calls).await.into_iter().flatten().collect();
            let majority = group.members.len() / 2 + 1;
            for block in blocks {
                let holders =
                    answers.iter().filter(|held| held.get(&block.id) == Some(&(block.len, block.crc))).count();
                if holders < majority {
                    return Err(status(
                        ErrorCode::BlockMissing,
                        format!(
                            "block {} (index {}) is stored on {holders} of the {} servers of group {group_id}; a commit needs {majority}",
                            block_id_hex(&block.id.as_slice().try_into().unwrap_or([0; 16])),
                            block.index,
                            group.members.len()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
