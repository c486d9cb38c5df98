//! What `lsvblk serve` does besides serving I/O: answer its control socket
//! and keep the volume up (keys, background compaction). The upkeep is the
//! library's [`ServedVolume`]; this file translates control requests into
//! its calls and its errors into control errors.

use std::sync::Arc;
use std::time::Duration;

use lsvblk::kms::client::KmsClient;
use lsvblk::service::ServedVolume;
use lsvblk::volume::{Volume, VolumeError};
use serde_json::Value;

use crate::admin::{control_error, service_error};
use crate::control::{ControlError, ControlHandler, ControlRequest};

/// The daemon's side of the control socket, and its background upkeep.
pub struct Daemon {
    served: ServedVolume,
    /// The uploader of a volume kept in an object store (`status` shows it).
    uploader: std::sync::OnceLock<Arc<lsvblk::remote::Uploader>>,
}

impl Daemon {
    /// A daemon for `volume`; `auto_rate_mib` 0 turns background compaction
    /// off; `kms` is where new keys come from (rotation); `poll` is how
    /// often the background upkeep looks at keys and space.
    pub fn new(
        volume: Arc<Volume>,
        auto_rate_mib: u64,
        kms: Option<KmsClient>,
        poll: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            served: ServedVolume::new(volume, auto_rate_mib, kms).polling_every(poll),
            uploader: std::sync::OnceLock::new(),
        })
    }

    /// Shows `uploader`'s backlog in `status`.
    pub fn set_uploader(&self, uploader: Arc<lsvblk::remote::Uploader>) {
        let _ = self.uploader.set(uploader);
    }

    fn is_ephemeral(&self) -> bool {
        self.served.volume().superblock().ephemeral_owner.is_some()
    }

    /// Asks the background upkeep (and any compaction in progress) to stop.
    pub fn stop(&self) {
        self.served.stop();
    }

    /// Pauses the background upkeep while `holds` returns true (see
    /// [`ServedVolume::pause_while`]); false if a compaction still runs.
    pub fn pause_upkeep(&self, holds: lsvblk::service::PauseWhile) -> bool {
        self.served.pause_while(holds)
    }

    /// The upkeep's status (what `lsvblk status` shows of it), for the
    /// metrics; `None` if it cannot be read now.
    pub fn upkeep_status(&self) -> Option<Value> {
        self.status().ok()
    }

    /// `served`'s status, with the uploader's for a volume kept in an
    /// object store.
    fn status(&self) -> Result<Value, VolumeError> {
        let mut status = self.served.status()?;
        if let (Some(uploader), Some(fields)) = (self.uploader.get(), status.as_object_mut()) {
            fields.insert("upload".to_string(), serde_json::json!(uploader.status()));
        }
        Ok(status)
    }

    /// Runs the background upkeep until [`Daemon::stop`] (see
    /// [`ServedVolume::background`]).
    pub fn background(self: Arc<Self>) {
        self.served.background();
    }
}

impl ControlHandler for Daemon {
    fn handle(
        &self,
        request: ControlRequest,
        progress: &mut dyn FnMut(Value),
    ) -> Result<Value, ControlError> {
        let served = &self.served;
        match request {
            ControlRequest::SnapshotCreate { .. } if self.is_ephemeral() => Err(ControlError::new(
                ControlError::BAD_REQUEST,
                "snapshots of an ephemeral volume are refused: its key lives only in this daemon and dies with it, so a snapshot could never be read",
            )),
            ControlRequest::SnapshotCreate { name } => {
                served.snapshot_create(&name).map_err(control_error)
            }
            ControlRequest::SnapshotDelete { name } => {
                served.snapshot_delete(&name).map_err(control_error)
            }
            ControlRequest::Rotate {
                compromised,
                rate_mib_s,
                include_snapshots,
            } => {
                let compromised = compromised
                    .map(|text| {
                        text.parse::<lsvblk::crypto::KeyId>().map_err(|e| {
                            ControlError::new(ControlError::BAD_REQUEST, format!("key id: {e}"))
                        })
                    })
                    .transpose()?;
                served
                    .rotate(compromised, rate_mib_s, include_snapshots, progress)
                    .map_err(service_error)
            }
            ControlRequest::Rewrap => served.rewrap().map_err(service_error),
            ControlRequest::SetPolicy { policy } => {
                served.set_policy(&policy).map_err(control_error)
            }
            ControlRequest::SnapshotList => crate::snapshot::snapshot_list(served.volume().dir())
                .map_err(|f| ControlError::new(ControlError::IO, format!("{f}"))),
            ControlRequest::Compact {
                rate_mib_s,
                live_ratio_max,
            } => served
                .compact(rate_mib_s, live_ratio_max, progress)
                .map_err(control_error),
            ControlRequest::Flatten => served
                .volume()
                .flatten(&mut |done| progress(serde_json::json!(done)))
                .map(|report| serde_json::json!(report))
                .map_err(control_error),
            ControlRequest::Scrub => served
                .volume()
                .scrub(&mut |done, total| progress(crate::scrub::scrub_progress(done, total)))
                .map(|report| crate::scrub::report_json(&report))
                .map_err(control_error),
            ControlRequest::Status => self.status().map_err(control_error),
            // The serving loop hands the volume over (`services`), not this.
            ControlRequest::HandOver => Err(ControlError::new(
                ControlError::BAD_REQUEST,
                "this daemon cannot hand its volume over",
            )),
        }
    }
}
