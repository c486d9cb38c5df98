//! The `VhostUserBackend` for one connection: features, configuration space,
//! one worker thread per queue, the EVENT_IDX loop around queue draining,
//! inflight I/O tracking and stopping a queue only once its requests are done.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::{
    VhostUserInflight, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost_user_backend::bitmap::BitmapMmapRegion;
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use super::chain::Chain;
use super::completion::Completer;
use super::config::{CONFIG_BYTES, DeviceGeometry, WCE_OFFSET, config_space, device_features};
use super::hold::HoldHook;
use super::inflight::InflightArea;
use super::metrics::DeviceMetrics;
use super::pipeline::{Lane, wait_readable};
use super::poll::PollWindow;
use super::state::{GuestMemory, GuestRam, QueueState, RingPosition, Shared, Vring};
use super::worker::QueueWorker;
use super::{DeviceOptions, RateLimitedLog};
use crate::store::HeadId;
use crate::sync::LockOrRecover;
use crate::volume::Volume;
use crate::volume::handover::Served;

/// A vhost-user-blk backend serving one volume to one frontend connection.
#[derive(Clone)]
pub struct BlockBackend {
    shared: Arc<Shared>,
}

impl BlockBackend {
    /// A backend for `served` with `options`.
    pub fn new(served: Arc<Served>, options: DeviceOptions) -> Self {
        let metrics = Arc::new(DeviceMetrics::new(options.num_queues));
        Self::counted(served, options, metrics)
    }

    /// Like [`BlockBackend::new`], counting into `metrics` (which must have
    /// a queue for each of `options.num_queues`).
    pub fn counted(
        served: Arc<Served>,
        options: DeviceOptions,
        metrics: Arc<DeviceMetrics>,
    ) -> Self {
        Self::build(served, options, HoldHook::get(), metrics)
    }

    /// TEST-ONLY: like [`BlockBackend::new`], but the `nth` request this
    /// backend takes off its queues is held back while later ones complete
    /// (what [`HOLD_VARIABLE`](super::HOLD_VARIABLE) does for a daemon).
    #[doc(hidden)]
    pub fn with_test_hold(served: Arc<Served>, options: DeviceOptions, nth: u64) -> Self {
        let hook: &'static HoldHook = Box::leak(Box::new(HoldHook::new(Some(nth))));
        let metrics = Arc::new(DeviceMetrics::new(options.num_queues));
        Self::build(served, options, hook, metrics)
    }

    fn build(
        served: Arc<Served>,
        options: DeviceOptions,
        hold: &'static HoldHook,
        metrics: Arc<DeviceMetrics>,
    ) -> Self {
        let superblock = served.superblock();
        let geometry = DeviceGeometry {
            capacity_sectors: superblock.size_bytes / 512,
            logical_block_bytes: options.logical_block_bytes,
            physical_block_bytes: superblock.block_bytes,
            num_queues: options.num_queues,
            read_only: options.read_only,
        };
        let queues = (0..options.num_queues)
            .map(|_| Mutex::new(QueueState::default()))
            .collect();
        Self {
            shared: Arc::new(Shared {
                served,
                options,
                geometry,
                memory: Mutex::new(None),
                event_idx: AtomicBool::new(false),
                wce: AtomicU8::new(1),
                acked_features: AtomicU64::new(0),
                guest_errors: RateLimitedLog::new("guest request error"),
                host_errors: RateLimitedLog::new("I/O error serving a request"),
                inflight: Mutex::new(None),
                queues,
                hold,
                metrics,
            }),
        }
    }

    fn worker<'a>(&'a self, index: usize, memory: &'a GuestMemory) -> QueueWorker<'a> {
        QueueWorker {
            shared: &self.shared,
            memory,
            head: HeadId(index),
            volume: self.volume(),
        }
    }

    fn drain(
        &self,
        index: usize,
        vring: &Vring,
        queue: &mut QueueState,
        memory: &GuestMemory,
    ) -> io::Result<()> {
        let worker = self.worker(index, memory);
        let mut first = Vec::new();
        if !queue.resumed {
            RingPosition::of(vring, &memory.memory()).log(index, "queue started");
            first = worker.resume(vring, queue)?;
        }
        self.serve(&worker, vring, queue, first, true)
    }

