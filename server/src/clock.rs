//! The one place that reads wall-clock time. Under madsim the clock is simulated, so this
//! stays deterministic there.

/// Nanoseconds since the Unix epoch, for inode timestamps.
pub fn unix_now_ns() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}
