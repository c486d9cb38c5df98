//! The `VhostUserBackend` for one connection: features, configuration space,
//! one worker thread per queue, and the EVENT_IDX loop around queue draining.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use super::config::{CONFIG_BYTES, DeviceGeometry, WCE_OFFSET, config_space, device_features};
use super::worker::QueueWorker;
use super::{DeviceOptions, RateLimitedLog};
use crate::store::HeadId;
use crate::volume::Volume;

/// Guest memory as the vhost-user crates hand it to us.
pub type GuestMemory = GuestMemoryAtomic<GuestMemoryMmap>;

/// State one connection's workers share.
pub(crate) struct Shared {
    pub(crate) volume: Arc<Volume>,
    pub(crate) options: DeviceOptions,
    pub(crate) geometry: DeviceGeometry,
    pub(crate) memory: Mutex<Option<GuestMemory>>,
    pub(crate) event_idx: AtomicBool,
    /// 1: writeback cache (FLUSH makes writes durable); 0: writethrough.
    pub(crate) wce: AtomicU8,
    pub(crate) acked_features: AtomicU64,
    pub(crate) guest_errors: RateLimitedLog,
    pub(crate) host_errors: RateLimitedLog,
}

/// A vhost-user-blk backend serving one volume to one frontend connection.
#[derive(Clone)]
pub struct BlockBackend {
    shared: Arc<Shared>,
}

impl BlockBackend {
    /// A backend for `volume` with `options`.
    pub fn new(volume: Arc<Volume>, options: DeviceOptions) -> Self {
        let geometry = DeviceGeometry {
            capacity_sectors: volume.size_bytes() / 512,
            logical_block_bytes: options.logical_block_bytes,
            physical_block_bytes: volume.block_bytes(),
            num_queues: options.num_queues,
            read_only: options.read_only,
        };
        Self {
            shared: Arc::new(Shared {
                volume,
                options,
                geometry,
                memory: Mutex::new(None),
                event_idx: AtomicBool::new(false),
                wce: AtomicU8::new(1),
                acked_features: AtomicU64::new(0),
                guest_errors: RateLimitedLog::new("guest request error"),
                host_errors: RateLimitedLog::new("I/O error serving a request"),
            }),
        }
    }

    fn memory(&self) -> Option<GuestMemory> {
        self.shared
            .memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl VhostUserBackend for BlockBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        usize::from(self.shared.options.num_queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.shared.options.queue_size)
    }

    fn features(&self) -> u64 {
        device_features(self.shared.options.read_only)
    }

    fn acked_features(&self, features: u64) {
        self.shared
            .acked_features
            .store(features, Ordering::Relaxed);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&self, enabled: bool) {
        self.shared.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config = config_space(
            &self.shared.geometry,
            self.shared.wce.load(Ordering::Relaxed),
        );
        let start = (offset as usize).min(CONFIG_BYTES);
        let end = start.saturating_add(size as usize).min(CONFIG_BYTES);
        let mut bytes = config[start..end].to_vec();
        // Reads past what we define see zeros, as on a real device.
        bytes.resize(size as usize, 0);
        bytes
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Only `wce` is writable (virtio 1.2 5.2.5: with CONFIG_WCE the driver
        // may switch writeback/writethrough).
        if offset as usize == WCE_OFFSET && buf.len() == 1 {
            let wce = u8::from(buf[0] != 0);
            self.shared.wce.store(wce, Ordering::Relaxed);
            tracing::info!(writeback = wce == 1, "guest set the write cache mode");
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "only the wce byte is writable",
        ))
    }

    fn update_memory(&self, memory: GuestMemory) -> io::Result<()> {
        *self.shared.memory.lock().unwrap_or_else(|p| p.into_inner()) = Some(memory);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // One worker thread per queue, so queues never wait for each other.
        (0..self.shared.options.num_queues)
            .map(|queue| 1u64 << queue)
            .collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        let Some(vring) = vrings.get(usize::from(device_event)) else {
            return Err(io::Error::other(format!(
                "event for unknown queue {device_event}"
            )));
        };
        let Some(memory) = self.memory() else {
            return Err(io::Error::other("queue kicked before guest memory was set"));
        };
        let worker = QueueWorker {
            shared: &self.shared,
            memory: &memory,
            head: HeadId(usize::from(device_event)),
        };
        if !self.shared.event_idx.load(Ordering::Relaxed) {
            return worker.drain(vring);
        }
        // With EVENT_IDX the driver kicks only when it sees us idle: keep
        // draining until re-enabling notifications finds the queue empty, or a
        // request added in between would never be seen.
        loop {
            vring.disable_notification().map_err(io::Error::other)?;
            worker.drain(vring)?;
            if !vring.enable_notification().map_err(io::Error::other)? {
                return Ok(());
            }
        }
    }
}
