//! Stale-listing checker: read-only readdir and stat transactions (which a warm client serves
//! from its lease cache and commits locally) against the committed history of the directories
//! they read, so that a missed invalidation of a listing, a dentry or a directory inode shows.
//!
//! The writers (`workload::listing_writer`) create entries under names never used twice and
//! remove only their own, so each name lives at most once: absent, present, absent again. A
//! read R of a directory must then show a name if its create was acknowledged before R began
//! and no removal of it (acknowledged or of unknown outcome) was invoked before R ended, and
//! must not show it if a removal was acknowledged before R began, or if its create was not
//! invoked before R ended (or failed). The directory's attributes must agree: its nlink, less
//! two, lies between the subdirectories that must be present and those that may be, it
//! matches the subdirectories in a listing read in the same transaction, and its mtime is no
//! older than the writer's clock when it began a change acknowledged before R began (the
//! change's mtime is at least that, and a directory's mtime only grows).
//!
//! Unknown outcomes are treated as Elle treats them: the operation may apply at any time
//! after it was invoked, so it never makes a read wrong and no read is required to see it.

use std::collections::BTreeMap;

use super::Outcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Create,
    Remove,
}

/// One create or remove of a name in one of the read directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryOp<T> {
    pub dir: usize,
    pub name: String,
    pub kind: EntryKind,
    pub change: Change,
    pub outcome: Outcome,
    pub invoked: T,
    pub completed: T,
    /// The writer's wall clock (ns since the epoch) when it invoked the operation: a
    /// committed change sets the directory's mtime to at least this.
    pub clock_ns: i64,
}

/// What one committed read-only transaction saw of directory `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirRead<T> {
    pub dir: usize,
    pub invoked: T,
    pub completed: T,
    /// The listing (name, kind), when the transaction listed the directory.
    pub listing: Option<Vec<(String, EntryKind)>>,
    /// The directory's (nlink, mtime_ns), when the transaction stat'ed it.
    pub attr: Option<(u32, i64)>,
    /// Names looked up one by one (stat of the path): what each named, if anything.
    pub probes: Vec<(String, Option<EntryKind>)>,
}

/// What the history allows a read to see of one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Allowed {
    Required,
    Possible,
    Forbidden,
}

/// The history of one name: its create and its removals.
struct NameHistory<'a, T> {
    kind: EntryKind,
    create: Option<&'a EntryOp<T>>,
    removes: Vec<&'a EntryOp<T>>,
}

impl<T: Ord + Copy> NameHistory<'_, T> {
    fn allowed(&self, invoked: T, completed: T) -> Allowed {
        let Some(create) = self.create else { return Allowed::Forbidden };
        let removed = self.removes.iter().any(|r| r.outcome == Outcome::Committed && r.completed < invoked);
        if create.outcome == Outcome::Failed || completed < create.invoked || removed {
            return Allowed::Forbidden;
        }
        let maybe_removed = self.removes.iter().any(|r| r.outcome != Outcome::Failed && r.invoked < completed);
        if create.outcome == Outcome::Committed && create.completed < invoked && !maybe_removed {
            Allowed::Required
        } else {
            Allowed::Possible
        }
    }
}

