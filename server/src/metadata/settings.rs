//! Cluster-wide settings (the lease duration and drift bound): every replica must use the
//! same, or a new leader with a shorter lease would end its quiet span while its
//! predecessor's longer grants are still trusted. So they live in the replicated state
//! (`state/scluster_settings`), written once, by the first leader, from its own flags, and
//! never changed after (changing them needs a protocol of its own: not built). A replica
//! checks its flags against them when it starts and whenever it applies them: one that
//! differs refuses to start, or stops (its Raft core shut down) with a clear error. Until a
//! replica has applied matching settings it opens no session, grants no lease and proposes
//! no commit (`Sessions::confirm_settings`).

use std::time::Duration;

use cffs_proto::{command, ClusterSettings, Command};

use super::leases::LeaseConfig;
use super::sessions::Sessions;
use crate::metadata::raft_types::RaftCommand;
use crate::metadata::state_machine::MetaState;
use crate::metadata::MetaRaft;

/// The settings a replica's own flags ask for.
pub fn from_config(leases: &LeaseConfig) -> ClusterSettings {
    ClusterSettings { lease_ms: leases.duration.as_millis() as u64, lease_drift_ppm: leases.drift_ppm }
}

/// Why a replica must not serve with its flags.
pub fn mismatch(own: &ClusterSettings, stored: &ClusterSettings) -> Option<String> {
    (own != stored).then(|| {
        format!(
            "this replica's lease settings ({} ms, {} ppm drift) differ from the cluster's ({} ms, {} ppm): start it with --lease-ms {} --lease-drift-ppm {}",
            own.lease_ms,
            own.lease_drift_ppm,
            stored.lease_ms,
            stored.lease_drift_ppm,
            stored.lease_ms,
            stored.lease_drift_ppm
        )
    })
}

/// How often a leader that finds no stored settings proposes its own.
const SETTINGS_PROPOSE_RETRY: Duration = Duration::from_millis(200);

/// Follows the stored settings: confirms them to `sessions` when they match `own`, stops the
/// replica when they differ, and, while none are stored and this replica leads, proposes
/// `own`.
pub fn watch(raft: MetaRaft, state: MetaState, sessions: Sessions, own: ClusterSettings) {
    tokio::spawn(async move {
        let mut stored = state.settings.subscribe();
        loop {
            let current = *stored.borrow_and_update();
            match current {
                Some(settings) => {
                    if let Some(why) = mismatch(&own, &settings) {
                        tracing::error!(%why, "stopping: cluster settings differ");
                        let _ = raft.shutdown().await;
                        return;
                    }
                    sessions.confirm_settings();
                    return;
                }
                None => {
                    let leads = raft.metrics().borrow().state == openraft::ServerState::Leader;
                    if leads {
                        let command = Command { kind: Some(command::Kind::ClusterSettings(own)) };
                        if let Err(error) = raft.client_write(RaftCommand(command)).await {
                            tracing::debug!(%error, "proposing the cluster settings failed; retrying");
                        }
                    }
                    tokio::select! {
                        biased; // deterministic under madsim: no random branch order
                        changed = stored.changed() => if changed.is_err() { return },
                        _ = tokio::time::sleep(SETTINGS_PROPOSE_RETRY) => {}
                    }
                }
            }
        }
    });
}
