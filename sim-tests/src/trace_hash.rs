//! A digest of a run's whole event trace: every `tracing` event at debug level and above,
//! from every simulated node (server, client and openraft), with the simulated time it
//! happened at, folded into one crc32. Two runs of a seed are the same run only if their
//! digests agree; comparing end reports alone misses a divergence that heals before the end.
//! Installed per process (`cffs-sim --trace-hash`), since each seed runs in a process of its
//! own.

use std::fmt::Write as _;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer};

struct Digest {
    hasher: crc32fast::Hasher,
    events: u64,
    start: Option<tokio::time::Instant>,
}

static DIGEST: Mutex<Option<Digest>> = Mutex::new(None);

/// Starts hashing every event from now on in this process.
pub fn install() {
    use tracing_subscriber::layer::SubscriberExt;
    *DIGEST.lock().expect("trace digest lock") =
        Some(Digest { hasher: crc32fast::Hasher::new(), events: 0, start: None });
    let filter = tracing_subscriber::filter::LevelFilter::DEBUG;
    let subscriber = tracing_subscriber::registry().with(TraceHash.with_filter(filter));
    tracing::subscriber::set_global_default(subscriber).expect("no other subscriber in this process");
}

/// The digest so far and how many events it covers (None when not installed).
pub fn digest() -> Option<(u32, u64)> {
    DIGEST.lock().expect("trace digest lock").as_ref().map(|d| (d.hasher.clone().finalize(), d.events))
}

struct TraceHash;

struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?};", field.name(), value);
    }
}

impl<S: tracing::Subscriber> Layer<S> for TraceHash {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut text = String::new();
        event.record(&mut Fields(&mut text));
        let mut guard = DIGEST.lock().expect("trace digest lock");
        let Some(digest) = guard.as_mut() else { return };
        // Simulated time, when inside the simulation (the clock exists only there).
        let now = madsim::runtime::Handle::try_current().ok().map(|_| tokio::time::Instant::now());
        let since = match (now, digest.start) {
            (Some(now), Some(start)) => now.duration_since(start).as_nanos() as u64,
            (Some(now), None) => {
                digest.start = Some(now);
                0
            }
            (None, _) => 0,
        };
        digest.hasher.update(&since.to_be_bytes());
        digest.hasher.update(event.metadata().target().as_bytes());
        digest.hasher.update(event.metadata().level().as_str().as_bytes());
        digest.hasher.update(text.as_bytes());
        digest.events += 1;
    }
}
