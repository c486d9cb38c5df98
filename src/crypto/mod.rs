//! Cryptography: batched AES-256-XTS, data keys in locked memory, the MACs
//! that authenticate the log (`mac`), the fixed crypto thread pool that
//! splits large buffers into chunks, and the hygiene that keeps key
//! material out of registers and dead stack frames.

pub mod hygiene;
pub mod key;
pub mod locked;
pub mod mac;
pub mod pool;
pub mod xts;

pub use key::{DataKey, KeyId, KeyKind};
pub use pool::CryptoPool;
pub use xts::{DataUnit, Tweak, XtsCipher, XtsPath};
