//! `lsvblk scrub`: through the daemon serving the volume, and here with
//! the volume's key; a block changed by someone without the key (its CRCs
//! recomputed) is named, and the scrub exits 65. ~5 s.

mod kit;

use kit::cli::{assert_refused, json_of, run_lsvblk};
use kit::daemon::{Daemon, create_volume};
use kit::kms::Kms;

const MIB: u64 = 1 << 20;

#[test]
fn scrub_finds_nothing_on_a_whole_volume_and_names_a_forged_block_with_exit_65() {
    let kms = Kms::start();
    let volume = create_volume(&kms, 4 * MIB, &["alice"], 4096);
    let vol = volume.to_str().unwrap();
    let token = kms.token("alice");
    let mut daemon = Daemon::start(&volume, &kms, &token, &[]);
    let mut client = daemon.client(1);
    for block in 0..8u8 {
        client
            .write(0, u64::from(block) * 4096, &[block + 1; 4096])
            .unwrap();
    }
    client.flush(0).unwrap();
    let args = ["scrub", vol, "--json"];
    let served = json_of(&args, &run_lsvblk(&args));
    assert_eq!(served["damaged"], serde_json::json!([]), "{served}");
    assert_eq!(served["bytes_checked"], 4 * MIB);
    drop(client);
    assert!(daemon.sigterm_and_wait().success());

    let out = run_lsvblk(&["scrub", vol]);
    assert_refused("scrub without a key", &out, 64, &["--kms"]);

    let forged = kit::forge::forge_first_block(&volume);
    let (address, token) = (kms.address(), token.to_str().unwrap().to_string());
    let args = [
        "scrub",
        vol,
        "--kms",
        &address,
        "--token-file",
        &token,
        "--json",
    ];
    let out = run_lsvblk(&args);
    assert_eq!(out.status.code(), Some(65), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let damaged = report["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{report}");
    assert_eq!(damaged[0]["first_block"], forged);
    assert_eq!(damaged[0]["blocks"], 1);
    let error = damaged[0]["error"].as_str().unwrap();
    assert!(error.contains("block tag mismatch"), "{error}");
}
