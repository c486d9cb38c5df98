//! Appending: records into a head's segment as frames with one `pwritev`
//! (or, writing direct, through the head's io_uring: the append cut into
//! writes in flight together), then into the index under the head's lock
//! (so each head's records enter the index in file order).
//!
//! Every frame is written 4 KiB-aligned in file offset, length and memory:
//! meta areas are built in aligned buffers, and payloads go out from the
//! caller's memory when it is aligned (a volume's write buffers are, see
//! `aligned`), else through one aligned copy of the frame's payload area.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::super::StoreError;
use super::super::aligned::{ALIGN, AlignedBuf};
use super::super::checkpoint::HeadPosition;
use super::super::frame::{
    BuiltMeta, FRAME_PAYLOAD_BYTES_MAX, FRAME_RECORDS_MAX, FrameRecord, build_meta,
};
use super::super::io::direct::{self, IoMode};
use super::super::io::pwritev_all;
use super::super::macs::{RecordMacInput, record_mac, signing_key};
use super::super::record::{PlacedRecord, RecordHeader, RecordKind};
use super::super::segment::{self, SegmentHeaderFields, SegmentVersion, V2_FIRST_FRAME};
use super::super::table::TableFormat;
use super::durability::PendingSeal;
use super::{Head, HeadId, Log, OpenSegment, SegmentFile};
use crate::crypto::KeyId;
use crate::sync::{LockOrRecover, RwLockOrRecover};

/// One record to append. The payload is ciphertext for `Data`, empty else.
#[derive(Clone, Copy, Debug)]
pub struct AppendRecord<'a> {
    /// Record kind (not `Seal`).
    pub kind: RecordKind,
    /// Sequence number from [`Log::next_seq`].
    pub seq: u64,
    /// First block.
    pub lba: u64,
    /// Blocks covered.
    pub block_count: u32,
    /// Key of the payload (ignored without payload).
    pub key_id: KeyId,
    /// Ciphertext, `block_count` blocks, for `Data`. Written straight from
    /// this memory when it is 4 KiB-aligned in address and length (an
    /// [`super::super::AlignedBuf`]'s is), else copied once.
    pub payload: &'a [u8],
    /// The payload's block table in the version 2 layout
    /// ([`TableFormat::V2`]), if the caller built it while the data was
    /// hot; else the log does.
    pub table: Option<&'a [u8]>,
    /// Ciphertext copied unchanged from another record (compaction), not
    /// newly encrypted: it does not count toward the key's encrypted bytes.
    pub moved: bool,
}

/// Where an appended record went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordPosition {
    /// The segment it is in.
    pub segment_id: u64,
    /// Offset of its frame in the segment.
    pub frame_offset: u64,
    /// Offset of its block table in the segment (data only).
    pub table_offset: u64,
    /// Offset of its ciphertext in the segment (data only).
    pub payload_offset: u64,
}

/// One frame of an append, built and ready to write.
struct BuiltFrame<'a> {
    meta: BuiltMeta,
    /// The payloads as they are written: the callers' slices, or one copy.
    payloads: Payloads<'a>,
}

enum Payloads<'a> {
    Direct(Vec<&'a [u8]>),
    Copied(AlignedBuf),
}

