//! The ephemeral volume `lsvblk serve --ephemeral` makes: key made here,
//! never stored; the directory deleted when the daemon ends.

use std::path::PathBuf;

use lsvblk::volume::ephemeral::{remove_dir, remove_leftover};
use lsvblk::volume::{Volume, VolumeOptions};

use super::ServeArgs;
use crate::exit::Failure;

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
    /// A new ephemeral volume of `--size` in `--volume` (deleting what a
    /// killed ephemeral daemon left there), and what deletes it.
    pub(super) fn create_ephemeral(
        &self,
        options: &VolumeOptions,
    ) -> Result<(Volume, EphemeralDir), Failure> {
        let size = self.size.ok_or_else(|| {
            Failure::Usage(anyhow::anyhow!("--ephemeral needs --size (e.g. 20G)"))
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
        Ok((volume, guard))
    }
}
