//! What the device offers the driver: feature bits and the virtio-blk
//! configuration space (virtio 1.2, section 5.2.4), laid out byte by byte.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use crate::limits::{DISCARD_SECTORS_MAX, DISCARD_SEGMENTS_MAX, SEG_MAX, SEGMENT_SIZE_MAX};

/// Bytes of the configuration space we expose (through `unused1`).
pub const CONFIG_BYTES: usize = 60;
/// Offset of the `wce` byte (writeback cache enable), the one writable field.
pub const WCE_OFFSET: usize = 32;

/// The facts the configuration space is built from.
#[derive(Clone, Copy, Debug)]
pub struct DeviceGeometry {
    /// Disk size, 512-byte sectors.
    pub capacity_sectors: u64,
    /// Logical block size the guest should use, bytes (512 or 4096).
    pub logical_block_bytes: u32,
    /// The volume's block size, bytes: I/O aligned to it avoids
    /// read-modify-write.
    pub physical_block_bytes: u32,
    /// Number of virtqueues.
    pub num_queues: u16,
    /// Read-only disk.
    pub read_only: bool,
}

/// The virtio feature bits the device offers.
pub fn device_features(read_only: bool) -> u64 {
    let bits = [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_TOPOLOGY,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_CONFIG_WCE,
        VIRTIO_BLK_F_MQ,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
    ];
    let mut features = bits.iter().fold(0u64, |acc, bit| acc | (1u64 << bit));
    if read_only {
        features |= 1 << VIRTIO_BLK_F_RO;
    }
    // Not virtio features but vhost-user ones: protocol features, and
    // LOG_ALL (the backend logs its writes to guest memory while the VM
    // migrates; without it QEMU refuses to migrate the VM).
    use vhost::vhost_user::message::VhostUserVirtioFeatures;
    features
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
        | VhostUserVirtioFeatures::LOG_ALL.bits()
}

/// The configuration space, `wce` given (1 = writeback, 0 = writethrough).
pub fn config_space(geometry: &DeviceGeometry, wce: u8) -> [u8; CONFIG_BYTES] {
    let mut c = [0u8; CONFIG_BYTES];
    let exp = (geometry.physical_block_bytes / geometry.logical_block_bytes.max(1))
        .max(1)
        .trailing_zeros();
    let align_sectors = geometry.physical_block_bytes / 512;
    put(&mut c, 0, &geometry.capacity_sectors.to_le_bytes()); // capacity
    put(&mut c, 8, &SEGMENT_SIZE_MAX.to_le_bytes()); // size_max
    put(&mut c, 12, &SEG_MAX.to_le_bytes()); // seg_max
    // 16..20: geometry (cylinders, heads, sectors): unused, zero.
    put(&mut c, 20, &geometry.logical_block_bytes.to_le_bytes()); // blk_size
    c[24] = exp as u8; // physical_block_exp: physical = logical << exp
    c[25] = 0; // alignment_offset
    put(
        &mut c,
        26,
        &((geometry.physical_block_bytes / geometry.logical_block_bytes.max(1)) as u16)
            .to_le_bytes(),
    ); // min_io_size, in logical blocks
    put(&mut c, 28, &0u32.to_le_bytes()); // opt_io_size: no preference
    c[WCE_OFFSET] = wce;
    put(&mut c, 34, &geometry.num_queues.to_le_bytes()); // num_queues
    put(&mut c, 36, &DISCARD_SECTORS_MAX.to_le_bytes()); // max_discard_sectors
    put(&mut c, 40, &DISCARD_SEGMENTS_MAX.to_le_bytes()); // max_discard_seg
    put(&mut c, 44, &align_sectors.to_le_bytes()); // discard_sector_alignment
    put(&mut c, 48, &DISCARD_SECTORS_MAX.to_le_bytes()); // max_write_zeroes_sectors
    put(&mut c, 52, &DISCARD_SEGMENTS_MAX.to_le_bytes()); // max_write_zeroes_seg
    c[56] = 1; // write_zeroes_may_unmap
    c
}

fn put(config: &mut [u8], offset: usize, bytes: &[u8]) {
    config[offset..offset + bytes.len()].copy_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_layout_matches_the_spec_offsets() {
        let geometry = DeviceGeometry {
            capacity_sectors: 2048,
            logical_block_bytes: 512,
            physical_block_bytes: 4096,
            num_queues: 4,
            read_only: false,
        };
        let c = config_space(&geometry, 1);
        assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 2048);
        assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 512);
        assert_eq!(c[24], 3, "4096 = 512 << 3");
        assert_eq!(c[32], 1);
        assert_eq!(u16::from_le_bytes(c[34..36].try_into().unwrap()), 4);
        assert_eq!(u32::from_le_bytes(c[44..48].try_into().unwrap()), 8);
    }

    #[test]
    fn read_only_devices_offer_ro() {
        assert_eq!(
            device_features(true) & (1 << VIRTIO_BLK_F_RO),
            1 << VIRTIO_BLK_F_RO
        );
        assert_eq!(device_features(false) & (1 << VIRTIO_BLK_F_RO), 0);
    }
}
