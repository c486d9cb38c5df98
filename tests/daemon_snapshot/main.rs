//! Snapshots, ACL handoff, clones and compaction of a served volume, end
//! to end, with a real `lsvkms`, real `lsvblk serve` daemons, the `lsvblk`
//! command line and libblkio as the VMM (see `tests/kit`). Every check
//! compares the bytes a daemon returns with a model of what must be there.
//!
//! - [`handoff`]: alice writes, adds bob to the ACL (`acl set`) and
//!   snapshots her volume while her daemon serves it (through its control
//!   socket), then writes over the same ranges; bob serves the snapshot
//!   read-only beside her daemon and reads exactly the data of the
//!   snapshot's moment.
//! - [`refusals`]: bob may not serve the volume before the ACL change;
//!   mallory may not serve the snapshot, clone it or change its ACL (exit
//!   77, with the reason), and lsvkms audits each denial with her name.
//! - [`clone`]: bob's clone reads the snapshot, keeps his writes to itself,
//!   and pins the snapshot (delete refused, exit 75, naming the clone).
//! - [`compaction`]: compaction of a served volume under verified I/O,
//!   `status`, and a daemon killed (-9) in the middle of a compaction:
//!   nothing is lost.
//! - [`inspect`]: `inspect` shows snapshots, key ids and ACLs, never the
//!   data key.
//!
//! A write to a read-only export is refused by libblkio itself (EBADF, the
//! device offers VIRTIO_BLK_F_RO) before it reaches the daemon; the daemon's
//! own IOERR for such a write is checked through a mock virtqueue
//! (`vhost_malformed.rs`). Here we check what a client sees and that the
//! snapshot is unchanged.

#[path = "../kit/mod.rs"]
mod kit;

mod clone;
mod compaction;
mod handoff;
mod inspect;
mod refusals;
mod story;

use std::path::Path;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// Size of every volume here.
const SIZE_BYTES: u64 = 24 * MIB;
/// errno values libblkio reports.
const EBADF: i32 = 9;
const EROFS: i32 = 30;

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}
