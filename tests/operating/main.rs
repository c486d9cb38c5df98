//! What an operator runs around the daemons, tested on the real binaries:
//!
//! - [`docs`]: shell completions and manual pages generated from the
//!   command lines, and `packaging/install.sh`;
//! - [`service`]: the systemd units (`systemd-analyze verify`) and the
//!   readiness protocol both daemons speak (`READY=1` once their socket
//!   listens, `STOPPING=1` on SIGTERM), received on a test `NOTIFY_SOCKET`;
//! - [`images`]: raw images imported into and exported from volumes;
//! - [`metrics`]: `lsvblk serve --metrics` scraped under a libblkio load,
//!   and [`kms_metrics`]: `lsvkms serve --metrics` under allowed, denied
//!   and malformed calls ([`scrape`] reads both).

#[path = "../kit/mod.rs"]
mod kit;

mod docs;
mod images;
mod kms_metrics;
mod metrics;
mod scrape;
mod service;

use std::path::Path;
use std::process::Command;

/// Runs `program ARGS` to completion; panics with its output unless it
/// succeeds. Returns its stdout.
fn stdout_of(program: &str, args: &[&str]) -> String {
    kit::cli::run_to_success(Command::new(program).args(args))
}

/// True when `program` is on PATH.
fn have(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| Path::new(&dir).join(program).is_file())
    })
}

/// The repository's top directory.
fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}
