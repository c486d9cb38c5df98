//! Checking the MACs of what replay found, before any of it is trusted:
//! each record's MAC along its segment's chain (from the checkpointed head
//! position, or from the segment's start), and the seal's MAC and what it
//! closes. A frame whose checksums hold but whose MAC fails is not a torn
//! write: opening refuses it, naming the segment and offset.
//!
//! Checkpoints are checked the same way when loaded (a MAC failure on a
//! checkpoint whose CRCs hold: warn, and fall back to an older one), and
//! a log whose records carry MACs is refused when `volume.json` says
//! `crc` (its `integrity` field removed: a downgrade).
//!
//! A keyless open has nothing to check with: it writes nothing, and
//! reports the MACs as not verified.

use std::path::Path;

use super::super::StoreError;
use super::super::checkpoint::{CheckpointData, mac_input};
use super::super::frame::{FRAME_HEADER_BYTES, Mac, ParsedMeta};
use super::super::macs::{MacKeys, RecordMacInput, record_mac, seal_mac};
use super::super::record::RECORD_HEADER_BYTES;
use super::super::scan::{ScanOutcome, SealFound, frame_meta};
use super::super::segment::SegmentVersion;
use super::Log;
use super::replay::SegmentScan;
use crate::crypto::mac::MacDomain;
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
            return Ok(());
        }
        if !file.macs {
            // Written before the log had MACs, or stripped of them.
            if segment_id >= self.read_state().mac_floor {
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
        if !data.macs {
            // Written before the log had MACs.
            return Ok(data);
        }
        let bad = |reason| StoreError::BadCheckpoint {
            path: path.to_path_buf(),
            reason,
        };
        let input = mac_input(bytes);
        match keys.mac(&data.mac_key_id, MacDomain::Checkpoint, &[&input]) {
            Some(mac) if mac == data.mac => Ok(data),
            Some(_) => Err(bad("checkpoint MAC mismatch")),
            None => Err(bad("signed with a key the volume does not hold")),
        }
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
