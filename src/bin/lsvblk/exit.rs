//! Errors at the binary's edge, each with the exit code it ends in.

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

/// An error and the exit code it maps to.
pub struct Failure {
    pub code: i32,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn new(code: i32, error: impl Into<anyhow::Error>) -> Self {
        Self {
            code,
            error: error.into(),
        }
    }
}

impl From<lsvblk::volume::VolumeError> for Failure {
    fn from(error: lsvblk::volume::VolumeError) -> Self {
        use lsvblk::volume::VolumeError as E;
        let code = match &error {
            E::Busy { .. } => BUSY,
            E::NotAVolume { .. }
            | E::UnsupportedFormat { .. }
            | E::Store(_)
            | E::UnknownKey { .. } => DATA,
            E::BadOption(_)
            | E::AlreadyExists { .. }
            | E::OutOfRange { .. }
            | E::Misaligned { .. } => USAGE,
            E::WrongKey { .. } | E::NullCipherUnavailable | E::ReadOnly | E::Ephemeral { .. } => {
                DATA
            }
            E::Io { .. } | E::Key(_) => IO,
            _ => SOFTWARE,
        };
        Failure::new(code, error)
    }
}

/// The exit code of a failed call to lsvkms: down, busy or silent is 69,
/// a refusal (bad token, not on the ACL, key disabled or destroyed, a blob
/// it does not take) 77, a broken answer 70.
pub fn of_kms(error: &lsvblk::kms::client::ClientError) -> i32 {
    use lsvblk::kms::client::ClientError as E;
    match error {
        E::Unavailable { .. } | E::Timeout { .. } | E::Disconnected(_) => KMS_UNAVAILABLE,
        E::Api { status: 503, .. } => KMS_UNAVAILABLE,
        E::Api {
            status: 400..=499, ..
        } => DENIED,
        E::Api { .. } | E::Protocol(_) => SOFTWARE,
    }
}

/// Result type of every subcommand.
pub type Outcome = Result<(), Failure>;
