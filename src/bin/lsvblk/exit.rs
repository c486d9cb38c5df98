//! How `lsvblk` fails: every failure is a typed [`Failure`], and
//! [`exit_code`] is the one place that turns a failure into an exit code
//! (sysexits(3)). The table under "Exit codes" in README.md is this
//! function; change both together.

use lsvblk::kms::client::ClientError;
use lsvblk::service::ServiceError;
use lsvblk::store::DamageReport;
use lsvblk::store::StoreError;
use lsvblk::volume::VolumeError;

use crate::control::{CallError, ControlError};

/// Bad arguments (sysexits EX_USAGE).
pub const USAGE: i32 = 64;
/// The volume's data is damaged or not a volume (EX_DATAERR).
pub const DATA: i32 = 65;
/// The key service is down or unreachable (EX_UNAVAILABLE).
pub const KMS_UNAVAILABLE: i32 = 69;
/// Anything unexpected (EX_SOFTWARE).
pub const SOFTWARE: i32 = 70;
/// An I/O error (EX_IOERR).
pub const IO: i32 = 74;
/// The volume is busy; try again later (EX_TEMPFAIL).
pub const BUSY: i32 = 75;
/// The key service refused: bad token, not on the ACL (EX_NOPERM).
pub const DENIED: i32 = 77;

/// Why a command failed, by kind; [`exit_code`] maps each to its code.
#[derive(Debug)]
pub enum Failure {
    /// The command line or a file it names is wrong (the caller fixes it).
    Usage(anyhow::Error),
    /// A check of the volume's files found damage.
    Damaged(DamageReport),
    /// A scrub found blocks that fail their checks: `runs` runs of them.
    Unreadable {
        /// Runs of damaged blocks.
        runs: usize,
        /// Why the first fails.
        first: String,
    },
    /// A volume operation failed.
    Volume(VolumeError),
    /// A key-care or maintenance operation run here failed.
    Service(ServiceError),
    /// A call to the daemon serving the volume failed.
    Daemon(CallError),
    /// An operation run here was refused (the daemon's kinds of refusal).
    Refused(ControlError),
    /// I/O outside the volume's log failed (sockets, directories).
    Io(anyhow::Error),
    /// Something else holds what the command needs; try again later.
    Busy(anyhow::Error),
    /// A bug or an unexpected state.
    Internal(anyhow::Error),
    /// The object store of a volume kept in one (`--store`).
    Remote(lsvblk::remote::RemoteError),
}

/// The exit code of `failure`: the README's exit-code table.
pub fn exit_code(failure: &Failure) -> i32 {
    match failure {
        Failure::Usage(_) => USAGE,
        Failure::Damaged(_) | Failure::Unreadable { .. } => DATA,
        Failure::Volume(error) => of_volume(error),
        Failure::Service(error) => of_service(error),
        Failure::Daemon(error) => of_call(error),
        Failure::Refused(error) => of_refusal(error),
        Failure::Io(_) => IO,
        Failure::Busy(_) => BUSY,
        Failure::Internal(_) => SOFTWARE,
        Failure::Remote(error) => crate::store::remote_exit_code(error),
    }
}

/// A volume error's code: a volume whose files are damaged, missing or
/// not this volume's (a `volume_id` that differs from the one its segments
/// carry) is 65; another process holding it 75; a bad request 64.
fn of_volume(error: &VolumeError) -> i32 {
    use VolumeError as E;
    match error {
        E::Busy { .. } | E::Store(StoreError::Interrupted) => BUSY,
        // A change to an authenticated volume asked without its key.
        E::Store(StoreError::NoSigningKey) => USAGE,
        E::NotAVolume { .. }
        | E::UnsupportedFormat { .. }
        | E::Store(_)
        | E::UnknownKey { .. }
        | E::WrongKey { .. }
        | E::NullCipherUnavailable
        | E::ReadOnly
        | E::Ephemeral { .. }
        | E::BaseChanged { .. } => DATA,
        E::BadOption(_)
        | E::AlreadyExists { .. }
        | E::OutOfRange { .. }
        | E::Misaligned { .. }
        | E::NoSuchSnapshot { .. }
        | E::SnapshotExists { .. } => USAGE,
        E::SnapshotInUse { .. } | E::SnapshotNotReady { .. } => BUSY,
        E::Io { .. } | E::Key(_) => IO,
        _ => SOFTWARE,
    }
}

/// A key-care operation's code: its volume's or lsvkms's, else by kind.
fn of_service(error: &ServiceError) -> i32 {
    match error {
        ServiceError::Volume(error) => of_volume(error),
        ServiceError::Remote(error) => crate::store::remote_exit_code(error),
        ServiceError::KeyService { source, .. } => of_kms(source),
        ServiceError::RewrapRefused(_) => DENIED,
        ServiceError::RotationRunning => BUSY,
        ServiceError::CryptoPool(_) | ServiceError::VolumeStillInUse => SOFTWARE,
        ServiceError::NoKeyService | ServiceError::NoAcl => USAGE,
        ServiceError::NoCurrentKeyEntry
        | ServiceError::NoWrappedBlob { .. }
        | ServiceError::BlobNotBase64 { .. }
        | ServiceError::WrongKey { .. } => DATA,
    }
}

