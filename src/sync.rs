//! Taking locks whose holder may have panicked.
//!
//! A `std` lock is *poisoned* when a thread panics while holding it; every
//! later `lock()` returns an error carrying the guard. Whether going on
//! with that guard is right depends on what the lock protects, so this is
//! not a blanket rule: a lock may use these helpers only when no panic
//! possible while it is held can leave its data half changed (the lock's
//! own doc says why that holds). Then a panic in one thread (a bug) costs
//! that one operation, and the daemon's other threads keep serving instead
//! of panicking one after the other on the poisoned lock.
//!
//! One helper for every such lock, instead of `unwrap_or_else(|p|
//! p.into_inner())` at each call: [`LockOrRecover`] for `Mutex`,
//! [`RwLockOrRecover`] for `RwLock`, [`IntoInnerOrRecover`] for a `Mutex`
//! that is done with.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `Mutex::lock` that takes over a poisoned lock (see the module docs for
/// when that is right).
pub trait LockOrRecover<T: ?Sized> {
    /// Locks, taking the guard even if a holder panicked.
    fn lock_or_recover(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> LockOrRecover<T> for Mutex<T> {
    fn lock_or_recover(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `RwLock::read`/`write` that take over a poisoned lock (see the module
/// docs for when that is right).
pub trait RwLockOrRecover<T: ?Sized> {
    /// Locks shared, taking the guard even if a writer panicked.
    fn read_or_recover(&self) -> RwLockReadGuard<'_, T>;
    /// Locks exclusively, taking the guard even if a writer panicked.
    fn write_or_recover(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLockOrRecover<T> for RwLock<T> {
    fn read_or_recover(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_or_recover(&self) -> RwLockWriteGuard<'_, T> {
        self.write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `Mutex::into_inner` that takes the data even if a holder panicked (see
/// the module docs for when that is right).
pub trait IntoInnerOrRecover<T> {
    /// The data, whether or not a holder panicked.
    fn into_inner_or_recover(self) -> T;
}

impl<T> IntoInnerOrRecover<T> for Mutex<T> {
    fn into_inner_or_recover(self) -> T {
        self.into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_taken_over_with_its_data() {
        let mutex = Mutex::new(7);
        let rwlock = RwLock::new(8);
        std::thread::scope(|s| {
            let _ = s
                .spawn(|| {
                    let _m = mutex.lock().unwrap();
                    let _r = rwlock.write().unwrap();
                    panic!("a holder panics");
                })
                .join();
        });
        assert!(mutex.is_poisoned() && rwlock.is_poisoned());
        assert_eq!(*mutex.lock_or_recover(), 7);
        assert_eq!(*rwlock.read_or_recover(), 8);
        *rwlock.write_or_recover() += 1;
        assert_eq!(*rwlock.read_or_recover(), 9);
        assert_eq!(mutex.into_inner_or_recover(), 7);
    }
}
