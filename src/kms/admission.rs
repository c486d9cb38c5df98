//! Connection slots: at most [`CONNECTIONS_MAX`] connections at once, and
//! at most [`CONNECTIONS_PER_PEER_MAX`] for any one peer, so one principal
//! (a UNIX uid, a TLS client's address) cannot take every slot and lock the
//! others out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::limits::{CONNECTIONS_MAX, CONNECTIONS_PER_PEER_MAX};
use crate::sync::LockOrRecover;

/// The slots of one listener (shared by its connection threads).
#[derive(Default)]
pub struct Admission {
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    total: usize,
    per_peer: HashMap<String, usize>,
}

/// A slot; given back when dropped.
pub struct Slot {
    admission: Arc<Admission>,
    peer: String,
}

impl Admission {
    /// Slots for one listener.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A slot for `peer`, or `None` if all slots or its share are taken.
    pub fn admit(self: &Arc<Self>, peer: &str) -> Option<Slot> {
        let mut held = self.held.lock_or_recover();
        let mine = held.per_peer.get(peer).copied().unwrap_or(0);
        if held.total >= CONNECTIONS_MAX || mine >= CONNECTIONS_PER_PEER_MAX {
            return None;
        }
        held.total += 1;
        held.per_peer.insert(peer.to_owned(), mine + 1);
        Some(Slot {
            admission: Arc::clone(self),
            peer: peer.to_owned(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.admission.held.lock_or_recover();
        held.total -= 1;
        if let Some(mine) = held.per_peer.get_mut(&self.peer) {
            *mine -= 1;
            if *mine == 0 {
                held.per_peer.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_peer_gets_its_share_and_the_others_still_get_in() {
        let admission = Admission::new();
        let greedy: Vec<Slot> = (0..CONNECTIONS_PER_PEER_MAX)
            .map(|_| admission.admit("uid:1000").expect("within its share"))
            .collect();
        assert!(admission.admit("uid:1000").is_none(), "over its share");
        let other = admission.admit("uid:0").expect("another peer gets in");
        drop(greedy);
        assert!(admission.admit("uid:1000").is_some(), "slots come back");
        drop(other);
    }

    #[test]
    fn the_total_is_bounded() {
        let admission = Admission::new();
        let held: Vec<Slot> = (0..CONNECTIONS_MAX)
            .map(|i| admission.admit(&format!("uid:{i}")).unwrap())
            .collect();
        assert!(admission.admit("uid:99999").is_none());
        drop(held);
        assert_eq!(admission.held.lock().unwrap().per_peer.len(), 0);
    }
}
