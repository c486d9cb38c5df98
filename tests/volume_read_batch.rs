//! Reads in batches (a queue's reads of one wake-up, their ciphertext in
//! flight together), in both I/O modes: aligned and unaligned buffers,
//! partial blocks, scatter lists, a bad range and a damaged block failing
//! only their own request; and the frame-meta cache answering the reads of
//! blocks this process wrote, and of blocks read once after a reopen.

mod kit;

use std::os::unix::fs::FileExt;
use std::path::Path;

use kit::data::{assert_same, pattern};
use kit::volume::{key, options, segment_files};
use lsvblk::store::{AlignedBuf, IoMode, V2_FIRST_FRAME};
use lsvblk::volume::{ReadRequest, Volume, VolumeOptions};

const SIZE: u64 = 4 << 20;

fn volume_options(io: IoMode) -> VolumeOptions {
    VolumeOptions {
        io,
        segment_bytes: 1 << 20,
        ..options(4096)
    }
}

/// A volume whose every block was written: 64 KiB writes, then 4 KiB
/// rewrites of every fifth block; returns what it holds.
fn written(dir: &Path, io: IoMode) -> (Volume, Vec<u8>) {
    let volume = Volume::create(dir, SIZE, key(1), &volume_options(io)).unwrap();
    let mut model = pattern(SIZE as usize, 3);
    for at in (0..SIZE).step_by(64 << 10) {
        volume
            .write(at, &model[at as usize..at as usize + (64 << 10)])
            .unwrap();
    }
    for block in (0..SIZE / 4096).step_by(5) {
        let at = (block * 4096) as usize;
        model[at..at + 4096].copy_from_slice(&pattern(4096, block as u8));
        volume.write(at as u64, &model[at..at + 4096]).unwrap();
    }
    volume.flush().unwrap();
    (volume, model)
}

/// Reads `ranges` as one batch, each into an aligned buffer (`aligned`)
/// or one starting one byte into an allocation; returns what each got.
fn read_batch(volume: &Volume, ranges: &[(u64, usize)], aligned: bool) -> Vec<Option<Vec<u8>>> {
    let mut aligned_bufs: Vec<AlignedBuf> = ranges
        .iter()
        .map(|(_, len)| AlignedBuf::zeroed(*len))
        .collect();
    let mut odd_bufs: Vec<Vec<u8>> = ranges.iter().map(|(_, len)| vec![0u8; len + 1]).collect();
    let mut slices: Vec<Vec<&mut [u8]>> = match aligned {
        true => aligned_bufs.iter_mut().map(|b| vec![&mut b[..]]).collect(),
        false => odd_bufs.iter_mut().map(|b| vec![&mut b[1..]]).collect(),
    };
    let mut requests: Vec<ReadRequest<'_, '_>> = ranges
        .iter()
        .zip(slices.iter_mut())
        .map(|((offset, _), bufs)| ReadRequest {
            offset: *offset,
            bufs,
        })
        .collect();
    let outcomes = volume.read_batch(&mut requests);
    drop(requests);
    drop(slices);
    outcomes
        .into_iter()
        .enumerate()
        .map(|(index, outcome)| {
            outcome.ok().map(|()| match aligned {
                true => aligned_bufs[index].to_vec(),
                false => odd_bufs[index][1..].to_vec(),
            })
        })
        .collect()
}

#[test]
fn a_batch_reads_what_was_written_into_any_buffer_and_a_bad_request_fails_alone() {
    for io in [IoMode::Direct, IoMode::Buffered] {
        let dir = tempfile::tempdir().unwrap();
        let (volume, model) = written(dir.path(), io);
        let ranges: Vec<(u64, usize)> = vec![
            (0, 4096),
            (5 * 4096, 4096),
            (1 << 20, 1 << 20),
            (3 * 4096 + 512, 9 * 1024), // whole sectors, part blocks
            (SIZE - 8192, 8192),
            (SIZE - 4096, 8192), // past the end: fails alone
            (123 * 4096, 32 * 4096),
        ];
        for aligned in [true, false] {
            let got = read_batch(&volume, &ranges, aligned);
            for ((offset, len), got) in ranges.iter().zip(&got) {
                let context = format!("{io} aligned={aligned} {offset}+{len}");
                if offset + *len as u64 > SIZE {
                    assert!(got.is_none(), "{context}: a range past the end must fail");
                    continue;
                }
                let got = got.as_ref().unwrap_or_else(|| panic!("{context} failed"));
                let want = &model[*offset as usize..*offset as usize + len];
                assert_same(got, want, *offset, &context);
            }
        }
        // A scatter list of unaligned pieces, one request.
        let mut a = vec![0u8; 4096 + 512];
        let mut b = vec![0u8; 3 * 4096 - 512];
        volume.read_vectored(40960, &mut [&mut a, &mut b]).unwrap();
        assert_same(&a, &model[40960..40960 + a.len()], 40960, "scatter a");
        assert_same(
            &b,
            &model[40960 + a.len()..40960 + 4 * 4096],
            40960,
            "scatter b",
        );
    }
}

