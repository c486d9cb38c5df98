//! Turning a virtio-blk descriptor chain into a typed request.
//!
//! Everything here comes from the guest, so nothing here may panic: each
//! check is a small function returning a [`GuestError`], and every
//! `GuestError` maps to the status byte the guest will see
//! ([`GuestError::status`], no `_` arm). The checks are mostly the MUSTs of
//! the virtio 1.2 specification, section 5.2.6 ("Device Operation").
//!
//! The chain is read once: the 16-byte header and any discard segments are
//! copied out of guest memory with `read_obj` and validated as copies; data
//! buffers are only named here (address and length), checked to lie in guest
//! memory, and touched once by the worker.
#![deny(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, Le32, Le64};

use crate::limits::{DISCARD_SEGMENTS_MAX, REQUEST_BYTES_MAX};

/// Bytes in the request header (type, reserved, sector).
pub const HEADER_BYTES: u32 = 16;
/// Bytes in one virtio sector: the unit of `sector` in every request.
pub const SECTOR_BYTES: u64 = 512;
/// Bytes of the device id that GET_ID returns (VIRTIO_BLK_ID_BYTES).
pub const SERIAL_BYTES: usize = 20;
/// Bytes in one discard / write-zeroes segment.
pub const SEGMENT_BYTES: u32 = 16;
/// The only flag a write-zeroes segment may carry: bit 0, "unmap".
const FLAG_UNMAP: u32 = 1;

/// The request header as the guest wrote it (`struct virtio_blk_req`).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct RequestHeader {
    request_type: Le32,
    reserved: Le32,
    sector: Le64,
}
// SAFETY: plain little-endian integers, no padding, any bit pattern is valid.
unsafe impl ByteValued for RequestHeader {}
const _: () = assert!(size_of::<RequestHeader>() == HEADER_BYTES as usize);

/// A discard / write-zeroes segment (`struct virtio_blk_discard_write_zeroes`).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct RangeSegment {
    sector: Le64,
    num_sectors: Le32,
    flags: Le32,
}
// SAFETY: plain little-endian integers, no padding, any bit pattern is valid.
unsafe impl ByteValued for RangeSegment {}
const _: () = assert!(size_of::<RangeSegment>() == SEGMENT_BYTES as usize);

/// One descriptor of a chain, copied out of the descriptor table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    /// Guest physical address of the buffer.
    pub addr: GuestAddress,
    /// Buffer length, bytes.
    pub len: u32,
    /// True when the device may write it (VIRTQ_DESC_F_WRITE).
    pub writable: bool,
}

/// A range of sectors named by a discard or write-zeroes request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectorRange {
    /// First sector.
    pub sector: u64,
    /// Sectors.
    pub sectors: u32,
    /// Write-zeroes only: the device may deallocate the range.
    pub unmap: bool,
}

/// A request the device can execute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Read `bytes` from `sector` into the writable `data` buffers.
    Read {
        /// First sector.
        sector: u64,
        /// Buffers, in order.
        data: Vec<Desc>,
        /// Their total length (a multiple of 512).
        bytes: u64,
    },
    /// Write the readable `data` buffers at `sector`.
    Write {
        /// First sector.
        sector: u64,
        /// Buffers, in order.
        data: Vec<Desc>,
        /// Their total length (a multiple of 512).
        bytes: u64,
    },
    /// Make earlier completed writes durable.
    Flush,
    /// Write the device serial into `data` (up to 20 bytes).
    GetId {
        /// The writable buffer.
        data: Desc,
    },
    /// Discard ranges.
    Discard(Vec<SectorRange>),
    /// Write zeros over ranges.
    WriteZeroes(Vec<SectorRange>),
}

