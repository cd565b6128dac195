//! The CFFS wire protocol: generated prost messages and tonic services (`v1`), and the one
//! error-code set shared by servers and clients (`error_code`). Nothing here knows how a
//! message is stored or what a transaction means.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("cffs.v1");
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
