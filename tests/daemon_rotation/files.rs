//! What the volume's files say: its superblock, the wrapped blobs of its
//! keys (and their wrapping-key versions), and which key each record of its
//! segment files names.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use base64::Engine;
use serde_json::Value;

use super::kit::volume::segment_files;

/// `volume.json`.
pub fn superblock(volume: &Path) -> Value {
    serde_json::from_slice(&fs::read(volume.join("volume.json")).unwrap()).unwrap()
}

/// Every (key id, wrapped blob) of a superblock or snapshot metadata block.
pub fn blobs(meta: &Value) -> Vec<(String, Vec<u8>)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    meta["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let blob = b64.decode(k["wrapped_blob"].as_str().unwrap()).unwrap();
            (k["key_id"].as_str().unwrap().to_owned(), blob)
        })
        .collect()
}

/// The wrapping-key version of every blob of the volume and its snapshots,
/// by file (`volume.json`, `snapshots/NAME.json`) and key id.
pub fn blob_versions(volume: &Path) -> BTreeMap<String, u32> {
    let mut files = vec![("volume.json".to_owned(), superblock(volume))];
    if let Ok(entries) = fs::read_dir(volume.join("snapshots")) {
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let meta = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
                let name = format!("snapshots/{}", path.file_name().unwrap().to_str().unwrap());
                files.push((name, meta));
            }
        }
    }
    let mut versions = BTreeMap::new();
    for (file, meta) in files {
        for (key_id, blob) in blobs(&meta) {
            let version = lsvblk::kms::seal::parse(&blob).unwrap().kek_version;
            versions.insert(format!("{file} {key_id}"), version);
        }
    }
    versions
}

/// Records found in the segment files, per key id (hex; all zeros for
/// records without payload): (records, data blocks).
pub type RecordsByKey = BTreeMap<String, (u64, u64)>;

/// Walks every segment file's records (layout in docs/format.md, section
/// 11: a 4 KiB segment header block `LSVS`, then frames `LSVF`, each a
/// 64-byte frame header, 64-byte record headers, tables and payloads, its
/// size in the frame header) and counts them by key id; seal records are
/// not counted. A walk stops at the first bytes that are not a frame of
/// the segment: the end of the file, or the unwritten tail of a log head.
pub fn records_by_key(volume: &Path) -> RecordsByKey {
    let mut found = RecordsByKey::new();
    for file in segment_files(volume) {
        let bytes = fs::read(&file).unwrap();
        assert!(
            bytes.len() >= 64 && &bytes[..4] == b"LSVS" && bytes[4] == 2,
            "{} has no version 2 segment header",
            file.display()
        );
        let mut at = 4096;
        while at + 64 <= bytes.len() && &bytes[at..at + 4] == b"LSVF" {
            let frame = &bytes[at..];
            let records = usize::from(u16::from_le_bytes([frame[6], frame[7]]));
            let frame_bytes = u32::from_le_bytes(frame[24..28].try_into().unwrap());
            for header in frame[64..64 + 64 * records].chunks_exact(64) {
                let kind = header[0];
                if kind == 4 {
                    continue;
                }
                let entry = found.entry(hex::encode(&header[24..40])).or_default();
                entry.0 += 1;
                if kind == 1 {
                    entry.1 += u64::from(u32::from_le_bytes(header[4..8].try_into().unwrap()));
                }
            }
            at += frame_bytes as usize;
        }
    }
    found
}
