//! Checking the MACs of what replay found, before any of it is trusted:
//! each record's MAC along its segment's chain (from the checkpointed head
//! position, or from the segment's start), each block's tag, and the
//! seal's MAC and what it closes. A frame whose checksums hold but whose
//! MAC or a block's tag fails is not a torn write: opening refuses it,
//! naming the segment and the frame's offset, wherever the frame is (the
//! last one of an unsealed tail too: cutting it as torn would hide the
//! change, and no torn write leaves checksums that hold).
//!
//! Checkpoints are checked the same way when loaded (a MAC failure on a
//! checkpoint whose CRCs hold: warn, and fall back to an older one), and
//! a log whose records carry MACs is refused when `volume.json` says
//! `crc` (its `integrity` field removed: a downgrade).
//!
//! When a key of the volume was made for an authenticated volume
//! ([`MacKeys::required`]), nothing may lack its MACs: a checkpoint
//! without one is skipped like a damaged one, a replayed segment without
//! them (or of version 1) refuses the open. Otherwise such files are taken
//! as written before the log had MACs.
//!
//! A keyless open has nothing to check with: it writes nothing, and
//! reports the MACs as not verified.

use std::path::Path;

use super::super::StoreError;
use super::super::checkpoint::{CheckpointData, mac_input};
use super::super::frame::{FRAME_HEADER_BYTES, Mac, ParsedMeta};
use super::super::macs::{MacKeys, RecordMacInput, record_mac, seal_mac, snapshot_index_mac};
use super::super::record::{RECORD_HEADER_BYTES, RecordKind};
use super::super::scan::{ScanOutcome, SealFound, frame_meta};
use super::super::segment::SegmentVersion;
use super::super::table::V2_ENTRY_BYTES;
use super::Log;
use super::replay::SegmentScan;
use super::snapshot_index::index_name;
use crate::crypto::mac::{MacDomain, TAG_BYTES};
use crate::sync::RwLockOrRecover;

/// Where a segment's record chain stands while it is checked.
struct Chain {
    segment_id: u64,
    last_mac: Mac,
    records: u64,
}

impl Log {
    /// Checks the MACs of the records and seal `outcome` found in the
    /// segment `scan` names (see the module docs).
    pub(super) fn authenticate(
        &self,
        scan: SegmentScan,
        outcome: &ScanOutcome,
    ) -> Result<(), StoreError> {
        let Some(keys) = &self.config.macs else {
            return Ok(());
        };
        if keys.current().is_none() {
            return Ok(());
        }
        let segment_id = scan.segment_id;
        let file = self.segment_file(segment_id)?;
        if file.version != SegmentVersion::V2 {
            if keys.required() {
                // Only volumes without MACs ever had version 1 segments.
                return Err(StoreError::Unauthentic {
                    segment_id,
                    offset: 0,
                    reason: "version 1 segment (no MACs) in a volume whose keys require MACs",
                });
            }
            return Ok(());
        }
        if !file.macs {
            // Written before the log had MACs, or stripped of them.
            if keys.required() || segment_id >= self.read_state().mac_floor {
                return Err(StoreError::Unauthentic {
                    segment_id,
                    offset: 0,
                    reason: "segment without MACs where every segment carries them",
                });
            }
            return Ok(());
        }
        let mut chain = Chain {
            segment_id,
            last_mac: scan.resume.map_or([0; 16], |head| head.last_mac),
            records: scan.resume.map_or(0, |head| head.records),
        };
        let mut frames: Vec<u64> = outcome.records.iter().map(|r| r.record.position).collect();
        frames.dedup();
        for offset in frames {
            let meta = self.authenticated_meta(&file.file, segment_id, offset)?;
            self.follow_chain(keys.as_ref(), &mut chain, &meta, offset)?;
            self.check_block_tags(keys.as_ref(), (&file.file, segment_id), &meta, offset)?;
        }
        if let Some(seal) = &outcome.seal {
            let meta = self.authenticated_meta(&file.file, segment_id, seal.offset)?;
            self.check_seal(keys.as_ref(), &chain, &meta, seal)?;
        }
        Ok(())
    }

