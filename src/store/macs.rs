//! The log's record and seal MACs (integrity at rest): what each one
//! covers, and the keys the log signs and checks them with.
//!
//! The store holds no keys: a volume whose records are authenticated hands
//! its log a [`MacKeys`] (its keyring). Records are MACed under the key
//! their header names (a data record's: the key its payload is under;
//! other kinds: the volume's current key), seals under the current key.
//! A keyless open has no current key: it can check nothing and sign
//! nothing, so it is read-only.
//!
//! Record MAC = `MAC(2, volume id || le64(segment id) || previous record
//! MAC in the segment (zero for the first) || record header bytes 0..48 ||
//! the record's block table)`: the chain makes a dropped, reordered or
//! re-inserted record show, the ids a record moved in from another segment
//! or volume. Seal MAC = `MAC(3, volume id || le64(segment id) ||
//! le64(seal frame offset) || key id || seal body)`.

use super::StoreError;
use super::frame::Mac;
use crate::crypto::KeyId;
use crate::crypto::mac::MacDomain;

/// The keys a log signs and checks MACs with (a volume's keyring).
pub trait MacKeys: Send + Sync + std::fmt::Debug {
    /// The key seals, checkpoints and records without payload are MACed
    /// under; `None` when the volume was opened without a key.
    fn current(&self) -> Option<KeyId>;

    /// `MAC(domain, parts concatenated)` under the MAC key of key `key`;
    /// `None` when the volume does not hold that key.
    fn mac(&self, key: &KeyId, domain: MacDomain, parts: &[&[u8]]) -> Option<Mac>;

    /// Whether every MAC must be there: a key of the volume was made for
    /// an authenticated volume (its wrapped blob says so), so a checkpoint,
    /// snapshot index or replayed segment without MACs was stripped of
    /// them, not written before the log had them.
    fn required(&self) -> bool;
}

/// Bytes of a record header a record MAC covers (all but the MAC).
pub const SIGNED_HEADER_BYTES: usize = 48;

/// What a record MAC is computed over, besides the key.
#[derive(Clone, Copy, Debug)]
pub struct RecordMacInput<'a> {
    /// The volume.
    pub volume_id: &'a [u8; 16],
    /// The segment the record is in.
    pub segment_id: u64,
    /// MAC of the record before it in the segment (zero for the first).
    pub previous: &'a Mac,
    /// Its header's bytes 0..48.
    pub header: &'a [u8],
    /// Its block table (empty without payload).
    pub table: &'a [u8],
}

/// The record MAC of `input` under key `key`.
pub fn record_mac(
    keys: &dyn MacKeys,
    key: &KeyId,
    input: &RecordMacInput<'_>,
) -> Result<Mac, StoreError> {
    let segment = input.segment_id.to_le_bytes();
    let parts: [&[u8]; 5] = [
        input.volume_id,
        &segment,
        input.previous,
        &input.header[..SIGNED_HEADER_BYTES],
        input.table,
    ];
    keys.mac(key, MacDomain::Record, &parts)
        .ok_or(StoreError::MacKeyMissing { key_id: *key })
}

/// The seal MAC of the seal frame at `offset` of segment `segment_id`,
/// under key `key`, over its encoded `body`.
pub fn seal_mac(
    keys: &dyn MacKeys,
    key: &KeyId,
    volume_id: &[u8; 16],
    segment_id: u64,
    offset: u64,
    body: &[u8],
) -> Result<Mac, StoreError> {
    let parts: [&[u8]; 5] = [
        volume_id,
        &segment_id.to_le_bytes(),
        &offset.to_le_bytes(),
        &key.0,
        body,
    ];
    keys.mac(key, MacDomain::Seal, &parts)
        .ok_or(StoreError::MacKeyMissing { key_id: *key })
}

/// The MAC of the snapshot index named `name` (its file name without
/// `.index`) whose [`mac_input`](super::checkpoint::mac_input) is `input`,
/// under key `key`: `MAC(5, le64(len(name)) || name || input)`. The domain
/// keeps a checkpoint from standing in for an index, the name one
/// snapshot's index from standing in for another's.
pub fn snapshot_index_mac(
    keys: &dyn MacKeys,
    key: &KeyId,
    name: &str,
    input: &[u8],
) -> Option<Mac> {
    let length = (name.len() as u64).to_le_bytes();
    keys.mac(
        key,
        MacDomain::SnapshotIndex,
        &[&length, name.as_bytes(), input],
    )
}

/// The current key of `keys`, which signing needs.
pub fn signing_key(keys: &dyn MacKeys) -> Result<KeyId, StoreError> {
    keys.current().ok_or(StoreError::NoSigningKey)
}