/// A failed call to lsvkms: down, busy or silent is 69, a refusal (bad
/// token, not on the ACL, key disabled or destroyed, a blob it does not
/// take) 77, a broken answer 70.
fn of_kms(error: &ClientError) -> i32 {
    use ClientError as E;
    match error {
        E::Unavailable { .. } | E::Timeout { .. } | E::Disconnected(_) => KMS_UNAVAILABLE,
        E::Api { status: 503, .. } => KMS_UNAVAILABLE,
        E::Api {
            status: 400..=499, ..
        } => DENIED,
        E::Api { .. } | E::Protocol(_) => SOFTWARE,
    }
}

/// A failed call to the daemon's control socket.
fn of_call(error: &CallError) -> i32 {
    match error {
        CallError::Refused(refusal) => of_refusal(refusal),
        CallError::NotServed { .. } => BUSY,
        CallError::Transport { .. } | CallError::Protocol { .. } => IO,
    }
}

/// A refusal, by its stable kind (the same whether the daemon or this
/// process refused).
fn of_refusal(error: &ControlError) -> i32 {
    match error.kind.as_str() {
        ControlError::NOT_FOUND | ControlError::ALREADY_EXISTS | ControlError::BAD_REQUEST => USAGE,
        ControlError::BUSY => BUSY,
        ControlError::DENIED => DENIED,
        ControlError::IO => IO,
        _ => SOFTWARE,
    }
}

impl Failure {
    /// A usage failure with `message`.
    pub fn usage(message: impl std::fmt::Display) -> Self {
        Failure::Usage(anyhow::anyhow!("{message}"))
    }

    /// An internal failure from any error.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        Failure::Internal(anyhow::anyhow!("{error}"))
    }

    /// An I/O failure from any error.
    pub fn io(error: impl std::fmt::Display) -> Self {
        Failure::Io(anyhow::anyhow!("{error}"))
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(e) | Failure::Io(e) | Failure::Busy(e) | Failure::Internal(e) => {
                write!(f, "{e:#}")
            }
            Failure::Damaged(report) => write!(f, "{report}"),
            Failure::Unreadable { runs, first } => {
                write!(f, "{runs} run(s) of damaged blocks; first: {first}")
            }
            Failure::Volume(e) => write!(f, "{e}"),
            Failure::Service(e) => write!(f, "{e}"),
            Failure::Daemon(e) => write!(f, "the daemon serving the volume: {e}"),
            Failure::Refused(e) => write!(f, "{e}"),
            Failure::Remote(e) => write!(f, "{e}"),
        }
    }
}

impl From<VolumeError> for Failure {
    fn from(error: VolumeError) -> Self {
        Failure::Volume(error)
    }
}

impl From<CallError> for Failure {
    fn from(error: CallError) -> Self {
        Failure::Daemon(error)
    }
}

impl From<ControlError> for Failure {
    fn from(error: ControlError) -> Self {
        Failure::Refused(error)
    }
}

/// Result type of every subcommand.
pub type Outcome = Result<(), Failure>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_errors_map_to_the_table() {
        let store = |e| Failure::Volume(VolumeError::Store(e));
        let foreign = store(StoreError::ForeignSegment {
            path: "s".into(),
            volume_id: "00".into(),
        });
        assert_eq!(exit_code(&foreign), DATA);
        let missing = store(StoreError::SegmentMissing { segment_id: 3 });
        assert_eq!(exit_code(&missing), DATA);
        let busy = Failure::Volume(VolumeError::Busy { path: "v".into() });
        assert_eq!(exit_code(&busy), BUSY);
        let bad = Failure::Volume(VolumeError::BadOption("x".into()));
        assert_eq!(exit_code(&bad), USAGE);
        assert_eq!(exit_code(&Failure::usage("x")), USAGE);
        assert_eq!(exit_code(&Failure::internal("x")), SOFTWARE);
        assert_eq!(exit_code(&Failure::io("x")), IO);
    }

    #[test]
    fn kms_errors_map_to_the_table() {
        let kms = |source| {
            Failure::Service(ServiceError::KeyService {
                action: "unwrap".into(),
                source,
            })
        };
        let api = |status| {
            kms(ClientError::Api {
                status,
                code: "c".into(),
                message: "m".into(),
            })
        };
        assert_eq!(exit_code(&api(403)), DENIED);
        assert_eq!(exit_code(&api(401)), DENIED);
        assert_eq!(exit_code(&api(503)), KMS_UNAVAILABLE);
        assert_eq!(exit_code(&api(500)), SOFTWARE);
        let gone = kms(ClientError::Disconnected("eof".into()));
        assert_eq!(exit_code(&gone), KMS_UNAVAILABLE);
    }
}
