//! A daemon learns of key state changes without one audit record per poll.

use std::time::Duration;

use lsvblk::kms::keys::KeyAction;
use serde_json::Value;

use super::Setup;
use super::kit::cli::wait_for;
use super::kit::daemon::Daemon;

/// An hour of polls at the daemon's 2 s.
const POLLS_PER_HOUR: u64 = 1800;
/// The daemon polls this often in the test (ms): an hour in ~20 s.
const POLL_MS: &str = "10";

fn polls(status: &Value) -> u64 {
    status["keys"]["kms_polls"].as_u64().unwrap_or(0)
}

/// lsvkms's state of the daemon's only key, as the daemon last heard it.
fn known_state(status: &Value) -> String {
    status["keys"]["kms_keys"][0]["status"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// Waits until the daemon has polled `more` times beyond `from`; returns
/// its status then.
fn wait_polls(setup: &Setup, from: u64, more: u64) -> Value {
    let mut last = Value::Null;
    wait_for(
        &format!("{more} more key polls"),
        Duration::from_secs(120),
        || {
            last = setup.status();
            (polls(&last) >= from + more).then(|| last.clone())
        },
        || format!("polled from {from}"),
    )
}

#[test]
fn an_hour_of_key_polls_audits_only_the_changes_and_a_disable_is_seen_within_a_poll() {
    let setup = Setup::start();
    let mut daemon = Daemon::start(
        &setup.volume,
        &setup.kms,
        &setup.alice,
        &["--background-poll-ms", POLL_MS],
    );
    let status = wait_polls(&setup, 0, 1);
    let key_id = status["keys"]["current_key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(known_state(&status), "enabled", "{status}");
    let before = setup.audited("key_info");

    // Half an hour of an unchanged key: not one record.
    let status = wait_polls(&setup, polls(&status), POLLS_PER_HOUR / 2);
    assert_eq!(
        setup.audited("key_info"),
        before,
        "unchanged polls are not audited"
    );

    // A change reaches the daemon at its next poll, and is audited once.
    let kms = setup.kms.client();
    kms.set_key_state(key_id.parse().unwrap(), KeyAction::Disable)
        .unwrap();
    let changed = std::time::Instant::now();
    let seen = wait_for(
        "the daemon to see the key disabled",
        Duration::from_secs(10),
        || {
            let status = setup.status();
            (known_state(&status) == "disabled").then_some(status)
        },
        || setup.status().to_string(),
    );
    // The next poll sees it: well within the 2 s the daemon polls at by
    // default (here it polls every 10 ms; `lsvblk status` takes the rest).
    let reaction = changed.elapsed();
    eprintln!("the daemon saw the disable after {reaction:?} (polls every {POLL_MS} ms)");
    assert!(reaction < Duration::from_secs(2), "{reaction:?}");
    assert!(polls(&seen) > polls(&status));
    kms.set_key_state(key_id.parse().unwrap(), KeyAction::Enable)
        .unwrap();

    // The second half hour.
    let status = wait_polls(&setup, polls(&seen), POLLS_PER_HOUR / 2);
    assert_eq!(known_state(&status), "enabled", "{status}");
    let audited = setup.audited("key_info") - before;
    eprintln!("{} polls, {audited} key_info audit records", polls(&status));
    assert_eq!(
        audited, 2,
        "two changes (disable, enable) over an hour of polls"
    );
    daemon.stop_cleanly();
}