    /// Runs `first` (requests a previous backend left in flight, or held
    /// ones), then, if `keep_draining`, the queue's requests until it is
    /// idle; returns once every request it took is complete (so a queue's
    /// stop, which waits for this, finds none in flight).
    fn serve(
        &self,
        worker: &QueueWorker<'_>,
        vring: &Vring,
        queue: &mut QueueState,
        first: Vec<Chain>,
        keep_draining: bool,
    ) -> io::Result<()> {
        let mem = worker.memory.memory();
        let depth = worker.depth();
        let completer = Completer::new(
            &self.shared,
            vring,
            &mem,
            worker.head.0,
            queue.inflight.take(),
        );
        let held = &mut queue.held;
        let result = (|| {
            // Dropped (also on an early return) only once its jobs are done.
            let mut lane = Lane::new(depth)?;
            if !first.is_empty() {
                worker.run(first, &mut lane, &completer)?;
            }
            if keep_draining {
                self.drain_loop(worker, vring, &mem, held, &mut lane, &completer)?;
            }
            lane.wait_all();
            Ok(())
        })();
        queue.inflight = completer.into_inflight();
        result
    }

    /// Drains the queue until it is idle and nothing is in flight.
    fn drain_loop<'env>(
        &self,
        worker: &'env QueueWorker<'env>,
        vring: &Vring,
        mem: &GuestRam,
        held: &mut Vec<Chain>,
        lane: &mut Lane<'env>,
        completer: &'env Completer<'env>,
    ) -> io::Result<()> {
        // After each drain, poll for the next request a while before
        // sleeping (`poll`).
        let poll = PollWindow::from_us(self.shared.options.poll_us);
        let event_idx = self.shared.event_idx.load(Ordering::Relaxed);
        let mut kicked = false;
        loop {
            // With EVENT_IDX the driver kicks only when it sees us idle:
            // keep draining until re-enabling notifications finds the queue
            // empty, or a request added in between would never be seen.
            if event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            if !worker.drain(vring, held, lane, completer)? {
                // Nothing can be taken from this queue until the driver
                // resets it (a not-ready queue may even look non-empty to
                // `enable_notification`): sleep on its kick, do not spin.
                return Ok(());
            }
            if poll.wait_for_request(vring, mem) {
                continue;
            }
            if lane.busy() {
                // Jobs in flight: sleep until one finishes or the driver
                // kicks, whichever comes first.
                if event_idx && vring.enable_notification().map_err(io::Error::other)? {
                    continue;
                }
                kicked = wait_for_job_or_kick(vring, lane, kicked);
                continue;
            }
            if !event_idx || !vring.enable_notification().map_err(io::Error::other)? {
                return Ok(());
            }
        }
    }
}

/// Sleeps until a job of `lane` finishes or, unless `kicked` already,
/// the driver kicks `vring`; returns true once the kick has come. The
/// kick is never read here: the event loop reads it (blocking) when the
/// drain returns, and a kick read here would leave it waiting forever.
/// Once kicked, only finished jobs wake the worker (each followed by a
/// look at the ring).
fn wait_for_job_or_kick(vring: &Vring, lane: &mut Lane<'_>, kicked: bool) -> bool {
    let kick = match kicked {
        true => None,
        false => vring.get_ref().get_kick().as_ref().map(|k| k.as_raw_fd()),
    };
    let mut fds = vec![lane.done_fd()];
    fds.extend(kick);
    let ready = wait_readable(&fds, -1);
    lane.reap();
    kicked || ready.get(1).copied().unwrap_or(false)
}

impl BlockBackend {
    /// True while the frontend runs the device (a queue is started).
    pub fn is_running(&self) -> bool {
        self.shared.is_running()
    }

    /// The volume to serve a drain with; a standby daemon takes it over
    /// here if nothing did before.
    fn volume(&self) -> Result<Arc<Volume>, String> {
        self.shared.served.volume().map_err(|error| {
            self.shared.host_errors.log(&error.to_string());
            error.to_string()
        })
    }
}

