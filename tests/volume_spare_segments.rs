//! Segment recycling: compaction keeps emptied segment files as spares and
//! new segments reuse them (zeroed first), in both I/O modes, on a real
//! filesystem (tmpfs cannot zero a range, so it deletes and creates).

mod kit;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use lsvblk::store::{CompactOptions, IoMode};
use lsvblk::volume::{Volume, VolumeOptions};

const BLOCK: u32 = 4096;
const BYTES: u64 = 1 << 20;
const SEGMENT_BYTES: u64 = 256 * 1024;

fn options(io: IoMode) -> VolumeOptions {
    VolumeOptions {
        segment_bytes: SEGMENT_BYTES,
        heads: 1,
        io,
        ..kit::volume::options(BLOCK)
    }
}

/// A directory on the disk under the build (ext4 here), not tmpfs.
fn disk_tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn spare_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "spare"))
        .collect();
    files.sort();
    files
}

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

/// Writes the whole volume once in 64 KiB writes, each tagged with `pass`.
fn write_pass(v: &Volume, pass: u8, image: &mut [u8]) {
    for (i, at) in (0..BYTES).step_by(64 * 1024).enumerate() {
        let data = kit::data::pattern(64 * 1024, pass.wrapping_mul(31).wrapping_add(i as u8));
        v.write(at, &data).unwrap();
        image[at as usize..][..data.len()].copy_from_slice(&data);
    }
}

fn read_all(v: &Volume) -> Vec<u8> {
    kit::volume::read_all(v, BYTES)
}

fn compact(v: &Volume) -> lsvblk::store::CompactReport {
    let options = CompactOptions {
        live_ratio_max: 0.9,
        rate_bytes_per_s: None,
        stop: None,
        crash_after_steps: None,
    };
    v.compact(&options, &mut |_| {}).unwrap()
}

/// The 4 KiB blocks of `path` that are not all zeros.
fn nonzero_blocks(path: &Path) -> HashSet<Vec<u8>> {
    std::fs::read(path)
        .unwrap()
        .chunks(4096)
        .filter(|b| b.iter().any(|x| *x != 0))
        .map(<[u8]>::to_vec)
        .collect()
}

#[test]
fn compaction_keeps_spares_that_new_segments_reuse_zeroed() {
    for io in [IoMode::Direct, IoMode::Buffered] {
        let dir = disk_tempdir();
        let mut image = vec![0u8; BYTES as usize];
        let v = Volume::create(dir.path(), BYTES, kit::volume::key(1), &options(io)).unwrap();
        for pass in 0..3 {
            write_pass(&v, pass, &mut image);
        }
        v.flush().unwrap();
        let report = compact(&v);
        // One head and the compaction head: two spares at most.
        assert!(
            report.segments_deleted >= 4 && report.segments_recycled == 2,
            "{io:?}: {report:?}"
        );
        let spares = spare_files(dir.path());
        assert_eq!(spares.len(), 2, "{io:?}");
        let space = v.space().unwrap();
        assert_eq!(space.spare_segments, 2, "{io:?}");
        let spare_inodes: HashSet<u64> = spares.iter().map(|p| inode(p)).collect();
        let old_blocks: HashSet<Vec<u8>> = spares.iter().flat_map(|p| nonzero_blocks(p)).collect();
        assert!(
            !old_blocks.is_empty(),
            "{io:?}: spares hold their old records"
        );

        // New segments take the spares instead of new files.
        let before: HashSet<PathBuf> = kit::volume::segment_files(dir.path()).into_iter().collect();
        // Write until a head starts a segment, and stop there: the reused
        // file holds a few new records and, past them, nothing old.
        let mut written = 0;
        while spare_files(dir.path()).len() == 2 {
            assert!(written < 4 * SEGMENT_BYTES, "{io:?}: no spare reused");
            let at = written % BYTES;
            let data = kit::data::pattern(16 * 1024, 200u8.wrapping_add((written >> 14) as u8));
            v.write(at, &data).unwrap();
            image[at as usize..][..data.len()].copy_from_slice(&data);
            written += data.len() as u64;
        }
        v.flush().unwrap();
        let reused: Vec<PathBuf> = kit::volume::segment_files(dir.path())
            .into_iter()
            .filter(|p| !before.contains(p) && spare_inodes.contains(&inode(p)))
            .collect();
        assert!(
            !reused.is_empty(),
            "{io:?}: no new segment is a former spare"
        );
        for path in &reused {
            let left = nonzero_blocks(path).intersection(&old_blocks).count();
            assert_eq!(left, 0, "{io:?}: {} keeps old records", path.display());
        }
        assert!(read_all(&v) == image, "{io:?}: image differs after reuse");
        drop(v); // a crash: no close, no checkpoint of the reused segments
        let v = Volume::open(dir.path(), kit::volume::key(1), &options(io)).unwrap();
        assert!(read_all(&v) == image, "{io:?}: image differs after a crash");
        v.close().unwrap();
    }
}

