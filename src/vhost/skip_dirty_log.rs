//! TEST-ONLY: leave the guest pages a read fills out of the dirty-page log.
//!
//! During a live migration QEMU copies guest RAM while the guest runs, and
//! copies again the pages written since; the daemon's writes into guest
//! memory (the data of a read) reach QEMU only through the dirty-page log
//! (`VHOST_F_LOG_ALL`). With [`SKIP_DIRTY_LOG_VARIABLE`] set to 1, read data
//! is not logged (the used ring and status bytes still are), so a migration
//! test with reads during the RAM copy (`qemu/migrate-test.sh
//! --cached-reads`) can be run without that log.
//!
//! Compiled in, off unless the variable is set, read once per process. Never
//! set it on a production daemon: a migrated guest then reads stale data.

use std::sync::OnceLock;

/// The environment variable that turns the hook on (test-only).
pub const SKIP_DIRTY_LOG_VARIABLE: &str = "LSVBLK_TEST_SKIP_DIRTY_LOG";

/// True when the daemon must not log the pages its reads fill.
pub(crate) fn skip_dirty_log() -> bool {
    static SKIP: OnceLock<bool> = OnceLock::new();
    *SKIP.get_or_init(|| {
        let skip = std::env::var(SKIP_DIRTY_LOG_VARIABLE).is_ok_and(|v| v == "1");
        if skip {
            tracing::warn!(
                "TEST HOOK {SKIP_DIRTY_LOG_VARIABLE} is set: read data is not dirty-logged, \
                 a live migration will lose it"
            );
        }
        skip
    })
}