impl Log {
    /// Appends `records` (one `pwritev`) through guest head `head` and puts
    /// them in the index, in order. When this returns Ok the records are in
    /// the kernel: they survive a crash of this process, not yet a power
    /// cut. A head the log does not have is an error.
    pub fn append(&self, head: HeadId, records: &[AppendRecord<'_>]) -> Result<(), StoreError> {
        let heads = self.config.heads.max(1);
        if head.0 >= heads {
            return Err(StoreError::NoSuchHead { head, heads });
        }
        self.append_on(head.0, records).map(|_| ())
    }

    /// Appends through the compaction head.
    pub(super) fn append_compacted(
        &self,
        records: &[AppendRecord<'_>],
    ) -> Result<Vec<RecordPosition>, StoreError> {
        self.append_on(self.compaction_head(), records)
    }

    /// Appends through head `head_index`; returns where each record went.
    fn append_on(
        &self,
        head_index: usize,
        records: &[AppendRecord<'_>],
    ) -> Result<Vec<RecordPosition>, StoreError> {
        if self.config.read_only {
            return Err(StoreError::ReadOnly);
        }
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let block_bytes = 1usize << self.config.block_shift;
        // Records without payload are MACed under the current key.
        let signer = match &self.config.macs {
            Some(keys) => Some(signing_key(keys.as_ref())?),
            None => None,
        };
        let tables: Vec<Cow<'_, [u8]>> = records
            .iter()
            .map(|r| block_table(r, block_bytes))
            .collect();
        // Every check on the records before any lock is taken (see the
        // poisoning note on `Log`).
        let frame_records: Vec<FrameRecord<'_>> = records
            .iter()
            .zip(&tables)
            .map(|(r, table)| FrameRecord {
                header: self.header_for(r, block_bytes, signer),
                table,
                payload: r.payload,
                mac: [0; 16],
            })
            .collect();
        let frames = frame_ranges(&frame_records);
        let mut head = self.heads[head_index].lock_or_recover();
        self.ensure_segment(&mut head)?;
        let fields: &mut Head = &mut head;
        let open = fields.open.as_mut().expect("ensure_segment opened one");
        let start = open.offset;
        let mut built = Vec::with_capacity(frames.len());
        let mut placed = Vec::with_capacity(records.len());
        let mut offset = start;
        let mut last_mac = open.last_mac;
        for range in frames {
            let mut frame = build_frame(
                open.id,
                offset,
                self.config.block_shift,
                &frame_records[range.clone()],
            );
            if let Some(keys) = &self.config.macs {
                let records = &frame_records[range.clone()];
                frame.meta.sign(|index, header, table| {
                    let input = RecordMacInput {
                        volume_id: &self.config.volume_id,
                        segment_id: open.id,
                        previous: &last_mac,
                        header,
                        table,
                    };
                    last_mac = record_mac(keys.as_ref(), &records[index].header.key_id, &input)?;
                    Ok::<_, StoreError>(last_mac)
                })?;
            }
            for (record, slots) in frame_records[range].iter().zip(&frame.meta.layout.slots) {
                placed.push(PlacedRecord {
                    header: record.header,
                    segment_id: open.id,
                    position: offset,
                    table_offset: offset + slots.table.start as u64,
                    payload_offset: offset + slots.payload.start as u64,
                });
            }
            offset += frame.meta.layout.frame_bytes as u64;
            built.push(frame);
        }
        let mut slices: Vec<&[u8]> = Vec::with_capacity(records.len() + 2 * built.len());
        for frame in &built {
            slices.push(frame.meta.meta.padded());
            match &frame.payloads {
                Payloads::Direct(parts) => slices.extend(parts.iter().copied()),
                Payloads::Copied(area) => slices.push(area.padded()),
            }
        }
        debug_assert!(slices.iter().all(|s| s.len().is_multiple_of(ALIGN)));
        let writer = open.file.frame_writer();
        let written = match fields.ring.as_mut() {
            Some(ring) => ring.write_all(writer, &slices, start),
            None => pwritev_all(writer, &slices, start),
        };
        if let Err(error) = written {
            let path = self.segment_path(open.id);
            self.take_back(fields, start);
            return Err(StoreError::io(&path, error));
        }
        let mut frame_offset = start;
        for frame in &built {
            let meta = frame.meta.meta.padded();
            self.meta_cache.insert(open.id, frame_offset, meta);
            frame_offset += frame.meta.layout.frame_bytes as u64;
        }
        open.offset = offset;
        open.records += records.len() as u64;
        open.last_mac = last_mac;
        let end = HeadPosition {
            segment_id: open.id,
            offset,
            records: open.records,
            last_mac: open.last_mac,
        };
        let mut state = self.write_state();
        for record in &placed {
            state.apply(record);
        }
        state.head_positions[head_index] = Some(end);
        drop(state);
        drop(head);
        self.bytes_since_checkpoint
            .fetch_add(offset - start, Ordering::Relaxed);
        Ok(placed
            .iter()
            .map(|p| RecordPosition {
                segment_id: p.segment_id,
                frame_offset: p.position,
                table_offset: p.table_offset,
                payload_offset: p.payload_offset,
            })
            .collect())
    }

    /// After a failed write at `start` of the head's segment: takes back
    /// whatever part landed so the segment stays a clean log; if even that
    /// fails, abandons the segment, to be sealed at `start` (what follows
    /// a seal is ignored).
    fn take_back(&self, head: &mut Head, start: u64) {
        let open = head.open.as_ref().expect("an open segment failed");
        self.meta_cache.forget_from(open.id, start);
        if open.file.file.set_len(start).is_err() {
            let abandoned = head.open.take().expect("checked above");
            self.pending.lock_or_recover().push(PendingSeal {
                id: abandoned.id,
                file: abandoned.file,
                end: start,
                records: abandoned.records,
                last_mac: abandoned.last_mac,
            });
        }
    }

    /// The header of `record`; asserts what the caller promised (kind,
    /// size, range). A record without payload names `signer`, the key its
    /// MAC is made with, if the log has MACs.
    fn header_for(
        &self,
        record: &AppendRecord<'_>,
        block_bytes: usize,
        signer: Option<KeyId>,
    ) -> RecordHeader {
        assert!(
            record.kind != RecordKind::Seal,
            "seal records are the log's own"
        );
        assert!(record.block_count > 0);
        assert!(record.lba + u64::from(record.block_count) <= self.config.capacity_blocks);
        let data = record.kind == RecordKind::Data;
        let payload_expected = if data {
            record.block_count as usize * block_bytes
        } else {
            0
        };
        assert_eq!(record.payload.len(), payload_expected, "payload size");
        RecordHeader {
            kind: record.kind,
            seq: record.seq,
            lba: record.lba,
            block_count: record.block_count,
            block_shift: self.config.block_shift,
            key_id: if data {
                record.key_id
            } else {
                signer.unwrap_or_default()
            },
            moved: record.moved && data,
        }
    }

    /// Makes sure the head has an open segment with room, sealing a full one
    /// and starting the next.
    fn ensure_segment(&self, head: &mut Head) -> Result<(), StoreError> {
        if let Some(open) = &head.open {
            if open.offset < self.config.segment_bytes {
                return Ok(());
            }
            // No sync here: the guest has not asked for durability, and a
            // sync in the write path would make appends as slow as the disk.
            // The next flush syncs and seals it (a seal must follow a sync).
            let full = head.open.take().expect("checked above");
            self.pending.lock_or_recover().push(PendingSeal {
                id: full.id,
                file: full.file,
                end: full.offset,
                records: full.records,
                last_mac: full.last_mac,
            });
        }
        // Allocate, create and publish the segment under the index lock, so a
        // checkpoint sees either none of it or all of it.
        let mut state = self.write_state();
        let id = state.segment_id_next;
        let fields = SegmentHeaderFields {
            head: head.id,
            block_shift: self.config.block_shift,
            macs: self.config.macs.is_some(),
            writer_epoch: 0,
        };
        let file =
            segment::create_segment(&self.segments_dir, id, &self.config.volume_id, &fields)?;
        // The directory entry becomes durable at the next flush.
        self.dir_dirty.store(true, Ordering::SeqCst);
        let direct = match self.io_mode() {
            IoMode::Direct => {
                let path = self.segment_path(id);
                Some(direct::open_direct(&path, true).map_err(|e| StoreError::io(&path, e))?)
            }
            IoMode::Buffered => None,
        };
        state.segment_id_next = id + 1;
        state.head_positions[head.id as usize] = Some(HeadPosition {
            segment_id: id,
            offset: V2_FIRST_FRAME,
            ..HeadPosition::default()
        });
        drop(state);
        let file = Arc::new(SegmentFile {
            file,
            direct,
            version: SegmentVersion::V2,
            macs: self.config.macs.is_some(),
        });
        self.files.write_or_recover().insert(id, Arc::clone(&file));
        head.open = Some(OpenSegment {
            id,
            file,
            offset: V2_FIRST_FRAME,
            records: 0,
            last_mac: [0; 16],
        });
        Ok(())
    }
}

/// The frames an append of `records` is cut into: as few as the frame
/// limits (records per frame, payload bytes per frame) allow.
fn frame_ranges(records: &[FrameRecord<'_>]) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (index, record) in records.iter().enumerate() {
        let payload = record.payload.len() as u64;
        let full = index - start == FRAME_RECORDS_MAX || bytes + payload > FRAME_PAYLOAD_BYTES_MAX;
        if index > start && full {
            ranges.push(start..index);
            (start, bytes) = (index, 0);
        }
        bytes += payload;
    }
    ranges.push(start..records.len());
    ranges
}

/// Builds the frame of `records` at `offset` of segment `segment_id`.
fn build_frame<'a>(
    segment_id: u64,
    offset: u64,
    block_shift: u8,
    records: &[FrameRecord<'a>],
) -> BuiltFrame<'a> {
    let meta = build_meta(segment_id, offset, block_shift, records);
    let parts: Vec<&'a [u8]> = records
        .iter()
        .map(|r| r.payload)
        .filter(|p| !p.is_empty())
        .collect();
    let aligned = parts
        .iter()
        .all(|p| p.len().is_multiple_of(ALIGN) && (p.as_ptr() as usize).is_multiple_of(ALIGN));
    let payloads = if aligned {
        Payloads::Direct(parts)
    } else {
        let area_bytes = meta.layout.frame_bytes - meta.layout.payload_area;
        let mut area = AlignedBuf::zeroed(area_bytes);
        let mut at = 0;
        for part in parts {
            area[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        Payloads::Copied(area)
    };
    BuiltFrame { meta, payloads }
}

/// The block table of `record`: the caller's (checked in debug builds)
/// or one built here; empty without payload.
fn block_table<'a>(record: &AppendRecord<'a>, block_bytes: usize) -> Cow<'a, [u8]> {
    match (record.kind, record.table) {
        (RecordKind::Data, Some(given)) => {
            assert_eq!(
                given.len() as u64,
                TableFormat::V2.table_bytes(u64::from(record.block_count)),
                "block table size"
            );
            debug_assert!(
                TableFormat::V2
                    .first_corrupt_block(record.payload, block_bytes, given)
                    .is_none()
            );
            Cow::Borrowed(given)
        }
        (RecordKind::Data, None) => TableFormat::V2.build(record.payload, block_bytes).into(),
        _ => Cow::Borrowed(&[][..]),
    }
}
