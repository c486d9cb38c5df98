//! Handing a volume kept in an object store from its writer on one host to
//! a standby daemon on another, through the store itself: the hosts share
//! the bucket (and its credentials), not a file system, and whoever may
//! write the bucket can already do anything to the volume, so the channel
//! needs no port, address or secret of its own.
//!
//! ```text
//!   standby (destination)                      writer (source), epoch E
//!   PUT handover/<E>            ─────────▶     sees it (HEAD every 10 ms while its
//!                                              device is stopped, every second else)
//!                                              device running: PUT handover/<E>.refused
//!                                              stopped: seal, checkpoint, upload the
//!                                              rest, PUT lease/<E>.released, exit
//!   sees lease/<E>.released     ◀─────────
//!   catches up, claims lease/<E+1> (conditional create: one winner), opens
//! ```
//!
//! The new epoch fences the old writer as for any takeover: whatever it
//! uploads later lies outside the new epoch's base and is never read.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::error::Result;
use super::layout::released_key;
use crate::objstore::{Error as StoreError, ObjectKey, ObjectStore};

/// The folder of hand-over requests and refusals.
const HANDOVER_DIR: &str = "handover";

/// A standby's request that the writer of `epoch` hand the volume over.
fn request_key(epoch: u64) -> ObjectKey {
    ObjectKey::new(format!("{HANDOVER_DIR}/{epoch:016x}")).expect("valid key")
}

/// The writer's refusal of that request, with its reason.
fn refused_key(epoch: u64) -> ObjectKey {
    ObjectKey::new(format!("{HANDOVER_DIR}/{epoch:016x}.refused")).expect("valid key")
}

/// What the writer of an epoch answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// It released its lease: everything it acknowledged is in the store.
    Released,
    /// It refused (its reason).
    Refused(String),
    /// No answer yet.
    Pending,
}

/// Asks the writer of `epoch` to hand the volume over (a refusal of an
/// earlier request is cleared first).
pub fn ask(store: &dyn ObjectStore, epoch: u64) -> Result<()> {
    store.delete(&[refused_key(epoch)])?;
    store.put(&request_key(epoch), Bytes::from_static(b"hand over\n"))?;
    Ok(())
}

/// The writer's answer so far.
pub fn answer(store: &dyn ObjectStore, epoch: u64) -> Result<Answer> {
    if exists(store, &released_key(epoch))? {
        return Ok(Answer::Released);
    }
    match store.get(&refused_key(epoch)) {
        Ok(reason) => Ok(Answer::Refused(
            String::from_utf8_lossy(&reason).trim().to_string(),
        )),
        Err(StoreError::NotFound { .. }) => Ok(Answer::Pending),
        Err(error) => Err(error.into()),
    }
}

/// Polls for the answer every `poll` until there is one, `wait` passed or
/// `abandon` returns true (then [`Answer::Pending`]): a standby that is
/// told to stop does not wait the writer out.
pub fn wait_answer(
    store: &dyn ObjectStore,
    epoch: u64,
    wait: Duration,
    poll: Duration,
    abandon: &dyn Fn() -> bool,
) -> Result<Answer> {
    let deadline = Instant::now() + wait;
    loop {
        let answer = answer(store, epoch)?;
        if answer != Answer::Pending || Instant::now() >= deadline || abandon() {
            return Ok(answer);
        }
        std::thread::sleep(poll);
    }
}

/// Takes a standby's request back (it stops waiting for the answer). A
/// writer that already saw it may still hand over: its lease is then
/// released with no one to claim the next epoch, and the volume is served
/// nowhere until a daemon claims it.
pub fn withdraw(store: &dyn ObjectStore, epoch: u64) -> Result<()> {
    store.delete(&[request_key(epoch)])?;
    Ok(())
}

/// True when a standby asked the writer of `epoch` to hand over.
pub fn requested(store: &dyn ObjectStore, epoch: u64) -> Result<bool> {
    exists(store, &request_key(epoch))
}

/// The writer refuses the request (it stays the writer).
pub fn refuse(store: &dyn ObjectStore, epoch: u64, reason: &str) -> Result<()> {
    store.put(&refused_key(epoch), Bytes::from(format!("{reason}\n")))?;
    store.delete(&[request_key(epoch)])?;
    Ok(())
}

fn exists(store: &dyn ObjectStore, key: &ObjectKey) -> Result<bool> {
    match store.head(key) {
        Ok(_) => Ok(true),
        Err(StoreError::NotFound { .. }) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objstore::memory::MemoryStore;

    #[test]
    fn a_request_is_answered_by_a_refusal_or_the_released_lease() {
        let store = MemoryStore::new();
        assert!(!requested(&store, 3).unwrap());
        assert_eq!(answer(&store, 3).unwrap(), Answer::Pending);
        ask(&store, 3).unwrap();
        assert!(requested(&store, 3).unwrap());
        assert!(!requested(&store, 2).unwrap());
        refuse(&store, 3, "a VM runs on it").unwrap();
        assert!(!requested(&store, 3).unwrap(), "a refused request is gone");
        assert_eq!(
            answer(&store, 3).unwrap(),
            Answer::Refused("a VM runs on it".into())
        );
        // Asking again clears the old refusal.
        ask(&store, 3).unwrap();
        assert_eq!(answer(&store, 3).unwrap(), Answer::Pending);
        let waited = wait_answer(&store, 3, Duration::ZERO, Duration::ZERO, &|| false).unwrap();
        assert_eq!(waited, Answer::Pending);
        // A standby told to stop does not wait the writer out.
        let asked = Instant::now();
        let waited = wait_answer(&store, 3, Duration::from_secs(60), Duration::ZERO, &|| {
            asked.elapsed() > Duration::from_millis(20)
        })
        .unwrap();
        assert_eq!(waited, Answer::Pending);
        assert!(asked.elapsed() < Duration::from_secs(5));
        withdraw(&store, 3).unwrap();
        assert!(
            !requested(&store, 3).unwrap(),
            "a withdrawn request is gone"
        );
        ask(&store, 3).unwrap();
        super::super::lease::release(&store, 3).unwrap();
        assert_eq!(answer(&store, 3).unwrap(), Answer::Released);
    }
}