    /// Checks the MAC of the checkpoint `data` decoded from `bytes` (read
    /// from `path`), when it has one and the log has the keys.
    pub(super) fn authenticate_checkpoint(
        &self,
        path: &Path,
        bytes: &[u8],
        data: CheckpointData,
    ) -> Result<CheckpointData, StoreError> {
        let Some(keys) = self.config.macs.as_ref().filter(|k| k.current().is_some()) else {
            return Ok(data);
        };
        let bad = |reason| StoreError::BadCheckpoint {
            path: path.to_path_buf(),
            reason,
        };
        if !data.macs {
            if keys.required() {
                return Err(bad(
                    "checkpoint without a MAC in a volume whose keys require MACs (stripped?)",
                ));
            }
            // Written before the log had MACs.
            return Ok(data);
        }
        let input = mac_input(bytes);
        match keys.mac(&data.mac_key_id, MacDomain::Checkpoint, &[&input]) {
            Some(mac) if mac == data.mac => Ok(data),
            Some(_) => Err(bad("checkpoint MAC mismatch")),
            None => Err(bad("signed with a key the volume does not hold")),
        }
    }

    /// Reads and checks the snapshot index at `path` with the log's keys
    /// (see [`authenticate_snapshot_index`]).
    pub fn read_snapshot_index(&self, path: &Path) -> Result<CheckpointData, StoreError> {
        let bytes = std::fs::read(path).map_err(|e| StoreError::io(path, e))?;
        let data = super::super::checkpoint::decode(path, &self.config.volume_id, &bytes)?;
        authenticate_snapshot_index(self.config.macs.as_deref(), path, &bytes, data)
    }

    /// Refuses a log whose checkpoint or segments say its records carry
    /// MACs when it was opened as one without (`volume.json` says `crc`).
    pub(super) fn check_integrity_binding(
        &self,
        checkpoint: &CheckpointData,
    ) -> Result<(), StoreError> {
        if self.config.macs.is_some() {
            return Ok(());
        }
        let flagged = self.files.read_or_recover().values().any(|f| f.macs);
        if checkpoint.macs || flagged {
            return Err(StoreError::IntegrityDowngrade);
        }
        Ok(())
    }

    /// The meta area of a frame the scan accepted, read again.
    fn authenticated_meta(
        &self,
        file: &std::fs::File,
        segment_id: u64,
        offset: u64,
    ) -> Result<ParsedMeta, StoreError> {
        frame_meta(file, segment_id, offset)
            .map_err(|e| StoreError::io(&self.segment_path(segment_id), e))?
            .map_err(|reason| StoreError::Unauthentic {
                segment_id,
                offset,
                reason,
            })
    }

    /// Checks each record MAC of the frame `meta` at `offset` as the next
    /// links of `chain`.
    fn follow_chain(
        &self,
        keys: &dyn MacKeys,
        chain: &mut Chain,
        meta: &ParsedMeta,
        offset: u64,
    ) -> Result<(), StoreError> {
        for (index, record) in meta.records.iter().enumerate() {
            let at = FRAME_HEADER_BYTES + index * RECORD_HEADER_BYTES;
            let input = RecordMacInput {
                volume_id: &self.config.volume_id,
                segment_id: chain.segment_id,
                previous: &chain.last_mac,
                header: &meta.meta[at..at + RECORD_HEADER_BYTES],
                table: meta.table(index),
            };
            let expected = record_mac(keys, &record.header.key_id, &input)?;
            if expected != record.mac {
                return Err(StoreError::Unauthentic {
                    segment_id: chain.segment_id,
                    offset,
                    reason: "record MAC mismatch",
                });
            }
            chain.last_mac = expected;
            chain.records += 1;
        }
        Ok(())
    }

