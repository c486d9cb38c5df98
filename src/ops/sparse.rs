//! Sparse files: where a file holds data (`SEEK_DATA`/`SEEK_HOLE`), and
//! which blocks of a buffer are all zeros, so that image import and export
//! neither read holes nor write zeros: a hole stays a hole.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;

/// The byte ranges of `file` (of length `len`) that may hold data, in
/// order; everything else is a hole that reads as zeros. A file system
/// without `SEEK_DATA` support reports the whole file as data.
pub fn data_ranges(file: &File, len: u64) -> io::Result<Vec<Range<u64>>> {
    let mut ranges = Vec::new();
    let mut at = 0u64;
    while at < len {
        let Some(start) = seek(file, at, libc::SEEK_DATA)? else {
            break; // only a hole up to the end
        };
        if start >= len {
            break;
        }
        let end = seek(file, start, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        ranges.push(start..end);
        at = end;
    }
    Ok(ranges)
}

/// The holes of `file` within bytes `range`, in order (clipped to it). A
/// file system without `SEEK_HOLE` support reports none.
pub fn hole_ranges(file: &File, range: Range<u64>) -> io::Result<Vec<Range<u64>>> {
    let mut holes = Vec::new();
    let mut at = range.start;
    while at < range.end {
        let Some(start) = seek(file, at, libc::SEEK_HOLE)? else {
            break; // past the end of the file
        };
        if start >= range.end {
            break;
        }
        let end = seek(file, start, libc::SEEK_DATA)?
            .unwrap_or(range.end)
            .min(range.end);
        holes.push(start..end);
        at = end;
    }
    Ok(holes)
}

/// `lseek(fd, offset, whence)`; `None` for ENXIO (no data, or no hole,
/// past `offset`).
fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let offset = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
    // SAFETY: lseek on a descriptor we own moves only its file offset.
    let at = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if at >= 0 {
        return Ok(Some(at as u64));
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ENXIO) => Ok(None),
        // No SEEK_DATA/SEEK_HOLE here: all of it may be data.
        Some(libc::EINVAL) if whence == libc::SEEK_DATA => Ok(Some(offset as u64)),
        _ => Err(error),
    }
}

/// Runs of `buf` cut at multiples of `block` bytes: each range is either
/// all zeros or has no all-zero block, and consecutive ranges alternate.
/// The last block may be shorter than `block`.
pub fn zero_and_data_runs(buf: &[u8], block: usize) -> Vec<(bool, Range<usize>)> {
    assert!(block > 0, "block size must be positive");
    let mut runs: Vec<(bool, Range<usize>)> = Vec::new();
    for (index, chunk) in buf.chunks(block).enumerate() {
        let start = index * block;
        let zero = is_zero(chunk);
        match runs.last_mut() {
            Some((was_zero, range)) if *was_zero == zero => range.end = start + chunk.len(),
            _ => runs.push((zero, start..start + chunk.len())),
        }
    }
    runs
}

/// True when every byte of `bytes` is zero.
pub fn is_zero(bytes: &[u8]) -> bool {
    // Eight bytes at a time: this runs over every byte of an image.
    let (words, tail) = bytes.as_chunks::<8>();
    words.iter().all(|w| u64::from_ne_bytes(*w) == 0) && tail.iter().all(|b| *b == 0)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    use super::*;

    #[test]
    fn runs_alternate_and_cover_the_buffer() {
        let mut buf = vec![0u8; 4096 * 6 + 100];
        buf[4096 * 2 + 7] = 1; // block 2
        buf[4096 * 3] = 1; // block 3
        buf[4096 * 6 + 99] = 1; // the short last block
        let runs = zero_and_data_runs(&buf, 4096);
        assert_eq!(
            runs,
            vec![
                (true, 0..8192),
                (false, 8192..16384),
                (true, 16384..24576),
                (false, 24576..24676),
            ]
        );
        assert!(zero_and_data_runs(&[], 512).is_empty());
        assert_eq!(zero_and_data_runs(&[0; 10], 4), vec![(true, 0..10)]);
    }

    #[test]
    fn is_zero_sees_a_single_bit_anywhere() {
        for len in [0, 1, 7, 8, 9, 64, 4095, 4096] {
            assert!(is_zero(&vec![0; len]));
            for at in 0..len {
                let mut buf = vec![0u8; len];
                buf[at] = 0x80;
                assert!(!is_zero(&buf), "len {len} at {at}");
            }
        }
    }

    #[test]
    fn data_ranges_skip_holes_of_a_sparse_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let file = File::create(&path).unwrap();
        let mib = 1u64 << 20;
        file.set_len(64 * mib).unwrap();
        file.write_all_at(&[1; 4096], 8 * mib).unwrap();
        file.write_all_at(&[2; 4096], 40 * mib).unwrap();
        (&file).flush().unwrap();
        let file = File::open(&path).unwrap();
        let ranges = data_ranges(&file, 64 * mib).unwrap();
        let data: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        // File systems allocate in their own units; the holes must be seen.
        assert!(data < 4 * mib, "{ranges:?}");
        assert!(ranges.iter().any(|r| r.contains(&(8 * mib))), "{ranges:?}");
        assert!(ranges.iter().any(|r| r.contains(&(40 * mib))), "{ranges:?}");
        // A file that is all hole has no data.
        let empty = File::create(dir.path().join("empty")).unwrap();
        empty.set_len(mib).unwrap();
        assert!(data_ranges(&empty, mib).unwrap().is_empty());
    }
}
