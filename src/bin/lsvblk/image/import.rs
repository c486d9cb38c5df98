//! `lsvblk import --volume V IMAGE`: a raw image (a file, a block device,
//! or `-` for stdin) becomes the first bytes of the volume, on a volume no
//! daemon serves. Holes of a sparse file are not read; all-zero blocks are
//! not written (on a volume that holds data, they are zeroed with
//! write-zeroes records, which carry no payload).

use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::PathBuf;
use std::time::Instant;

use lsvblk::ops::sparse::{data_ranges, zero_and_data_runs};
use lsvblk::volume::{Superblock, Volume, VolumeError, VolumeLock, VolumeOptions};

use super::{CHUNK_BYTES, KeyArgs, Tally, is_stdio};
use crate::admin::print;
use crate::exit::{Failure, Outcome};
use crate::progress::Progress;

/// Arguments of `lsvblk import`.
#[derive(clap::Args)]
pub struct ImportArgs {
    /// Volume directory (not served: stop its daemon first).
    #[arg(long)]
    volume: PathBuf,
    /// Raw image: a file (sparse files are read by their data only), a block
    /// device, or `-` for stdin (e.g. from `qemu-img dd` or `zstdcat`).
    image: PathBuf,
    #[command(flatten)]
    keys: KeyArgs,
    /// Print one JSON object (and no progress bar).
    #[arg(long)]
    json: bool,
}

/// Writes the image into the volume, flushes and closes it.
pub fn import(args: ImportArgs) -> Outcome {
    let started = Instant::now();
    let superblock = Superblock::load(&args.volume)?;
    let lock = VolumeLock::acquire(&args.volume, false).map_err(|e| match e {
        VolumeError::Busy { .. } => Failure::Busy(anyhow::anyhow!(
            "{} is served by a daemon: import works on a volume nobody serves",
            args.volume.display()
        )),
        other => other.into(),
    })?;
    let keys = args.keys.unwrap(&superblock, &superblock.keys)?;
    let volume = Volume::open_locked(&args.volume, lock, keys, &VolumeOptions::default())?;
    // A fresh volume reads zeros everywhere: zero blocks need no record at
    // all. One that holds data (or a clone, whose holes show its parent)
    // needs them zeroed.
    let zero_fill = superblock.parent.is_some() || volume.space()?.live_bytes > 0;
    let mut writer = Writer {
        volume: &volume,
        zero_fill,
        tally: Tally::default(),
        progress: (!args.json).then(|| Progress::new("import", volume.size_bytes())),
    };
    if is_stdio(&args.image) {
        writer.copy_stream(&mut std::io::stdin().lock())?;
    } else {
        writer.copy_file(&args.image)?;
    }
    let tally = writer.finish();
    volume.flush()?;
    volume.close()?;
    print(
        &tally.summary("import", &args.volume, &args.image, started),
        args.json,
    );
    Ok(())
}

/// Moves image bytes into the volume, counting them.
struct Writer<'a> {
    volume: &'a Volume,
    zero_fill: bool,
    tally: Tally,
    progress: Option<Progress>,
}

impl Writer<'_> {
    /// A file or block device: its data ranges only (a block device is all
    /// data), read chunk by chunk.
    fn copy_file(&mut self, path: &std::path::Path) -> Result<(), Failure> {
        let file = File::open(path)
            .map_err(|e| Failure::usage(format!("cannot open {}: {e}", path.display())))?;
        let io = |e: std::io::Error| Failure::io(format!("{}: {e}", path.display()));
        let meta = file.metadata().map_err(io)?;
        let (len, ranges) = if meta.file_type().is_block_device() {
            let len = std::io::Seek::seek(&mut &file, std::io::SeekFrom::End(0)).map_err(io)?;
            (len, std::iter::once(0..len).collect())
        } else {
            (meta.len(), data_ranges(&file, meta.len()).map_err(io)?)
        };
        self.check_length(len)?;
        self.tally.image_bytes = len;
        let block = u64::from(self.volume.block_bytes());
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut done = 0u64;
        for range in ranges {
            // Whole blocks, so that no write needs a read-modify-write.
            // (The previous range's last block may already cover its start.)
            let start = (range.start / block * block).max(done);
            let end = range.end.div_ceil(block).saturating_mul(block).min(len);
            if start >= end {
                continue;
            }
            self.hole(done..start)?;
            let mut at = start;
            while at < end {
                let n = (end - at).min(CHUNK_BYTES as u64) as usize;
                file.read_exact_at(&mut buf[..n], at).map_err(io)?;
                self.chunk(at, &buf[..n])?;
                at += n as u64;
            }
            done = end;
        }
        self.hole(done..len)
    }

    /// A stream (stdin): every byte is read; zero blocks are still skipped.
    fn copy_stream(&mut self, input: &mut dyn Read) -> Result<(), Failure> {
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut at = 0u64;
        loop {
            let n =
                fill(input, &mut buf).map_err(|e| Failure::io(format!("reading stdin: {e}")))?;
            if n == 0 {
                break;
            }
            self.check_length(at + n as u64)?;
            self.chunk(at, &buf[..n])?;
            at += n as u64;
        }
        self.tally.image_bytes = at;
        Ok(())
    }

    /// An image longer than the volume, or not whole sectors, is refused
    /// (for stdin: as soon as it shows).
    fn check_length(&self, len: u64) -> Result<(), Failure> {
        let size = self.volume.size_bytes();
        if len > size {
            return Err(Failure::usage(format!(
                "the image ({len} bytes or more) is larger than the volume ({size} bytes)"
            )));
        }
        if !len.is_multiple_of(u64::from(lsvblk::limits::SECTOR_BYTES)) {
            return Err(Failure::usage(format!(
                "the image is {len} bytes: not a whole number of 512-byte sectors"
            )));
        }
        Ok(())
    }

    /// Bytes at `at` of the image: data blocks written, zero blocks not.
    fn chunk(&mut self, at: u64, buf: &[u8]) -> Result<(), Failure> {
        for (zero, run) in zero_and_data_runs(buf, self.volume.block_bytes() as usize) {
            let offset = at + run.start as u64;
            let len = run.len() as u64;
            if zero {
                self.tally.zero_bytes += len;
                if self.zero_fill {
                    self.volume.write_zeroes(offset, len, true)?;
                }
            } else {
                self.volume.write(offset, &buf[run])?;
                self.tally.data_bytes += len;
            }
        }
        self.advance(at + buf.len() as u64);
        Ok(())
    }

    /// A hole of the image: nothing to read; zeroed only if needed.
    fn hole(&mut self, range: Range<u64>) -> Result<(), Failure> {
        if range.is_empty() {
            return Ok(());
        }
        self.tally.hole_bytes += range.end - range.start;
        if self.zero_fill {
            self.volume
                .write_zeroes(range.start, range.end - range.start, true)?;
        }
        self.advance(range.end);
        Ok(())
    }

    fn advance(&mut self, done: u64) {
        if let Some(progress) = &mut self.progress {
            progress.set(done);
        }
    }

    fn finish(self) -> Tally {
        if let Some(progress) = self.progress {
            progress.finish("done");
        }
        self.tally
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn fill(input: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
