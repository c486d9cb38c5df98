//! Model-based test: random sequences of write / read / discard /
//! write_zeroes / flush / close+reopen / crash+reopen / snapshot /
//! delete-snapshot / clone / compact (also interrupted) on a small volume,
//! compared after every step with an in-memory model disk. Every snapshot
//! must keep reading exactly what the volume held when it was taken, and a
//! clone what its snapshot held plus its own writes.
//!
//! Each case writes its segments either direct (`O_DIRECT`) or buffered.
//!
//! A "crash" drops the volume without closing it: everything written is in
//! the kernel (as after `kill -9` of the daemon), nothing was sealed or
//! checkpointed, so the reopen replays the log.

mod kit;

use lsvblk::store::IoMode;
use lsvblk::volume::Volume;
use proptest::prelude::*;

const SECTOR: u64 = 512;
const VOLUME_BYTES: u64 = 256 * 1024;
const SECTORS: u64 = VOLUME_BYTES / SECTOR;

#[derive(Clone, Debug)]
enum Op {
    Write {
        sector: u64,
        sectors: u64,
        tag: u8,
    },
    Read {
        sector: u64,
        sectors: u64,
    },
    Discard {
        sector: u64,
        sectors: u64,
    },
    WriteZeroes {
        sector: u64,
        sectors: u64,
    },
    Flush,
    CloseReopen,
    CrashReopen,
    /// Take a snapshot; `materialize: false` leaves its index unwritten, so
    /// a crash next makes recovery rebuild it.
    Snapshot {
        materialize: bool,
    },
    /// Read a range of the `pick`-th live snapshot and compare.
    ReadSnapshot {
        pick: usize,
        sector: u64,
        sectors: u64,
    },
    /// Delete the `pick`-th live snapshot (refused while a clone uses it).
    DeleteSnapshot {
        pick: usize,
    },
    /// Replace the clone by a new one of the `pick`-th live snapshot.
    Clone {
        pick: usize,
    },
    /// Write to the clone (if there is one).
    CloneWrite {
        sector: u64,
        sectors: u64,
        tag: u8,
    },
    /// Read the clone and compare.
    CloneRead {
        sector: u64,
        sectors: u64,
    },
    /// Compact segments at most this live (per mille); `crash_after`
    /// interrupts it after that many steps, then the volume crashes.
    Compact {
        live_per_mille: u16,
        crash_after: Option<u64>,
    },
    /// Rotate the volume's key; `crash_after` interrupts the re-encryption
    /// after that many steps, then the volume crashes (the rotation is
    /// resumed by a later rotate, or at the end).
    Rotate {
        crash_after: Option<u64>,
    },
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    (0..SECTORS).prop_flat_map(|sector| (Just(sector), 1..=(SECTORS - sector).min(80)))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (range(), any::<u8>()).prop_map(|((sector, sectors), tag)| Op::Write { sector, sectors, tag }),
        6 => range().prop_map(|(sector, sectors)| Op::Read { sector, sectors }),
        2 => range().prop_map(|(sector, sectors)| Op::Discard { sector, sectors }),
        2 => range().prop_map(|(sector, sectors)| Op::WriteZeroes { sector, sectors }),
        1 => Just(Op::Flush),
        1 => Just(Op::CloseReopen),
        1 => Just(Op::CrashReopen),
        1 => any::<bool>().prop_map(|materialize| Op::Snapshot { materialize }),
        2 => (any::<usize>(), range()).prop_map(|(pick, (sector, sectors))| Op::ReadSnapshot { pick, sector, sectors }),
        1 => any::<usize>().prop_map(|pick| Op::DeleteSnapshot { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Clone { pick }),
        2 => (range(), any::<u8>()).prop_map(|((sector, sectors), tag)| Op::CloneWrite { sector, sectors, tag }),
        1 => range().prop_map(|(sector, sectors)| Op::CloneRead { sector, sectors }),
        2 => (0u16..=1000, proptest::option::of(0u64..12)).prop_map(|(live_per_mille, crash_after)| Op::Compact { live_per_mille, crash_after }),
        1 => proptest::option::of(0u64..12).prop_map(|crash_after| Op::Rotate { crash_after }),
    ]
}

