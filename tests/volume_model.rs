//! Model-based test: random sequences of write / read / discard /
//! write_zeroes / flush / close+reopen / crash+reopen on a small volume,
//! compared after every step with an in-memory model disk.
//!
//! A "crash" drops the volume without closing it: everything written is in
//! the kernel (as after `kill -9` of the daemon), nothing was sealed or
//! checkpointed, so the reopen replays the log.

mod common;

use lsvblk::volume::Volume;
use proptest::prelude::*;

const SECTOR: u64 = 512;
const VOLUME_BYTES: u64 = 256 * 1024;
const SECTORS: u64 = VOLUME_BYTES / SECTOR;

#[derive(Clone, Debug)]
enum Op {
    Write { sector: u64, sectors: u64, tag: u8 },
    Read { sector: u64, sectors: u64 },
    Discard { sector: u64, sectors: u64 },
    WriteZeroes { sector: u64, sectors: u64 },
    Flush,
    CloseReopen,
    CrashReopen,
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

fn run(ops: &[Op], block: u32) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut volume = Some(common::create(dir.path(), VOLUME_BYTES, block));
    let mut model = vec![0u8; VOLUME_BYTES as usize];
    for (step, op) in ops.iter().enumerate() {
        let v: &Volume = volume.as_ref().unwrap();
        match *op {
            Op::Write {
                sector,
                sectors,
                tag,
            } => {
                let data = common::pattern((sectors * SECTOR) as usize, tag);
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
                volume = Some(common::open(dir.path(), block));
            }
            Op::CrashReopen => {
                drop(volume.take());
                volume = Some(common::open(dir.path(), block));
            }
        }
    }
    // Finally the whole disk must match, after one more crash and reopen.
    drop(volume.take());
    let v = common::open(dir.path(), block);
    let mut all = vec![0u8; VOLUME_BYTES as usize];
    v.read(0, &mut all).unwrap();
    prop_assert!(all == model, "final image differs from the model");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn volume_with_4k_blocks_matches_model(ops in proptest::collection::vec(op(), 60..160)) {
        run(&ops, 4096)?;
    }

    #[test]
    fn volume_with_512b_blocks_matches_model(ops in proptest::collection::vec(op(), 60..160)) {
        run(&ops, 512)?;
    }
}
