//! What someone who can write a volume's files, but has no key, can do to
//! them: change bytes and recompute every CRC that covers them (segment
//! header, frame header and meta CRCs, block CRCs, checkpoint CRCs), and
//! clear the flags that say a log carries MACs. Only the MACs can catch
//! what these leave behind.

use std::path::Path;

const BLOCK: usize = 4096;

fn crc(bytes: &[u8]) -> [u8; 4] {
    crc32c::crc32c(bytes).to_le_bytes()
}

fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize)
}

fn put_crc(bytes: &mut [u8], at: usize, over: std::ops::Range<usize>) -> Option<()> {
    let crc = crc(bytes.get(over)?);
    bytes.get_mut(at..at + 4)?.copy_from_slice(&crc);
    Some(())
}

/// Recomputes every CRC of a version 2 segment file of a 4 KiB-block
/// volume, as far as its frames can still be walked.
pub fn fix_segment_crcs(bytes: &mut [u8]) -> Option<()> {
    put_crc(bytes, 60, 0..60)?;
    let mut at = 4096;
    while bytes.get(at..at + 4) == Some(&b"LSVF"[..]) {
        let count = u16::from_le_bytes(bytes.get(at + 6..at + 8)?.try_into().ok()?) as usize;
        for index in 0..count.min(64) {
            let record = at + 64 + 64 * index;
            if *bytes.get(record)? != 1 {
                continue;
            }
            let blocks = u32_at(bytes, record + 4)?.min(256);
            let payload = at + u32_at(bytes, record + 40)?;
            let table = at + u32_at(bytes, record + 44)?;
            for block in 0..blocks {
                let data = payload + block * BLOCK;
                put_crc(bytes, table + 16 * block, data..data + BLOCK)?;
            }
        }
        let meta = at + u32_at(bytes, at + 28)?;
        put_crc(bytes, at + 56, at + 64..meta)?;
        put_crc(bytes, at + 60, at..at + 60)?;
        at += u32_at(bytes, at + 24)?.max(4096);
    }
    Some(())
}

/// Recomputes a version 3 checkpoint's (or snapshot index's) body and
/// header CRCs.
pub fn fix_checkpoint_crcs(bytes: &mut [u8]) -> Option<()> {
    put_crc(bytes, 152, 160..bytes.len())?;
    put_crc(bytes, 156, 0..156)
}

/// Flips a bit of the first block of the first data record in the
/// segments of the volume in `dir` and recomputes every CRC over it;
/// returns the block's number.
pub fn forge_first_block(dir: &Path) -> u64 {
    for segment in super::volume::segment_files(dir) {
        let mut bytes = std::fs::read(&segment).unwrap();
        let at = 4096;
        if bytes.len() < at + BLOCK || &bytes[at..at + 4] != b"LSVF" || bytes[at + 64] != 1 {
            continue;
        }
        let record = at + 64;
        let lba = u64::from_le_bytes(bytes[record + 16..record + 24].try_into().unwrap());
        let payload = at + u32_at(&bytes, record + 40).unwrap();
        bytes[payload + 7] ^= 0x20;
        fix_segment_crcs(&mut bytes).unwrap();
        std::fs::write(&segment, bytes).unwrap();
        return lba;
    }
    panic!("no data record found");
}

/// Clears the "carries MACs" flag (bit 0 of the u16 at 6) of the header of
/// every segment and checkpoint of the volume in `dir`, recomputing the
/// CRCs, and removes `integrity` from its `volume.json`: the volume looks
/// like one written before MACs (the MACs themselves are left: nothing
/// reads them in such a volume).
pub fn strip_mac_flags(dir: &Path) {
    for segment in super::volume::segment_files(dir) {
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes[6] &= !1;
        fix_segment_crcs(&mut bytes).unwrap();
        std::fs::write(&segment, bytes).unwrap();
    }
    for checkpoint in lsvblk::store::list_checkpoints(&dir.join("checkpoints")).unwrap() {
        strip_checkpoint_flag(&checkpoint);
    }
    let json_path = dir.join("volume.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    json.as_object_mut().unwrap().remove("integrity");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
}

/// Clears the "carries MACs" flag of the checkpoint (or snapshot index) at
/// `path`, recomputing its CRCs.
pub fn strip_checkpoint_flag(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[6] &= !1;
    fix_checkpoint_crcs(&mut bytes).unwrap();
    std::fs::write(path, bytes).unwrap();
}
