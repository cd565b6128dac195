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

pub mod data_port;
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
        for op in &self.writes {
            op.push_keys(&mut keys);
        }
        keys
    }
}

impl WriteOp {
    /// The keys this write changes (see `CommitRequest::written_keys`), added to `keys`.
    fn push_keys(&self, keys: &mut Vec<Key>) {
        match self.op.as_ref() {
            None => {}
            Some(write_op::Op::PutInode(inode)) => keys.push(Key::inode(inode.ino)),
            Some(write_op::Op::DeleteInode(ino)) => keys.extend([Key::inode(*ino), Key::listing(*ino)]),
            Some(write_op::Op::PutDentry(put)) => {
                if let Some(key) = &put.key {
                    keys.push(Key::dentry(key.parent, &key.name));
                }
            }
            Some(write_op::Op::DeleteDentry(key)) => keys.push(Key::dentry(key.parent, &key.name)),
            Some(write_op::Op::AdjustDir(adjust)) => {
                keys.push(Key::inode(adjust.ino));
                if adjust.bump_listing {
                    keys.push(Key::listing(adjust.ino));
                }
            }
        }
    }
}

/// A value a commit writes whole, so its writer can cache it under a lease granted with the
/// commit's answer (`CommitResponse.lease`).
#[derive(Debug, Clone, PartialEq)]
pub enum LeasedWrite<'a> {
    Inode(&'a Inode),
    Dentry(&'a DentryKey, &'a Dentry),
}

impl LeasedWrite<'_> {
    pub fn key(&self) -> Key {
        match self {
            LeasedWrite::Inode(inode) => Key::inode(inode.ino),
            LeasedWrite::Dentry(key, _) => Key::dentry(key.parent, &key.name),
        }
    }
}

impl CommitRequest {
    /// The writes whose keys the leader leases to the writer's session with the commit's
    /// answer, when it grants any (docs/design/leases.md, "Leases on commit"): inode and
    /// dentry puts that are the only write of their key in the request (a key also deleted,
    /// put twice or adjusted by a commutative directory update, whose result the client does
    /// not know, is not leased). One rule for the leader, which leases these keys, and the
    /// writer's client, which caches these values.
    pub fn leased_writes(&self) -> Vec<LeasedWrite<'_>> {
        // How many writes of the request change each key.
        let mut writes_of: std::collections::BTreeMap<Vec<u8>, usize> = std::collections::BTreeMap::new();
        for key in self.written_keys() {
            *writes_of.entry(prost::Message::encode_to_vec(&key)).or_default() += 1;
        }
        self.writes
            .iter()
            .filter_map(|op| match &op.op {
                Some(write_op::Op::PutInode(inode)) => Some(LeasedWrite::Inode(inode)),
                Some(write_op::Op::PutDentry(PutDentry { key: Some(key), dentry: Some(dentry) })) => {
                    Some(LeasedWrite::Dentry(key, dentry))
                }
                _ => None,
            })
            .filter(|write| writes_of.get(&prost::Message::encode_to_vec(&write.key())) == Some(&1))
            .collect()
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
