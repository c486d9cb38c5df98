//! Malformed requests driven straight into the backend through a mock
//! virtqueue (the driver side written into guest memory by hand).
//!
//! "A malformed request completes with IOERR/UNSUPP where a status byte can
//! be written, is logged once with a rate limit, and never panics or stops
//! other queues."

mod kit;

use std::sync::Arc;

use kit::frontend::{Frontend, MEMORY_BYTES, WRITE, desc, kick};
use lsvblk::vhost::{BlockBackend, DeviceOptions, GuestMemory};
use lsvblk::volume::handover::Served;
use vhost_user_backend::VringRwLock;
use virtio_queue::desc::RawDescriptor;
use vm_memory::{Bytes, GuestAddress};

const OK: u8 = 0;
const IOERR: u8 = 1;
const UNSUPP: u8 = 2;
const QUEUE_SIZE: u16 = 16;
/// Where request buffers go: above the rings (queue 0 at 0, queue 1 at 64 KiB).
const HEADER_AT: u64 = 0x10_0000;
const DATA_AT: u64 = 0x20_0000;
const STATUS_AT: u64 = 0x30_0000;
/// Sentinel left in a status byte the device must not touch.
const UNTOUCHED: u8 = 0xAA;

struct Rig {
    fe: Frontend,
    backend: BlockBackend,
    vrings: Vec<VringRwLock<GuestMemory>>,
    _dir: tempfile::TempDir,
}

fn rig(read_only: bool) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let volume = kit::volume::create(&dir.path().join("vol"), 1 << 20, 4096);
    let volume = if read_only {
        volume.close().unwrap();
        let options = lsvblk::volume::VolumeOptions {
            read_only: true,
            ..kit::volume::options(4096)
        };
        lsvblk::volume::Volume::open(&dir.path().join("vol"), kit::volume::key(1), &options)
            .unwrap()
    } else {
        volume
    };
    let options = DeviceOptions {
        num_queues: 2,
        queue_size: QUEUE_SIZE,
        read_only,
        serial: DeviceOptions::serial_from("malformed"),
        logical_block_bytes: 512,
        poll_us: 0,
    };
    let backend = BlockBackend::new(Arc::new(Served::open(Arc::new(volume))), options);
    let fe = Frontend::new(2, QUEUE_SIZE);
    let vrings = fe.start(&backend, 0);
    Rig {
        fe,
        backend,
        vrings,
        _dir: dir,
    }
}

/// A header at HEADER_AT for `request_type` and `sector`.
fn header(rig: &Rig, request_type: u32, sector: u64) {
    let mut bytes = [0u8; 16];
    bytes[0..4].copy_from_slice(&request_type.to_le_bytes());
    bytes[8..16].copy_from_slice(&sector.to_le_bytes());
    rig.fe
        .mem
        .write_slice(&bytes, GuestAddress(HEADER_AT))
        .unwrap();
}

/// Submits one chain (descriptors linked in order) on `queue`, runs the
/// backend, and returns (used length, status byte).
fn submit(rig: &Rig, queue: usize, chain: &[RawDescriptor]) -> (u32, u8) {
    rig.fe
        .mem
        .write_obj(UNTOUCHED, GuestAddress(STATUS_AT))
        .unwrap();
    let q = &rig.fe.queues[queue];
    let used_before = q.used().idx().load();
    rig.fe.add_chain(queue, chain, 0);
    kick(&rig.backend, &rig.vrings, queue);
    let used_after = q.used().idx().load();
    assert_eq!(
        used_after,
        used_before.wrapping_add(1),
        "the chain was returned to the driver"
    );
    let element = q
        .used()
        .ring()
        .ref_at(usize::from(used_before % QUEUE_SIZE))
        .unwrap()
        .load();
    let status: u8 = rig.fe.mem.read_obj(GuestAddress(STATUS_AT)).unwrap();
    (element.len(), status)
}

fn status_desc() -> RawDescriptor {
    desc(STATUS_AT, 1, WRITE)
}

#[test]
fn a_well_formed_write_and_read_succeed() {
    let rig = rig(false);
    rig.fe
        .mem
        .write_slice(&[0x5a; 4096], GuestAddress(DATA_AT))
        .unwrap();
    header(&rig, 1, 8);
    let (len, status) = submit(
        &rig,
        0,
        &[
            desc(HEADER_AT, 16, 0),
            desc(DATA_AT, 4096, 0),
            status_desc(),
        ],
    );
    assert_eq!((len, status), (1, OK));
    rig.fe
        .mem
        .write_slice(&[0u8; 4096], GuestAddress(DATA_AT))
        .unwrap();
    header(&rig, 0, 8);
    let (len, status) = submit(
        &rig,
        0,
        &[
            desc(HEADER_AT, 16, 0),
            desc(DATA_AT, 4096, WRITE),
            status_desc(),
        ],
    );
    assert_eq!((len, status), (4097, OK));
    let mut back = [0u8; 4096];
    rig.fe
        .mem
        .read_slice(&mut back, GuestAddress(DATA_AT))
        .unwrap();
    assert_eq!(back, [0x5a; 4096]);
}

