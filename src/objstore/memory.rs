//! An in-process object store: a test double for unit tests of code built
//! on [`ObjectStore`] (compiled for unit tests only). It keeps the trait's
//! contract (checked by the same [`super::contract`] as the real stores) and
//! can be told to fail. Integration tests use the real stores: a local
//! directory, or the Ceph cluster for S3.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;

use super::error::{Error, Result};
use super::{ByteRange, ObjectInfo, ObjectKey, ObjectStore, PutOutcome};

/// Objects in a map (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct MemoryStore {
    objects: Mutex<BTreeMap<ObjectKey, Bytes>>,
    failures_owed: AtomicU32,
}

impl MemoryStore {
    /// An empty store.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The next `count` calls fail with [`Error::Transient`], as calls to an
    /// unreachable store do once their retry deadline has passed.
    pub(crate) fn fail_next(&self, count: u32) {
        self.failures_owed.store(count, Ordering::SeqCst);
    }

    fn enter(
        &self,
        op: &'static str,
        key: &ObjectKey,
    ) -> Result<std::sync::MutexGuard<'_, BTreeMap<ObjectKey, Bytes>>> {
        let owed = self
            .failures_owed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if owed.is_ok() {
            return Err(Error::Transient {
                op,
                key: key.to_string(),
                elapsed_s: 0.0,
                detail: "failure injected by the test".to_string(),
            });
        }
        Ok(self
            .objects
            .lock()
            .expect("no test panics while holding the map"))
    }

    fn listing(&self, prefix: &ObjectKey, after: Option<&ObjectKey>) -> Result<Vec<ObjectInfo>> {
        let objects = self.enter("LIST", prefix)?;
        Ok(objects
            .iter()
            .filter(|(key, _)| key.is_under(prefix) && after.is_none_or(|after| *key > after))
            .map(|(key, bytes)| ObjectInfo {
                key: key.clone(),
                size: bytes.len() as u64,
            })
            .collect())
    }
}

fn not_found(key: &ObjectKey) -> Error {
    Error::NotFound {
        key: key.to_string(),
    }
}

impl ObjectStore for MemoryStore {
    fn put(&self, key: &ObjectKey, bytes: Bytes) -> Result<()> {
        self.enter("PUT", key)?.insert(key.clone(), bytes);
        Ok(())
    }

    fn put_if_absent(&self, key: &ObjectKey, bytes: Bytes) -> Result<PutOutcome> {
        let mut objects = self.enter("PUT if absent", key)?;
        match objects.get(key) {
            Some(existing) if *existing == bytes => Ok(PutOutcome::Created),
            Some(_) => Ok(PutOutcome::AlreadyExists),
            None => {
                objects.insert(key.clone(), bytes);
                Ok(PutOutcome::Created)
            }
        }
    }

    fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        self.enter("GET", key)?
            .get(key)
            .cloned()
            .ok_or_else(|| not_found(key))
    }

    fn get_range(&self, key: &ObjectKey, range: ByteRange) -> Result<Bytes> {
        range.check()?;
        let bytes = self
            .enter("GET range", key)?
            .get(key)
            .cloned()
            .ok_or_else(|| not_found(key))?;
        let span = range
            .resolve(bytes.len() as u64)
            .ok_or_else(|| Error::InvalidRange {
                key: key.to_string(),
                range,
            })?;
        // Both ends are within `bytes`, whose length is a usize.
        Ok(bytes.slice(span.start as usize..span.end as usize))
    }

    fn head(&self, key: &ObjectKey) -> Result<ObjectInfo> {
        let objects = self.enter("HEAD", key)?;
        let bytes = objects.get(key).ok_or_else(|| not_found(key))?;
        Ok(ObjectInfo {
            key: key.clone(),
            size: bytes.len() as u64,
        })
    }

    fn list(&self, prefix: &ObjectKey) -> Result<Vec<ObjectInfo>> {
        self.listing(prefix, None)
    }

    fn list_after(&self, prefix: &ObjectKey, after: &ObjectKey) -> Result<Vec<ObjectInfo>> {
        self.listing(prefix, Some(after))
    }

    fn delete(&self, keys: &[ObjectKey]) -> Result<()> {
        let Some(first) = keys.first() else {
            return Ok(());
        };
        let mut objects = self.enter("DELETE", first)?;
        for key in keys {
            objects.remove(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objstore::contract;

    fn base() -> ObjectKey {
        ObjectKey::new("t").unwrap()
    }

    #[test]
    fn keeps_the_contract() {
        let store = MemoryStore::new();
        contract::check_store(&store, &base());
        contract::check_create_race(&store, &base(), 8);
    }

    #[test]
    fn injected_failures_are_transient_and_then_stop() {
        let store = MemoryStore::new();
        let key = base().join("k").unwrap();
        store.put(&key, Bytes::from_static(b"v")).unwrap();
        store.fail_next(2);
        assert!(store.get(&key).unwrap_err().is_transient());
        assert!(store.put(&key, Bytes::new()).unwrap_err().is_transient());
        assert_eq!(
            store.get(&key).unwrap(),
            Bytes::from_static(b"v"),
            "the failed put wrote nothing"
        );
    }
}
