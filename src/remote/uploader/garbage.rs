//! Deleting what the volume no longer needs from the store (see
//! `collect`), after each checkpoint upload.

use std::time::{Duration, Instant};

use super::super::collect::{collectable, orphans};
use super::super::layout::{ObjectKind, StoredObject};
use super::super::lease;
use super::Shared;
use crate::store::WrittenCheckpoint;

/// Older epochs' folders are listed for orphans at most this often.
const ORPHAN_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

impl Shared {
    /// Deletes the objects nothing needs once `checkpoint` is stored (see
    /// `collect`): first the superseded objects and the older checkpoints
    /// and metadata, then segments, so that no checkpoint left in the store
    /// lacks a segment. A failure is logged and retried after the next
    /// checkpoint.
    pub(super) fn collect_garbage(&self, checkpoint: &WrittenCheckpoint) {
        self.collect_orphans();
        let (victims, replaced) = {
            let state = self.lock();
            let victims = collectable(&state.stored, &state.deleted, checkpoint);
            (victims, state.superseded.clone())
        };
        if victims.is_empty() && replaced.is_empty() {
            return;
        }
        let (segments, mut others): (Vec<StoredObject>, Vec<StoredObject>) = victims
            .iter()
            .cloned()
            .partition(|o| o.kind == ObjectKind::Segment);
        others.extend(replaced.iter().cloned());
        let keys =
            |objects: &[StoredObject]| objects.iter().map(StoredObject::key).collect::<Vec<_>>();
        let deleted = lease::check_not_fenced(self.store.as_ref(), self.epoch)
            .and_then(|()| Ok(self.store.delete(&keys(&others))?))
            .and_then(|()| Ok(self.store.delete(&keys(&segments))?));
        if let Err(error) = deleted {
            tracing::warn!(%error, "collecting unneeded objects failed; trying again later");
            return;
        }
        let mut state = self.lock();
        state.superseded.retain(|o| !replaced.contains(o));
        for victim in &victims {
            state.stored.remove(&(victim.kind, victim.number));
            if victim.kind == ObjectKind::Segment {
                state.deleted.remove(&victim.number);
                state.uploaded.remove(&victim.number);
            }
        }
        state.status.collected_objects += (segments.len() + others.len()) as u64;
    }

    /// Deletes the objects of older epochs the volume does not hold (see
    /// `collect::orphans`), at most every [`ORPHAN_SWEEP_INTERVAL`] (a
    /// listing per older epoch) and when stopping; only while no newer
    /// writer exists.
    fn collect_orphans(&self) {
        let stored = {
            let mut state = self.lock();
            // A clean stop sweeps whenever the last sweep was.
            if !state.stopping
                && state
                    .last_orphan_sweep
                    .is_some_and(|at| at.elapsed() < ORPHAN_SWEEP_INTERVAL)
            {
                return;
            }
            state.last_orphan_sweep = Some(Instant::now());
            state.stored.clone()
        };
        let store = self.store.as_ref();
        let swept = lease::check_not_fenced(store, self.epoch)
            .and_then(|()| orphans(store, self.epoch, &stored))
            .and_then(|keys| {
                if !keys.is_empty() {
                    lease::check_not_fenced(store, self.epoch)?;
                    store.delete(&keys)?;
                }
                Ok(keys.len())
            });
        match swept {
            Ok(count) => self.lock().status.collected_objects += count as u64,
            Err(error) => {
                tracing::warn!(%error, "collecting older epochs' objects failed; trying again later")
            }
        }
    }
}