#[test]
fn each_malformed_chain_gets_ioerr_or_unsupp_and_the_queues_keep_working() {
    let rig = rig(false);
    let h = desc(HEADER_AT, 16, 0);
    let cases: Vec<(&str, u32, Vec<RawDescriptor>, u8)> = vec![
        ("short chain: status only", 0, vec![status_desc()], IOERR),
        (
            "header in a writable buffer",
            0,
            vec![
                desc(HEADER_AT, 16, WRITE),
                desc(DATA_AT, 512, WRITE),
                status_desc(),
            ],
            IOERR,
        ),
        (
            "header of 8 bytes",
            0,
            vec![
                desc(HEADER_AT, 8, 0),
                desc(DATA_AT, 512, WRITE),
                status_desc(),
            ],
            IOERR,
        ),
        (
            "header of 24 bytes",
            0,
            vec![
                desc(HEADER_AT, 24, 0),
                desc(DATA_AT, 512, WRITE),
                status_desc(),
            ],
            IOERR,
        ),
        (
            "read into a device-readable buffer",
            0,
            vec![h, desc(DATA_AT, 512, 0), status_desc()],
            IOERR,
        ),
        (
            "write from a device-writable buffer",
            1,
            vec![h, desc(DATA_AT, 512, WRITE), status_desc()],
            IOERR,
        ),
        (
            "length not a multiple of 512",
            0,
            vec![h, desc(DATA_AT, 700, WRITE), status_desc()],
            IOERR,
        ),
        (
            "buffer outside guest memory",
            0,
            vec![
                h,
                desc(MEMORY_BYTES as u64 - 256, 512, WRITE),
                status_desc(),
            ],
            IOERR,
        ),
        (
            "buffer address overflows",
            0,
            vec![h, desc(u64::MAX - 100, 512, WRITE), status_desc()],
            IOERR,
        ),
        ("unknown request type", 99, vec![h, status_desc()], UNSUPP),
        ("GET_ID without a buffer", 8, vec![h, status_desc()], IOERR),
    ];
    for (name, request_type, chain, want) in cases {
        header(&rig, request_type, 0);
        let (len, status) = submit(&rig, 0, &chain);
        assert_eq!(status, want, "{name}");
        assert_eq!(len, 1, "{name}: only the status byte was written");
    }
    // Sector past the end of the 1 MiB disk (2048 sectors).
    header(&rig, 0, 2047);
    assert_eq!(
        submit(&rig, 0, &[h, desc(DATA_AT, 1024, WRITE), status_desc()]).1,
        IOERR
    );
    header(&rig, 1, u64::MAX);
    assert_eq!(
        submit(&rig, 0, &[h, desc(DATA_AT, 512, 0), status_desc()]).1,
        IOERR
    );
    // Both queues still serve good requests.
    for queue in 0..2 {
        header(&rig, 0, 0);
        let (len, status) = submit(&rig, queue, &[h, desc(DATA_AT, 512, WRITE), status_desc()]);
        assert_eq!((len, status), (513, OK), "queue {queue}");
    }
}

#[test]
fn a_chain_without_a_status_byte_completes_with_length_zero_and_writes_nothing() {
    let rig = rig(false);
    header(&rig, 0, 0);
    for chain in [
        vec![
            desc(HEADER_AT, 16, 0),
            desc(DATA_AT, 512, WRITE),
            desc(STATUS_AT, 1, 0),
        ],
        vec![
            desc(HEADER_AT, 16, 0),
            desc(DATA_AT, 512, WRITE),
            desc(STATUS_AT, 0, WRITE),
        ],
    ] {
        let (len, status) = submit(&rig, 0, &chain);
        assert_eq!((len, status), (0, UNTOUCHED));
    }
}

