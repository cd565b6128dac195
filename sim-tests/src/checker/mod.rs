//! Checkers, one module per property. Each returns the violations it found (empty = pass).

pub mod elle;
pub mod fsck;

/// Every committed audit saw the initial total, and so does the final read.
pub fn bank(audits: &[u64], final_total: u64, expected: u64) -> Vec<String> {
    let mut problems: Vec<String> = audits
        .iter()
        .filter(|total| **total != expected)
        .map(|total| format!("an audit read a bank total of {total}, not {expected}"))
        .collect();
    if final_total != expected {
        problems.push(format!("the final bank total is {final_total}, not {expected}"));
    }
    problems
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
pub fn stale_reads(
    writes: &[(usize, u64, tokio::time::Instant)],
    reads: &[(usize, u64, tokio::time::Instant)],
) -> Vec<String> {
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
