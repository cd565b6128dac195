//! fsck over one replica's state machine (every key of its `state` family): every dentry names
//! a live inode of the kind it says, inside a live directory; link counts match the dentries;
//! every directory has exactly one name (the root none), its `parent` field agrees with it, and
//! every inode is reachable from the root (so no directory loop and no orphaned subtree).

use std::collections::{BTreeMap, BTreeSet};

use cffs_proto::{Dentry, FileKind, Inode};
use cffs_server::storage::keys;
use prost::Message;

const ROOT: u64 = cffs_proto::limits::ROOT_INO;

/// Problems found; empty when the file system is consistent.
pub fn fsck(state: &[(Vec<u8>, Vec<u8>)]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut inodes: BTreeMap<u64, Inode> = BTreeMap::new();
    let mut dentries: Vec<(u64, Vec<u8>, Dentry)> = Vec::new();
    for (key, value) in state {
        match key.first() {
            Some(&keys::PREFIX_INODE) => {
                let ino = u64::from_be_bytes(key[1..9].try_into().unwrap_or_default());
                match keys::versioned_decode(value).ok().and_then(|(_, p)| Inode::decode(p).ok()) {
                    Some(inode) if inode.ino == ino => {
                        inodes.insert(ino, inode);
                    }
                    _ => problems.push(format!("inode {ino}: undecodable or wrong number")),
                }
            }
            Some(&keys::PREFIX_DENTRY) => match keys::dentry_key_decode(key) {
                Ok((parent, name)) => {
                    match keys::versioned_decode(value).ok().and_then(|(_, p)| Dentry::decode(p).ok()) {
                        Some(dentry) => dentries.push((parent, name.to_vec(), dentry)),
                        None => {
                            problems.push(format!("dentry {parent}/{}: undecodable", String::from_utf8_lossy(name)))
                        }
                    }
                }
                Err(_) => problems.push("undecodable dentry key".into()),
            },
            _ => {}
        }
    }
    let is_dir = |inode: &Inode| inode.kind == FileKind::Directory as i32;
    match inodes.get(&ROOT) {
        Some(root) if is_dir(root) => {}
        _ => problems.push("the root directory is missing".into()),
    }

    let mut names_of: BTreeMap<u64, u32> = BTreeMap::new();
    let mut subdirs_of: BTreeMap<u64, u32> = BTreeMap::new();
    let mut children: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (parent, name, dentry) in &dentries {
        let path = format!("{parent}/{}", String::from_utf8_lossy(name));
        match inodes.get(parent) {
            Some(p) if is_dir(p) => {}
            Some(_) => problems.push(format!("dentry {path}: parent is not a directory")),
            None => problems.push(format!("dentry {path}: parent directory is gone")),
        }
        match inodes.get(&dentry.ino) {
            None => problems.push(format!("dentry {path}: names inode {} which does not exist", dentry.ino)),
            Some(target) if target.kind != dentry.kind => problems
                .push(format!("dentry {path}: kind {} but inode {} is kind {}", dentry.kind, dentry.ino, target.kind)),
            Some(target) => {
                *names_of.entry(dentry.ino).or_default() += 1;
                children.entry(*parent).or_default().push(dentry.ino);
                if is_dir(target) {
                    *subdirs_of.entry(*parent).or_default() += 1;
                    if target.parent != *parent {
                        problems.push(format!(
                            "directory {}: parent field {} but named in {parent}",
                            dentry.ino, target.parent
                        ));
                    }
                }
            }
        }
    }
    for (ino, inode) in &inodes {
        let names = names_of.get(ino).copied().unwrap_or(0);
        if is_dir(inode) {
            let expected_names = if *ino == ROOT { 0 } else { 1 };
            if names != expected_names {
                problems.push(format!("directory {ino}: {names} names"));
            }
            let expected_nlink = 2 + subdirs_of.get(ino).copied().unwrap_or(0);
            if inode.nlink != expected_nlink {
                problems.push(format!("directory {ino}: nlink {} but {expected_nlink} expected", inode.nlink));
            }
        } else if inode.nlink != names {
            problems.push(format!("inode {ino}: nlink {} but {names} names", inode.nlink));
        }
    }
    // Reachability from the root: what is not reached is an orphan or sits in a loop.
    let mut reached: BTreeSet<u64> = BTreeSet::new();
    let mut queue = vec![ROOT];
    while let Some(ino) = queue.pop() {
        if !reached.insert(ino) {
            continue;
        }
        queue.extend(children.get(&ino).into_iter().flatten().copied());
    }
    for ino in inodes.keys() {
        if !reached.contains(ino) {
            problems.push(format!("inode {ino} is not reachable from the root (orphan or loop)"));
        }
    }
    problems
}
