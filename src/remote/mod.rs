//! Volumes kept in an object store: the local volume directory is the
//! journal (writes are acknowledged from it, exactly as for any volume) and
//! a cache; every sealed segment becomes one immutable object, and
//! checkpoints and metadata follow, so the volume outlives its host.
//!
//! ```text
//!   guest writes ──> log heads (local journal, segments/) ──seal──> uploader
//!                                                                    │ PUT
//!   lsvblk serve --store on an empty dir <── rebuild (GET) ── object store
//! ```
//!
//! One file per job: `layout.rs` (object names), `lease.rs` (fencing by
//! epochs), `resolve.rs` (which objects make up the volume), `uploader.rs`
//! (background uploads), `cache.rs` (the local copies of uploaded segments
//! as an LRU cache, refilled by ranged GETs), `collect.rs` (which objects
//! nothing needs any more), `meta.rs` (metadata files as one object),
//! `rebuild.rs` (an empty directory from the store), `attach.rs` (create
//! and claim), `flush.rs` (flush modes and the upload-lag ticker),
//! `parent.rs` (a clone's reads of its stored parent's evicted blocks),
//! `follow.rs` (a standby's copy of the volume on another host),
//! `handover.rs` (the hand-over between hosts, through the store),
//! `error.rs`.
//!
//! The log knows nothing of this: the uploader hears of seals and
//! checkpoints through [`crate::store::LogEvents`], and a volume's flush
//! waits for it through [`crate::volume::FlushHook`].

mod attach;
mod cache;
mod collect;
mod error;
mod flush;
mod follow;
pub mod handover;
mod layout;
mod lease;
mod meta;
mod parent;
mod rebuild;
mod resolve;
mod uploader;

pub use attach::{
    Claimed, LOCAL_STATE_FILE, RemoteStore, check_vacant, claim, create, fetch_snapshot,
    needs_rebuild, newest_checkpoint,
};
pub use cache::{CACHE_STATE_FILE, CacheStatus, SegmentCache};
pub use error::{RemoteError, Result};
pub use flush::{FlushMode, RemoteFlush, Ticker, UploadLag};
pub use follow::{CaughtUp, Follower};
pub use layout::{ObjectKind, StoredObject};
pub use lease::{Holder, Leases, release};
pub use parent::{ParentReads, attach_parent_reads};
pub use resolve::{Resolution, resolve};
pub use uploader::{Refusal, UploadStatus, Uploader};
