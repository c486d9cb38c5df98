//! Collecting the objects nothing needs any more, after a checkpoint is
//! stored: the segments compaction deleted locally that a rebuild from that
//! checkpoint never reads (below its replay point and not among what it
//! needs), and the older checkpoint and metadata objects.
//!
//! Also the objects of older epochs that the volume does not hold (see
//! [`orphans`]): what a fenced writer uploaded after it was taken over, or
//! what a new epoch did not adopt.
//!
//! Only while no newer writer exists, asked after the checkpoint's upload:
//! a writer that takes over creates its lease before it resolves the store,
//! so it starts from this checkpoint or a newer one, never from an older
//! one whose segments are being deleted.

use std::collections::{BTreeMap, BTreeSet};

use super::error::Result;
use super::layout::{ObjectKind, StoredObject, epoch_folder};
use super::lease::Leases;
use crate::objstore::{ObjectKey, ObjectStore};
use crate::store::WrittenCheckpoint;

/// The volume's objects in the store, by kind and number.
pub(super) type StoredObjects = BTreeMap<(ObjectKind, u64), StoredObject>;

/// The objects of `stored` a rebuild never reads once `checkpoint` is the
/// newest stored one: segments in `deleted` (gone from the log) that it
/// does not need, checkpoints older than it, metadata older than the newest.
pub(super) fn collectable(
    stored: &StoredObjects,
    deleted: &BTreeSet<u64>,
    checkpoint: &WrittenCheckpoint,
) -> Vec<StoredObject> {
    let newest_meta = stored
        .keys()
        .filter(|(kind, _)| *kind == ObjectKind::Meta)
        .map(|(_, number)| *number)
        .max();
    stored
        .values()
        .filter(|object| match object.kind {
            ObjectKind::Segment => {
                deleted.contains(&object.number)
                    && object.number < checkpoint.segment_id_next
                    && !checkpoint.needs.contains(&object.number)
            }
            ObjectKind::Checkpoint => object.number < checkpoint.seq_next,
            ObjectKind::Meta => Some(object.number) < newest_meta,
        })
        .cloned()
        .collect()
}

/// The segment, checkpoint and metadata objects in the folders of epochs
/// older than `epoch` that are not in `stored` (every object the volume of
/// `epoch` holds: its base plus its own). Resolving the volume ignores
/// them (a newer epoch resolves from `epoch`'s base), so nothing reads
/// them again: a fenced writer's uploads after the takeover, and what a
/// new epoch did not adopt. Leases and bases stay (they are small, and
/// the newest started epoch is found through them).
pub(super) fn orphans(
    store: &dyn ObjectStore,
    epoch: u64,
    stored: &StoredObjects,
) -> Result<Vec<ObjectKey>> {
    let mut found = Vec::new();
    for older in to_sweep(&Leases::read(store)?, epoch) {
        for info in store.list(&ObjectKey::new(epoch_folder(older))?)? {
            let Some(object) = StoredObject::parse(info.key.as_str()) else {
                continue;
            };
            if stored.get(&(object.kind, object.number)) != Some(&object) {
                found.push(info.key);
            }
        }
    }
    Ok(found)
}

/// The epochs older than `epoch` whose folders may hold orphans: all but
/// those that stopped cleanly (no more uploads) and whose successor did
/// too (its clean stop swept them, after they stopped). A clean stop then
/// lists about one folder however many epochs came before (a live
/// migration between hosts is one epoch each), plus one per writer that
/// did not stop cleanly.
fn to_sweep(leases: &Leases, epoch: u64) -> Vec<u64> {
    let older: Vec<u64> = leases
        .epochs
        .iter()
        .copied()
        .filter(|e| *e < epoch)
        .collect();
    older
        .iter()
        .enumerate()
        .filter(|(i, e)| {
            let successor = older.get(i + 1).copied().unwrap_or(epoch);
            !(leases.released.contains(e) && leases.released.contains(&successor))
        })
        .map(|(_, e)| *e)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(kind: ObjectKind, number: u64) -> StoredObject {
        StoredObject {
            kind,
            number,
            epoch: 2,
            len: 1,
            crc: 0,
        }
    }

    #[test]
    fn keeps_what_a_rebuild_from_the_checkpoint_reads() {
        let stored: StoredObjects = [
            object(ObjectKind::Segment, 1),
            object(ObjectKind::Segment, 2),
            object(ObjectKind::Segment, 3),
            object(ObjectKind::Segment, 7),
            object(ObjectKind::Segment, 9),
            object(ObjectKind::Checkpoint, 100),
            object(ObjectKind::Checkpoint, 200),
            object(ObjectKind::Meta, 100),
            object(ObjectKind::Meta, 150),
        ]
        .into_iter()
        .map(|o| ((o.kind, o.number), o))
        .collect();
        let checkpoint = WrittenCheckpoint {
            path: "200.ckpt".into(),
            seq_next: 200,
            segment_id_next: 8,
            needs: [2, 7].into_iter().collect(),
        };
        // 1 and 3 are gone and not needed; 2 is needed; 9 is replayed; 7 is
        // still in the log.
        let deleted = [1, 2, 3, 9].into_iter().collect();
        let mut collected: Vec<(ObjectKind, u64)> = collectable(&stored, &deleted, &checkpoint)
            .into_iter()
            .map(|o| (o.kind, o.number))
            .collect();
        collected.sort();
        assert_eq!(
            collected,
            [
                (ObjectKind::Segment, 1),
                (ObjectKind::Segment, 3),
                (ObjectKind::Checkpoint, 100),
                (ObjectKind::Meta, 100),
            ]
        );
    }

    #[test]
    fn a_clean_stop_sweeps_only_the_epochs_no_clean_successor_swept() {
        let leases = Leases {
            epochs: vec![1, 2, 3, 4, 5, 6, 7],
            // 4 crashed (fenced, may still upload); 6 is the predecessor.
            released: [1, 2, 3, 5, 6].into_iter().collect(),
        };
        // 1, 2 and 5 were swept by the clean stops of 2, 3 and 6; 3's
        // successor crashed; 4 never stopped cleanly (a fenced writer may
        // still upload); 6's successor is the sweeper, still running.
        assert_eq!(to_sweep(&leases, 7), vec![3, 4, 6]);
        // Fifty migrations: one folder listed, not forty-nine.
        let leases = Leases {
            epochs: (1..=50).collect(),
            released: (1..50).collect(),
        };
        assert_eq!(to_sweep(&leases, 50), vec![49]);
    }
}
