//! A server's figures in Prometheus's text format (version 0.0.4): counters and histograms
//! kept in atomics where the work happens (`CommitMetrics`), gauges read when a scrape asks
//! (Raft's metrics, the lease table, the block store), and `Exposition`, which renders them.
//! `http.rs` serves the text at `/metrics`; `cffs cluster status` reads the same figures over
//! gRPC. Nothing here is read by the protocol, so the simulation keeps these counters too
//! (they are per node, not global) without any effect on what it checks.

use std::fmt::{Display, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cffs_proto::ErrorCode;

/// A histogram over fixed upper bounds, in a base unit of the caller's choice (µs, commits);
/// `scale` converts the base unit to the exported one (1e6: µs to seconds).
pub struct Histogram {
    bounds: &'static [u64],
    scale: f64,
    /// One per bound, then the overflow (+Inf) bucket; not cumulative (summed when rendered).
    buckets: Vec<AtomicU64>,
    sum: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [u64], scale: f64) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds must increase");
        Histogram {
            bounds,
            scale,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: u64) {
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

/// Commit latency bounds, µs: 100 µs to 10 s.
const LATENCY_BOUNDS_US: &[u64] =
    &[100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 10_000_000];
/// Commits per log entry.
const BATCH_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256];

/// What a commit request came to, as counted: the first three are outcomes, the rest the
/// error code it failed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed,
    ReadOnly,
    Conflict,
    Failed(ErrorCode),
}

/// Every error code, in the order `CommitOutcome::Failed` is counted and rendered.
const ERROR_CODES: [ErrorCode; 11] = [
    ErrorCode::Unspecified,
    ErrorCode::NotLeader,
    ErrorCode::InvalidArgument,
    ErrorCode::TooLarge,
    ErrorCode::Unavailable,
    ErrorCode::Timeout,
    ErrorCode::LeaderChanged,
    ErrorCode::Storage,
    ErrorCode::Internal,
    ErrorCode::Checksum,
    ErrorCode::BlockMissing,
];

impl CommitOutcome {
    fn index(self) -> usize {
        match self {
            CommitOutcome::Committed => 0,
            CommitOutcome::ReadOnly => 1,
            CommitOutcome::Conflict => 2,
            CommitOutcome::Failed(code) => 3 + ERROR_CODES.iter().position(|c| *c == code).unwrap_or(0),
        }
    }

    fn label(index: usize) -> &'static str {
        match index {
            0 => "committed",
            1 => "read_only",
            2 => "conflict",
            n => error_label(ERROR_CODES[n - 3]),
        }
    }
}

fn error_label(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Unspecified => "unspecified",
        ErrorCode::NotLeader => "not_leader",
        ErrorCode::InvalidArgument => "invalid_argument",
        ErrorCode::TooLarge => "too_large",
        ErrorCode::Unavailable => "unavailable",
        ErrorCode::Timeout => "timeout",
        ErrorCode::LeaderChanged => "leader_changed",
        ErrorCode::Storage => "storage",
        ErrorCode::Internal => "internal",
        ErrorCode::Checksum => "checksum",
        ErrorCode::BlockMissing => "block_missing",
    }
}

/// A metadata replica's commit figures.
pub struct CommitMetrics {
    outcomes: [AtomicU64; 3 + ERROR_CODES.len()],
    /// Time from a commit request's arrival to its answer, µs (every outcome).
    latency: Histogram,
    /// Commits per proposed log entry (the leader's batcher).
    batch_commits: Histogram,
}

impl Default for CommitMetrics {
    fn default() -> Self {
        CommitMetrics {
            outcomes: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: Histogram::new(LATENCY_BOUNDS_US, 1e6),
            batch_commits: Histogram::new(BATCH_BOUNDS, 1.0),
        }
    }
}

impl CommitMetrics {
    pub fn record(&self, outcome: CommitOutcome, took: Duration) {
        self.outcomes[outcome.index()].fetch_add(1, Ordering::Relaxed);
        self.latency.observe(took.as_micros().min(u64::MAX as u128) as u64);
    }

    pub fn record_batch(&self, commits: usize) {
        self.batch_commits.observe(commits as u64);
    }

