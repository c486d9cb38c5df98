//! The test and bench kit: what the integration tests and the benchmarks
//! share, one concern a file.
//!
//! - [`process`]: a child process with its stderr in a file, never leaked;
//! - [`kms`]: a real `lsvkms` (state directory, socket, tokens, audit log);
//!   [`kms_acceptance`]: the flow every wrapping-key backend must pass;
//! - [`daemon`]: a real `lsvblk serve`, and volumes made by `lsvblk create`;
//! - [`cli`]: commands run to completion (exit codes, JSON answers) or in
//!   the background;
//! - [`blkio`]: a libblkio client, the VMM of the tests and benchmarks;
//! - [`ceph`]: the Ceph cluster of `ci/ceph.sh` (S3 settings, stores on its
//!   bucket, OSD and radosgw faults) for the object-store tests;
//! - [`data`]: recognisable data, and where two buffers differ;
//! - [`disk`]: a byte model of a disk, checked against what a daemon reads;
//! - [`versions`]: a per-block version model and a verified load generator
//!   on it;
//! - [`secrets`]: key material looked for in bytes and in a process's memory;
//! - [`dirs`]: temporary directories and the files under them;
//! - [`forge`]: a volume's files changed with their CRCs recomputed, MAC
//!   flags stripped (what someone without the key can do);
//! - [`stranger`]: another local user (a forked child under another uid)
//!   for tests of who may connect to a socket;
//! - [`volume`]: volumes in this process, with deterministic keys;
//! - [`frontend`]: a hand-built vhost-user frontend (guest memory and
//!   virtqueues written by hand) driving a backend in this process;
//! - [`rng`]: a small seedable random generator;
//! - [`core`]: core dumps of our processes, read (memory and registers);
//!   [`aes_schedule`]: the AES-256 round keys of a key, to look for.
//!
//! Every integration test is a crate of its own, and so is every benchmark:
//! each includes the kit as a module, `mod kit;` from `tests/NAME.rs`,
//! `#[path = "../kit/mod.rs"] mod kit;` from `tests/NAME/main.rs`, and
//! `#[path = "../../tests/kit/mod.rs"] mod kit;` from `ci/bench/NAME.rs`
//! (one more `../` from `ci/bench/NAME/main.rs`). A module rather than a
//! crate of its own because the kit runs the binaries cargo builds for this
//! package (`CARGO_BIN_EXE_lsvblk`, `CARGO_BIN_EXE_lsvkms`), which cargo
//! tells only this package's own tests and benchmarks.

// Each test and benchmark compiles the whole kit and uses a part of it.
#![allow(dead_code)]

pub mod aes_schedule;
pub mod blkio;
pub mod ceph;
pub mod cli;
pub mod core;
pub mod daemon;
pub mod data;
pub mod dirs;
pub mod disk;
pub mod forge;
pub mod frontend;
pub mod kms;
pub mod kms_acceptance;
pub mod process;
pub mod rng;
pub mod secrets;
pub mod stranger;
pub mod versions;
pub mod volume;