/// The model of `discard`: whole blocks inside the range become zeros.
fn model_discard(model: &mut [u8], offset: u64, len: u64, block: u64) {
    let first = offset.div_ceil(block) * block;
    let end = (offset + len) / block * block;
    if first < end {
        model[first as usize..end as usize].fill(0);
    }
}

/// A clone under test: its directory, the volume, its model, its parent.
struct CloneUnderTest {
    dir: tempfile::TempDir,
    volume: Option<Volume>,
    model: Vec<u8>,
    parent: String,
}

/// The volume's keys by seed: 1 at creation, 10, 11, ... after rotations.
/// Every key ever used is offered at open (extra ones are harmless).
/// Block size and write mode of a run: each case picks its mode, so both
/// are covered without doubling the cases.
#[derive(Clone, Copy, Debug)]
struct Setup {
    block: u32,
    io: IoMode,
}

impl Setup {
    fn options(self) -> lsvblk::volume::VolumeOptions {
        lsvblk::volume::VolumeOptions {
            io: self.io,
            ..kit::volume::options(self.block)
        }
    }
}

fn io_mode() -> impl Strategy<Value = IoMode> {
    prop_oneof![Just(IoMode::Direct), Just(IoMode::Buffered)]
}

fn volume_keys(seeds: &[u8]) -> Vec<lsvblk::crypto::DataKey> {
    seeds.iter().map(|s| kit::volume::key(*s)).collect()
}

fn open_volume(dir: &std::path::Path, setup: Setup, seeds: &[u8]) -> Volume {
    let lock = lsvblk::volume::VolumeLock::acquire(dir, false).unwrap();
    Volume::open_locked(dir, lock, volume_keys(seeds), &setup.options()).unwrap()
}

fn clone_keys(seeds: &[u8]) -> Vec<lsvblk::crypto::DataKey> {
    let mut keys = volume_keys(seeds);
    keys.push(kit::volume::key(2));
    keys
}

fn open_clone(dir: &std::path::Path, setup: Setup, seeds: &[u8]) -> Volume {
    let lock = lsvblk::volume::VolumeLock::acquire(dir, false).unwrap();
    Volume::open_locked(dir, lock, clone_keys(seeds), &setup.options()).unwrap()
}

fn read_snapshot(
    dir: &std::path::Path,
    name: &str,
    setup: Setup,
    seeds: &[u8],
    offset: u64,
    len: u64,
) -> Vec<u8> {
    let view = Volume::open_snapshot(dir, name, volume_keys(seeds), &setup.options()).unwrap();
    let mut buf = vec![0u8; len as usize];
    view.read(offset, &mut buf).unwrap();
    buf
}

/// Whether `result` is the crash a test asked for (`crash_after_steps`):
/// then the volume is dropped and reopened; any other failure fails `step`.
fn crashed<T>(result: Result<T, lsvblk::volume::VolumeError>, step: usize, what: &str) -> bool {
    match result {
        Ok(_) => false,
        Err(lsvblk::volume::VolumeError::Store(lsvblk::store::StoreError::Interrupted)) => true,
        Err(e) => panic!("step {step}: {what} failed: {e}"),
    }
}

