//! Bank checker: transfers between accounts and read-only audits of every account, checked
//! against the whole history, not only the totals. Each account file carries its balance and
//! the ids of the transfers applied to it, in order (`workload::bank_client`), so an audit
//! says exactly which transfers it saw. Each audit (and the final read) must be a state that
//! some serial order of the committed and unknown-outcome transfers produces at that point:
//! - the balances sum to the initial total, and each balance is the initial balance moved by
//!   the transfers listed on that account (no torn or garbled write);
//! - every listed transfer exists, touches that account, and did not fail; none is listed
//!   twice;
//! - a transfer is seen on both of its accounts or on neither (no fractured read);
//! - each account's transfer lists, over every audit, are prefixes of one another (one
//!   version order per account), and the per-account orders with real time (a transfer
//!   acknowledged before another began comes first) have no cycle (a serial order exists);
//! - what an audit saw is closed under that order: it misses nothing that precedes a
//!   transfer it saw;
//! - real time: an audit sees every transfer acknowledged before it began, none invoked after
//!   it ended, and everything an audit that ended before it began saw;
//! - the final state holds every acknowledged transfer.
//!
//! Transfers with an unknown outcome may apply at any time after they were invoked: seeing
//! one is never wrong, and no audit is required to.

use std::collections::{BTreeMap, BTreeSet};

use super::Outcome;

/// One transfer as its client recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer<T> {
    pub id: u64,
    pub from: usize,
    pub to: usize,
    pub amount: u64,
    pub outcome: Outcome,
    pub invoked: T,
    pub completed: T,
}

/// One account as read: its balance and the transfers applied to it, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Account {
    pub balance: u64,
    pub transfers: Vec<u64>,
}

/// One committed read-only audit of every account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit<T> {
    pub accounts: Vec<Account>,
    pub invoked: T,
    pub completed: T,
}

