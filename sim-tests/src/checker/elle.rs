//! Elle-style checker for the list-append history: every file is a list, transactions append
//! unique values to some files and read others; an append is a read-modify-write, and its read
//! half (the list before the append) is recorded too. From the observed lists it infers each
//! file's version order, builds the transaction dependency graph (write-write, write-read,
//! read-write edges, and real-time edges between transactions that did not overlap), and
//! reports any cycle with its anomaly class:
//! G0 (write-write only), G1c (with write-read), G-single (one read-write edge), G2 (two or
//! more), each with "-realtime" when it needs a real-time edge (a strict-serializability
//! violation that plain serializability would allow). Also G1a (a read saw a value of a
//! transaction known to have failed), G1b (a read saw some of one transaction's appends to a
//! file but not all: an intermediate state), incompatible orders (two reads of one file that
//! are not prefixes of one another), duplicate and phantom values, and lost appends
//! (acknowledged, but not in the final list).
//!
//! Transactions with an unknown outcome are treated as Elle treats them: they may apply at
//! any time after they were invoked. Seeing their values is never a violation, no read is
//! required to see them, they join the graph only when some read saw one of their values,
//! and no real-time edge leaves them (they have no known completion).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use tokio::time::Instant;

pub use super::Outcome;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Append { key: usize, value: u64 },
    Read { key: usize, list: Vec<u64> },
}

