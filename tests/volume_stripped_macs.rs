//! Someone who can write a volume's files, but has no key, strips its
//! MACs: clears every "carries MACs" flag (segment and checkpoint
//! headers), removes `integrity` from `volume.json` and recomputes every
//! CRC, so that the volume looks like one written before MACs, whose
//! blocks nothing authenticates - then changes a block. The volume's key
//! says otherwise: lsvkms sealed it as a key of an authenticated volume
//! (its kind, in the wrapped blob's authenticated header), so the open is
//! refused. In the same way a checkpoint stripped of its MAC (to roll a
//! block back to an older version) is not trusted. Real lsvkms, volumes
//! made by `lsvblk create`; ~3 s.

mod kit;

use std::path::{Path, PathBuf};

use kit::cli::{assert_refused, run_lsvblk};
use kit::daemon::create_volume;
use kit::kms::Kms;
use lsvblk::volume::{Superblock, Volume, VolumeError};

const BLOCK: usize = 4096;

/// Opens the volume in `dir` here, with its key unwrapped by `kms` for
/// alice (the daemon's way, without the daemon).
fn open(kms: &Kms, dir: &Path) -> Result<Volume, VolumeError> {
    let superblock = Superblock::load(dir).unwrap();
    let token = kms.token_text("alice", "1h");
    let mut keys = lsvblk::service::unwrap_all(
        &kms.client(),
        &token,
        &superblock.volume_id,
        &superblock.keys,
    )
    .unwrap();
    Volume::open(
        dir,
        keys.pop().unwrap(),
        &kit::volume::options(BLOCK as u32),
    )
}

fn newest_checkpoint(dir: &Path) -> PathBuf {
    lsvblk::store::list_checkpoints(&dir.join("checkpoints")).unwrap()[0].clone()
}

/// The last extent of the checkpoint at `path` (64 bytes before its MAC).
fn last_extent(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    bytes[bytes.len() - 16 - 64..bytes.len() - 16].to_vec()
}

#[test]
fn a_volume_stripped_of_its_macs_is_refused_not_opened_unchecked() {
    let kms = Kms::start();
    let dir = create_volume(&kms, 1 << 20, &["alice"], BLOCK as u32);
    let written = kit::data::pattern(BLOCK, 1);
    let volume = open(&kms, &dir).unwrap();
    volume.write(0, &written).unwrap();
    volume.close().unwrap();

    kit::forge::strip_mac_flags(&dir);
    assert_eq!(kit::forge::forge_first_block(&dir), 0);
    match open(&kms, &dir) {
        Ok(volume) => {
            let mut back = vec![0u8; BLOCK];
            let read = volume.read(0, &mut back).map(|_| ());
            let what = if back == written {
                "the data written"
            } else {
                "WRONG DATA"
            };
            panic!("the stripped volume opened unchecked: block 0 read {read:?}, {what}");
        }
        Err(error) => assert!(
            error
                .to_string()
                .contains("were the volume's MACs stripped"),
            "the refusal says why: {error}"
        ),
    }
    // What a user sees: any open with the key refuses it as damaged (65).
    let (vol, address) = (dir.to_str().unwrap(), kms.address());
    let token = kms.token("alice");
    let args = ["scrub", vol, "--kms", &address, "--token-file"];
    let out = run_lsvblk(&[&args[..], &[token.to_str().unwrap()]].concat());
    assert_refused("scrub of a stripped volume", &out, 65, &["stripped"]);
}

#[test]
fn a_checkpoint_stripped_of_its_mac_cannot_roll_a_block_back() {
    let kms = Kms::start();
    let dir = create_volume(&kms, 1 << 20, &["alice"], BLOCK as u32);
    let (old, new) = (kit::data::pattern(BLOCK, 1), kit::data::pattern(BLOCK, 2));
    let volume = open(&kms, &dir).unwrap();
    volume.write(0, &old).unwrap();
    volume.close().unwrap();
    let old_extent = last_extent(&newest_checkpoint(&dir));
    let volume = open(&kms, &dir).unwrap();
    volume.write(0, &new).unwrap();
    volume.close().unwrap();

    // The newest checkpoint's extent of block 0 pointed back at the old
    // write (still in its segment; its block tag holds), its MAC flag
    // cleared, its CRCs recomputed.
    let path = newest_checkpoint(&dir);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 16 - 64;
    bytes[at..at + 64].copy_from_slice(&old_extent);
    bytes[6] &= !1;
    kit::forge::fix_checkpoint_crcs(&mut bytes).unwrap();
    std::fs::write(&path, bytes).unwrap();

    let volume = open(&kms, &dir).unwrap();
    let mut back = vec![0u8; BLOCK];
    volume.read(0, &mut back).unwrap();
    assert!(back == new, "block 0 rolled back to the old write");
    let skipped = &volume.recovery_report().skipped_checkpoints;
    assert!(
        skipped
            .iter()
            .any(|s| s.contains("checkpoint without a MAC")),
        "the stripped checkpoint is reported: {skipped:?}"
    );
}
