//! Appending: records into a head's segment with one `pwritev`, then into
//! the index under the head's lock (so each head's records enter the index
//! in file order).

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::super::StoreError;
use super::super::io::pwritev_all;
use super::super::record::{
    RECORD_HEADER_BYTES, RecordHeader, RecordKind, block_checksums, checksum_table_bytes,
};
use super::super::segment::{self, SEGMENT_HEADER_BYTES};
use super::durability::PendingSeal;
use super::{Head, HeadId, Log, OpenSegment};
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
    /// Ciphertext, `block_count` blocks, for `Data`.
    pub payload: &'a [u8],
    /// The payload's block checksum table (see `record::block_checksums`),
    /// if the caller computed it while the data was hot; else the log does.
    pub checksums: Option<&'a [u8]>,
    /// Ciphertext copied unchanged from another record (compaction), not
    /// newly encrypted: it does not count toward the key's encrypted bytes.
    pub moved: bool,
}

/// Where an appended record went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordPosition {
    /// The segment it is in.
    pub segment_id: u64,
    /// Offset of its header in the segment.
    pub offset: u64,
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
        let block_bytes = 1usize << self.config.block_shift;
        let tables: Vec<Cow<'_, [u8]>> = records
            .iter()
            .map(|r| checksum_table(r, block_bytes))
            .collect();
        // Every check on the records before any lock is taken (see the
        // poisoning note on `Log`).
        let headers: Vec<RecordHeader> = records
            .iter()
            .zip(&tables)
            .map(|(r, table)| self.header_for(r, table, block_bytes))
            .collect();
        let encoded: Vec<[u8; RECORD_HEADER_BYTES]> = headers.iter().map(|h| h.encode()).collect();
        let mut slices: Vec<&[u8]> = Vec::with_capacity(records.len() * 3);
        for ((header, table), record) in encoded.iter().zip(&tables).zip(records) {
            slices.extend([&header[..], &table[..], record.payload]);
        }
        let total: u64 = slices.iter().map(|s| s.len() as u64).sum();
        let mut head = self.heads[head_index].lock_or_recover();
        self.ensure_segment(&mut head)?;
        let open = head.open.as_mut().expect("ensure_segment opened one");
        let start = open.offset;
        if let Err(error) = pwritev_all(&open.file, &slices, start) {
            let path = self.segment_path(open.id);
            // Take back whatever part landed so the segment stays a clean log;
            // if even that fails, abandon the segment (replay cuts the tail).
            if open.file.set_len(start).is_err() {
                let abandoned = PendingSeal {
                    id: open.id,
                    file: Arc::clone(&open.file),
                    end: start,
                    seal: false,
                };
                self.pending.lock_or_recover().push(abandoned);
                head.open = None;
            }
            return Err(StoreError::io(&path, error));
        }
        open.offset += total;
        let (segment_id, end) = (open.id, open.offset);
        let mut state = self.write_state();
        let mut offset = start;
        let mut positions = Vec::with_capacity(records.len());
        for header in &headers {
            state.apply(segment_id, offset, header);
            positions.push(RecordPosition { segment_id, offset });
            offset += header.record_bytes();
        }
        state.head_positions[head_index] = Some((segment_id, end));
        drop(state);
        drop(head);
        self.bytes_since_checkpoint
            .fetch_add(total, Ordering::Relaxed);
        Ok(positions)
    }

    /// The header of `record`, whose checksum table is `table`; asserts
    /// what the caller promised (kind, size, range).
    fn header_for(
        &self,
        record: &AppendRecord<'_>,
        table: &[u8],
        block_bytes: usize,
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
                KeyId::default()
            },
            table_crc32c: if data { crc32c::crc32c(table) } else { 0 },
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
                seal: true,
            });
        }
        // Allocate, create and publish the segment under the index lock, so a
        // checkpoint sees either none of it or all of it.
        let mut state = self.write_state();
        let id = state.segment_id_next;
        let file =
            segment::create_segment(&self.segments_dir, id, &self.config.volume_id, head.id)?;
        // The directory entry becomes durable at the next flush.
        self.dir_dirty.store(true, Ordering::SeqCst);
        state.segment_id_next = id + 1;
        state.head_positions[head.id as usize] = Some((id, SEGMENT_HEADER_BYTES));
        drop(state);
        let file = Arc::new(file);
        self.files.write_or_recover().insert(id, Arc::clone(&file));
        head.open = Some(OpenSegment {
            id,
            file,
            offset: SEGMENT_HEADER_BYTES,
        });
        Ok(())
    }
}

/// The checksum table of `record`: the caller's (checked in debug builds)
/// or one built here; empty without payload.
fn checksum_table<'a>(record: &AppendRecord<'a>, block_bytes: usize) -> Cow<'a, [u8]> {
    match (record.kind, record.checksums) {
        (RecordKind::Data, Some(given)) => {
            assert_eq!(
                given.len() as u64,
                checksum_table_bytes(u64::from(record.block_count)),
                "checksum table size"
            );
            debug_assert_eq!(given, &block_checksums(record.payload, block_bytes)[..]);
            Cow::Borrowed(given)
        }
        (RecordKind::Data, None) => block_checksums(record.payload, block_bytes).into(),
        _ => Cow::Borrowed(&[][..]),
    }
}
