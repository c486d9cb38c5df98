//! Opening what `lsvblk serve` serves: the volume (key unwrapped with the
//! user's token or the daemon's lease), one of its snapshots, or a new
//! ephemeral volume (key made here, never stored; the directory deleted
//! when the daemon ends).

use std::path::PathBuf;

use lsvblk::volume::ephemeral::{remove_dir, remove_leftover};
use lsvblk::volume::{Superblock, Volume, VolumeLock, VolumeOptions, load_snapshot};

use super::ServeArgs;
use crate::exit::{Failure, USAGE};
use crate::kms::client;
use crate::lease::{Credential, unwrap_all_with};

/// An opened volume, and for an ephemeral one what deletes it.
pub struct Opened {
    /// The volume.
    pub volume: Volume,
    /// Deletes the ephemeral volume's directory when dropped.
    pub ephemeral: Option<EphemeralDir>,
}

/// An ephemeral volume's directory, deleted when this is dropped (on every
/// way out of `serve` but a kill: then the next `serve --ephemeral` on the
/// directory deletes it).
pub struct EphemeralDir(PathBuf);

impl Drop for EphemeralDir {
    fn drop(&mut self) {
        match remove_dir(&self.0) {
            Ok(()) => tracing::info!(volume = %self.0.display(), "ephemeral volume deleted"),
            Err(error) => tracing::error!(%error, "could not delete the ephemeral volume"),
        }
    }
}

impl ServeArgs {
    /// Opens what these arguments serve.
    pub(super) fn open(&self, options: &VolumeOptions) -> Result<Opened, Failure> {
        if self.ephemeral {
            return self.create_ephemeral(options);
        }
        let kms_path = self.kms.as_ref().ok_or_else(|| {
            Failure::new(USAGE, anyhow::anyhow!("--kms is required (or --ephemeral)"))
        })?;
        let superblock = Superblock::load(&self.volume)?;
        let credential = Credential::from_args(
            self.token_file.as_deref(),
            self.lease.map(|d| d.as_secs()),
            &self.volume,
        )?;
        let kms = client(kms_path).retrying_for(self.kms_timeout);
        let unwrap = |entries| {
            unwrap_all_with(
                &kms,
                &credential,
                &self.volume,
                &superblock.volume_id,
                entries,
            )
        };
        let volume = match &self.snapshot {
            Some(name) => {
                // The snapshot's own key set and ACL decide, not the volume's.
                let meta = load_snapshot(&self.volume, name)?;
                let keys = unwrap(&meta.keys)?;
                Volume::open_snapshot(&self.volume, name, keys, options)?
            }
            None => {
                // Lock first: a second daemon on this volume must not get a key.
                let lock = VolumeLock::acquire(&self.volume, self.read_only)?;
                let keys = unwrap(&superblock.keys)?;
                Volume::open_locked(&self.volume, lock, keys, options)?
            }
        };
        Ok(Opened {
            volume,
            ephemeral: None,
        })
    }

    fn create_ephemeral(&self, options: &VolumeOptions) -> Result<Opened, Failure> {
        let size = self.size.ok_or_else(|| {
            Failure::new(
                USAGE,
                anyhow::anyhow!("--ephemeral needs --size (e.g. 20G)"),
            )
        })?;
        if remove_leftover(&self.volume)? {
            tracing::warn!(volume = %self.volume.display(), "deleted an ephemeral volume a killed daemon left (unreadable: its key died with it)");
        }
        let options = VolumeOptions {
            block_bytes: self.block_size.unwrap_or(options.block_bytes),
            ..options.clone()
        };
        let volume = Volume::create_ephemeral(&self.volume, size, &options)?;
        let guard = EphemeralDir(self.volume.clone());
        tracing::info!(volume = %self.volume.display(), size, key_id = %volume.superblock().current_key_id, "ephemeral volume: key made here, never stored; deleted when the daemon ends");
        Ok(Opened {
            volume,
            ephemeral: Some(guard),
        })
    }
}
