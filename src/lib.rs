//! lsvblk: encrypted, log-structured virtual disks served over vhost-user-blk.
//!
//! The library is layered so that dependencies point one way:
//! `volume` → {`crypto`, `store`}. `store` knows nothing about keys except
//! their ids; `crypto` knows nothing about the log; `objstore` (whole
//! objects in a bucket or a directory) knows nothing about either.
//!
//! Log messages and `Debug` output never contain key material: key types
//! implement neither `Serialize` nor a `Debug` that shows bytes.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod crypto;
pub mod fsmode;
pub mod kms;
pub mod limits;
pub mod objstore;
pub mod ops;
pub mod peer;
pub mod remote;
pub mod service;
pub mod store;
pub mod sync;
pub mod vhost;
pub mod volume;