#[test]
fn the_meta_cache_answers_written_blocks_then_blocks_read_once_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (volume, model) = written(dir.path(), IoMode::Direct);
    let before = volume.meta_cache_stats();
    let ranges: Vec<(u64, usize)> = (0..32u64).map(|i| (i * 37 % 1024 * 4096, 4096)).collect();
    read_batch(&volume, &ranges, true);
    let after = volume.meta_cache_stats();
    assert_eq!(after.misses, before.misses, "every block was written here");
    assert!(after.hits >= before.hits + 32);
    drop(volume);

    let volume = Volume::open(dir.path(), key(1), &volume_options(IoMode::Direct)).unwrap();
    let cold = read_batch(&volume, &ranges, true);
    let first = volume.meta_cache_stats();
    assert!(first.misses > 0, "a reopened volume's cache starts empty");
    let warm = read_batch(&volume, &ranges, true);
    let second = volume.meta_cache_stats();
    assert_eq!(
        second.misses, first.misses,
        "pages read once stay: {second:?}"
    );
    for (((offset, len), cold), warm) in ranges.iter().zip(cold).zip(warm) {
        let want = &model[*offset as usize..*offset as usize + len];
        assert_same(&cold.unwrap(), want, *offset, "cold");
        assert_same(&warm.unwrap(), want, *offset, "warm");
    }
    // Without a cache every read misses, and still reads right.
    drop(volume);
    let no_cache = VolumeOptions {
        meta_cache_bytes: 0,
        ..volume_options(IoMode::Direct)
    };
    let volume = Volume::open(dir.path(), key(1), &no_cache).unwrap();
    let got = read_batch(&volume, &ranges, false);
    assert_eq!(volume.meta_cache_stats().hits, 0);
    for ((offset, len), got) in ranges.iter().zip(got) {
        assert_same(
            &got.unwrap(),
            &model[*offset as usize..*offset as usize + len],
            *offset,
            "uncached",
        );
    }
}

#[test]
fn a_damaged_block_fails_its_request_and_no_other_in_the_batch() {
    for io in [IoMode::Direct, IoMode::Buffered] {
        let dir = tempfile::tempdir().unwrap();
        let (volume, model) = written(dir.path(), io);
        drop(volume);
        // Flip a byte of block 1: the first 64 KiB write is the first
        // frame of the first segment (a one-page meta area after the
        // segment's header block, then the payload), never rewritten.
        let first = &segment_files(dir.path())[0];
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(first)
            .unwrap();
        let at = V2_FIRST_FRAME + 4096 + 4096 + 10;
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, at).unwrap();
        file.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
        drop(file);
        let volume = Volume::open(dir.path(), key(1), &volume_options(io)).unwrap();
        // Whole-volume batch in 64 KiB requests: the first fails, no other.
        let ranges: Vec<(u64, usize)> = (0..SIZE)
            .step_by(64 << 10)
            .map(|at| (at, 64 << 10))
            .collect();
        let got = read_batch(&volume, &ranges, true);
        assert!(got[0].is_none(), "{io}: the damaged block's request fails");
        let failed = got.iter().filter(|g| g.is_none()).count();
        assert_eq!(failed, 1, "{io}: one damaged block fails one request");
        for ((offset, len), got) in ranges.iter().zip(got) {
            if let Some(got) = got {
                assert_same(
                    &got,
                    &model[*offset as usize..*offset as usize + len],
                    *offset,
                    "intact",
                );
            }
        }
    }
}