    pub fn render(&self, out: &mut Exposition) {
        out.family(
            "cffs_commits_total",
            Kind::Counter,
            "Commit requests answered by this replica, by outcome (committed, read_only, conflict) or error code.",
        );
        for (index, count) in self.outcomes.iter().enumerate() {
            out.sample(
                "cffs_commits_total",
                &[("outcome", CommitOutcome::label(index))],
                count.load(Ordering::Relaxed),
            );
        }
        out.histogram(
            "cffs_commit_duration_seconds",
            "Time from a commit request's arrival to its answer.",
            &self.latency,
        );
        out.histogram(
            "cffs_commit_batch_commits",
            "Commits carried by each log entry the leader's batcher proposed.",
            &self.batch_commits,
        );
    }
}

/// A node's answer to `/health` (and the gRPC health service): whether it can serve, and a
/// JSON object saying why.
#[derive(Debug, Clone)]
pub struct Health {
    pub healthy: bool,
    pub body: String,
}

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Prometheus's text format, written family by family.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a family: its `# HELP` and `# TYPE` lines. Its samples follow.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(self.text, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let value = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = write!(self.text, "{key}=\"{value}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// A family of one unlabeled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    pub fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) {
        self.family(name, Kind::Histogram, help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (i, count) in histogram.buckets.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = match histogram.bounds.get(i) {
                Some(bound) => (*bound as f64 / histogram.scale).to_string(),
                None => "+Inf".to_string(),
            };
            self.sample(&bucket, &[("le", &le)], cumulative);
        }
        let sum = histogram.sum.load(Ordering::Relaxed) as f64 / histogram.scale;
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], cumulative);
    }

    pub fn finish(self) -> String {
        self.text
    }
}

/// The value of one sample in an exposition (`name` with exactly `labels`), parsed; for
/// tests and for tools that read a scrape.
pub fn sample_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut key = name.to_string();
    if !labels.is_empty() {
        let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        key = format!("{name}{{{}}}", inner.join(","));
    }
    text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        (series == key).then(|| value.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_sum_is_scaled() {
        let histogram = Histogram::new(LATENCY_BOUNDS_US, 1e6);
        for micros in [50, 100, 101, 3_000, 20_000_000] {
            histogram.observe(micros);
        }
        let mut out = Exposition::default();
        out.histogram("h", "help", &histogram);
        let text = out.finish();
        assert_eq!(sample_value(&text, "h_bucket", &[("le", "0.0001")]), Some(2.0), "{text}");
        assert_eq!(sample_value(&text, "h_bucket", &[("le", "0.00025")]), Some(3.0));
        assert_eq!(sample_value(&text, "h_bucket", &[("le", "0.005")]), Some(4.0));
        assert_eq!(sample_value(&text, "h_bucket", &[("le", "10")]), Some(4.0));
        assert_eq!(sample_value(&text, "h_bucket", &[("le", "+Inf")]), Some(5.0));
        assert_eq!(sample_value(&text, "h_count", &[]), Some(5.0));
        assert_eq!(sample_value(&text, "h_sum", &[]), Some(20.003251));
        assert_eq!(histogram.count(), 5);
    }

    #[test]
    fn commit_outcomes_are_counted_by_label() {
        let metrics = CommitMetrics::default();
        metrics.record(CommitOutcome::Committed, Duration::from_millis(2));
        metrics.record(CommitOutcome::Committed, Duration::from_millis(3));
        metrics.record(CommitOutcome::Conflict, Duration::from_millis(1));
        metrics.record(CommitOutcome::Failed(ErrorCode::NotLeader), Duration::ZERO);
        metrics.record_batch(3);
        let mut out = Exposition::default();
        metrics.render(&mut out);
        let text = out.finish();
        let outcome = |label| sample_value(&text, "cffs_commits_total", &[("outcome", label)]);
        assert_eq!(outcome("committed"), Some(2.0));
        assert_eq!(outcome("conflict"), Some(1.0));
        assert_eq!(outcome("not_leader"), Some(1.0));
        assert_eq!(outcome("block_missing"), Some(0.0));
        assert_eq!(sample_value(&text, "cffs_commit_duration_seconds_count", &[]), Some(4.0));
        assert_eq!(sample_value(&text, "cffs_commit_batch_commits_bucket", &[("le", "2")]), Some(0.0));
        assert_eq!(sample_value(&text, "cffs_commit_batch_commits_bucket", &[("le", "4")]), Some(1.0));
        // Every family is declared once, before its samples.
        assert_eq!(text.matches("# TYPE cffs_commits_total counter").count(), 1);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition::default();
        out.sample("m", &[("a", "x\"y\\z\n")], 1);
        assert_eq!(out.finish(), "m{a=\"x\\\"y\\\\z\\n\"} 1\n");
    }
}
