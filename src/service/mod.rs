//! What a served volume does besides I/O, as library types the binaries
//! call: [`KeyCare`] looks after the volume's keys (rotation when the
//! policy says so or lsvkms marks a key compromised, resuming an
//! interrupted rotation, destroying keys nothing needs any more, replacing
//! blobs after lsvkms rotated its wrapping key); [`maintenance`] holds the
//! keyless operations (snapshots, compaction, space) that the daemon runs
//! for its control socket and the command line runs itself when no daemon
//! serves the volume; [`ServedVolume`] is a serving daemon's upkeep of its
//! volume (key care, background compaction, the control operations);
//! [`unwrap_all`] unwraps a volume's or a snapshot's key set with a user's
//! token (how a daemon gets its keys, and how a snapshot handed to another
//! user is served with that user's token); [`create_volume`],
//! [`clone_snapshot`] and [`set_acl`] make a volume, a clone or a new ACL
//! with a key sealed by lsvkms; [`rotate_unserved`] rotates the key of a
//! volume no daemon serves.
//!
//! Why a layer of its own rather than inside `volume`: the volume takes
//! keys, it never fetches them, so `volume` does not depend on the key
//! service's client; this layer is where the two meet (`service` →
//! {`volume`, `kms::client`}). The binaries keep argument parsing, exit
//! codes, logging setup and the control socket's wire format; everything
//! here is reached by unit tests without starting a process.

mod error;
mod keycare;
pub mod maintenance;
mod provision;
#[cfg(test)]
mod provision_tests;
mod served;
#[cfg(test)]
mod tests;
mod unlock;
mod unserved;

pub use error::ServiceError;
pub use keycare::{KeyCare, RotateRequest, rewrap_blobs};
pub use provision::{Cloned, Created, NewClone, NewVolume, clone_snapshot, create_volume, set_acl};
pub use served::{BACKGROUND_POLL_DEFAULT, PAUSE_WAIT, PauseWhile, ServedVolume};
pub use unlock::{unwrap_all, unwrap_entries, wrapped_blob};
pub use unserved::rotate_unserved;
