//! Reads one replica's state dump (every key and value of its `state` family, as
//! `Cluster::state_of` returns it) as a file system: inodes by number, dentries by parent and
//! name, and files' contents by path. For checkers and tests that compare replicas; it judges
//! nothing itself (fsck does).

use std::collections::BTreeMap;

use cffs_proto::{Dentry, Inode};
use cffs_server::storage::keys;
use prost::Message;

/// The decodable inodes and dentries of one state dump (undecodable records are skipped:
/// fsck reports them).
#[derive(Debug, Default)]
pub struct StateView {
    pub inodes: BTreeMap<u64, Inode>,
    pub dentries: BTreeMap<(u64, Vec<u8>), Dentry>,
}

impl StateView {
    pub fn new(state: &[(Vec<u8>, Vec<u8>)]) -> StateView {
        let mut view = StateView::default();
        for (key, value) in state {
            match key.first() {
                Some(&keys::PREFIX_INODE) => {
                    if let Some(inode) = keys::versioned_decode(value).ok().and_then(|(_, p)| Inode::decode(p).ok()) {
                        view.inodes.insert(inode.ino, inode);
                    }
                }
                Some(&keys::PREFIX_DENTRY) => {
                    let decoded = keys::dentry_key_decode(key).ok().and_then(|(parent, name)| {
                        let (_, payload) = keys::versioned_decode(value).ok()?;
                        Some((parent, name.to_vec(), Dentry::decode(payload).ok()?))
                    });
                    if let Some((parent, name, dentry)) = decoded {
                        view.dentries.insert((parent, name), dentry);
                    }
                }
                _ => {}
            }
        }
        view
    }

    /// The inode an absolute path names (no symlinks followed, no `..`).
    pub fn resolve(&self, path: &str) -> Option<&Inode> {
        let mut ino = cffs_proto::limits::ROOT_INO;
        for name in path.split('/').filter(|n| !n.is_empty()) {
            ino = self.dentries.get(&(ino, name.as_bytes().to_vec()))?.ino;
        }
        self.inodes.get(&ino)
    }

    /// The contents of the file at `path`.
    pub fn file_data(&self, path: &str) -> Option<&[u8]> {
        self.resolve(path).map(|inode| inode.data.as_slice())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use cffs_proto::FileKind;

    /// A state dump holding `inodes` and `dentries` (parent, name, ino), encoded as the
    /// server stores them. Shared with the fsck tests.
    pub(crate) fn dump(inodes: &[Inode], dentries: &[(u64, &str, u64)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let kinds: BTreeMap<u64, i32> = inodes.iter().map(|i| (i.ino, i.kind)).collect();
        let mut state: Vec<(Vec<u8>, Vec<u8>)> = inodes
            .iter()
            .map(|inode| (keys::inode_key(inode.ino), keys::versioned_encode(1, &inode.encode_to_vec())))
            .collect();
        for (parent, name, ino) in dentries {
            let dentry = Dentry { ino: *ino, kind: kinds.get(ino).copied().unwrap_or(FileKind::Regular as i32) };
            state
                .push((keys::dentry_key(*parent, name.as_bytes()), keys::versioned_encode(1, &dentry.encode_to_vec())));
        }
        state.sort();
        state
    }

    pub(crate) fn dir(ino: u64, parent: u64, nlink: u32) -> Inode {
        Inode { ino, kind: FileKind::Directory as i32, nlink, parent, ..Default::default() }
    }

    pub(crate) fn file(ino: u64, nlink: u32, data: &[u8]) -> Inode {
        Inode { ino, kind: FileKind::Regular as i32, nlink, data: data.to_vec(), ..Default::default() }
    }

    #[test]
    fn files_are_found_by_path() {
        let root = cffs_proto::limits::ROOT_INO;
        let state = dump(&[dir(root, 0, 3), dir(10, root, 2), file(11, 1, b"7")], &[(root, "c", 10), (10, "c0", 11)]);
        let view = StateView::new(&state);
        assert_eq!(view.file_data("/c/c0"), Some(b"7".as_slice()));
        assert_eq!(view.file_data("/c/c1"), None);
        assert_eq!(view.resolve("/").map(|i| i.ino), Some(root));
    }
}
