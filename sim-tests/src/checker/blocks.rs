//! Block fsck: every block that a committed inode references (in one replica's state) is
//! stored intact, with its length and crc32, on a server of its group. Copies that are
//! missing or bad on some servers of the group are counted as under-replicated (the scrubber
//! is what restores them); a block with no intact copy anywhere is lost data.

use std::collections::BTreeMap;

use cffs_proto::{BlockRef, ClusterMap, Inode};
use cffs_server::block::sim_store::SimBlockStore;
use cffs_server::block::store::{block_id, BlockStore};
use cffs_server::storage::keys;
use prost::Message;

/// What block fsck found.
#[derive(Debug, Default)]
pub struct BlockFsck {
    pub problems: Vec<String>,
    pub referenced: u64,
    /// Referenced blocks with fewer intact copies than a majority of their group.
    pub under_replicated: u64,
}

/// The cluster map and every inode of a replica's state dump.
fn read_state(state: &[(Vec<u8>, Vec<u8>)]) -> (ClusterMap, Vec<Inode>) {
    let mut map = ClusterMap::default();
    let mut inodes = Vec::new();
    for (key, value) in state {
        if key.as_slice() == keys::SYSTEM_CLUSTER_MAP {
            map = cffs_server::storage::codec::cluster_map_decode(value).unwrap_or_default();
        } else if key.first() == Some(&keys::PREFIX_INODE) {
            if let Some(inode) = keys::versioned_decode(value).ok().and_then(|(_, p)| Inode::decode(p).ok()) {
                inodes.push(inode);
            }
        }
    }
    (map, inodes)
}

fn intact(store: &SimBlockStore, block: &BlockRef) -> bool {
    let Some(id) = block_id(&block.id) else { return false };
    match store.get(&id) {
        Ok(Some((info, data))) => info.len == block.len && info.crc == block.crc && crc32fast::hash(&data) == block.crc,
        _ => false,
    }
}

/// Checks `state`'s block references against the stores; `store_of(server id)` is that block
/// server's store.
pub fn check(state: &[(Vec<u8>, Vec<u8>)], store_of: impl Fn(u64) -> Option<SimBlockStore>) -> BlockFsck {
    let (map, inodes) = read_state(state);
    let groups: BTreeMap<u32, Vec<u64>> =
        map.groups.iter().map(|g| (g.id, g.members.iter().map(|m| m.id).collect())).collect();
    let mut report = BlockFsck::default();
    for inode in &inodes {
        for block in &inode.blocks {
            report.referenced += 1;
            let Some(members) = groups.get(&block.group) else {
                report.problems.push(format!(
                    "inode {} block {}: group {} is not in the map",
                    inode.ino, block.index, block.group
                ));
                continue;
            };
            let copies = members.iter().filter_map(|id| store_of(*id)).filter(|s| intact(s, block)).count();
            if copies == 0 {
                report.problems.push(format!(
                    "inode {} block {} (group {}): no intact copy on any server of its group",
                    inode.ino, block.index, block.group
                ));
            } else if copies < members.len() / 2 + 1 {
                report.under_replicated += 1;
            }
        }
    }
    report
}

/// The ids of every block server the cluster map of `state` names (a replaced one is no
/// longer among them).
pub fn members(state: &[(Vec<u8>, Vec<u8>)]) -> Vec<u64> {
    let (map, _) = read_state(state);
    map.groups.iter().flat_map(|g| g.members.iter().map(|m| m.id)).collect()
}

/// Blocks stored on the servers that no inode of `state` references, per server: what the
/// collector should have removed (once the grace period passed and it ran).
pub fn unreferenced(
    state: &[(Vec<u8>, Vec<u8>)],
    stores: impl Iterator<Item = (u64, Option<SimBlockStore>)>,
) -> Vec<String> {
    let (_, inodes) = read_state(state);
    let referenced: std::collections::BTreeSet<&[u8]> =
        inodes.iter().flat_map(|i| i.blocks.iter().map(|b| b.id.as_slice())).collect();
    let mut problems = Vec::new();
    for (id, store) in stores {
        let Some(store) = store else { continue };
        let left = store.ids().iter().filter(|block| !referenced.contains(block.as_slice())).count();
        if left > 0 {
            problems.push(format!("block server {id} still holds {left} unreferenced blocks after collection"));
        }
    }
    problems
}
