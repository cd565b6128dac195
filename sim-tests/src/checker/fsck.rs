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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::state::tests::{dir, dump, file};

    /// / holds directory a (10) and file f (11, also named a/g); a holds directory b (12).
    fn tree() -> (Vec<Inode>, Vec<(u64, &'static str, u64)>) {
        let inodes = vec![dir(ROOT, 0, 3), dir(10, ROOT, 3), file(11, 2, b"x"), dir(12, 10, 2)];
        let dentries = vec![(ROOT, "a", 10), (ROOT, "f", 11), (10, "g", 11), (10, "b", 12)];
        (inodes, dentries)
    }

    #[test]
    fn a_consistent_tree_passes() {
        let (inodes, dentries) = tree();
        assert_eq!(fsck(&dump(&inodes, &dentries)), Vec::<String>::new());
    }

    #[test]
    fn wrong_link_counts_fail() {
        let (mut inodes, dentries) = tree();
        inodes[1].nlink = 2; // a has a subdirectory
        inodes[2].nlink = 1; // f has two names
        let problems = fsck(&dump(&inodes, &dentries));
        assert!(problems.contains(&"directory 10: nlink 2 but 3 expected".to_string()), "{problems:?}");
        assert!(problems.contains(&"inode 11: nlink 1 but 2 names".to_string()), "{problems:?}");
    }

    #[test]
    fn a_dangling_dentry_and_a_missing_root_fail() {
        let (inodes, mut dentries) = tree();
        dentries.push((ROOT, "gone", 99));
        let problems = fsck(&dump(&inodes, &dentries));
        assert!(problems.iter().any(|p| p.contains("names inode 99 which does not exist")), "{problems:?}");
        let problems = fsck(&dump(&inodes[1..], &dentries));
        assert!(problems.iter().any(|p| p == "the root directory is missing"), "{problems:?}");
    }

    #[test]
    fn a_directory_loop_is_unreachable_and_misnamed() {
        // b is also named in itself's child: a -> b -> a, cut off from the root.
        let (mut inodes, mut dentries) = tree();
        dentries.retain(|(parent, name, _)| !(*parent == ROOT && *name == "a"));
        dentries.push((12, "loop", 10));
        inodes[0].nlink = 2;
        inodes[1].parent = 12;
        inodes[3].nlink = 3;
        let problems = fsck(&dump(&inodes, &dentries));
        assert!(problems.iter().any(|p| p.starts_with("inode 10 is not reachable")), "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("inode 12 is not reachable")), "{problems:?}");
    }

    #[test]
    fn a_directory_with_two_names_or_a_wrong_parent_fails() {
        let (mut inodes, mut dentries) = tree();
        dentries.push((ROOT, "b2", 12));
        inodes[0].nlink = 4;
        let problems = fsck(&dump(&inodes, &dentries));
        assert!(problems.iter().any(|p| p == "directory 12: 2 names"), "{problems:?}");
        assert!(problems.iter().any(|p| p == "directory 12: parent field 10 but named in 1"), "{problems:?}");
    }
}
