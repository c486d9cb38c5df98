//! What binds a volume's integrity to its log, for someone who can write
//! the volume's files but has no key: removing `integrity` from
//! `volume.json` does not turn the checks off (the log says it carries
//! MACs); a checkpoint changed with its CRCs recomputed fails its MAC and
//! is skipped for an older one; a snapshot's index changed the same way is
//! refused when the snapshot is opened; and an open without the key writes
//! nothing it could not sign.

mod kit;

use std::path::Path;

use kit::volume::{create_with, open, options};
use lsvblk::volume::{Integrity, Volume};

const BLOCK: usize = 4096;

fn newest_checkpoint(dir: &Path) -> std::path::PathBuf {
    lsvblk::store::list_checkpoints(&dir.join("checkpoints")).unwrap()[0].clone()
}

fn read_block(volume: &Volume, block: u64) -> Vec<u8> {
    let mut back = vec![0u8; BLOCK];
    volume.read(block * BLOCK as u64, &mut back).unwrap();
    back
}

#[test]
fn removing_integrity_from_volume_json_does_not_turn_the_checks_off() {
    let dir = tempfile::tempdir().unwrap();
    let volume = create_with(dir.path(), 1 << 20, BLOCK as u32, Integrity::Mac);
    volume.write(0, &kit::data::pattern(BLOCK, 1)).unwrap();
    volume.close().unwrap();
    let json_path = dir.path().join("volume.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(json["integrity"], "mac");
    json.as_object_mut().unwrap().remove("integrity");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    let error = Volume::open(dir.path(), kit::volume::key(1), &options(BLOCK as u32))
        .expect_err("a downgraded volume must not open unchecked");
    assert!(
        error.to_string().contains("volume.json says integrity crc"),
        "the refusal says why: {error}"
    );
}

#[test]
fn a_checkpoint_changed_with_its_crcs_recomputed_is_skipped_for_an_older_one() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (kit::data::pattern(BLOCK, 1), kit::data::pattern(BLOCK, 2));
    let volume = create_with(dir.path(), 1 << 20, BLOCK as u32, Integrity::Mac);
    volume.write(0, &old).unwrap();
    volume.close().unwrap();
    let volume = open(dir.path(), BLOCK as u32);
    volume.write(0, &new).unwrap();
    volume.close().unwrap();
    // Point block 0's extent (the last 64 bytes before the 16-byte MAC)
    // one block further into its record: CRCs recomputed, MAC unchanged.
    let path = newest_checkpoint(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let extent = bytes.len() - 16 - 64;
    let seq = u64::from_le_bytes(bytes[extent + 16..extent + 24].try_into().unwrap());
    bytes[extent + 16..extent + 24].copy_from_slice(&(seq + 1).to_le_bytes());
    let body_crc = crc32c::crc32c(&bytes[160..]).to_le_bytes();
    bytes[152..156].copy_from_slice(&body_crc);
    let header_crc = crc32c::crc32c(&bytes[..156]).to_le_bytes();
    bytes[156..160].copy_from_slice(&header_crc);
    std::fs::write(&path, bytes).unwrap();
    let volume = open(dir.path(), BLOCK as u32);
    let skipped = &volume.recovery_report().skipped_checkpoints;
    assert!(
        skipped
            .iter()
            .any(|s| s.contains("checkpoint MAC mismatch")),
        "the changed checkpoint is reported: {skipped:?}"
    );
    assert_eq!(
        read_block(&volume, 0),
        new,
        "the older checkpoint and replay"
    );
}

#[test]
fn an_open_without_the_key_writes_nothing_and_refuses_to_sign() {
    let dir = tempfile::tempdir().unwrap();
    let volume = create_with(dir.path(), 1 << 20, BLOCK as u32, Integrity::Mac);
    volume.write(0, &kit::data::pattern(BLOCK, 1)).unwrap();
    volume.flush().unwrap();
    drop(volume); // a crash: the segment is left open
    let before = lsvblk::store::list_checkpoints(&dir.path().join("checkpoints")).unwrap();
    let keyless = Volume::open_for_maintenance(dir.path(), &options(BLOCK as u32)).unwrap();
    let error = keyless
        .log()
        .checkpoint()
        .expect_err("a checkpoint of a mac volume must be signed");
    assert!(error.to_string().contains("needs its key"), "{error}");
    keyless.close().unwrap();
    let after = lsvblk::store::list_checkpoints(&dir.path().join("checkpoints")).unwrap();
    assert_eq!(before, after, "no checkpoint written without the key");
    let volume = open(dir.path(), BLOCK as u32);
    assert_eq!(read_block(&volume, 0), kit::data::pattern(BLOCK, 1));
}

/// The last extent of the checkpoint or snapshot index at `path` (the 64
/// bytes before its MAC).
fn last_extent(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    bytes[bytes.len() - 16 - 64..bytes.len() - 16].to_vec()
}

#[test]
fn a_snapshot_index_changed_with_its_crcs_recomputed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (kit::data::pattern(BLOCK, 1), kit::data::pattern(BLOCK, 2));
    let volume = create_with(dir.path(), 1 << 20, BLOCK as u32, Integrity::Mac);
    volume.write(0, &old).unwrap();
    volume.close().unwrap();
    let old_extent = last_extent(&newest_checkpoint(dir.path()));
    let volume = open(dir.path(), BLOCK as u32);
    volume.write(0, &new).unwrap();
    volume.create_snapshot("monday").unwrap();
    volume.close().unwrap();
    // The snapshot's block 0 pointed back at the older write (its block
    // tag holds), the index's CRCs recomputed.
    let index = dir.path().join("snapshots/monday.index");
    let mut bytes = std::fs::read(&index).unwrap();
    let at = bytes.len() - 16 - 64;
    bytes[at..at + 64].copy_from_slice(&old_extent);
    kit::forge::fix_checkpoint_crcs(&mut bytes).unwrap();
    std::fs::write(&index, bytes).unwrap();
    let keys = vec![kit::volume::key(1)];
    match Volume::open_snapshot(dir.path(), "monday", keys, &options(BLOCK as u32)) {
        Ok(snapshot) => {
            let back = read_block(&snapshot, 0);
            let what = if back == old {
                "the older write"
            } else {
                "its own data"
            };
            panic!("the changed index was trusted: block 0 reads {what}");
        }
        Err(error) => assert!(
            error.to_string().contains("snapshot index MAC mismatch"),
            "the refusal says why: {error}"
        ),
    }
    let volume = open(dir.path(), BLOCK as u32);
    assert_eq!(read_block(&volume, 0), new, "the volume itself is unharmed");
}
