//! The same volume kept in a directory (`--store file:///DIR`: the other
//! implementation of `lsvblk::objstore::ObjectStore`, through the same
//! code as S3): the host is lost, the volume is rebuilt from the directory
//! store alone. Needs no cluster.

use std::path::Path;
use std::time::Duration;

use crate::kit::cli::Lsvblk;
use crate::kit::daemon::{Daemon, ServeOptions, create_volume_using};
use crate::kit::kms::Kms;
use crate::kit::versions::VerifiedLoad;
use crate::lifecycle::verify_rebuilt;
use crate::{MIB, for_time};

const SIZE: u64 = 8 * MIB;

#[test]
fn a_volume_kept_in_a_directory_store_survives_losing_its_host() {
    let kms = Kms::start();
    let token = kms.token("alice");
    let objects = kms.fresh_path("objects", "d");
    let url = format!("file://{}", objects.display());
    let create_args = ["--store", &url, "--segment-size", "1M"];
    let volume = create_volume_using(&Lsvblk::this_build(), &kms, SIZE, &["alice"], &create_args);
    let serve = |dir: &Path, extra: &[&str]| {
        let mut options = ServeOptions::args(extra);
        options.args.extend(["--store".to_string(), url.clone()]);
        Daemon::start_with(dir, &kms, &token, &options)
    };
    let mut first = serve(&volume, &["--flush", "remote"]);
    let mut load = VerifiedLoad::new("dir-store", first.client(1), 8, 30);
    load.precondition();
    load.run(&mut for_time(Duration::from_secs(2)));
    load.flush();
    assert_eq!((load.io_errors, load.mismatches), (0, 0));
    assert!(objects.join("volume-id").is_file());

    first.kill9();
    std::fs::remove_dir_all(&volume).unwrap();
    let elsewhere = kms.fresh_path("host", "d");
    let mut rebuilt = serve(&elsewhere, &["--takeover"]);
    verify_rebuilt(&mut rebuilt, &mut load, SIZE);
}
