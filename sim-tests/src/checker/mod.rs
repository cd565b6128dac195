//! Checkers, one module per property. Each returns the violations it found (empty = pass).
//! The small counter checkers live here; the others have a module each. `state` is not a
//! checker: it reads files back out of one replica's state dump, for checkers and tests.

pub mod bank;
pub mod blocks;
pub mod elle;
pub mod fsck;
pub mod listing;
pub mod state;

/// How an operation ended, as its client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    /// Definitely not applied.
    Failed,
    /// May or may not have been applied (at most once, at any time after it was invoked).
    Unknown,
}

/// No acknowledged increment lost, none applied twice: acked <= final <= acked + unknown.
pub fn counters(acked: &[u64], unknown: &[u64], values: &[u64]) -> Vec<String> {
    (0..values.len())
        .filter(|i| !(acked[*i] <= values[*i] && values[*i] <= acked[*i] + unknown[*i]))
        .map(|i| {
            format!("counter {i} is {} with {} acknowledged and {} unknown increments", values[i], acked[i], unknown[i])
        })
        .collect()
}

/// Real-time order on counters (strict serializability's "no stale read"): a read invoked
/// after an increment was acknowledged returns at least the value that increment wrote.
/// `writes` are (counter, value written, when acknowledged); `reads` are (counter, value
/// read, when invoked).
pub fn stale_reads<T: PartialOrd>(writes: &[(usize, u64, T)], reads: &[(usize, u64, T)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (file, value, invoked) in reads {
        let newest = writes.iter().filter(|(f, _, acked)| f == file && acked < invoked).map(|(_, v, _)| *v).max();
        if let Some(newest) = newest {
            if *value < newest {
                problems.push(format!("counter {file}: a read returned {value} after {newest} was acknowledged"));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_within_acknowledged_and_unknown_pass() {
        // Counter 0: 3 acknowledged, 1 unknown that was applied; counter 1: the unknown one
        // was not applied.
        assert_eq!(counters(&[3, 2], &[1, 1], &[4, 2]), Vec::<String>::new());
    }

    #[test]
    fn a_lost_or_doubled_increment_fails() {
        let lost = counters(&[3, 2], &[0, 0], &[2, 2]);
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert!(lost[0].starts_with("counter 0 is 2"), "{lost:?}");
        let doubled = counters(&[3, 2], &[1, 0], &[3, 3]);
        assert_eq!(doubled.len(), 1, "{doubled:?}");
        assert!(doubled[0].starts_with("counter 1 is 3"), "{doubled:?}");
    }

    #[test]
    fn a_read_after_an_acknowledged_increment_must_see_it() {
        // (counter, value, time): 2 acknowledged at 10, 3 at 20.
        let writes = [(0, 2, 10), (0, 3, 20), (1, 7, 5)];
        // Reads invoked before an acknowledgement may miss it; reads of another counter
        // do not count.
        let fresh = [(0, 2, 15), (0, 1, 9), (0, 3, 21), (1, 7, 6), (1, 0, 4)];
        assert_eq!(stale_reads(&writes, &fresh), Vec::<String>::new());
        let stale = [(0, 2, 25)];
        let problems = stale_reads(&writes, &stale);
        assert_eq!(problems, vec!["counter 0: a read returned 2 after 3 was acknowledged".to_string()]);
    }
}