/// Checks every read against the history of the names and directories it read.
pub fn check<T: Ord + Copy>(ops: &[EntryOp<T>], reads: &[DirRead<T>]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut names: BTreeMap<(usize, &str), NameHistory<'_, T>> = BTreeMap::new();
    for op in ops {
        let history = names.entry((op.dir, op.name.as_str())).or_insert(NameHistory {
            kind: op.kind,
            create: None,
            removes: vec![],
        });
        match op.change {
            Change::Create if history.create.is_some() => {
                problems.push(format!("the workload created {} in directory {} twice", op.name, op.dir))
            }
            Change::Create => history.create = Some(op),
            Change::Remove => history.removes.push(op),
        }
    }
    for (i, read) in reads.iter().enumerate() {
        let what = format!("read {i} of directory {}", read.dir);
        let allowed = |name: &str| {
            names.get(&(read.dir, name)).map_or(Allowed::Forbidden, |h| h.allowed(read.invoked, read.completed))
        };
        let kind_of = |name: &str| names.get(&(read.dir, name)).map(|h| h.kind);
        let judge = |problems: &mut Vec<String>, how: &str, name: &str, shown: Option<EntryKind>| {
            match (allowed(name), shown) {
                (Allowed::Required, None) => problems.push(format!(
                    "stale: {what} ({how}) misses {name}, whose create was acknowledged before the read began"
                )),
                (Allowed::Forbidden, Some(_)) if kind_of(name).is_none() => {
                    problems.push(format!("phantom: {what} ({how}) shows {name}, which no writer created"))
                }
                (Allowed::Forbidden, Some(_)) => problems.push(format!(
                    "stale: {what} ({how}) shows {name}, removed before the read began or not yet created by its end"
                )),
                _ => {}
            }
            if let (Some(shown), Some(kind)) = (shown, kind_of(name)) {
                if shown != kind {
                    problems.push(format!("{what} ({how}) shows {name} as a {shown:?}, but it is a {kind:?}"));
                }
            }
        };
        if let Some(listing) = &read.listing {
            let shown: BTreeMap<&str, EntryKind> = listing.iter().map(|(n, k)| (n.as_str(), *k)).collect();
            if shown.len() != listing.len() {
                problems.push(format!("{what}: the listing holds a name twice: {listing:?}"));
            }
            for (_, name) in names.keys().filter(|(dir, _)| *dir == read.dir) {
                judge(&mut problems, "readdir", name, shown.get(name).copied());
            }
            for (name, kind) in &shown {
                if !names.contains_key(&(read.dir, *name)) {
                    judge(&mut problems, "readdir", name, Some(*kind));
                }
            }
        }
        for (name, shown) in &read.probes {
            judge(&mut problems, "stat", name, *shown);
        }
        if let Some((nlink, mtime_ns)) = read.attr {
            let subdirs = nlink.checked_sub(2).map(u64::from);
            let (mut least, mut most) = (0u64, 0u64);
            for history in
                names.iter().filter(|((dir, _), h)| *dir == read.dir && h.kind == EntryKind::Dir).map(|(_, h)| h)
            {
                match history.allowed(read.invoked, read.completed) {
                    Allowed::Required => {
                        least += 1;
                        most += 1;
                    }
                    Allowed::Possible => most += 1,
                    Allowed::Forbidden => {}
                }
            }
            match subdirs {
                Some(n) if least <= n && n <= most => {}
                _ => problems.push(format!(
                    "stale: {what} (stat) has nlink {nlink}, but it holds between {least} and {most} subdirectories"
                )),
            }
            if let (Some(listing), Some(n)) = (&read.listing, subdirs) {
                let listed = listing.iter().filter(|(_, k)| *k == EntryKind::Dir).count() as u64;
                if listed != n {
                    problems.push(format!(
                        "{what}: one transaction saw nlink {nlink} and {listed} subdirectories in the listing"
                    ));
                }
            }
            let newest = ops
                .iter()
                .filter(|op| op.dir == read.dir && op.outcome == Outcome::Committed && op.completed < read.invoked)
                .map(|op| op.clock_ns)
                .max();
            if let Some(newest) = newest.filter(|newest| mtime_ns < *newest) {
                problems.push(format!(
                    "stale: {what} (stat) has mtime {mtime_ns}, older than a change acknowledged before the read began (begun at {newest})"
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(name: &str, kind: EntryKind, change: Change, invoked: u64, completed: u64) -> EntryOp<u64> {
        EntryOp {
            dir: 0,
            name: name.to_string(),
            kind,
            change,
            outcome: Outcome::Committed,
            invoked,
            completed,
            clock_ns: invoked as i64 * 1000,
        }
    }

    /// f1 (a file) created at [0, 2] and removed at [10, 12]; d1 (a directory) created at
    /// [4, 6]; f2 created at [20, 22] with an unknown outcome.
    fn history() -> Vec<EntryOp<u64>> {
        let mut unknown = op("f2", EntryKind::File, Change::Create, 20, 22);
        unknown.outcome = Outcome::Unknown;
        vec![
            op("f1", EntryKind::File, Change::Create, 0, 2),
            op("d1", EntryKind::Dir, Change::Create, 4, 6),
            op("f1", EntryKind::File, Change::Remove, 10, 12),
            unknown,
        ]
    }

    fn read(invoked: u64, completed: u64, listing: &[(&str, EntryKind)], attr: Option<(u32, i64)>) -> DirRead<u64> {
        DirRead {
            dir: 0,
            invoked,
            completed,
            listing: Some(listing.iter().map(|(n, k)| (n.to_string(), *k)).collect()),
            attr,
            probes: vec![],
        }
    }

    #[test]
    fn reads_consistent_with_the_history_pass() {
        let reads = vec![
            // Overlapping d1's create: may or may not show it.
            read(3, 5, &[("f1", EntryKind::File)], Some((2, 0))),
            read(3, 5, &[("f1", EntryKind::File), ("d1", EntryKind::Dir)], Some((3, 4000))),
            // After both creates, overlapping f1's removal.
            read(7, 11, &[("f1", EntryKind::File), ("d1", EntryKind::Dir)], Some((3, 4000))),
            read(7, 11, &[("d1", EntryKind::Dir)], None),
            // After the removal; the unknown create may show from its invocation on.
            read(13, 14, &[("d1", EntryKind::Dir)], Some((3, 10_000))),
            read(30, 31, &[("d1", EntryKind::Dir), ("f2", EntryKind::File)], Some((3, 20_000))),
            read(30, 31, &[("d1", EntryKind::Dir)], Some((3, 10_000))),
            DirRead {
                listing: None,
                probes: vec![("f1".into(), None), ("d1".into(), Some(EntryKind::Dir)), ("zz".into(), None)],
                ..read(13, 14, &[], None)
            },
        ];
        assert_eq!(check(&history(), &reads), Vec::<String>::new());
    }

    #[test]
    fn a_listing_missing_an_acknowledged_create_or_showing_a_removed_name_is_stale() {
        let reads = vec![
            read(7, 8, &[("f1", EntryKind::File)], None),
            read(13, 14, &[("f1", EntryKind::File), ("d1", EntryKind::Dir)], None),
        ];
        let problems = check(&history(), &reads);
        assert!(
            problems.iter().any(|p| p.starts_with("stale: read 0 of directory 0 (readdir) misses d1")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.starts_with("stale: read 1 of directory 0 (readdir) shows f1")),
            "{problems:?}"
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn a_stale_dentry_phantom_and_future_name_fail() {
        let probes = DirRead {
            listing: None,
            probes: vec![("f1".into(), Some(EntryKind::File)), ("d1".into(), Some(EntryKind::File))],
            ..read(13, 14, &[], None)
        };
        // f2 is shown before its create was invoked; zz was never created.
        let future = read(15, 16, &[("d1", EntryKind::Dir), ("f2", EntryKind::File), ("zz", EntryKind::File)], None);
        let problems = check(&history(), &[probes, future]);
        assert!(problems.iter().any(|p| p.starts_with("stale: read 0 of directory 0 (stat) shows f1")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("shows d1 as a File, but it is a Dir")), "{problems:?}");
        assert!(
            problems.iter().any(|p| p.starts_with("stale: read 1 of directory 0 (readdir) shows f2")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.starts_with("phantom: read 1 of directory 0 (readdir) shows zz")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_stale_directory_inode_fails() {
        let reads = vec![
            // nlink says no subdirectory, after d1's create was acknowledged.
            read(7, 8, &[("f1", EntryKind::File), ("d1", EntryKind::Dir)], Some((2, 4000))),
            // The mtime predates f1's removal, acknowledged at 12.
            DirRead { listing: None, ..read(13, 14, &[], Some((3, 4000))) },
        ];
        let problems = check(&history(), &reads);
        assert!(
            problems.iter().any(|p| p.starts_with("stale: read 0 of directory 0 (stat) has nlink 2")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("one transaction saw nlink 2 and 1 subdirectories")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.starts_with("stale: read 1 of directory 0 (stat) has mtime 4000")),
            "{problems:?}"
        );
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn failed_operations_change_nothing() {
        let mut failed_create = op("f9", EntryKind::File, Change::Create, 0, 1);
        failed_create.outcome = Outcome::Failed;
        let mut failed_remove = op("f1", EntryKind::File, Change::Remove, 3, 4);
        failed_remove.outcome = Outcome::Failed;
        let ops = vec![op("f1", EntryKind::File, Change::Create, 0, 2), failed_create, failed_remove];
        // f1 must still show after its failed removal; f9 must never show.
        assert_eq!(check(&ops, &[read(5, 6, &[("f1", EntryKind::File)], None)]), Vec::<String>::new());
        let problems = check(&ops, &[read(5, 6, &[("f9", EntryKind::File)], None)]);
        assert!(problems.iter().any(|p| p.contains("misses f1")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("shows f9")), "{problems:?}");
    }
}
