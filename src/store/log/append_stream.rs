//! One append in progress ([`AppendStream`]): its frames planned from
//! the records' shapes, each payload submitted as soon as it is pushed
//! (consecutive small ones as one write), and the frames' meta areas built,
//! signed and written once every record is in (see `append`).

use std::borrow::Cow;
use std::fs::File;
use std::ops::Range;

use super::super::StoreError;
use super::super::aligned::{ALIGN, AlignedBuf};
use super::super::frame::{
    FRAME_PAYLOAD_BYTES_MAX, FRAME_RECORDS_MAX, FrameLayout, FrameRecord, Mac, build_meta,
};
use super::super::io::pwritev_all;
use super::super::io::uring::{WRITE_BYTES_MAX, WriteStream};
use super::super::macs::{RecordMacInput, record_mac};
use super::super::record::{PlacedRecord, RecordHeader, RecordKind};
use super::Log;
use super::append::{AppendRecord, RecordShape, block_table};
use crate::crypto::KeyId;

/// One frame of an append, planned before its records are pushed.
struct PlannedFrame {
    /// Its offset in the segment.
    offset: u64,
    /// Its records: indexes into the append's records.
    records: Range<usize>,
    layout: FrameLayout,
    /// A frame whose payloads are not whole 4 KiB units (512-byte blocks)
    /// collects them here, zero-padded, and writes them with its meta;
    /// `None`: each payload is written as soon as it is pushed.
    area: Option<AlignedBuf>,
}

/// Where an append's writes go: the head's ring (in flight together,
/// waited for at the end) or `pwritev` (each done when submitted).
pub(super) enum Writer<'r> {
    Ring(WriteStream<'r>),
    Plain {
        file: &'r File,
        result: std::io::Result<()>,
    },
}

impl Writer<'_> {
    /// Writes `slices` back to back at `offset`.
    ///
    /// # Safety
    /// The memory of `slices` must stay valid until [`Writer::finish`]
    /// returns or the writer is dropped ([`WriteStream::submit`]).
    unsafe fn submit(&mut self, slices: &[&[u8]], offset: u64) {
        match self {
            // SAFETY: this function's contract is the stream's.
            Writer::Ring(stream) => unsafe { stream.submit(slices, offset) },
            Writer::Plain { file, result } => {
                if result.is_ok() {
                    *result = pwritev_all(file, slices, offset);
                }
            }
        }
    }

    /// Waits for every write; the first error.
    fn finish(&mut self) -> std::io::Result<()> {
        match self {
            Writer::Ring(stream) => stream.finish(),
            Writer::Plain { result, .. } => std::mem::replace(result, Ok(())),
        }
    }
}

/// Consecutive payloads pushed but not yet submitted, written as one
/// write once they are [`WRITE_BYTES_MAX`] or the next is elsewhere.
#[derive(Default)]
struct Run<'a> {
    offset: u64,
    bytes: u64,
    slices: Vec<&'a [u8]>,
}

/// One record pushed: its header, its block table, its payload.
struct Pushed<'a> {
    header: RecordHeader,
    table: Cow<'a, [u8]>,
    payload: &'a [u8],
}

/// An append in progress ([`Log::append_streamed`]): its records are
/// pushed one at a time, in order, and each payload goes out to the
/// device as soon as it is pushed, while the caller prepares the next.
/// The frames' meta areas (headers, block tables, MACs) are written last,
/// once every table is known; the append is done when all its writes are.
pub struct AppendStream<'s, 'a> {
    /// First field: dropped first, it waits for every write in flight
    /// before the buffers below (which those writes read) are freed.
    writer: Writer<'s>,
    frames: Vec<PlannedFrame>,
    /// Payload copies being written.
    kept: Vec<AlignedBuf>,
    /// Meta areas being written, by frame offset.
    metas: Vec<(u64, AlignedBuf)>,
    log: &'s Log,
    shapes: &'s [RecordShape],
    segment_id: u64,
    block_bytes: usize,
    signer: Option<KeyId>,
    pushed: Vec<Pushed<'a>>,
    run: Run<'a>,
}