impl VhostUserBackend for BlockBackend {
    type Bitmap = BitmapMmapRegion;
    type Vring = Vring;

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
        let log_all = VhostUserVirtioFeatures::LOG_ALL.bits();
        let before = self.shared.acked_features.swap(features, Ordering::Relaxed);
        // Dirty logging turned on: a live migration starts. The log is made
        // durable as it goes, so the switch-over's seal has little to sync.
        if features & log_all != 0 && before & log_all == 0 {
            let shared = Arc::clone(&self.shared);
            self.shared.served.migration_started(Box::new(move || {
                shared.acked_features.load(Ordering::Relaxed) & log_all != 0 && shared.is_running()
            }));
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
            | VhostUserProtocolFeatures::LOG_SHMFD
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
        *self.shared.memory.lock_or_recover() = Some(memory);
        // The frontend starts the device (a migrated VM starts here): a
        // standby daemon takes the volume over now, while the frontend
        // finishes its setup, rather than at the first request.
        if self.shared.served.is_standby() {
            tracing::info!("the frontend starts the device: taking the volume over");
            let backend = self.clone();
            let spawned = std::thread::Builder::new()
                .name("take-over".to_owned())
                .spawn(move || {
                    let _ = backend.volume();
                });
            if let Err(error) = spawned {
                tracing::warn!(%error, "cannot take the volume over ahead of the first request");
            }
        }
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

    fn get_inflight_fd(
        &self,
        inflight: &VhostUserInflight,
    ) -> io::Result<(VhostUserInflight, File)> {
        let (file, size) = InflightArea::create(inflight.num_queues, inflight.queue_size)
            .map_err(io::Error::other)?;
        tracing::debug!(
            queues = inflight.num_queues,
            queue_size = inflight.queue_size,
            "new inflight area"
        );
        let reply = VhostUserInflight {
            mmap_size: size,
            mmap_offset: 0,
            num_queues: inflight.num_queues,
            queue_size: inflight.queue_size,
        };
        Ok((reply, file))
    }

    fn set_inflight_fd(&self, inflight: &VhostUserInflight, file: File) -> io::Result<()> {
        let area = InflightArea::map(
            &file,
            inflight.mmap_offset,
            inflight.mmap_size,
            inflight.num_queues,
            inflight.queue_size,
        )
        .map_err(io::Error::other)?;
        let area = Arc::new(area);
        for index in 0..self.shared.queues.len() {
            if let Some(mut queue) = self.shared.queue(index) {
                queue.inflight = u16::try_from(index).ok().and_then(|i| area.queue(i));
                queue.resumed = false;
            }
        }
        *self.shared.inflight.lock_or_recover() = Some(area);
        Ok(())
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // Taking the queue's lock waits for a drain in progress; the queue is
        // already marked not ready, so no new drain starts after it. The
        // frontend's GET_VRING_BASE returns only after this: every request
        // taken off the ring is complete.
        let Some(mut queue) = self.shared.queue(queue_index as usize) else {
            return Ok(());
        };
        if !queue.held.is_empty()
            && let (Some(vring), Some(memory)) = (queue.vring.clone(), self.shared.memory())
        {
            let worker = self.worker(queue_index as usize, &memory);
            let held = std::mem::take(&mut queue.held);
            self.serve(&worker, &vring, &mut queue, held, false)?;
        }
        queue.resumed = false;
        if let (Some(vring), Some(memory)) = (queue.vring.clone(), self.shared.memory()) {
            RingPosition::of(&vring, &memory.memory()).log(queue_index as usize, "queue stopped");
        }
        drop(queue);
        // Dirty logging on: a live migration stops the device, and the
        // destination's daemon will ask for the volume next. Seal and
        // checkpoint now, while QEMU still copies the VM's last state.
        let logging = self.shared.acked_features.load(Ordering::Relaxed)
            & VhostUserVirtioFeatures::LOG_ALL.bits()
            != 0;
        if logging && !self.shared.is_running() {
            self.shared.served.prepare_hand_over();
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        // `device_event` counts within this thread's vrings.
        let Some(vring) = vrings.get(usize::from(device_event)) else {
            return Err(io::Error::other(format!(
                "event for unknown queue {device_event}"
            )));
        };
        let Some(memory) = self.shared.memory() else {
            return Err(io::Error::other("queue kicked before guest memory was set"));
        };
        // One thread per queue (`queues_per_thread`): the thread's index is
        // the queue's.
        let index = thread_id;
        let Some(mut queue) = self.shared.queue(index) else {
            return Err(io::Error::other(format!("no state for queue {index}")));
        };
        // A kick that raced GET_VRING_BASE: the queue is stopped.
        if !vring.get_ref().get_queue().ready() {
            return Ok(());
        }
        if queue.vring.is_none() {
            queue.vring = Some(vring.clone());
        }
        self.drain(index, vring, &mut queue, &memory)
    }
}