#[test]
fn discard_with_unmap_is_unsupported_and_bad_segments_are_errors() {
    let rig = rig(false);
    let h = desc(HEADER_AT, 16, 0);
    let mut segment = [0u8; 16];
    segment[8..12].copy_from_slice(&8u32.to_le_bytes()); // 8 sectors
    segment[12..16].copy_from_slice(&1u32.to_le_bytes()); // unmap
    rig.fe
        .mem
        .write_slice(&segment, GuestAddress(DATA_AT))
        .unwrap();
    header(&rig, 11, 0); // DISCARD with unmap: virtio 1.2 5.2.6.2
    assert_eq!(
        submit(&rig, 0, &[h, desc(DATA_AT, 16, 0), status_desc()]).1,
        UNSUPP
    );
    header(&rig, 13, 0); // WRITE_ZEROES with unmap is fine
    assert_eq!(
        submit(&rig, 0, &[h, desc(DATA_AT, 16, 0), status_desc()]).1,
        OK
    );
    header(&rig, 13, 0); // a segment of 12 bytes
    assert_eq!(
        submit(&rig, 0, &[h, desc(DATA_AT, 12, 0), status_desc()]).1,
        IOERR
    );
    header(&rig, 13, 0); // two segments, one advertised
    assert_eq!(
        submit(&rig, 0, &[h, desc(DATA_AT, 32, 0), status_desc()]).1,
        IOERR
    );
}

#[test]
fn writes_to_a_read_only_disk_fail_with_ioerr_and_reads_work() {
    let rig = rig(true);
    let h = desc(HEADER_AT, 16, 0);
    header(&rig, 1, 0);
    assert_eq!(
        submit(&rig, 0, &[h, desc(DATA_AT, 512, 0), status_desc()]).1,
        IOERR
    );
    header(&rig, 11, 0);
    rig.fe
        .mem
        .write_slice(&[0u8; 16], GuestAddress(DATA_AT))
        .unwrap();
    assert_eq!(
        submit(&rig, 0, &[h, desc(DATA_AT, 16, 0), status_desc()]).1,
        IOERR
    );
    header(&rig, 0, 0);
    assert_eq!(
        submit(&rig, 0, &[h, desc(DATA_AT, 512, WRITE), status_desc()]).1,
        OK
    );
    header(&rig, 4, 0); // FLUSH on a read-only disk is harmless
    assert_eq!(submit(&rig, 0, &[h, status_desc()]).1, OK);
}

#[test]
fn get_id_returns_the_serial() {
    let rig = rig(false);
    header(&rig, 8, 0);
    let (len, status) = submit(
        &rig,
        0,
        &[
            desc(HEADER_AT, 16, 0),
            desc(DATA_AT, 20, WRITE),
            status_desc(),
        ],
    );
    assert_eq!((len, status), (21, OK));
    let mut serial = [0u8; 20];
    rig.fe
        .mem
        .read_slice(&mut serial, GuestAddress(DATA_AT))
        .unwrap();
    assert_eq!(&serial[..9], b"malformed");
    assert!(serial[9..].iter().all(|b| *b == 0));
}

#[test]
fn a_corrupt_avail_index_disables_only_that_queue() {
    let rig = rig(false);
    // An avail index far more than a queue's size ahead (virtio-queue refuses it).
    let q = &rig.fe.queues[0];
    q.avail().idx().store(QUEUE_SIZE * 4);
    kick(&rig.backend, &rig.vrings, 0);
    let h = desc(HEADER_AT, 16, 0);
    header(&rig, 0, 0);
    let (len, status) = submit(&rig, 1, &[h, desc(DATA_AT, 512, WRITE), status_desc()]);
    assert_eq!((len, status), (513, OK), "queue 1 is unaffected");
}

mod parser_never_panics {
    use lsvblk::vhost::request::{Desc, DeviceLimits, parse};
    use proptest::prelude::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn any_desc() -> impl Strategy<Value = Desc> {
        (
            prop_oneof![
                0u64..0x2_0000,
                Just(u64::MAX - 8),
                0x1_0000u64..0x1_0000_0000
            ],
            prop_oneof![0u32..64, Just(16), Just(512), any::<u32>()],
            any::<bool>(),
        )
            .prop_map(|(addr, len, writable)| Desc {
                addr: GuestAddress(addr),
                len,
                writable,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Arbitrary chains over arbitrary memory contents: the parser returns
        /// a request or a guest error, never panics, and a request it accepts
        /// always has a status byte.
        #[test]
        fn arbitrary_chains_parse_without_panicking(
            descs in proptest::collection::vec(any_desc(), 0..8),
            memory in proptest::collection::vec(any::<u8>(), 256),
            request_type in prop_oneof![0u32..16, any::<u32>()],
            read_only in any::<bool>(),
        ) {
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x2_0000)]).unwrap();
            mem.write_slice(&memory, GuestAddress(0)).unwrap();
            mem.write_slice(&request_type.to_le_bytes(), GuestAddress(0)).unwrap();
            let limits = DeviceLimits { capacity_sectors: 2048, read_only };
            let parsed = parse(&descs, &mem, limits);
            if parsed.request.is_ok() {
                prop_assert!(parsed.status.is_some());
            }
            if let Err(error) = &parsed.request {
                prop_assert!(matches!(error.status(), 1 | 2));
            }
        }
    }
}
