//! `lsvblk flatten`: copy what a volume still reads from its base image
//! into the volume, encrypted, while it is served.

use std::path::PathBuf;

use lsvblk::volume::VolumeError;

use crate::admin::{self, print};
use crate::control::ControlRequest;
use crate::exit::Outcome;
use crate::progress::BytesProgress;

/// Arguments of `lsvblk flatten`.
#[derive(clap::Args)]
pub struct FlattenArgs {
    /// Volume directory (served: the daemon copies, with the volume's key).
    volume: PathBuf,
    /// Print one JSON object at the end (no progress bar).
    #[arg(long)]
    json: bool,
}

/// Flattens the volume through the daemon serving it.
pub fn run(args: FlattenArgs) -> Outcome {
    let mut bar = BytesProgress::new("flattening", args.json);
    let out = admin::run_anywhere(
        &args.volume,
        ControlRequest::Flatten,
        false,
        &mut |value| bar.update(value),
        // Copying encrypts with the volume's key, which only its daemon has.
        |_, _| {
            Err(VolumeError::BadOption(
                "flatten works on a served volume: start `lsvblk serve` on it first".into(),
            ))
        },
    )?;
    bar.finish("flattened");
    print(&out, args.json);
    Ok(())
}