/// A request the guest got wrong. Each variant ends in a status byte.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuestError {
    /// Fewer descriptors than a header and a status need.
    #[error("chain of {count} descriptors is too short for header and status")]
    ChainTooShort {
        /// Descriptors in the chain.
        count: usize,
    },
    /// The last descriptor is not a writable buffer of at least one byte.
    #[error("no writable status byte at the end of the chain")]
    StatusMissing,
    /// The first descriptor is device-writable.
    #[error("request header is in a device-writable buffer")]
    HeaderWritable,
    /// The first descriptor is not exactly 16 bytes.
    #[error("request header buffer is {len} bytes, not {HEADER_BYTES}")]
    HeaderSize {
        /// Its length.
        len: u32,
    },
    /// A buffer does not lie wholly in guest memory.
    #[error("buffer at {addr:#x}+{len} is outside guest memory")]
    BadAddress {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// A data buffer has the wrong direction for the request.
    #[error("data descriptor {index} is {} but the request needs it {}", dir(*.writable), dir(!*.writable))]
    WrongDirection {
        /// Position in the chain.
        index: usize,
        /// What it is.
        writable: bool,
    },
    /// Data length is not a multiple of 512.
    #[error("data length {bytes} is not a multiple of {SECTOR_BYTES}")]
    NotSectorMultiple {
        /// Total data length.
        bytes: u64,
    },
    /// More data than one request may carry.
    #[error("request of {bytes} bytes exceeds the limit of {REQUEST_BYTES_MAX}")]
    TooLarge {
        /// Total data length.
        bytes: u64,
    },
    /// The sectors reach past the end of the disk.
    #[error("sectors {sector}+{sectors} end past capacity {capacity_sectors}")]
    PastCapacity {
        /// First sector.
        sector: u64,
        /// Sectors.
        sectors: u64,
        /// Disk size in sectors.
        capacity_sectors: u64,
    },
    /// A write-type request to a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// The request type is not one we implement.
    #[error("unsupported request type {request_type}")]
    UnknownType {
        /// The type.
        request_type: u32,
    },
    /// Discard / write-zeroes data is not a whole number of 16-byte segments,
    /// is empty, or has more segments than we advertised.
    #[error("{bytes} bytes of range segments (16 each, at most {DISCARD_SEGMENTS_MAX})")]
    BadSegments {
        /// Data length.
        bytes: u64,
    },
    /// A segment sets flags the request type does not allow (virtio 1.2
    /// 5.2.6.2: discard with unmap, or reserved bits) or names no sectors.
    #[error("range segment with flags {flags:#x} or no sectors is not supported")]
    UnsupportedSegment {
        /// The flags.
        flags: u32,
    },
    /// GET_ID without exactly one writable data buffer.
    #[error("GET_ID needs one writable data buffer")]
    BadGetId,
}

fn dir(writable: bool) -> &'static str {
    if writable {
        "device-writable"
    } else {
        "device-readable"
    }
}

impl GuestError {
    /// The virtio status byte the guest gets for this error.
    pub fn status(&self) -> u8 {
        let status = match self {
            GuestError::UnknownType { .. } | GuestError::UnsupportedSegment { .. } => {
                VIRTIO_BLK_S_UNSUPP
            }
            GuestError::ChainTooShort { .. }
            | GuestError::StatusMissing
            | GuestError::HeaderWritable
            | GuestError::HeaderSize { .. }
            | GuestError::BadAddress { .. }
            | GuestError::WrongDirection { .. }
            | GuestError::NotSectorMultiple { .. }
            | GuestError::TooLarge { .. }
            | GuestError::PastCapacity { .. }
            | GuestError::ReadOnly
            | GuestError::BadSegments { .. }
            | GuestError::BadGetId => VIRTIO_BLK_S_IOERR,
        };
        status as u8
    }
}

/// What the parser knows about the device it parses for.
#[derive(Clone, Copy, Debug)]
pub struct DeviceLimits {
    /// Disk size in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Writes, discards and write-zeroes are refused.
    pub read_only: bool,
}

