//! Clients that come and go: each next one sees what the last wrote, also
//! when the last vanished with writes in flight.

use super::kit::data::assert_same;
use super::kit::rng::Rng;
use super::{KIB, MIB, setup};

#[test]
fn a_client_connecting_after_another_disconnected_sees_its_data() {
    let setup = setup(8 * MIB, 4096, &[]);
    let mut daemon = setup.serve(&["--num-queues", "2"]);
    let mut written: Vec<(u64, Vec<u8>)> = Vec::new();
    for (number, queues) in [(0u64, 2), (1, 1), (2, 2)] {
        let mut client = daemon.client(queues);
        for (offset, data) in &written {
            let got = client.read(0, *offset, MIB as usize).unwrap();
            assert_same(&got, data, *offset, &format!("client {number}"));
        }
        let data = Rng(60 + number).bytes(MIB as usize);
        client
            .write(queues as usize - 1, number * MIB, &data)
            .unwrap();
        written.push((number * MIB, data));
        drop(client);
    }
    daemon.stop_cleanly();
}

#[test]
fn a_client_vanishing_with_writes_in_flight_leaves_the_daemon_serving_the_next() {
    let setup = setup(8 * MIB, 4096, &[]);
    let mut daemon = setup.serve(&["--num-queues", "2", "--block-size", "512"]);
    let mut rng = Rng(8);
    for _ in 0..3 {
        let mut client = daemon.client(2);
        let writes: Vec<(u64, Vec<u8>)> = (0..64)
            .map(|slot| (slot * 64 * KIB + 512, rng.bytes(60 * 1024)))
            .collect();
        client.submit_writes(1, &writes);
        drop(client); // gone, its requests unanswered
    }
    // Whatever landed, the daemon serves the next client as usual.
    let mut client = daemon.client(2);
    let data = rng.bytes(MIB as usize);
    client.write(0, 3 * MIB, &data).unwrap();
    assert_same(
        &client.read(1, 3 * MIB, MIB as usize).unwrap(),
        &data,
        3 * MIB,
        "next client",
    );
    drop(client);
    daemon.stop_cleanly();
}