#[test]
fn a_reopen_adopts_spares_and_deletes_none_that_fit() {
    let dir = disk_tempdir();
    let mut image = vec![0u8; BYTES as usize];
    let v = Volume::create(
        dir.path(),
        BYTES,
        kit::volume::key(1),
        &options(IoMode::Buffered),
    )
    .unwrap();
    for pass in 0..3 {
        write_pass(&v, pass, &mut image);
    }
    v.flush().unwrap();
    assert_eq!(compact(&v).segments_recycled, 2);
    v.close().unwrap();
    let spares = spare_files(dir.path());
    let v = Volume::open(dir.path(), kit::volume::key(1), &options(IoMode::Buffered)).unwrap();
    assert_eq!(v.space().unwrap().spare_segments, 2);
    assert_eq!(spare_files(dir.path()), spares);
    assert!(read_all(&v) == image);
    // A read-only open (a snapshot view, a standby) neither takes nor
    // deletes them.
    v.create_snapshot("s").unwrap();
    v.close().unwrap();
    let view = Volume::open_snapshot(
        dir.path(),
        "s",
        vec![kit::volume::key(1)],
        &options(IoMode::Buffered),
    )
    .unwrap();
    assert!(read_all(&view) == image);
    drop(view);
    assert_eq!(spare_files(dir.path()), spares);
}

/// A segment is made under a `.seg.new` name and renamed once its header
/// is written, so a kill -9 in between leaves that file, never a segment
/// without a header (which recovery refuses): the next open deletes it, and
/// the segment it would have been is made again.
#[test]
fn a_half_made_segment_left_by_a_crash_is_deleted_at_open() {
    for io in [IoMode::Direct, IoMode::Buffered] {
        let dir = disk_tempdir();
        let mut image = vec![0u8; BYTES as usize];
        let v = Volume::create(dir.path(), BYTES, kit::volume::key(1), &options(io)).unwrap();
        write_pass(&v, 1, &mut image);
        v.flush().unwrap();
        let next = kit::volume::segment_files(dir.path()).len();
        drop(v); // a crash
        let segments = dir.path().join("segments");
        let leftovers = [
            segments.join(format!("{:016x}.seg.new", next + 3)),
            segments.join(format!("{:016x}.seg.new", next + 4)),
        ];
        std::fs::write(&leftovers[0], b"").unwrap();
        std::fs::write(&leftovers[1], vec![0x5a; 4096]).unwrap();
        let v = Volume::open(dir.path(), kit::volume::key(1), &options(io)).unwrap();
        for leftover in &leftovers {
            assert!(!leftover.exists(), "{io:?}: {} kept", leftover.display());
        }
        assert!(read_all(&v) == image, "{io:?}");
        // New segments are made (past the leftovers' ids too) and read back.
        write_pass(&v, 2, &mut image);
        v.close().unwrap();
        let v = Volume::open(dir.path(), kit::volume::key(1), &options(io)).unwrap();
        assert!(read_all(&v) == image, "{io:?}");
        let names: Vec<String> = std::fs::read_dir(&segments)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| n.ends_with(".seg") || n.ends_with(".spare")),
            "{io:?}: {names:?}"
        );
    }
}
