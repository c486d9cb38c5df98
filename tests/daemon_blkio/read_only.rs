//! A `--read-only` daemon: it serves reads, a client cannot write, and no
//! file of the volume changes.

use std::path::{Path, PathBuf};

use super::kit::blkio::{BlkClient, IoFailed};
use super::kit::daemon::CONNECT_WAIT;
use super::kit::dirs::files_with_contents;
use super::kit::rng::Rng;
use super::{EBADF, EROFS, KIB, MIB, setup};

/// Every file of the volume and its contents, the lock file aside.
fn volume_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = files_with_contents(dir);
    files.retain(|(path, _)| path.file_name().is_some_and(|n| n != "lock"));
    files
}

#[test]
fn a_read_only_daemon_serves_reads_refuses_writes_and_changes_no_file() {
    let setup = setup(8 * MIB, 4096, &[]);
    let data = Rng(4).bytes(MIB as usize);
    let mut daemon = setup.serve(&[]);
    let mut client = daemon.client(1);
    client.write(0, 0, &data).unwrap();
    drop(client);
    daemon.stop_cleanly();
    let files_before = volume_files(&setup.volume);

    let mut daemon = setup.serve(&["--read-only"]);
    // The device offers VIRTIO_BLK_F_RO: libblkio will not start it for
    // writing.
    match BlkClient::connect_once(&daemon.socket, 1, false) {
        Ok(_) => panic!("libblkio started a read-only device for writing"),
        Err(failed) => assert_eq!(failed.errno, EROFS, "{failed:?}"),
    }
    let mut client = BlkClient::connect_read_only(&daemon.socket, 1, CONNECT_WAIT).unwrap();
    assert_eq!(client.read(0, 0, data.len()).unwrap(), data);
    let refused = [
        ("write", client.write(0, 4096, &[7; 8192])),
        ("discard", client.discard(0, 0, 64 * KIB)),
        ("write-zeroes", client.write_zeroes(0, 0, 64 * KIB, false)),
    ];
    for (what, result) in refused {
        assert_eq!(
            result,
            Err(IoFailed(-EBADF)),
            "{what} on a read-only device"
        );
    }
    client.flush(0).unwrap();
    assert_eq!(
        client.read(0, 0, data.len()).unwrap(),
        data,
        "data unchanged"
    );
    drop(client);
    daemon.stop_cleanly();
    let files_after = volume_files(&setup.volume);
    assert!(
        files_before == files_after,
        "a read-only daemon changed {:?}",
        files_after
            .iter()
            .filter(|f| !files_before.contains(f))
            .map(|f| &f.0)
            .collect::<Vec<_>>()
    );
}