/// A parsed chain: where its status byte goes (if anywhere) and the request
/// or the reason it cannot run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedChain {
    /// Guest address of the status byte: the last byte of the last
    /// descriptor, when that is writable.
    pub status: Option<GuestAddress>,
    /// The request, or the guest's mistake.
    pub request: Result<Request, GuestError>,
}

/// Parses the descriptors of one chain against guest memory `mem`.
pub fn parse<M: GuestMemoryBackend>(descs: &[Desc], mem: &M, limits: DeviceLimits) -> ParsedChain {
    let status = status_address(descs);
    let request = match status {
        None => Err(GuestError::StatusMissing),
        Some(_) => parse_request(descs, mem, limits),
    };
    ParsedChain { status, request }
}

fn status_address(descs: &[Desc]) -> Option<GuestAddress> {
    let last = descs.last()?;
    if !last.writable || last.len == 0 {
        return None;
    }
    last.addr
        .0
        .checked_add(u64::from(last.len).checked_sub(1)?)
        .map(GuestAddress)
}

fn parse_request<M: GuestMemoryBackend>(
    descs: &[Desc],
    mem: &M,
    limits: DeviceLimits,
) -> Result<Request, GuestError> {
    let (header_desc, rest) = descs
        .split_first()
        .ok_or(GuestError::ChainTooShort { count: 0 })?;
    let (_, data) = rest
        .split_last()
        .ok_or(GuestError::ChainTooShort { count: descs.len() })?;
    let header = read_header(header_desc, mem)?;
    for desc in data {
        check_in_memory(desc, mem)?;
    }
    let sector = header.sector.to_native();
    match header.request_type.to_native() {
        VIRTIO_BLK_T_IN => {
            let bytes = data_bytes(data, true)?;
            check_capacity(sector, bytes / SECTOR_BYTES, limits)?;
            Ok(Request::Read {
                sector,
                data: data.to_vec(),
                bytes,
            })
        }
        VIRTIO_BLK_T_OUT => {
            check_writable_device(limits)?;
            let bytes = data_bytes(data, false)?;
            check_capacity(sector, bytes / SECTOR_BYTES, limits)?;
            Ok(Request::Write {
                sector,
                data: data.to_vec(),
                bytes,
            })
        }
        VIRTIO_BLK_T_FLUSH => Ok(Request::Flush),
        VIRTIO_BLK_T_GET_ID => match data {
            [desc] if desc.writable => Ok(Request::GetId { data: *desc }),
            _ => Err(GuestError::BadGetId),
        },
        VIRTIO_BLK_T_DISCARD => {
            check_writable_device(limits)?;
            Ok(Request::Discard(read_ranges(data, mem, limits, false)?))
        }
        VIRTIO_BLK_T_WRITE_ZEROES => {
            check_writable_device(limits)?;
            Ok(Request::WriteZeroes(read_ranges(data, mem, limits, true)?))
        }
        request_type => Err(GuestError::UnknownType { request_type }),
    }
}

fn read_header<M: GuestMemoryBackend>(desc: &Desc, mem: &M) -> Result<RequestHeader, GuestError> {
    if desc.writable {
        return Err(GuestError::HeaderWritable);
    }
    if desc.len != HEADER_BYTES {
        return Err(GuestError::HeaderSize { len: desc.len });
    }
    mem.read_obj(desc.addr).map_err(|_| bad_address(desc))
}

fn bad_address(desc: &Desc) -> GuestError {
    GuestError::BadAddress {
        addr: desc.addr.0,
        len: u64::from(desc.len),
    }
}

fn check_in_memory<M: GuestMemoryBackend>(desc: &Desc, mem: &M) -> Result<(), GuestError> {
    let len = usize::try_from(desc.len).map_err(|_| bad_address(desc))?;
    if len == 0 || mem.check_range(desc.addr, len) {
        Ok(())
    } else {
        Err(bad_address(desc))
    }
}

