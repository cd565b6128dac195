//! Durable reservations of session numbers (docs/design/leases.md, "Session ids"). A leader
//! hands out session ids `term << 32 | n` only from a range it recorded on disk first, so a
//! process of this replica that leads the same term again (restarted into its stored vote)
//! starts after every number its predecessors could have given out. The record lives in the
//! `raft_meta` family beside the vote: it is this replica's own, never replicated.

use crate::constants::SESSION_IDS_RESERVED_PER_WRITE;
use crate::storage::codec::{session_ids_decode, session_ids_encode};
use crate::storage::keys::{GroupKeys, META_SESSION_IDS};
use crate::storage::{Cf, KvEngine, StorageError, WriteBatch};

use super::leases::{SessionIdRange, SESSION_NUMBERS_PER_TERM_MAX, SESSION_TERM_MAX};

/// The metadata group's `session_ids` key.
fn session_ids_key() -> Vec<u8> {
    GroupKeys::new(super::METADATA_GROUP).meta(META_SESSION_IDS)
}

/// Reserves the next session numbers of `term`: durable (synced) before this returns. None
/// when the term has none left (or is too large for an id): this replica then opens no more
/// sessions until it leads a later term.
pub fn reserve(engine: &dyn KvEngine, term: u64) -> Result<Option<SessionIdRange>, StorageError> {
    if term == 0 || term > SESSION_TERM_MAX {
        return Ok(None);
    }
    let stored = match engine.get(Cf::RaftMeta, &session_ids_key())? {
        Some(value) => Some(session_ids_decode(&value)?),
        None => None,
    };
    #[cfg(madsim)]
    let stored = if crate::planted::armed(crate::planted::Bug::ReuseSessionIds) { None } else { stored };
    // Numbers of an older term are free again: ids carry the term.
    let next = match stored {
        Some((stored_term, end)) if stored_term == term => end,
        Some((stored_term, _)) if stored_term > term => {
            return Err(StorageError::corruption(format!(
                "session ids reserved for term {stored_term}, above the term {term} this replica leads"
            )))
        }
        _ => 1,
    };
    if next > SESSION_NUMBERS_PER_TERM_MAX {
        return Ok(None);
    }
    let end = (next + SESSION_IDS_RESERVED_PER_WRITE).min(SESSION_NUMBERS_PER_TERM_MAX + 1);
    let mut batch = WriteBatch::default();
    batch.put(Cf::RaftMeta, session_ids_key(), session_ids_encode(term, end));
    engine.write(batch, true)?;
    Ok(Some(SessionIdRange { term, next, end }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sim_disk::SimDisk;

    #[test]
    fn a_later_process_in_the_same_term_starts_after_every_reserved_number() {
        let disk = SimDisk::new();
        let first = reserve(&disk, 5).unwrap().unwrap();
        assert_eq!((first.term, first.next), (5, 1));
        // A power loss keeps the reservation: it was synced.
        disk.power_loss(|_| crate::storage::sim_disk::UnsyncedFate::Dropped);
        let second = reserve(&disk, 5).unwrap().unwrap();
        assert_eq!(second.next, first.end);
        let next_term = reserve(&disk, 6).unwrap().unwrap();
        assert_eq!(next_term.next, 1);
        assert!(reserve(&disk, 5).is_err(), "a term below the reserved one is a corrupted record");
    }

    #[test]
    fn a_term_too_large_for_an_id_gets_no_numbers() {
        let disk = SimDisk::new();
        assert_eq!(reserve(&disk, SESSION_TERM_MAX + 1).unwrap(), None);
    }
}