/// Checks `audits` and the final read (`finals`, when it could be made) against
/// `transfers`, every account having started at `initial`.
pub fn check<T: Ord + Copy>(
    transfers: &[Transfer<T>],
    audits: &[Audit<T>],
    finals: Option<&[Account]>,
    initial: u64,
) -> Vec<String> {
    let mut problems = Vec::new();
    let by_id: BTreeMap<u64, &Transfer<T>> = transfers.iter().map(|t| (t.id, t)).collect();
    // Every state read, named for the report: the audits, then the final read.
    let mut states: Vec<(String, &[Account])> =
        audits.iter().enumerate().map(|(i, a)| (format!("audit {i}"), a.accounts.as_slice())).collect();
    if let Some(finals) = finals {
        states.push(("the final read".to_string(), finals));
    }
    let accounts = states.iter().map(|(_, s)| s.len()).max().unwrap_or(0);
    let expected = initial * accounts as u64;

    for (name, state) in &states {
        if state.len() != accounts {
            problems.push(format!("{name} read {} accounts, not {accounts}", state.len()));
            continue;
        }
        let total: u64 = state.iter().map(|a| a.balance).sum();
        if total != expected {
            problems.push(format!("{name} read a bank total of {total}, not {expected}"));
        }
        let seen = seen_on_any(state);
        for (account, read) in state.iter().enumerate() {
            check_account(name, account, read, &by_id, initial, &mut problems);
        }
        // Atomic visibility: each transfer on both of its accounts or on neither.
        for id in &seen {
            let Some(t) = by_id.get(id) else { continue };
            for side in [t.from, t.to] {
                if side < state.len() && !state[side].transfers.contains(id) {
                    problems.push(format!(
                        "fractured read: {name} sees transfer {id:#x} ({} -> {}) but not on account {side}",
                        t.from, t.to
                    ));
                }
            }
        }
    }

    // One version order per account: the longest list, every other a prefix of it.
    let mut order: Vec<Vec<u64>> = vec![Vec::new(); accounts];
    for (name, state) in &states {
        for (account, read) in state.iter().enumerate().take(accounts) {
            let longest = &mut order[account];
            if read.transfers.len() > longest.len() {
                if !read.transfers.starts_with(longest) {
                    problems.push(format!(
                        "incompatible-order: account {account}: {name} lists {:x?}, another read {longest:x?}",
                        read.transfers
                    ));
                }
                *longest = read.transfers.clone();
            } else if !longest.starts_with(&read.transfers) {
                problems.push(format!(
                    "incompatible-order: account {account}: {name} lists {:x?}, not a prefix of {longest:x?}",
                    read.transfers
                ));
            }
        }
    }

    // The order a serial history must respect: per account, and real time between
    // acknowledged transfers. `before[b]` holds every a that must precede b.
    let observed: BTreeSet<u64> = order.iter().flatten().copied().collect();
    let mut before: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for list in &order {
        for pair in list.windows(2) {
            before.entry(pair[1]).or_default().insert(pair[0]);
        }
    }
    let committed: Vec<&Transfer<T>> = transfers.iter().filter(|t| t.outcome == Outcome::Committed).collect();
    for b in observed.iter().filter_map(|id| by_id.get(id)) {
        for a in &committed {
            if a.completed < b.invoked {
                before.entry(b.id).or_default().insert(a.id);
            }
        }
    }
    if let Some(cycle) = find_cycle(&before) {
        problems.push(format!("no serial order: transfers {cycle:x?} must each precede the next"));
    }

    for (i, audit) in audits.iter().enumerate() {
        let seen = seen_on_any(&audit.accounts);
        // Closed under the order: nothing that must precede a seen transfer is missing.
        for id in &seen {
            for earlier in before.get(id).into_iter().flatten() {
                if !seen.contains(earlier) {
                    problems.push(format!("audit {i} sees transfer {id:#x} but not {earlier:#x}, which precedes it"));
                }
            }
        }
        // Real time against transfers.
        for t in transfers {
            if t.outcome == Outcome::Committed && t.completed < audit.invoked && !seen.contains(&t.id) {
                problems.push(format!(
                    "stale audit: audit {i} misses transfer {:#x}, acknowledged before the audit began",
                    t.id
                ));
            }
            if audit.completed < t.invoked && seen.contains(&t.id) {
                problems.push(format!("audit {i} sees transfer {:#x}, invoked after the audit ended", t.id));
            }
        }
        // Real time against earlier audits.
        for (j, earlier) in audits.iter().enumerate() {
            if earlier.completed < audit.invoked {
                if let Some(missed) = seen_on_any(&earlier.accounts).difference(&seen).next() {
                    problems.push(format!(
                        "stale audit: audit {i} misses transfer {missed:#x}, which audit {j} (ended before it began) saw"
                    ));
                }
            }
        }
    }

    if let Some(finals) = finals {
        let seen = seen_on_any(finals);
        for t in committed.iter().filter(|t| !seen.contains(&t.id)) {
            problems.push(format!("lost transfer: {:#x} was acknowledged but the final state lacks it", t.id));
        }
    }
    problems
}

fn seen_on_any(state: &[Account]) -> BTreeSet<u64> {
    state.iter().flat_map(|a| a.transfers.iter().copied()).collect()
}

/// One account read: every listed transfer exists, touches it, did not fail, appears once,
/// and together they explain the balance.
fn check_account<T>(
    name: &str,
    account: usize,
    read: &Account,
    by_id: &BTreeMap<u64, &Transfer<T>>,
    initial: u64,
    problems: &mut Vec<String>,
) {
    let mut balance = i128::from(initial);
    let mut listed = BTreeSet::new();
    for id in &read.transfers {
        if !listed.insert(*id) {
            problems.push(format!("{name}: account {account} lists transfer {id:#x} twice"));
            continue;
        }
        let Some(t) = by_id.get(id) else {
            problems.push(format!("phantom: {name}: account {account} lists transfer {id:#x}, which nobody made"));
            continue;
        };
        if t.outcome == Outcome::Failed {
            problems.push(format!("G1a: {name}: account {account} lists transfer {id:#x}, which failed"));
        }
        if t.from == account {
            balance -= i128::from(t.amount);
        } else if t.to == account {
            balance += i128::from(t.amount);
        } else {
            problems.push(format!("{name}: account {account} lists transfer {id:#x} between {} and {}", t.from, t.to));
        }
    }
    if balance != i128::from(read.balance) {
        problems.push(format!(
            "{name}: account {account} holds {} but its {} transfers make {balance}",
            read.balance,
            read.transfers.len()
        ));
    }
}

