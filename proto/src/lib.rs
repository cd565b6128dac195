//! The CFFS wire protocol: generated prost messages and tonic services (`v1`; `etcd`, the
//! client side of the peer the benchmark compares with), and the one
//! error-code set shared by servers and clients (`error_code`). Nothing here knows how a
//! message is stored or what a transaction means.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("cffs.v1");
}

/// etcd's KV API, client side: the peer the benchmark runs beside CFFS (`cffs bench --peer
/// etcd`).
#[allow(clippy::all, missing_docs)]
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}

pub mod error_code;
pub mod limits;

pub use v1::*;

impl Key {
    pub fn inode(ino: u64) -> Key {
        Key { kind: Some(key::Kind::Inode(ino)) }
    }

    pub fn dentry(parent: u64, name: &[u8]) -> Key {
        Key { kind: Some(key::Kind::Dentry(DentryKey { parent, name: name.to_vec() })) }
    }

    pub fn listing(ino: u64) -> Key {
        Key { kind: Some(key::Kind::Listing(ino)) }
    }
}

impl CommitRequest {
    /// Every key this commit writes: puts and deletes, a deleted inode's listing, and for a
    /// commutative directory update the directory's inode and (when bumped) its listing.
    /// Leases are revoked on exactly these keys (the leader) and dropped from the cache on
    /// exactly these keys (the writer's client): one rule for both.
    pub fn written_keys(&self) -> Vec<Key> {
        let mut keys = Vec::new();
        for op in self.writes.iter().filter_map(|w| w.op.as_ref()) {
            match op {
                write_op::Op::PutInode(inode) => keys.push(Key::inode(inode.ino)),
                write_op::Op::DeleteInode(ino) => keys.extend([Key::inode(*ino), Key::listing(*ino)]),
                write_op::Op::PutDentry(put) => {
                    if let Some(key) = &put.key {
                        keys.push(Key::dentry(key.parent, &key.name));
                    }
                }
                write_op::Op::DeleteDentry(key) => keys.push(Key::dentry(key.parent, &key.name)),
                write_op::Op::AdjustDir(adjust) => {
                    keys.push(Key::inode(adjust.ino));
                    if adjust.bump_listing {
                        keys.push(Key::listing(adjust.ino));
                    }
                }
            }
        }
        keys
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Some(key::Kind::Inode(ino)) => write!(f, "inode/{ino}"),
            Some(key::Kind::Dentry(d)) => {
                write!(f, "dentry/{}/{}", d.parent, String::from_utf8_lossy(&d.name))
            }
            Some(key::Kind::Listing(ino)) => write!(f, "listing/{ino}"),
            None => write!(f, "<empty key>"),
        }
    }
}