/// What a finished append leaves to record: where each record went, the
/// meta areas (for the read cache), where the head's segment ends now and
/// the MAC of its last record.
pub(super) struct Appended {
    pub(super) placed: Vec<PlacedRecord>,
    pub(super) metas: Vec<(u64, AlignedBuf)>,
    pub(super) end: u64,
    pub(super) last_mac: Mac,
}

impl<'a> AppendStream<'_, 'a> {
    /// Pushes the next record (the shapes given to
    /// [`Log::append_streamed`] say what it must be): its payload is
    /// submitted now, written straight from `record.payload` when that is
    /// 4 KiB-aligned (else from one aligned copy).
    pub fn push(&mut self, record: AppendRecord<'a>) {
        let index = self.pushed.len();
        assert_eq!(
            self.shapes.get(index),
            Some(&RecordShape::from(&record)),
            "records pushed as planned"
        );
        let header = self.log.header_for(&record, self.block_bytes, self.signer);
        let table = block_table(&record, self.block_bytes);
        let frame = self
            .frames
            .iter_mut()
            .find(|f| f.records.contains(&index))
            .expect("every record has a frame");
        let slot = frame.layout.slots[index - frame.records.start]
            .payload
            .clone();
        let at = frame.offset + slot.start as u64;
        let payload = record.payload;
        if payload.is_empty() {
            // Nothing to write but the meta.
        } else if let Some(area) = frame.area.as_mut() {
            let area_at = frame.layout.payload_area;
            area[slot.start - area_at..slot.end - area_at].copy_from_slice(payload);
        } else if (payload.as_ptr() as usize).is_multiple_of(ALIGN) {
            self.queue(at, payload);
        } else {
            let copy = AlignedBuf::copy_from(payload);
            self.flush_run();
            // SAFETY: the copy is kept in `self.kept` (its heap memory
            // never moves) until the writer, dropped first, has waited
            // for the write.
            unsafe { self.writer.submit(&[copy.padded()], at) };
            self.kept.push(copy);
        }
        self.pushed.push(Pushed {
            header,
            table,
            payload,
        });
    }

    /// Adds `payload` at `at` to the run of writes, submitting the run when
    /// it is large enough or `payload` does not follow it.
    fn queue(&mut self, at: u64, payload: &'a [u8]) {
        if !self.run.slices.is_empty() && self.run.offset + self.run.bytes != at {
            self.flush_run();
        }
        if self.run.slices.is_empty() {
            self.run.offset = at;
        }
        self.run.slices.push(payload);
        self.run.bytes += payload.len() as u64;
        if self.run.bytes >= WRITE_BYTES_MAX as u64 {
            self.flush_run();
        }
    }

    /// Submits the run of writes, if any.
    fn flush_run(&mut self) {
        let run = std::mem::take(&mut self.run);
        if !run.slices.is_empty() {
            // SAFETY: the slices are borrowed for 'a, which outlives the
            // stream (and so the writer's wait for them).
            unsafe { self.writer.submit(&run.slices, run.offset) };
        }
    }

    /// After the last push: builds and signs every frame's meta area,
    /// writes them (each with the run of payloads that follows it, if that
    /// is still pending) and waits for every write.
    pub(super) fn complete(&mut self, mut last_mac: Mac) -> Result<Appended, StoreError> {
        assert_eq!(self.pushed.len(), self.shapes.len(), "every record pushed");
        let log = self.log;
        let mut placed = Vec::with_capacity(self.pushed.len());
        for frame_index in 0..self.frames.len() {
            let frame = &self.frames[frame_index];
            let records: Vec<FrameRecord<'_>> = self.pushed[frame.records.clone()]
                .iter()
                .map(|p| FrameRecord {
                    header: p.header,
                    table: &p.table,
                    payload: p.payload,
                    mac: [0; 16],
                })
                .collect();
            let mut meta = build_meta(
                self.segment_id,
                frame.offset,
                log.config.block_shift,
                &records,
            );
            if let Some(keys) = &log.config.macs {
                meta.sign(|index, header, table| {
                    let input = RecordMacInput {
                        volume_id: &log.config.volume_id,
                        segment_id: self.segment_id,
                        previous: &last_mac,
                        header,
                        table,
                    };
                    last_mac = record_mac(keys.as_ref(), &records[index].header.key_id, &input)?;
                    Ok::<_, StoreError>(last_mac)
                })?;
            }
            for (record, slots) in records.iter().zip(&meta.layout.slots) {
                placed.push(PlacedRecord {
                    header: record.header,
                    segment_id: self.segment_id,
                    position: frame.offset,
                    table_offset: frame.offset + slots.table.start as u64,
                    payload_offset: frame.offset + slots.payload.start as u64,
                });
            }
            let area_at = frame.offset + frame.layout.payload_area as u64;
            let mut slices: Vec<&[u8]> = vec![meta.meta.padded()];
            if let Some(area) = &frame.area {
                slices.push(area.padded());
            }
            let run = match self.run.offset == area_at && frame.area.is_none() {
                true => std::mem::take(&mut self.run),
                false => Run::default(),
            };
            slices.extend(run.slices);
            debug_assert!(slices.iter().all(|s| s.len().is_multiple_of(ALIGN)));
            // SAFETY: the meta area is kept in `self.metas` until the
            // writer has waited (moving an AlignedBuf does not move its
            // memory), the area in `self.frames`, the payloads are
            // borrowed for 'a.
            unsafe { self.writer.submit(&slices, frame.offset) };
            self.metas.push((frame.offset, meta.meta));
        }
        self.flush_run();
        let written = self.writer.finish();
        let end = self
            .frames
            .last()
            .map_or(0, |f| f.offset + f.layout.frame_bytes as u64);
        written.map_err(|e| StoreError::io(&log.segment_path(self.segment_id), e))?;
        Ok(Appended {
            placed,
            metas: std::mem::take(&mut self.metas),
            end,
            last_mac,
        })
    }
}

