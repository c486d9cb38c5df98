//! What one connection's backend and its queue workers share: the volume,
//! the device's options and geometry, guest memory, negotiated settings, and
//! each queue's own state (inflight tracking, and the test hook's held
//! requests). `backend` writes it as the frontend configures the device,
//! `worker` reads it while draining queues.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vhost_user_backend::bitmap::BitmapMmapRegion;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use super::chain::Chain;
use super::config::DeviceGeometry;
use super::hold::HoldHook;
use super::inflight::{InflightArea, QueueInflight};
use super::metrics::DeviceMetrics;
use super::{DeviceOptions, RateLimitedLog};
use crate::sync::LockOrRecover;
use crate::volume::handover::Served;

/// Guest RAM as the backend maps it: each region carries a dirty-page
/// bitmap that logs the backend's writes while the VM migrates.
pub type GuestRam = GuestMemoryMmap<BitmapMmapRegion>;

/// Guest memory as the vhost-user crates hand it to us.
pub type GuestMemory = GuestMemoryAtomic<GuestRam>;

/// A virtqueue as the vhost-user crates hand it to us.
pub(crate) type Vring = VringRwLock<GuestMemory>;

/// State one connection's workers share.
pub(crate) struct Shared {
    /// The volume: active, or in standby until the device first needs it.
    pub(crate) served: Arc<Served>,
    pub(crate) options: DeviceOptions,
    pub(crate) geometry: DeviceGeometry,
    pub(crate) memory: Mutex<Option<GuestMemory>>,
    pub(crate) event_idx: AtomicBool,
    /// 1: writeback cache (FLUSH makes writes durable); 0: writethrough.
    pub(crate) wce: AtomicU8,
    pub(crate) acked_features: AtomicU64,
    pub(crate) guest_errors: RateLimitedLog,
    pub(crate) host_errors: RateLimitedLog,
    /// The frontend's inflight area (`SET_INFLIGHT_FD`), if it sent one.
    pub(crate) inflight: Mutex<Option<Arc<InflightArea>>>,
    /// One per queue; a worker holds its queue's lock while it drains, so
    /// stopping a queue waits for the requests in progress.
    pub(crate) queues: Vec<Mutex<QueueState>>,
    /// Test-only request hold-back (off unless its variable is set).
    pub(crate) hold: &'static HoldHook,
    /// What the workers count; outlives the connection (the server's).
    pub(crate) metrics: Arc<DeviceMetrics>,
}

/// One queue's state across kicks.
#[derive(Default)]
pub(crate) struct QueueState {
    /// This queue's inflight region, when the frontend tracks inflight I/O.
    pub(crate) inflight: Option<QueueInflight>,
    /// Whether the region was brought up to date since the queue started.
    pub(crate) resumed: bool,
    /// Requests the test hook holds back.
    pub(crate) held: Vec<Chain>,
    /// The vring, kept to finish held requests when the queue stops.
    pub(crate) vring: Option<Vring>,
}

/// Where a queue stands: the backend's own counters and the guest's ring
/// indexes (logged when a queue starts and stops, to check a restart or a
/// migration handed the ring over where it left off).
pub(crate) struct RingPosition {
    pub(crate) next_avail: u16,
    pub(crate) next_used: u16,
    /// The guest's `avail.idx` and `used.idx` (`None`: not readable).
    pub(crate) avail_idx: Option<u16>,
    pub(crate) used_idx: Option<u16>,
}

impl RingPosition {
    /// `vring`'s position in `mem`.
    pub(crate) fn of(vring: &Vring, mem: &GuestRam) -> Self {
        let state = vring.get_ref();
        let queue = state.get_queue();
        Self {
            next_avail: queue.next_avail(),
            next_used: queue.next_used(),
            avail_idx: queue.avail_idx(mem, Ordering::Acquire).ok().map(|i| i.0),
            used_idx: queue.used_idx(mem, Ordering::Acquire).ok().map(|i| i.0),
        }
    }

    /// Logs the position of queue `queue` with `event` as the message.
    pub(crate) fn log(&self, queue: usize, event: &str) {
        tracing::info!(
            queue,
            next_avail = self.next_avail,
            next_used = self.next_used,
            avail_idx = ?self.avail_idx,
            used_idx = ?self.used_idx,
            "{event}"
        );
    }
}

impl Shared {
    /// Queue `index`'s state, locked (a poisoned lock is still usable: the
    /// state is rebuilt at the next start anyway).
    pub(crate) fn queue(&self, index: usize) -> Option<MutexGuard<'_, QueueState>> {
        self.queues.get(index).map(|q| q.lock_or_recover())
    }

    /// The guest memory, once the frontend sent its table.
    pub(crate) fn memory(&self) -> Option<GuestMemory> {
        self.memory.lock_or_recover().clone()
    }

    /// True while a queue is started (between its kick and GET_VRING_BASE):
    /// the frontend runs the device.
    pub(crate) fn is_running(&self) -> bool {
        self.queues.iter().any(|q| {
            q.lock_or_recover()
                .vring
                .as_ref()
                .is_some_and(|vring| vring.get_ref().get_queue().ready())
        })
    }
}