/// A cycle in the precedence relation (`before[b]` = what precedes b), if any, as a list
/// of ids each preceding the next.
fn find_cycle(before: &BTreeMap<u64, BTreeSet<u64>>) -> Option<Vec<u64>> {
    // Iterative depth-first search over predecessors; 1 = on the stack, 2 = done.
    let mut state: BTreeMap<u64, u8> = BTreeMap::new();
    for start in before.keys() {
        if state.contains_key(start) {
            continue;
        }
        let mut stack: Vec<(u64, Vec<u64>)> = vec![(*start, before[start].iter().copied().collect())];
        state.insert(*start, 1);
        while let Some((node, pending)) = stack.last_mut() {
            let node = *node;
            match pending.pop() {
                None => {
                    state.insert(node, 2);
                    stack.pop();
                }
                Some(next) => match state.get(&next) {
                    Some(1) => {
                        // `next` is on the stack: the stack from it to here, each a successor
                        // of the next (we walk predecessors), reversed, is the cycle.
                        let at = stack.iter().position(|(n, _)| *n == next).expect("on the stack");
                        let mut cycle: Vec<u64> = stack[at..].iter().map(|(n, _)| *n).collect();
                        cycle.reverse();
                        cycle.push(*cycle.first().expect("non-empty"));
                        return Some(cycle);
                    }
                    Some(_) => {}
                    None => {
                        state.insert(next, 1);
                        let preds = before.get(&next).map(|p| p.iter().copied().collect()).unwrap_or_default();
                        stack.push((next, preds));
                    }
                },
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const INITIAL: u64 = 100;

    fn transfer(id: u64, from: usize, to: usize, amount: u64, invoked: u64, completed: u64) -> Transfer<u64> {
        Transfer { id, from, to, amount, outcome: Outcome::Committed, invoked, completed }
    }

    fn account(balance: u64, transfers: &[u64]) -> Account {
        Account { balance, transfers: transfers.to_vec() }
    }

    fn audit(accounts: Vec<Account>, invoked: u64, completed: u64) -> Audit<u64> {
        Audit { accounts, invoked, completed }
    }

    /// Transfer 1 (0 -> 1, 10) at [0, 5], transfer 2 (1 -> 2, 30) at [10, 15], and an
    /// unknown transfer 3 (2 -> 0, 5) invoked at 20.
    fn transfers() -> Vec<Transfer<u64>> {
        let mut unknown = transfer(3, 2, 0, 5, 20, 25);
        unknown.outcome = Outcome::Unknown;
        vec![transfer(1, 0, 1, 10, 0, 5), transfer(2, 1, 2, 30, 10, 15), unknown]
    }

    fn after_1_and_2() -> Vec<Account> {
        vec![account(90, &[1]), account(80, &[1, 2]), account(130, &[2])]
    }

    #[test]
    fn audits_of_states_in_serial_order_pass() {
        let audits = vec![
            // Before anything was acknowledged, the initial state or after transfer 1.
            audit(vec![account(100, &[]), account(100, &[]), account(100, &[])], 0, 2),
            audit(vec![account(90, &[1]), account(110, &[1]), account(100, &[])], 3, 8),
            audit(after_1_and_2(), 16, 18),
            // The unknown transfer may show at any time after it was invoked, or never.
            audit(vec![account(95, &[1, 3]), account(80, &[1, 2]), account(125, &[2, 3])], 21, 22),
        ];
        let finals = after_1_and_2();
        assert_eq!(check(&transfers(), &audits, Some(&finals), INITIAL), Vec::<String>::new());
        assert_eq!(check(&transfers(), &audits, None, INITIAL), Vec::<String>::new());
    }

    #[test]
    fn an_audit_missing_an_acknowledged_transfer_is_stale() {
        // Invoked at 16, after transfer 2 was acknowledged, yet sees only transfer 1: every
        // total is right, only the history shows it.
        let audits = vec![audit(vec![account(90, &[1]), account(110, &[1]), account(100, &[])], 16, 18)];
        let problems = check(&transfers(), &audits, None, INITIAL);
        assert!(problems.iter().any(|p| p.starts_with("stale audit: audit 0 misses transfer 0x2")), "{problems:?}");
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn a_fractured_read_fails_even_when_the_total_is_right() {
        // Transfer 2 seen on account 1 only; account 2's balance is made up to keep the sum.
        let audits = vec![audit(vec![account(90, &[1]), account(80, &[1, 2]), account(130, &[])], 16, 18)];
        let problems = check(&transfers(), &audits, None, INITIAL);
        assert!(problems.iter().any(|p| p.starts_with("fractured read: audit 0 sees transfer 0x2")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("holds 130 but its 0 transfers make 100")), "{problems:?}");
    }

    #[test]
    fn wrong_totals_failed_and_phantom_transfers_fail() {
        let mut failed = transfer(4, 0, 2, 50, 30, 31);
        failed.outcome = Outcome::Failed;
        let mut history = transfers();
        history.push(failed);
        let audits = vec![
            audit(vec![account(90, &[1]), account(80, &[1, 2]), account(145, &[2])], 16, 18),
            audit(vec![account(40, &[1, 4]), account(80, &[1, 2]), account(180, &[2, 4])], 32, 33),
            audit(vec![account(90, &[1, 9]), account(80, &[1, 2]), account(130, &[2])], 32, 33),
        ];
        let problems = check(&history, &audits, None, INITIAL);
        assert!(problems.iter().any(|p| p == "audit 0 read a bank total of 315, not 300"), "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("G1a: audit 1: account 0 lists transfer 0x4")), "{problems:?}");
        assert!(
            problems.iter().any(|p| p.starts_with("phantom: audit 2: account 0 lists transfer 0x9")),
            "{problems:?}"
        );
    }

    #[test]
    fn reading_the_future_or_going_back_in_time_fails() {
        // Audit 0 ends at 9, before transfer 2 was invoked, yet sees it. Audit 2 begins
        // after audit 1 ended and sees less.
        let audits = vec![
            audit(after_1_and_2(), 6, 9),
            audit(after_1_and_2(), 16, 17),
            audit(vec![account(100, &[]), account(100, &[]), account(100, &[])], 18, 19),
        ];
        let problems = check(&transfers(), &audits, None, INITIAL);
        assert!(
            problems.iter().any(|p| p.contains("audit 0 sees transfer 0x2, invoked after the audit ended")),
            "{problems:?}"
        );
        assert!(problems.iter().any(|p| p.contains("audit 2 misses transfer 0x1, which audit 1")), "{problems:?}");
    }

    #[test]
    fn orders_must_agree_and_admit_a_serial_history() {
        // Account 1 puts transfer 2 before 1 in one read and after it in another, and the
        // final state lacks acknowledged transfer 2.
        let audits = vec![audit(vec![account(90, &[1]), account(80, &[2, 1]), account(130, &[2])], 16, 18)];
        let finals = vec![account(90, &[1]), account(110, &[1]), account(100, &[])];
        let problems = check(&transfers(), &audits, Some(&finals), INITIAL);
        assert!(problems.iter().any(|p| p.starts_with("incompatible-order: account 1")), "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("no serial order")), "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("lost transfer: 0x2")), "{problems:?}");
    }

    #[test]
    fn a_cycle_is_found_and_a_chain_is_not() {
        let chain = BTreeMap::from([(2, BTreeSet::from([1])), (3, BTreeSet::from([1, 2]))]);
        assert_eq!(find_cycle(&chain), None);
        let cycle = BTreeMap::from([(2, BTreeSet::from([1])), (3, BTreeSet::from([2])), (1, BTreeSet::from([3]))]);
        let found = find_cycle(&cycle).expect("a cycle");
        assert_eq!(found.len(), 4, "{found:?}");
        assert_eq!(found.first(), found.last());
        for pair in found.windows(2) {
            assert!(cycle[&pair[1]].contains(&pair[0]), "{found:?}: {} must precede {}", pair[0], pair[1]);
        }
    }
}
