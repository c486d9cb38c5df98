//! What a serving daemon runs while it has the volume — its control socket
//! and background compactor — started when the volume becomes active here
//! (at once, or when a standby daemon takes it over) and stopped when it
//! hands the volume over or exits; and both ends of the hand-over on the
//! control socket (`lsvblk::volume::handover` is the transition itself).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lsvblk::sync::LockOrRecover;
use lsvblk::vhost::StopHandle;
use lsvblk::volume::Volume;
use lsvblk::volume::handover::{Holder, Served};
use serde_json::{Value, json};

use crate::control::{
    CallError, ControlError, ControlHandler, ControlRequest, ControlServer, call,
    control_socket_path,
};
use crate::daemon::Daemon;

/// Where the uploader of a volume kept in an object store is, once there
/// is one (a standby starts uploading when it takes the volume over).
pub type UploaderOf = Box<dyn Fn() -> Option<Arc<lsvblk::remote::Uploader>> + Send + Sync>;

/// The daemon's services while it has the volume.
struct Running {
    daemon: Arc<Daemon>,
    control: ControlServer,
    compactor: JoinHandle<()>,
}

/// Starts and stops the services of a writable served volume.
pub struct Services {
    served: Arc<Served>,
    compact_rate_mib: u64,
    /// lsvkms (none for an ephemeral volume).
    kms: Option<PathBuf>,
    stop: StopHandle,
    /// How often the background upkeep looks at keys and space.
    poll: Duration,
    running: Mutex<Option<Running>>,
    /// The uploader of a volume kept in an object store (`status` shows
    /// it), looked up when the volume becomes active here.
    uploader: UploaderOf,
}

impl Services {
    /// Services for `served`; they start once it is active.
    pub fn start_when_active(
        served: &Arc<Served>,
        compact_rate_mib: u64,
        kms: Option<PathBuf>,
        stop: StopHandle,
        poll: Duration,
        uploader: UploaderOf,
    ) -> Arc<Self> {
        let services = Arc::new(Self {
            served: Arc::clone(served),
            compact_rate_mib,
            kms,
            stop,
            poll,
            running: Mutex::new(None),
            uploader,
        });
        let weak = Arc::downgrade(&services);
        served.when_active(Box::new(move |volume| {
            if let Some(services) = weak.upgrade()
                && let Err(error) = services.start(volume)
            {
                tracing::error!(error = %format!("{error:#}"), "cannot start the control socket");
            }
        }));
        let weak = Arc::downgrade(&services);
        served.when_preparing(Box::new(move || {
            if let Some(services) = weak.upgrade() {
                services.pause_upkeep();
            }
        }));
        services
    }

    /// Pauses the background upkeep while the device stays stopped (a
    /// live migration's switch-over): a compaction writing after the early
    /// preparation would make the hand-over close the volume in full. A
    /// migration that fails restarts the device here, and the upkeep goes on.
    fn pause_upkeep(&self) {
        let Some(daemon) = self.daemon() else {
            return;
        };
        let stop = self.stop.clone();
        if !daemon.pause_upkeep(Box::new(move || !stop.is_device_running())) {
            tracing::warn!("a compaction did not stop in time for the hand-over's preparation");
        }
    }

    fn start(self: &Arc<Self>, volume: &Arc<Volume>) -> anyhow::Result<()> {
        let daemon = Daemon::new(
            Arc::clone(volume),
            self.compact_rate_mib,
            self.kms.as_ref().map(crate::kms::client),
            self.poll,
        );
        if let Some(uploader) = (self.uploader)() {
            daemon.set_uploader(uploader);
        }
        let handler = Arc::new(ServeControl {
            services: Arc::downgrade(self),
        });
        let control = ControlServer::start(&control_socket_path(volume.dir()), handler)?;
        let compactor = std::thread::Builder::new()
            .name("compactor".to_string())
            .spawn({
                let daemon = Arc::clone(&daemon);
                move || daemon.background()
            })?;
        *self.running.lock_or_recover() = Some(Running {
            daemon,
            control,
            compactor,
        });
        Ok(())
    }

    /// Stops the control socket and the compactor (a compaction in progress
    /// stops at its next batch) and lets go of the volume.
    pub fn stop(&self) {
        let Some(running) = self.running.lock_or_recover().take() else {
            return;
        };
        running.daemon.stop();
        running.control.stop();
        let _ = running.compactor.join();
    }

    /// The upkeep's status while the services run (see
    /// [`Daemon::upkeep_status`]).
    pub fn upkeep_status(&self) -> Option<Value> {
        self.daemon()?.upkeep_status()
    }

    fn daemon(&self) -> Option<Arc<Daemon>> {
        self.running
            .lock_or_recover()
            .as_ref()
            .map(|r| Arc::clone(&r.daemon))
    }

    /// The source's side of a live migration: hands the volume over to the
    /// daemon that asked (it then stops serving), if no VM runs on it here.
    fn hand_over(&self) -> Result<Value, ControlError> {
        if self.stop.is_device_running() {
            return Err(ControlError::new(
                ControlError::BUSY,
                "a VM runs on this daemon's disk: the volume is handed over only once its \
                 device is stopped (QEMU stops it at a migration's switch-over)",
            ));
        }
        let started = Instant::now();
        self.stop();
        let services_ms = started.elapsed().as_millis();
        self.served
            .hand_over()
            .map_err(|e| ControlError::new(ControlError::IO, e.to_string()))?;
        tracing::info!(
            services_ms,
            close_ms = started.elapsed().as_millis() - services_ms,
            "handed the volume over to another daemon; stopping"
        );
        self.stop.stop();
        Ok(json!({ "handed_over": true }))
    }
}

/// The control socket of a serving daemon: the hand-over here, everything
/// else by the [`Daemon`].
struct ServeControl {
    services: std::sync::Weak<Services>,
}

impl ControlHandler for ServeControl {
    fn handle(
        &self,
        request: ControlRequest,
        progress: &mut dyn FnMut(Value),
    ) -> Result<Value, ControlError> {
        let gone = || ControlError::new(ControlError::BUSY, "the daemon is stopping");
        let services = self.services.upgrade().ok_or_else(gone)?;
        if request == ControlRequest::HandOver {
            return services.hand_over();
        }
        let daemon = services.daemon().ok_or_else(gone)?;
        drop(services);
        daemon.handle(request, progress)
    }
}

/// The daemon holding the volume, reached through its control socket.
pub struct ControlSocketHolder {
    /// The volume's control socket.
    pub socket: PathBuf,
}

impl Holder for ControlSocketHolder {
    fn release(&self) -> Result<(), String> {
        match call(&self.socket, &ControlRequest::HandOver, &mut |_| {}) {
            Ok(_) => Ok(()),
            Err(CallError::Refused(error)) => Err(error.to_string()),
            Err(error) => Err(error.to_string()),
        }
    }
}
