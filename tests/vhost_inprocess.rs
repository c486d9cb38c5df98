//! The vhost-user-blk backend served in-process, driven by a real libblkio
//! client over a real UNIX socket: the quickest full check of the data path.

mod kit;

use std::sync::Arc;
use std::time::Duration;

use kit::blkio::BlkClient;
use kit::data::pattern;
use lsvblk::vhost::{DeviceOptions, Server};
use lsvblk::volume::handover::Served;

fn device(num_queues: u16, read_only: bool) -> DeviceOptions {
    DeviceOptions {
        num_queues,
        queue_size: 256,
        read_only,
        serial: DeviceOptions::serial_from("lsvblk-test"),
        logical_block_bytes: 512,
        poll_us: lsvblk::vhost::POLL_US_DEFAULT,
    }
}

#[test]
fn libblkio_writes_reads_discards_and_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vhost.sock");
    let volume = kit::volume::create(&dir.path().join("vol"), 64 << 20, 4096);
    let served = Arc::new(Served::open(Arc::new(volume)));
    let server = Server::bind(Arc::clone(&served), &socket, device(2, false)).unwrap();
    let stop = server.stop_handle();
    let thread = std::thread::spawn(move || server.run());

    let mut client = BlkClient::connect(&socket, 2, Duration::from_secs(5)).unwrap();
    assert_eq!(client.capacity(), 64 << 20);
    let data = pattern(1 << 20, 7);
    client.write(0, 4096 * 3, &data).unwrap();
    client.write(1, 512 * 7, &pattern(1536, 9)).unwrap();
    assert_eq!(client.read(1, 4096 * 3, data.len()).unwrap(), data);
    assert_eq!(client.read(0, 512 * 7, 1536).unwrap(), pattern(1536, 9));
    client.flush(0).unwrap();
    client.discard(0, 4096 * 4, 8192).unwrap();
    client.write_zeroes(1, 4096 * 6, 4096, true).unwrap();
    let back = client.read(0, 4096 * 3, 4 * 4096).unwrap();
    assert_eq!(&back[..4096], &data[..4096]);
    assert!(back[4096..3 * 4096].iter().all(|b| *b == 0));
    assert!(
        client.read(0, 64 << 20, 4096).is_err(),
        "read past the end fails"
    );
    drop(client);

    // A second client after the first disconnected sees the same data.
    let mut client = BlkClient::connect(&socket, 1, Duration::from_secs(5)).unwrap();
    assert_eq!(client.read(0, 4096 * 3, 4096).unwrap(), data[..4096]);
    drop(client);

    stop.stop();
    thread.join().unwrap().unwrap();
    // Closing goes through the hand-over path: flush, seal, checkpoint.
    served.hand_over().unwrap();
    assert!(
        served.volume().is_err(),
        "nothing is served after the close"
    );
}
