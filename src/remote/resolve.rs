//! Which objects make up the volume: an epoch's base manifest (what it
//! adopted from older epochs when it started) plus what it wrote itself.
//! Objects of an older epoch that no base names (a fenced writer's) are
//! ignored.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::{RemoteError, Result};
use super::layout::{ObjectKind, StoredObject, base_key, epoch_folder};
use crate::objstore::{Error as StoreError, ObjectKey, ObjectStore};

const BASE_FORMAT: &str = "lsvblk-epoch-base";

/// An epoch's base manifest.
#[derive(Debug, Serialize, Deserialize)]
struct Base {
    format: String,
    /// The epoch whose objects these were.
    from_epoch: u64,
    /// Keys of the adopted objects.
    objects: Vec<String>,
}

/// The volume's objects as of one epoch, by kind and number.
#[derive(Clone, Debug, Default)]
pub struct Resolution {
    /// The epoch resolved (0: none).
    pub epoch: u64,
    objects: BTreeMap<(ObjectKind, u64), StoredObject>,
}

impl Resolution {
    /// Objects of `kind`, by number.
    pub fn of_kind(&self, kind: ObjectKind) -> impl DoubleEndedIterator<Item = &StoredObject> {
        self.objects
            .range((kind, 0)..=(kind, u64::MAX))
            .map(|(_, object)| object)
    }

    /// The newest object of `kind` (highest number).
    pub fn newest(&self, kind: ObjectKind) -> Option<&StoredObject> {
        self.of_kind(kind).next_back()
    }

    /// The segment with `id`, if stored.
    pub fn segment(&self, id: u64) -> Option<&StoredObject> {
        self.objects.get(&(ObjectKind::Segment, id))
    }

    /// Every object.
    pub fn all(&self) -> impl Iterator<Item = &StoredObject> {
        self.objects.values()
    }

    fn insert(&mut self, object: StoredObject) {
        self.objects.insert((object.kind, object.number), object);
    }
}

/// Resolves the newest of `epochs` (ascending) that started (wrote its
/// base); an epoch that claimed its lease but never started adopted nothing.
pub fn resolve(store: &dyn ObjectStore, epochs: &[u64]) -> Result<Resolution> {
    for &epoch in epochs.iter().rev() {
        let base = match store.get(&base_key(epoch)) {
            Ok(bytes) => parse_base(epoch, &bytes)?,
            Err(StoreError::NotFound { .. }) => continue,
            Err(error) => return Err(error.into()),
        };
        let mut resolution = Resolution {
            epoch,
            ..Resolution::default()
        };
        for key in &base.objects {
            resolution.insert(
                StoredObject::parse(key).ok_or_else(|| RemoteError::Corrupt {
                    key: base_key(epoch).as_str().to_string(),
                    reason: format!("names an object {key:?} that is not ours"),
                })?,
            );
        }
        let folder = ObjectKey::new(epoch_folder(epoch))?;
        for info in store.list(&folder)? {
            if let Some(object) = StoredObject::parse(info.key.as_str())
                && object.epoch == epoch
            {
                resolution.insert(object);
            }
        }
        return Ok(resolution);
    }
    Ok(Resolution::default())
}

/// Writes `epoch`'s base: it adopts `objects` (of epoch `from_epoch`'s
/// resolution). Before the base exists the epoch writes nothing else.
pub fn write_base<'a>(
    store: &dyn ObjectStore,
    epoch: u64,
    from_epoch: u64,
    objects: impl IntoIterator<Item = &'a StoredObject>,
) -> Result<()> {
    let base = Base {
        format: BASE_FORMAT.to_string(),
        from_epoch,
        objects: objects
            .into_iter()
            .map(|o| o.key().as_str().to_string())
            .collect(),
    };
    let body = serde_json::to_vec(&base).expect("a base serializes");
    store.put(&base_key(epoch), Bytes::from(body))?;
    Ok(())
}

fn parse_base(epoch: u64, bytes: &[u8]) -> Result<Base> {
    let corrupt = |reason: String| RemoteError::Corrupt {
        key: base_key(epoch).as_str().to_string(),
        reason,
    };
    let base: Base = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if base.format != BASE_FORMAT {
        return Err(corrupt(format!("format {:?}", base.format)));
    }
    Ok(base)
}