impl<'s> AppendStream<'s, '_> {
    /// The append of records of `shapes` to segment `segment_id` from
    /// `start`, written through `writer`; records without payload are
    /// MACed under `signer`.
    pub(super) fn new(
        log: &'s Log,
        writer: Writer<'s>,
        shapes: &'s [RecordShape],
        segment_id: u64,
        start: u64,
        signer: Option<KeyId>,
    ) -> Self {
        Self {
            writer,
            frames: plan_frames(log.config.block_shift, shapes, start),
            kept: Vec::new(),
            metas: Vec::new(),
            log,
            shapes,
            segment_id,
            block_bytes: 1usize << log.config.block_shift,
            signer,
            pushed: Vec::with_capacity(shapes.len()),
            run: Run::default(),
        }
    }
}

/// The frames of an append of `shapes` from `start`: as few as the
/// frame limits allow, each laid out.
fn plan_frames(shift: u8, shapes: &[RecordShape], start: u64) -> Vec<PlannedFrame> {
    let payload_bytes = |s: &RecordShape| match s.kind {
        RecordKind::Data => u64::from(s.block_count) << shift,
        _ => 0,
    };
    let mut offset = start;
    frame_ranges(shapes.iter().map(payload_bytes))
        .into_iter()
        .map(|records| {
            let shapes = &shapes[records.clone()];
            let layout = FrameLayout::plan(shapes.iter().map(|s| (s.kind, s.block_count)), shift);
            let whole_units = shapes
                .iter()
                .all(|s| payload_bytes(s).is_multiple_of(ALIGN as u64));
            let area = (!whole_units)
                .then(|| AlignedBuf::zeroed(layout.frame_bytes - layout.payload_area));
            let frame = PlannedFrame {
                offset,
                records,
                layout,
                area,
            };
            offset += frame.layout.frame_bytes as u64;
            frame
        })
        .collect()
}

/// The frames an append is cut into, by its records' payload bytes: as
/// few as the frame limits (records per frame, payload bytes per frame)
/// allow.
fn frame_ranges(payloads: impl ExactSizeIterator<Item = u64>) -> Vec<Range<usize>> {
    let count = payloads.len();
    let mut ranges = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (index, payload) in payloads.enumerate() {
        let full = index - start == FRAME_RECORDS_MAX || bytes + payload > FRAME_PAYLOAD_BYTES_MAX;
        if index > start && full {
            ranges.push(start..index);
            (start, bytes) = (index, 0);
        }
        bytes += payload;
    }
    ranges.push(start..count);
    ranges
}