    /// Checks the tag of every block of the data records of the frame
    /// `meta` at `offset` of `segment`: a block whose CRC holds but whose
    /// tag does not was changed by someone without the key (a torn write
    /// fails the CRC, which the scan checked first), and refuses the open.
    /// A block whose CRC fails is damage, left for its reads to report.
    fn check_block_tags(
        &self,
        keys: &dyn MacKeys,
        (file, segment_id): (&std::fs::File, u64),
        meta: &ParsedMeta,
        offset: u64,
    ) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt;
        for (index, record) in meta.records.iter().enumerate() {
            let header = &record.header;
            if header.kind != RecordKind::Data {
                continue;
            }
            let block_bytes = 1usize << header.block_shift;
            let mut payload = vec![0u8; header.payload_bytes() as usize];
            file.read_exact_at(&mut payload, offset + u64::from(record.payload_offset))
                .map_err(|e| StoreError::io(&self.segment_path(segment_id), e))?;
            let entries = meta.table(index).chunks_exact(V2_ENTRY_BYTES);
            for (block, (bytes, entry)) in
                payload.chunks_exact(block_bytes).zip(entries).enumerate()
            {
                if crc32c::crc32c(bytes).to_le_bytes() != entry[..4] {
                    continue;
                }
                let parts: [&[u8]; 3] = [
                    &header.seq.to_le_bytes(),
                    &(header.lba + block as u64).to_le_bytes(),
                    bytes,
                ];
                let mac = keys.mac(&header.key_id, MacDomain::Block, &parts).ok_or(
                    StoreError::MacKeyMissing {
                        key_id: header.key_id,
                    },
                )?;
                if mac[..TAG_BYTES] != entry[V2_ENTRY_BYTES - TAG_BYTES..] {
                    return Err(StoreError::Unauthentic {
                        segment_id,
                        offset,
                        reason: "a block's tag does not match its ciphertext (its CRC does)",
                    });
                }
            }
        }
        Ok(())
    }

    /// Checks the seal's MAC, and that it closes exactly the chain checked.
    fn check_seal(
        &self,
        keys: &dyn MacKeys,
        chain: &Chain,
        meta: &ParsedMeta,
        seal: &SealFound,
    ) -> Result<(), StoreError> {
        let unauthentic = |reason| StoreError::Unauthentic {
            segment_id: chain.segment_id,
            offset: seal.offset,
            reason,
        };
        let record = &meta.records[0];
        let (volume, id) = (&self.config.volume_id, chain.segment_id);
        let expected = seal_mac(
            keys,
            &record.header.key_id,
            volume,
            id,
            seal.offset,
            meta.table(0),
        )?;
        if expected != record.mac {
            return Err(unauthentic("seal MAC mismatch"));
        }
        let body = seal.body.expect("version 2 seals have bodies");
        if body.last_record_mac != chain.last_mac || body.records != chain.records {
            return Err(unauthentic(
                "the seal closes other records than the segment holds",
            ));
        }
        Ok(())
    }
}

/// Checks the MAC of the snapshot index `data` decoded from `bytes` (read
/// from `path`) with `keys` (the snapshot's, or the volume's); without keys
/// (a volume without MACs, or a keyless open) there is nothing to check.
/// An index without a MAC is one written before snapshot indexes had them,
/// unless a key requires MACs ([`MacKeys::required`]): then it was
/// stripped, and refused.
pub(super) fn authenticate_snapshot_index(
    keys: Option<&dyn MacKeys>,
    path: &Path,
    bytes: &[u8],
    data: CheckpointData,
) -> Result<CheckpointData, StoreError> {
    let Some(keys) = keys else {
        return Ok(data);
    };
    let bad = |reason| StoreError::BadCheckpoint {
        path: path.to_path_buf(),
        reason,
    };
    if !data.macs {
        return match keys.required() {
            true => Err(bad(
                "snapshot index without a MAC in a volume whose keys require MACs (stripped?)",
            )),
            false => Ok(data),
        };
    }
    let input = mac_input(bytes);
    match snapshot_index_mac(keys, &data.mac_key_id, &index_name(path), &input) {
        Some(mac) if mac == data.mac => Ok(data),
        Some(_) => Err(bad(
            "snapshot index MAC mismatch (changed, or another snapshot's)",
        )),
        None => Err(bad(
            "snapshot index signed with a key the snapshot does not hold",
        )),
    }
}