/// Total length of data buffers that must all be `writable` (or not).
fn data_bytes(data: &[Desc], writable: bool) -> Result<u64, GuestError> {
    let mut bytes: u64 = 0;
    for (index, desc) in data.iter().enumerate() {
        if desc.writable != writable {
            return Err(GuestError::WrongDirection {
                index: index.saturating_add(1),
                writable: desc.writable,
            });
        }
        // Cannot overflow: at most a queue's worth of u32 lengths.
        bytes = bytes.saturating_add(u64::from(desc.len));
    }
    if bytes > REQUEST_BYTES_MAX {
        return Err(GuestError::TooLarge { bytes });
    }
    if !bytes.is_multiple_of(SECTOR_BYTES) {
        return Err(GuestError::NotSectorMultiple { bytes });
    }
    Ok(bytes)
}

fn check_capacity(sector: u64, sectors: u64, limits: DeviceLimits) -> Result<(), GuestError> {
    let past = GuestError::PastCapacity {
        sector,
        sectors,
        capacity_sectors: limits.capacity_sectors,
    };
    match sector.checked_add(sectors) {
        Some(end) if end <= limits.capacity_sectors => Ok(()),
        _ => Err(past),
    }
}

fn check_writable_device(limits: DeviceLimits) -> Result<(), GuestError> {
    if limits.read_only {
        Err(GuestError::ReadOnly)
    } else {
        Ok(())
    }
}

/// Reads discard / write-zeroes segments: readable buffers holding a whole
/// number of 16-byte segments, at most `DISCARD_SEGMENTS_MAX` of them.
fn read_ranges<M: GuestMemoryBackend>(
    data: &[Desc],
    mem: &M,
    limits: DeviceLimits,
    zeroes: bool,
) -> Result<Vec<SectorRange>, GuestError> {
    let bytes = data_bytes_any_multiple(data)?;
    let count = bytes.checked_div(u64::from(SEGMENT_BYTES)).unwrap_or(0);
    if !bytes.is_multiple_of(u64::from(SEGMENT_BYTES))
        || count == 0
        || count > u64::from(DISCARD_SEGMENTS_MAX)
    {
        return Err(GuestError::BadSegments { bytes });
    }
    let mut ranges = Vec::new();
    for desc in data {
        let mut offset: u32 = 0;
        while offset < desc.len {
            let addr = desc
                .addr
                .checked_add(u64::from(offset))
                .ok_or_else(|| bad_address(desc))?;
            let segment: RangeSegment = mem.read_obj(addr).map_err(|_| bad_address(desc))?;
            ranges.push(check_segment(segment, limits, zeroes)?);
            offset = offset.saturating_add(SEGMENT_BYTES);
        }
    }
    Ok(ranges)
}

fn data_bytes_any_multiple(data: &[Desc]) -> Result<u64, GuestError> {
    let mut bytes: u64 = 0;
    for (index, desc) in data.iter().enumerate() {
        if desc.writable {
            return Err(GuestError::WrongDirection {
                index: index.saturating_add(1),
                writable: true,
            });
        }
        if !desc.len.is_multiple_of(SEGMENT_BYTES) {
            return Err(GuestError::BadSegments {
                bytes: u64::from(desc.len),
            });
        }
        bytes = bytes.saturating_add(u64::from(desc.len));
    }
    Ok(bytes)
}

fn check_segment(
    segment: RangeSegment,
    limits: DeviceLimits,
    zeroes: bool,
) -> Result<SectorRange, GuestError> {
    let flags = segment.flags.to_native();
    let allowed = if zeroes { FLAG_UNMAP } else { 0 };
    let sectors = segment.num_sectors.to_native();
    if flags & !allowed != 0 || sectors == 0 {
        return Err(GuestError::UnsupportedSegment { flags });
    }
    let sector = segment.sector.to_native();
    check_capacity(sector, u64::from(sectors), limits)?;
    Ok(SectorRange {
        sector,
        sectors,
        unmap: flags & FLAG_UNMAP != 0,
    })
}
