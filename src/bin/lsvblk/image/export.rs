//! `lsvblk export --volume V [--snapshot S] OUT`: the volume (or one of its
//! snapshots) as a raw image. A new file is written sparse: all-zero blocks
//! are left as holes. A served volume is exported through a snapshot the
//! daemon takes for the export and deletes afterwards; a snapshot is read
//! directly, served or not.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use lsvblk::ops::sparse::zero_and_data_runs;
use lsvblk::volume::{Superblock, Volume, VolumeError, VolumeLock, VolumeOptions, load_snapshot};

use super::{CHUNK_BYTES, KeyArgs, Tally, is_stdio};
use crate::admin::print;
use crate::exit::{Failure, Outcome};
use crate::progress::Progress;

/// Arguments of `lsvblk export`.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// Volume directory (served or not).
    #[arg(long)]
    volume: PathBuf,
    /// Export this snapshot of the volume instead of the volume itself. The
    /// token's user must be on the snapshot's ACL.
    #[arg(long, value_name = "NAME")]
    snapshot: Option<String>,
    /// Where to write the raw image: a new file (written sparse), a block
    /// device, or `-` for stdout.
    out: PathBuf,
    /// Replace OUT if it is an existing regular file.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    keys: KeyArgs,
    /// Print one JSON object (and no progress bar).
    #[arg(long)]
    json: bool,
}

/// Writes the volume or snapshot out as a raw image.
pub fn export(args: ExportArgs) -> Outcome {
    let started = Instant::now();
    let superblock = Superblock::load(&args.volume)?;
    let mut sink = Sink::open(&args.out, args.force)?;
    let (volume, temporary) = open_source(&args, &superblock)?;
    let written = write_out(&volume, &mut sink, !args.json);
    drop(volume);
    if let Some(name) = temporary {
        delete_snapshot(&args.volume, &name)?;
    }
    let mut tally = written?;
    tally.image_bytes = superblock.size_bytes;
    sink.finish(superblock.size_bytes)?;
    let mut summary = tally.summary("export", &args.volume, &args.out, started);
    summary["snapshot"] = args.snapshot.clone().into();
    if is_stdio(&args.out) {
        // stdout is the image: the summary goes to stderr.
        eprintln!("{summary}");
    } else {
        print(&summary, args.json);
    }
    Ok(())
}

/// The volume opened read-only here, or a snapshot: the one asked for, or
/// (for a served volume) one taken now, whose name is returned to delete.
fn open_source(
    args: &ExportArgs,
    superblock: &Superblock,
) -> Result<(Volume, Option<String>), Failure> {
    let options = VolumeOptions {
        read_only: true,
        ..VolumeOptions::default()
    };
    if let Some(name) = &args.snapshot {
        return Ok((open_snapshot(args, superblock, name, &options)?, None));
    }
    match VolumeLock::acquire(&args.volume, true) {
        Ok(lock) => {
            let keys = args.keys.unwrap(superblock, &superblock.keys)?;
            Ok((
                Volume::open_locked(&args.volume, lock, keys, &options)?,
                None,
            ))
        }
        Err(VolumeError::Busy { .. }) => {
            // Served: the daemon takes a snapshot (O(1)), which we read
            // while it goes on serving.
            let name = format!("export-{}-{}", std::process::id(), unix_now_s());
            crate::snapshot::take(&args.volume, &name)?;
            match open_snapshot(args, superblock, &name, &options) {
                Ok(volume) => Ok((volume, Some(name))),
                Err(error) => {
                    let _ = delete_snapshot(&args.volume, &name);
                    Err(error)
                }
            }
        }
        Err(error) => Err(error.into()),
    }
}

fn open_snapshot(
    args: &ExportArgs,
    superblock: &Superblock,
    name: &str,
    options: &VolumeOptions,
) -> Result<Volume, Failure> {
    let meta = load_snapshot(&args.volume, name)?;
    let keys = args.keys.unwrap(superblock, &meta.keys)?;
    Ok(Volume::open_snapshot(&args.volume, name, keys, options)?)
}

fn delete_snapshot(volume: &Path, name: &str) -> Result<(), Failure> {
    crate::snapshot::delete(volume, name).map(drop)
}

fn unix_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads the whole volume chunk by chunk into the sink.
fn write_out(volume: &Volume, sink: &mut Sink, show_progress: bool) -> Result<Tally, Failure> {
    let size = volume.size_bytes();
    let block = volume.block_bytes() as usize;
    let mut progress = show_progress.then(|| Progress::new("export", size));
    let mut tally = Tally::default();
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(CHUNK_BYTES as u64) as usize;
        volume.read(at, &mut buf[..n])?;
        for (zero, run) in zero_and_data_runs(&buf[..n], block) {
            let len = run.len() as u64;
            if zero {
                tally.zero_bytes += len;
            } else {
                tally.data_bytes += len;
            }
            sink.put(at + run.start as u64, &buf[run], zero)?;
        }
        at += n as u64;
        if let Some(progress) = &mut progress {
            progress.set(at);
        }
    }
    if let Some(progress) = progress {
        progress.finish("done");
    }
    Ok(tally)
}

/// Where the image goes.
enum Sink {
    /// Every byte, in order.
    Stdout(std::io::StdoutLock<'static>),
    /// A file or device; zero blocks are skipped when `sparse` (a new or
    /// truncated file, which reads zeros there).
    File {
        file: File,
        path: PathBuf,
        sparse: bool,
    },
}

impl Sink {
    fn open(path: &Path, force: bool) -> Result<Self, Failure> {
        if is_stdio(path) {
            return Ok(Sink::Stdout(std::io::stdout().lock()));
        }
        let is_device = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
        let file = if is_device {
            OpenOptions::new().write(true).open(path)
        } else {
            OpenOptions::new()
                .write(true)
                .create(true)
                .create_new(!force)
                .truncate(true)
                .open(path)
        };
        let file = file.map_err(|e| {
            let message = format!("cannot write {}: {e}", path.display());
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Failure::usage(message)
            } else {
                Failure::io(message)
            }
        })?;
        Ok(Sink::File {
            file,
            path: path.to_path_buf(),
            sparse: !is_device,
        })
    }

    fn put(&mut self, offset: u64, bytes: &[u8], zero: bool) -> Result<(), Failure> {
        let result = match self {
            Sink::Stdout(out) => out.write_all(bytes),
            Sink::File { sparse: true, .. } if zero => Ok(()),
            Sink::File { file, .. } => file.write_all_at(bytes, offset),
        };
        result.map_err(|e| self.failure(e))
    }

    /// Gives a sparse file its full length (a trailing hole) and makes the
    /// image durable.
    fn finish(mut self, size: u64) -> Result<(), Failure> {
        let result = match &mut self {
            Sink::Stdout(out) => out.flush(),
            Sink::File { file, sparse, .. } => {
                let sized = if *sparse { file.set_len(size) } else { Ok(()) };
                sized.and_then(|()| file.sync_all())
            }
        };
        result.map_err(|e| self.failure(e))
    }

    fn failure(&self, error: std::io::Error) -> Failure {
        let what = match self {
            Sink::Stdout(_) => "stdout".to_owned(),
            Sink::File { path, .. } => path.display().to_string(),
        };
        Failure::io(format!("writing {what}: {error}"))
    }
}