#[derive(Debug, Clone)]
pub struct Txn {
    pub ops: Vec<Op>,
    pub outcome: Outcome,
    pub invoked: Instant,
    pub completed: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Edge {
    WriteWrite,
    WriteRead,
    ReadWrite,
    RealTime,
}

/// Checks `history`, plus `final_lists` (each file's list read after the run) when that read
/// could be made; without it, lost appends cannot be judged. Returns the anomalies found,
/// each named by its class.
pub fn check(history: &[Txn], final_lists: Option<&BTreeMap<usize, Vec<u64>>>) -> Vec<String> {
    let mut problems = Vec::new();
    // A value read many times is reported once.
    fn note(problems: &mut Vec<String>, problem: String) {
        if !problems.contains(&problem) {
            problems.push(problem);
        }
    }
    // Who appended each value, and each transaction's appends per file, in order.
    let mut writer: BTreeMap<(usize, u64), usize> = BTreeMap::new();
    let mut appends: BTreeMap<(usize, usize), Vec<u64>> = BTreeMap::new();
    for (t, txn) in history.iter().enumerate() {
        for op in &txn.ops {
            if let Op::Append { key, value } = op {
                writer.insert((*key, *value), t);
                appends.entry((t, *key)).or_default().push(*value);
            }
        }
    }
    let reads = history.iter().enumerate().filter(|(_, t)| t.outcome == Outcome::Committed).flat_map(|(i, t)| {
        t.ops.iter().filter_map(move |op| match op {
            Op::Read { key, list } => Some((i, *key, list)),
            Op::Append { .. } => None,
        })
    });
    let reads: Vec<(usize, usize, &Vec<u64>)> = reads.collect();

    // Every list observed, one by one: by a committed transaction, or by the final read.
    let finals = final_lists.into_iter().flatten().map(|(key, list)| (*key, list));
    for (key, list) in reads.iter().map(|(_, key, list)| (*key, *list)).chain(finals) {
        let unique: BTreeSet<_> = list.iter().collect();
        if unique.len() != list.len() {
            note(&mut problems, format!("duplicate-append: file {key} holds a value twice: {list:?}"));
        }
        let mut writers = BTreeSet::new();
        for value in list {
            match writer.get(&(key, *value)) {
                None => {
                    note(&mut problems, format!("phantom: file {key} holds {value}, which no transaction appended"))
                }
                Some(t) => {
                    if history[*t].outcome == Outcome::Failed {
                        note(
                            &mut problems,
                            format!("G1a: file {key}: a read saw {value}, appended by T{t}, which failed"),
                        );
                    }
                    writers.insert(*t);
                }
            }
        }
        for t in writers {
            let all = &appends[&(t, key)];
            let seen: Vec<u64> = all.iter().copied().filter(|v| list.contains(v)).collect();
            if seen.len() != all.len() {
                note(
                    &mut problems,
                    format!("G1b: file {key}: a read saw {seen:?} of T{t}'s appends {all:?}: an intermediate state"),
                );
            }
        }
    }

    // Version order per key: the longest observed list; every other read must be a prefix.
    let mut order: BTreeMap<usize, Vec<u64>> = final_lists.cloned().unwrap_or_default();
    for (_, key, list) in &reads {
        let longest = order.entry(*key).or_default();
        if list.len() > longest.len() {
            if !list.starts_with(longest) {
                problems.push(format!("incompatible-order: file {key}: {list:?} vs {longest:?}"));
            }
            *longest = (*list).clone();
        } else if !longest.starts_with(list) {
            problems.push(format!("incompatible-order: file {key}: read {list:?} is not a prefix of {longest:?}"));
        }
    }
    // Every acknowledged append is in the final list: nothing acknowledged is lost.
    if let Some(final_lists) = final_lists {
        for txn in history.iter().filter(|t| t.outcome == Outcome::Committed) {
            for op in &txn.ops {
                if let Op::Append { key, value } = op {
                    if !final_lists.get(key).is_some_and(|list| list.contains(value)) {
                        problems.push(format!("lost-append: file {key} lacks {value}, whose append was acknowledged"));
                    }
                }
            }
        }
    }

    // A transaction is in the graph if it committed, or if its outcome is unknown and one of
    // its values was observed (then it did commit).
    let observed: BTreeSet<usize> =
        order.iter().flat_map(|(key, list)| list.iter().filter_map(|v| writer.get(&(*key, *v)).copied())).collect();
    let in_graph = |t: usize| {
        history[t].outcome == Outcome::Committed || (history[t].outcome == Outcome::Unknown && observed.contains(&t))
    };

    // Committed appends that no read saw, per file: each follows the whole observed list.
    let mut unseen: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for ((key, value), t) in &writer {
        if history[*t].outcome == Outcome::Committed && !order.get(key).is_some_and(|list| list.contains(value)) {
            unseen.entry(*key).or_default().insert(*t);
        }
    }

    let mut edges: BTreeMap<(usize, usize), BTreeSet<Edge>> = BTreeMap::new();
    let mut add = |from: usize, to: usize, edge: Edge| {
        if from != to {
            edges.entry((from, to)).or_default().insert(edge);
        }
    };
    for (key, list) in &order {
        for pair in list.windows(2) {
            if let (Some(a), Some(b)) = (writer.get(&(*key, pair[0])), writer.get(&(*key, pair[1]))) {
                add(*a, *b, Edge::WriteWrite);
            }
        }
    }
    for (reader, key, list) in &reads {
        if let Some(last) = list.last() {
            if let Some(w) = writer.get(&(*key, *last)) {
                add(*w, *reader, Edge::WriteRead);
            }
        }
        let full = order.get(key).map_or(&[][..], Vec::as_slice);
        if let Some(next) = full.get(list.len()) {
            if let Some(w) = writer.get(&(*key, *next)) {
                add(*reader, *w, Edge::ReadWrite);
            }
        } else {
            // The reader saw the longest list: every committed append nobody saw comes after
            // it (had it come before, that list would hold it).
            for w in unseen.get(key).into_iter().flatten() {
                add(*reader, *w, Edge::ReadWrite);
            }
        }
    }
    for (key, writers) in &unseen {
        if let Some(last) = order.get(key).and_then(|list| list.last()).and_then(|v| writer.get(&(*key, *v))) {
            for w in writers {
                add(*last, *w, Edge::WriteWrite);
            }
        }
    }
    let nodes: Vec<usize> = (0..history.len()).filter(|t| in_graph(*t)).collect();
    // Real time: only from a transaction known to have completed (committed); one of unknown
    // outcome may have applied long after its client gave up.
    for a in nodes.iter().filter(|a| history[**a].outcome == Outcome::Committed) {
        for b in &nodes {
            if history[*a].completed < history[*b].invoked {
                add(*a, *b, Edge::RealTime);
            }
        }
    }
    edges.retain(|(a, b), _| in_graph(*a) && in_graph(*b));

    // Look for cycles in growing edge sets, so the report names the weakest level broken.
    let levels: [(&str, &[Edge]); 4] = [
        ("G0", &[Edge::WriteWrite]),
        ("G1c", &[Edge::WriteWrite, Edge::WriteRead]),
        ("G2", &[Edge::WriteWrite, Edge::WriteRead, Edge::ReadWrite]),
        ("realtime", &[Edge::WriteWrite, Edge::WriteRead, Edge::ReadWrite, Edge::RealTime]),
    ];
    for (level, allowed) in levels {
        if let Some(cycle) = find_cycle(&nodes, &edges, allowed) {
            let kinds: Vec<Edge> = cycle
                .windows(2)
                .map(|w| *edges[&(w[0], w[1])].iter().filter(|e| allowed.contains(e)).min().expect("edge on the cycle"))
                .collect();
            let rw = kinds.iter().filter(|e| **e == Edge::ReadWrite).count();
            let realtime = kinds.contains(&Edge::RealTime);
            let base = match level {
                "G0" => "G0",
                "G1c" => "G1c",
                _ if rw == 0 && kinds.contains(&Edge::WriteRead) => "G1c",
                _ if rw == 0 => "G0",
                _ if rw == 1 => "G-single",
                _ => "G2",
            };
            let class = if realtime { format!("{base}-realtime") } else { base.to_string() };
            let described: Vec<String> = cycle
                .windows(2)
                .zip(&kinds)
                .map(|(w, kind)| format!("T{} -{kind:?}-> T{} {:?}", w[0], w[1], history[w[1]].ops))
                .collect();
            problems.push(format!("{class}: cycle of {} transactions: {}", cycle.len() - 1, described.join("; ")));
            break;
        }
    }
    problems
}

/// A cycle (first node repeated at the end) using only `allowed` edges, if any.
fn find_cycle(
    nodes: &[usize],
    edges: &BTreeMap<(usize, usize), BTreeSet<Edge>>,
    allowed: &[Edge],
) -> Option<Vec<usize>> {
    let mut next: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for ((a, b), kinds) in edges {
        if kinds.iter().any(|k| allowed.contains(k)) {
            next.entry(*a).or_default().push(*b);
        }
    }
    // Kahn's algorithm strips every node that no cycle leads into...
    let mut indegree: BTreeMap<usize, usize> = nodes.iter().map(|n| (*n, 0)).collect();
    for targets in next.values() {
        for b in targets {
            *indegree.entry(*b).or_default() += 1;
        }
    }
    let mut queue: VecDeque<usize> = indegree.iter().filter(|(_, d)| **d == 0).map(|(n, _)| *n).collect();
    let mut removed = BTreeSet::new();
    while let Some(n) = queue.pop_front() {
        removed.insert(n);
        for b in next.get(&n).into_iter().flatten() {
            let d = indegree.get_mut(b).expect("counted");
            *d -= 1;
            if *d == 0 {
                queue.push_back(*b);
            }
        }
    }
    // ...so every remaining node has a remaining predecessor: walking backwards from any of
    // them must revisit a node, and the walk between the visits, reversed, is a cycle.
    let mut prev: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (a, targets) in &next {
        for b in targets {
            prev.entry(*b).or_default().push(*a);
        }
    }
    let start = *nodes.iter().find(|n| !removed.contains(*n))?;
    let mut path = vec![start];
    let mut seen: BTreeMap<usize, usize> = BTreeMap::from([(start, 0)]);
    loop {
        let current = *path.last().expect("non-empty");
        let step = prev.get(&current)?.iter().copied().find(|a| !removed.contains(a))?;
        if let Some(at) = seen.get(&step) {
            let mut cycle = path[*at..].to_vec();
            cycle.push(step);
            cycle.reverse();
            return Some(cycle);
        }
        seen.insert(step, path.len());
        path.push(step);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        // Instants are only compared with each other; simulated time starts at a fixed base.
        Instant::now() + std::time::Duration::from_millis(ms)
    }

    fn txn(ops: Vec<Op>, invoked: u64, completed: u64) -> Txn {
        Txn { ops, outcome: Outcome::Committed, invoked: at(invoked), completed: at(completed) }
    }

    fn append(key: usize, value: u64) -> Op {
        Op::Append { key, value }
    }

    fn read(key: usize, list: &[u64]) -> Op {
        Op::Read { key, list: list.to_vec() }
    }

    #[madsim::test]
    async fn a_serial_history_passes() {
        let history = vec![
            txn(vec![append(0, 1)], 0, 1),
            txn(vec![read(0, &[1]), append(1, 2)], 2, 3),
            txn(vec![read(1, &[2])], 4, 5),
        ];
        let finals = BTreeMap::from([(0, vec![1]), (1, vec![2])]);
        assert_eq!(check(&history, Some(&finals)), Vec::<String>::new());
    }

    #[madsim::test]
    async fn write_skew_is_g2() {
        // T0 reads x empty and appends to y; T1 reads y empty and appends to x.
        let history = vec![txn(vec![read(0, &[]), append(1, 10)], 0, 5), txn(vec![read(1, &[]), append(0, 20)], 0, 5)];
        let finals = BTreeMap::from([(0, vec![20]), (1, vec![10])]);
        let problems = check(&history, Some(&finals));
        assert!(problems.iter().any(|p| p.starts_with("G2")), "{problems:?}");
    }

    #[madsim::test]
    async fn lost_update_is_g_single() {
        // Both read x = [1] and append; the second's read misses the first's append.
        let history = vec![
            txn(vec![append(0, 1)], 0, 1),
            txn(vec![read(0, &[1]), append(0, 2)], 2, 6),
            txn(vec![read(0, &[1]), append(0, 3)], 2, 6),
        ];
        let finals = BTreeMap::from([(0, vec![1, 2, 3])]);
        let problems = check(&history, Some(&finals));
        assert!(problems.iter().any(|p| p.starts_with("G-single") || p.starts_with("G2")), "{problems:?}");
    }

    #[madsim::test]
    async fn a_stale_read_after_completion_is_realtime() {
        // T0 appends and completes; T1 starts later and does not see it.
        let history = vec![txn(vec![append(0, 1)], 0, 1), txn(vec![read(0, &[])], 5, 6)];
        let finals = BTreeMap::from([(0, vec![1])]);
        let problems = check(&history, Some(&finals));
        assert!(problems.iter().any(|p| p.contains("-realtime")), "{problems:?}");
    }

    #[madsim::test]
    async fn an_acknowledged_append_missing_at_the_end_is_lost() {
        let history = vec![txn(vec![append(0, 1)], 0, 1), txn(vec![append(0, 2)], 2, 3)];
        let finals = BTreeMap::from([(0, vec![1])]);
        let problems = check(&history, Some(&finals));
        assert!(problems.iter().any(|p| p.starts_with("lost-append") && p.contains(" 2,")), "{problems:?}");
    }

    #[madsim::test]
    async fn reading_a_failed_write_is_g1a_and_orders_must_agree() {
        let mut failed = txn(vec![append(0, 9)], 0, 1);
        failed.outcome = Outcome::Failed;
        let history = vec![failed, txn(vec![read(0, &[9])], 2, 3), txn(vec![read(0, &[7])], 2, 3)];
        let finals = BTreeMap::from([(0, vec![9])]);
        let problems = check(&history, Some(&finals));
        assert!(problems.iter().any(|p| p.starts_with("G1a")), "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("incompatible-order")), "{problems:?}");
    }

    #[madsim::test]
    async fn reading_a_failed_write_is_g1a_even_in_a_read_that_orders_disagree_with() {
        // The failed value is in no list the version order keeps: the read alone shows it.
        let mut failed = txn(vec![append(0, 9)], 0, 1);
        failed.outcome = Outcome::Failed;
        let history = vec![failed, txn(vec![append(0, 7)], 0, 1), txn(vec![read(0, &[9])], 2, 3)];
        let finals = BTreeMap::from([(0, vec![7])]);
        let problems = check(&history, Some(&finals));
        assert!(problems.iter().any(|p| p.starts_with("G1a: file 0: a read saw 9")), "{problems:?}");
    }

    #[madsim::test]
    async fn an_intermediate_read_is_g1b() {
        // T0 appends 1 then 2 to file 0 in one transaction; a read that ends at 1 saw a state
        // that never committed.
        let history = vec![txn(vec![read(0, &[]), append(0, 1), append(0, 2)], 0, 1), txn(vec![read(0, &[1])], 2, 3)];
        let finals = BTreeMap::from([(0, vec![1, 2])]);
        let problems = check(&history, Some(&finals));
        assert!(problems.iter().any(|p| p.starts_with("G1b: file 0")), "{problems:?}");
        // Seeing both, or neither, is fine.
        let history = vec![
            txn(vec![read(0, &[]), append(0, 1), append(0, 2)], 2, 3),
            txn(vec![read(0, &[1, 2])], 4, 5),
            txn(vec![read(0, &[])], 0, 1),
        ];
        assert_eq!(check(&history, Some(&finals)), Vec::<String>::new());
        // The final read counts too.
        let finals = BTreeMap::from([(0, vec![1])]);
        let problems = check(&history[..1], Some(&finals));
        assert!(problems.iter().any(|p| p.starts_with("G1b: file 0")), "{problems:?}");
    }

    #[madsim::test]
    async fn an_unknown_outcome_may_apply_any_time_after_it_began() {
        // T0's client gave up at 1; its append applied later, between T1 (which missed it)
        // and T2 (which saw it). With a real-time edge from T0's give-up this would be a
        // false cycle.
        let mut unknown = txn(vec![append(0, 1)], 0, 1);
        unknown.outcome = Outcome::Unknown;
        let history = vec![unknown.clone(), txn(vec![read(0, &[])], 5, 6), txn(vec![read(0, &[1])], 10, 11)];
        let finals = BTreeMap::from([(0, vec![1])]);
        assert_eq!(check(&history, Some(&finals)), Vec::<String>::new());
        // Never required to be seen, and the final read may lack it.
        let finals = BTreeMap::from([(0, vec![])]);
        assert_eq!(check(&history[..2], Some(&finals)), Vec::<String>::new());
        // But a read that began after a *committed* append must see it.
        let mut history = history;
        history[0].outcome = Outcome::Committed;
        let finals = BTreeMap::from([(0, vec![1])]);
        let problems = check(&history, Some(&finals));
        assert!(problems.iter().any(|p| p.contains("-realtime")), "{problems:?}");
    }

    #[madsim::test]
    async fn a_lost_update_through_the_read_halves_is_g_single() {
        // Both read file 0 empty and append; the final list keeps both, so only the recorded
        // reads show that one of them did not see the other.
        let history = vec![txn(vec![read(0, &[]), append(0, 1)], 0, 5), txn(vec![read(0, &[]), append(0, 2)], 0, 5)];
        let finals = BTreeMap::from([(0, vec![1, 2])]);
        let problems = check(&history, Some(&finals));
        assert!(problems.iter().any(|p| p.starts_with("G-single")), "{problems:?}");
    }

    #[madsim::test]
    async fn without_the_final_read_nothing_is_lost_but_reads_are_still_checked() {
        let history = vec![txn(vec![append(0, 1)], 0, 1), txn(vec![read(0, &[])], 5, 6)];
        let problems = check(&history, None);
        assert!(!problems.iter().any(|p| p.starts_with("lost-append")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("-realtime")), "{problems:?}");
    }
}
