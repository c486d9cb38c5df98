//! Appending: records into a head's segment as frames, then into the
//! index under the head's lock (so each head's records enter the index in
//! file order).
//!
//! An append is a stream ([`AppendStream`]): the caller pushes its records
//! one at a time as it finishes encrypting them, and each payload goes out
//! at once (writing direct, through the head's io_uring: in flight while
//! the caller encrypts the next; buffered, one `pwritev` per run of
//! payloads). A frame's meta area (record headers, block tables, MACs)
//! follows once all of its records are pushed; the append returns when
//! every write has completed. A crash in between leaves a frame whose meta
//! area is not there yet: a torn tail, as a torn write would.
//!
//! Every frame is written 4 KiB-aligned in file offset, length and memory:
//! meta areas are built in aligned buffers, and payloads go out from the
//! caller's memory when it is aligned (a volume's write buffers are, see
//! `aligned`), else through one aligned copy (a frame of 512-byte blocks
//! whose payloads are not whole 4 KiB units: of its whole payload area,
//! written with its meta).

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::super::StoreError;
use super::super::checkpoint::HeadPosition;
use super::super::io::{
    self,
    direct::{self, IoMode},
};
use super::super::macs::signing_key;
use super::super::record::{RecordHeader, RecordKind};
use super::super::segment::{SegmentHeaderFields, SegmentVersion, V2_FIRST_FRAME};
use super::super::table::TableFormat;
use super::append_stream::{AppendStream, Writer};
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

/// What one record of an append will be, known before its payload is:
/// enough to place it in its frame ([`Log::append_streamed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordShape {
    /// Record kind (not `Seal`).
    pub kind: RecordKind,
    /// Blocks covered.
    pub block_count: u32,
}

impl From<&AppendRecord<'_>> for RecordShape {
    fn from(record: &AppendRecord<'_>) -> Self {
        Self {
            kind: record.kind,
            block_count: record.block_count,
        }
    }
}

impl Log {
    /// Appends `records` through guest head `head` and puts them in the
    /// index, in order. When this returns Ok the records are in the
    /// kernel: they survive a crash of this process, not yet a power cut.
    /// A head the log does not have is an error.
    pub fn append(&self, head: HeadId, records: &[AppendRecord<'_>]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        self.append_streamed(head, &shapes_of(records), |stream| {
            records.iter().for_each(|r| stream.push(*r));
            Ok::<_, StoreError>(())
        })
    }

    /// [`Log::append`] for a caller that makes its records one after the
    /// other (encrypting them): `shapes` says what they will be, and `body`
    /// pushes each to the stream as soon as it is ready, its payload going
    /// to the device while `body` makes the next. The records enter the
    /// index once every write is done; if `body` or a write fails, none
    /// does.
    ///
    /// # Panics
    /// If `shapes` is empty, or `body` pushes other records than `shapes`
    /// says (both the caller's bugs; nothing is changed then).
    pub fn append_streamed<'a, R, E: From<StoreError>>(
        &self,
        head: HeadId,
        shapes: &[RecordShape],
        body: impl FnOnce(&mut AppendStream<'_, 'a>) -> Result<R, E>,
    ) -> Result<R, E> {
        let heads = self.config.heads.max(1);
        if head.0 >= heads {
            return Err(StoreError::NoSuchHead { head, heads }.into());
        }
        self.append_on(head.0, shapes, body).map(|(r, _)| r)
    }

    /// Appends through the compaction head.
    pub(super) fn append_compacted(
        &self,
        records: &[AppendRecord<'_>],
    ) -> Result<Vec<RecordPosition>, StoreError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let shapes = shapes_of(records);
        self.append_on(self.compaction_head(), &shapes, |stream| {
            records.iter().for_each(|r| stream.push(*r));
            Ok::<_, StoreError>(())
        })
        .map(|(_, positions)| positions)
    }

    /// Appends through head `head_index` the records `body` pushes (of
    /// `shapes`); returns what `body` returned and where each record went.
    fn append_on<'a, R, E: From<StoreError>>(
        &self,
        head_index: usize,
        shapes: &[RecordShape],
        body: impl FnOnce(&mut AppendStream<'_, 'a>) -> Result<R, E>,
    ) -> Result<(R, Vec<RecordPosition>), E> {
        if self.config.read_only {
            return Err(StoreError::ReadOnly.into());
        }
        assert!(!shapes.is_empty(), "an append of no records");
        // Records without payload are MACed under the current key.
        let signer = match &self.config.macs {
            Some(keys) => Some(signing_key(keys.as_ref())?),
            None => None,
        };
        let mut head = self.heads[head_index].lock_or_recover();
        self.ensure_segment(&mut head)?;
        let fields: &mut Head = &mut head;
        let open = fields.open.as_ref().expect("ensure_segment opened one");
        let (start, segment_id, last_mac) = (open.offset, open.id, open.last_mac);
        let file = Arc::clone(&open.file);
        let writer = match fields.ring.as_mut() {
            Some(ring) => Writer::Ring(ring.stream(file.frame_writer())),
            None => Writer::Plain {
                file: file.frame_writer(),
                result: Ok(()),
            },
        };
        let mut stream = AppendStream::new(self, writer, shapes, segment_id, start, signer);
        let outcome = match body(&mut stream) {
            Ok(r) => stream
                .complete(last_mac)
                .map(|done| (r, done))
                .map_err(E::from),
            Err(error) => Err(error),
        };
        drop(stream);
        let (r, done) = match outcome {
            Ok(both) => both,
            Err(error) => {
                self.take_back(fields, start);
                return Err(error);
            }
        };
        for (offset, meta) in &done.metas {
            self.meta_cache.insert(segment_id, *offset, meta.padded());
        }
        let open = fields.open.as_mut().expect("still open");
        open.offset = done.end;
        open.records += shapes.len() as u64;
        open.last_mac = done.last_mac;
        let end = HeadPosition {
            segment_id,
            offset: done.end,
            records: open.records,
            last_mac: open.last_mac,
        };
        let mut state = self.write_state();
        for record in &done.placed {
            state.apply(record);
        }
        state.head_positions[head_index] = Some(end);
        drop(state);
        drop(head);
        self.bytes_since_checkpoint
            .fetch_add(done.end - start, Ordering::Relaxed);
        self.bytes_appended
            .fetch_add(done.end - start, Ordering::Relaxed);
        let positions = done
            .placed
            .iter()
            .map(|p| RecordPosition {
                segment_id: p.segment_id,
                frame_offset: p.position,
                table_offset: p.table_offset,
                payload_offset: p.payload_offset,
            })
            .collect();
        Ok((r, positions))
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
    pub(super) fn header_for(
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
        // A spare is zeroed before the index lock: that can take a while.
        let spare = self.zeroed_spare();
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
        let file = self.new_segment_file(spare, id, &fields)?;
        // Appends then write inside the file (see `io::preallocate`); the
        // seal cuts what the head did not use. Without it they still work.
        if let Err(error) = io::preallocate(&file, self.config.segment_bytes) {
            tracing::debug!(segment_id = id, %error, "segment not preallocated");
        }
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

/// What `records` will be, record by record.
fn shapes_of(records: &[AppendRecord<'_>]) -> Vec<RecordShape> {
    records.iter().map(RecordShape::from).collect()
}

/// The block table of `record`: the caller's (checked in debug builds)
/// or one built here; empty without payload.
pub(super) fn block_table<'a>(record: &AppendRecord<'a>, block_bytes: usize) -> Cow<'a, [u8]> {
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