fn run(ops: &[Op], setup: Setup) -> Result<(), TestCaseError> {
    let block = setup.block;
    let dir = tempfile::tempdir().unwrap();
    let mut volume = Some(
        Volume::create(
            dir.path(),
            VOLUME_BYTES,
            kit::volume::key(1),
            &setup.options(),
        )
        .unwrap(),
    );
    let mut model = vec![0u8; VOLUME_BYTES as usize];
    // Live snapshots: (name, what the volume held when it was taken).
    let mut snapshots: Vec<(String, Vec<u8>)> = Vec::new();
    let mut clone: Option<CloneUnderTest> = None;
    let mut taken = 0;
    let mut seeds: Vec<u8> = vec![1];
    for (step, op) in ops.iter().enumerate() {
        let v: &Volume = volume.as_ref().unwrap();
        match *op {
            Op::Write {
                sector,
                sectors,
                tag,
            } => {
                let data = kit::data::pattern((sectors * SECTOR) as usize, tag);
                v.write(sector * SECTOR, &data).unwrap();
                model[(sector * SECTOR) as usize..][..data.len()].copy_from_slice(&data);
            }
            Op::Read { sector, sectors } => {
                let mut buf = vec![0u8; (sectors * SECTOR) as usize];
                v.read(sector * SECTOR, &mut buf).unwrap();
                let want = &model[(sector * SECTOR) as usize..][..buf.len()];
                prop_assert!(
                    buf == want,
                    "step {step}: {op:?} read differs from the model"
                );
            }
            Op::Discard { sector, sectors } => {
                v.discard(sector * SECTOR, sectors * SECTOR).unwrap();
                model_discard(
                    &mut model,
                    sector * SECTOR,
                    sectors * SECTOR,
                    u64::from(block),
                );
            }
            Op::WriteZeroes { sector, sectors } => {
                v.write_zeroes(sector * SECTOR, sectors * SECTOR, false)
                    .unwrap();
                model[(sector * SECTOR) as usize..][..(sectors * SECTOR) as usize].fill(0);
            }
            Op::Flush => v.flush().unwrap(),
            Op::CloseReopen => {
                volume.take().unwrap().close().unwrap();
                volume = Some(open_volume(dir.path(), setup, &seeds));
                if let Some(c) = clone.as_mut() {
                    c.volume.take().unwrap().close().unwrap();
                    c.volume = Some(open_clone(c.dir.path(), setup, &seeds));
                }
            }
            Op::CrashReopen => {
                drop(volume.take());
                volume = Some(open_volume(dir.path(), setup, &seeds));
                if let Some(c) = clone.as_mut() {
                    drop(c.volume.take());
                    c.volume = Some(open_clone(c.dir.path(), setup, &seeds));
                }
            }
            Op::Snapshot { materialize } => {
                taken += 1;
                let name = format!("s{taken}");
                v.create_snapshot(&name).unwrap();
                if materialize {
                    v.materialize_snapshots().unwrap();
                }
                snapshots.push((name, model.clone()));
            }
            Op::ReadSnapshot {
                pick,
                sector,
                sectors,
            } => {
                if snapshots.is_empty() {
                    continue;
                }
                // Reading needs the index file: the daemon writes it at once.
                v.materialize_snapshots().unwrap();
                let (name, held) = &snapshots[pick % snapshots.len()];
                let got = read_snapshot(
                    dir.path(),
                    name,
                    setup,
                    &seeds,
                    sector * SECTOR,
                    sectors * SECTOR,
                );
                prop_assert!(
                    got[..] == held[(sector * SECTOR) as usize..][..got.len()],
                    "step {step}: snapshot {name} changed"
                );
            }
            Op::DeleteSnapshot { pick } => {
                if snapshots.is_empty() {
                    continue;
                }
                let index = pick % snapshots.len();
                let name = snapshots[index].0.clone();
                let result = v.delete_snapshot(&name);
                if clone.as_ref().is_some_and(|c| c.parent == name) {
                    prop_assert!(
                        result.is_err(),
                        "step {step}: deleted {name} under its clone"
                    );
                } else {
                    result.unwrap();
                    snapshots.remove(index);
                }
            }
            Op::Clone { pick } => {
                if snapshots.is_empty() {
                    continue;
                }
                v.materialize_snapshots().unwrap();
                let (name, held) = snapshots[pick % snapshots.len()].clone();
                if let Some(old) = clone.take() {
                    drop(old.volume);
                    // Let the old clone go: its directory goes with it.
                }
                let clone_dir = tempfile::tempdir().unwrap();
                let new = Volume::create_clone(
                    dir.path(),
                    &name,
                    clone_dir.path(),
                    kit::volume::key(2),
                    None,
                    volume_keys(&seeds),
                    &setup.options(),
                )
                .unwrap();
                clone = Some(CloneUnderTest {
                    dir: clone_dir,
                    volume: Some(new),
                    model: held,
                    parent: name,
                });
            }
            Op::CloneWrite {
                sector,
                sectors,
                tag,
            } => {
                if let Some(c) = clone.as_mut() {
                    let data = kit::data::pattern((sectors * SECTOR) as usize, tag ^ 0x5a);
                    c.volume
                        .as_ref()
                        .unwrap()
                        .write(sector * SECTOR, &data)
                        .unwrap();
                    c.model[(sector * SECTOR) as usize..][..data.len()].copy_from_slice(&data);
                }
            }
            Op::CloneRead { sector, sectors } => {
                if let Some(c) = clone.as_ref() {
                    let mut buf = vec![0u8; (sectors * SECTOR) as usize];
                    c.volume
                        .as_ref()
                        .unwrap()
                        .read(sector * SECTOR, &mut buf)
                        .unwrap();
                    prop_assert!(
                        buf[..] == c.model[(sector * SECTOR) as usize..][..buf.len()],
                        "step {step}: clone read differs from its model"
                    );
                }
            }
            Op::Compact {
                live_per_mille,
                crash_after,
            } => {
                let options = lsvblk::store::CompactOptions {
                    live_ratio_max: f64::from(live_per_mille) / 1000.0,
                    rate_bytes_per_s: None,
                    stop: None,
                    crash_after_steps: crash_after,
                };
                if crashed(v.compact(&options, &mut |_| {}), step, "compaction") {
                    drop(volume.take());
                    volume = Some(open_volume(dir.path(), setup, &seeds));
                }
            }
            Op::Rotate { crash_after } => {
                let seed = 9 + seeds.len() as u8;
                let key = kit::volume::key(seed);
                let entry = kit::volume::entry_for(&key);
                seeds.push(seed);
                v.start_rotation(key, entry, lsvblk::volume::RotationReason::Manual)
                    .unwrap();
                let options = lsvblk::store::CompactOptions {
                    crash_after_steps: crash_after,
                    ..lsvblk::store::CompactOptions::default()
                };
                if crashed(v.continue_rotation(&options, &mut |_| {}), step, "rotation") {
                    drop(volume.take());
                    volume = Some(open_volume(dir.path(), setup, &seeds));
                }
            }
        }
    }
    // Finally the whole disk must match, after one more crash and reopen;
    // so must every snapshot and the clone.
    drop(volume.take());
    let v = open_volume(dir.path(), setup, &seeds);
    // A rotation left interrupted finishes now.
    v.continue_rotation(&lsvblk::store::CompactOptions::default(), &mut |_| {})
        .unwrap();
    let mut all = vec![0u8; VOLUME_BYTES as usize];
    v.read(0, &mut all).unwrap();
    prop_assert!(all == model, "final image differs from the model");
    for (name, held) in &snapshots {
        let got = read_snapshot(dir.path(), name, setup, &seeds, 0, VOLUME_BYTES);
        prop_assert!(&got == held, "final image of snapshot {name} differs");
    }
    if let Some(mut c) = clone {
        drop(c.volume.take());
        let reopened = open_clone(c.dir.path(), setup, &seeds);
        let mut all = vec![0u8; VOLUME_BYTES as usize];
        reopened.read(0, &mut all).unwrap();
        prop_assert!(all == c.model, "final image of the clone differs");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn volume_with_4k_blocks_matches_model(io in io_mode(), ops in proptest::collection::vec(op(), 60..160)) {
        run(&ops, Setup { block: 4096, io })?;
    }

    #[test]
    fn volume_with_512b_blocks_matches_model(io in io_mode(), ops in proptest::collection::vec(op(), 60..160)) {
        run(&ops, Setup { block: 512, io })?;
    }
}
