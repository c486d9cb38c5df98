//! What an operator needs around the two daemons, shared by `lsvblk` and
//! `lsvkms`: the start of every command ([`cli`]: process protection,
//! argument parsing, logging), shell completions and manual pages made from
//! their clap definitions ([`docs`]), the systemd readiness protocol
//! ([`notify`]), the Prometheus metrics endpoint ([`metrics`]), and sparse
//! files for image import and export ([`sparse`]).
//!
//! Nothing here changes a volume or touches a key.

pub mod cli;
pub mod docs;
pub mod metrics;
pub mod notify;
pub mod sparse;
