//! Reaching a volume from the command line: through the daemon serving it
//! (its control socket) or opened here, and how a refusal maps to a
//! control error and an exit code. The operations themselves are the
//! library's (`lsvblk::service`).

use std::path::Path;
use std::sync::Arc;

use lsvblk::crypto::CryptoPool;
use lsvblk::service::ServiceError;
use lsvblk::store::StoreError;
use lsvblk::volume::{Volume, VolumeError, VolumeOptions};
use serde_json::Value;

use crate::control::{self, ControlError, ControlRequest};
use crate::exit::Failure;

/// The control error for a volume error (its stable kind and message).
pub fn control_error(error: VolumeError) -> ControlError {
    let kind = match &error {
        VolumeError::NoSuchSnapshot { .. } => ControlError::NOT_FOUND,
        VolumeError::SnapshotExists { .. } => ControlError::ALREADY_EXISTS,
        VolumeError::SnapshotInUse { .. }
        | VolumeError::SnapshotNotReady { .. }
        | VolumeError::Busy { .. }
        | VolumeError::Store(StoreError::Interrupted) => ControlError::BUSY,
        VolumeError::BadOption(_) | VolumeError::ReadOnly => ControlError::BAD_REQUEST,
        VolumeError::Io { .. } | VolumeError::Store(StoreError::Io { .. }) => ControlError::IO,
        _ => ControlError::INTERNAL,
    };
    ControlError::new(kind, error.to_string())
}

/// The control error for a failed key-care operation.
pub fn service_error(error: ServiceError) -> ControlError {
    let message = error.to_string();
    let kind = match error {
        ServiceError::Volume(error) => return control_error(error),
        ServiceError::RotationRunning => ControlError::BUSY,
        ServiceError::NoKeyService | ServiceError::NoAcl => ControlError::BAD_REQUEST,
        ServiceError::KeyService { .. }
        | ServiceError::RewrapRefused(_)
        | ServiceError::Remote(_) => ControlError::IO,
        ServiceError::NoCurrentKeyEntry
        | ServiceError::NoWrappedBlob { .. }
        | ServiceError::BlobNotBase64 { .. }
        | ServiceError::WrongKey { .. }
        | ServiceError::CryptoPool(_)
        | ServiceError::VolumeStillInUse => ControlError::INTERNAL,
    };
    ControlError::new(kind, message)
}

/// Where to run an operation: the daemon serving the volume, or here.
pub enum Reach {
    /// A daemon holds the volume; talk to its control socket.
    Served,
    /// Nobody holds it; opened here without a key.
    Local(Box<Volume>),
}

/// Opens the volume here if nobody serves it, else says to ask the daemon.
pub fn reach(dir: &Path, read_only: bool) -> Result<Reach, Failure> {
    let pool = CryptoPool::new(1, lsvblk::limits::CRYPTO_CHUNK_BYTES_DEFAULT)
        .map_err(Failure::internal)?;
    let options = VolumeOptions {
        read_only,
        pool: Some(Arc::new(pool)),
        ..VolumeOptions::default()
    };
    match Volume::open_for_maintenance(dir, &options) {
        Ok(volume) => Ok(Reach::Local(Box::new(volume))),
        Err(VolumeError::Busy { .. }) => Ok(Reach::Served),
        Err(error) => Err(error.into()),
    }
}

/// Runs `request` on the daemon serving `dir`, or `local` on the volume
/// opened here; progress values go to `progress` either way.
pub fn run_anywhere(
    dir: &Path,
    request: ControlRequest,
    read_only: bool,
    progress: &mut dyn FnMut(&Value),
    local: impl FnOnce(&Volume, &mut dyn FnMut(Value)) -> Result<Value, VolumeError>,
) -> Result<Value, Failure> {
    match reach(dir, read_only)? {
        Reach::Served => control::call(&control::control_socket_path(dir), &request, progress)
            .map_err(Failure::from),
        Reach::Local(volume) => {
            let result = local(&volume, &mut |value| progress(&value));
            let closed = volume.close();
            let value = result?;
            closed?;
            Ok(value)
        }
    }
}

/// As [`run_anywhere`], for an operation that reports no progress.
pub fn run_quietly(
    dir: &Path,
    request: ControlRequest,
    read_only: bool,
    local: impl FnOnce(&Volume) -> Result<Value, VolumeError>,
) -> Result<Value, Failure> {
    run_anywhere(dir, request, read_only, &mut |_| {}, |volume, _| {
        local(volume)
    })
}

/// Prints `value` as JSON, or as `key: value` lines.
pub fn print(value: &Value, as_json: bool) {
    if as_json {
        println!("{value}");
        return;
    }
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match value {
                    Value::String(text) => println!("{key:<16} {text}"),
                    other => println!("{key:<16} {other}"),
                }
            }
        }
        other => println!("{other}"),
    }
}
