//! A plain, read-only base image under a volume (`lsvblk create --base`).
//!
//! A volume over a base image stores only what was written since its
//! creation, encrypted, in its own log; every block its log does not hold
//! (a hole of the extent index) reads from the base, as is. The index is
//! the per-block "in the log" map: a written block has a data extent, a
//! discarded or zeroed one a zero extent (which never falls through to the
//! base), and both are checkpointed with the index.
//!
//! The base is opened read-only and never written, so one image serves
//! many volumes. What the superblock records of it at create ([`BaseRef`]:
//! size, modification time, a hash of sampled blocks) must still hold at
//! every open: a base that changed would change what the volume's unwritten
//! blocks read, so such a volume is refused instead
//! ([`VolumeError::BaseChanged`]).

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::VolumeError;

/// Bytes of one sample of the base's content hash.
const SAMPLE_BYTES: u64 = 4096;
/// Samples hashed, spread evenly over the image (1 MiB read in all).
const SAMPLES: u64 = 256;

/// The base image as the superblock records it at create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRef {
    /// The image file (absolute).
    pub path: PathBuf,
    /// Its size, bytes.
    pub size_bytes: u64,
    /// Its modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// SHA-256 (hex) of [`SAMPLES`] blocks of [`SAMPLE_BYTES`] spread over
    /// the image, and of its last block.
    pub sample_sha256: String,
}

/// An open base image: read-only, checked against its [`BaseRef`].
#[derive(Debug)]
pub struct BaseImage {
    file: File,
    path: PathBuf,
    size_bytes: u64,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl BaseRef {
    /// The size of a volume over the image at `path` unless told
    /// otherwise: the image's, rounded up to a whole `block_bytes` block.
    pub fn volume_bytes(path: &Path, block_bytes: u32) -> Result<u64, VolumeError> {
        let image_bytes = std::fs::metadata(path).map_err(io_error(path))?.len();
        Ok(image_bytes.next_multiple_of(u64::from(block_bytes.max(1))))
    }

    /// Records the image at `path` for a volume of `volume_bytes`: the
    /// image must be a regular file no larger than the volume.
    pub fn record(path: &Path, volume_bytes: u64) -> Result<Self, VolumeError> {
        let path = path.canonicalize().map_err(io_error(path))?;
        let file = File::open(&path).map_err(io_error(&path))?;
        let meta = file.metadata().map_err(io_error(&path))?;
        if !meta.is_file() {
            return Err(VolumeError::BadOption(format!(
                "base image {}: not a regular file",
                path.display()
            )));
        }
        if meta.len() > volume_bytes {
            return Err(VolumeError::BadOption(format!(
                "base image {} is {} B, larger than the {volume_bytes} B volume",
                path.display(),
                meta.len()
            )));
        }
        let sample_sha256 = sample_hash(&file, meta.len()).map_err(io_error(&path))?;
        Ok(Self {
            size_bytes: meta.len(),
            mtime_ns: mtime_ns(&meta),
            sample_sha256,
            path,
        })
    }

    /// Opens the image read-only, refusing one whose size, modification
    /// time or sampled content differs from what was recorded.
    pub fn open(&self) -> Result<BaseImage, VolumeError> {
        let changed = |reason: String| VolumeError::BaseChanged {
            path: self.path.clone(),
            reason,
        };
        let file = File::open(&self.path).map_err(|e| changed(e.to_string()))?;
        let meta = file.metadata().map_err(io_error(&self.path))?;
        if meta.len() != self.size_bytes {
            return Err(changed(format!(
                "its size is {} B, {} B when the volume was created",
                meta.len(),
                self.size_bytes
            )));
        }
        if mtime_ns(&meta) != self.mtime_ns {
            return Err(changed(
                "it was modified after the volume was created".into(),
            ));
        }
        let hash = sample_hash(&file, meta.len()).map_err(io_error(&self.path))?;
        if hash != self.sample_sha256 {
            return Err(changed(
                "its content differs from when the volume was created".into(),
            ));
        }
        Ok(BaseImage {
            file,
            path: self.path.clone(),
            size_bytes: self.size_bytes,
        })
    }
}

impl BaseImage {
    /// The image file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fills `buf` with the image's bytes at `offset`; bytes past its end
    /// (a volume larger than its base) read as zeros.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let inside = self.size_bytes.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (from_file, past_end) = buf.split_at_mut(inside);
        self.file.read_exact_at(from_file, offset)?;
        past_end.fill(0);
        Ok(())
    }
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

/// The content hash of [`BaseRef::sample_sha256`] (the size goes in too).
fn sample_hash(file: &File, size_bytes: u64) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(size_bytes.to_le_bytes());
    let mut sample = vec![0u8; SAMPLE_BYTES as usize];
    let last = size_bytes.saturating_sub(SAMPLE_BYTES);
    let offsets = (0..SAMPLES).map(|i| (size_bytes / SAMPLES * i).min(last));
    for offset in offsets.chain([last]) {
        let bytes = (size_bytes - offset).min(SAMPLE_BYTES) as usize;
        file.read_exact_at(&mut sample[..bytes], offset)?;
        hasher.update(&sample[..bytes]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path, bytes: &[u8]) -> PathBuf {
        let path = dir.join("base.img");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn reads_the_image_and_zeros_past_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let recorded = BaseRef::record(&image(dir.path(), &data), 16_384).unwrap();
        let base = recorded.open().unwrap();
        let mut buf = vec![0xAA; 4096];
        base.read_at(8192, &mut buf).unwrap();
        assert_eq!(&buf[..10_000 - 8192], &data[8192..]);
        assert!(buf[10_000 - 8192..].iter().all(|b| *b == 0));
        base.read_at(12_288, &mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == 0));
    }

    #[test]
    fn a_changed_or_oversized_base_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), &vec![7u8; 1 << 20]);
        assert!(matches!(
            BaseRef::record(&path, 4096),
            Err(VolumeError::BadOption(_))
        ));
        let recorded = BaseRef::record(&path, 1 << 20).unwrap();
        // Same size, same mtime, one sampled byte changed.
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let mtime = file.metadata().unwrap().modified().unwrap();
        file.write_all_at(&[8], 0).unwrap();
        file.set_modified(mtime).unwrap();
        let refused = recorded.open().unwrap_err();
        assert!(refused.to_string().contains("content differs"), "{refused}");
        // A touched (but equal) image is refused by its mtime.
        file.write_all_at(&[7], 0).unwrap();
        assert!(
            recorded
                .open()
                .unwrap_err()
                .to_string()
                .contains("modified")
        );
        file.set_modified(mtime).unwrap();
        recorded.open().unwrap();
        file.set_len(1 << 19).unwrap();
        assert!(recorded.open().unwrap_err().to_string().contains("size"));
    }
}
