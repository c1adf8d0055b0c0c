//! An in-memory backend for unit tests of the core. Never a stand-in for a
//! real-server test of a feature.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;

use super::*;

#[derive(Default)]
pub struct MemoryBackend {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        // A poisoned lock only means a test thread panicked; the map is fine.
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replace an object's bytes (tests corrupt objects with this).
    pub fn overwrite(&self, key: &str, data: Vec<u8>) {
        self.objects().insert(key.to_string(), data);
    }
}

pub(crate) fn slice_range(data: &[u8], key: &str, range: Option<Range<u64>>) -> BResult<Vec<u8>> {
    match range {
        None => Ok(data.to_vec()),
        Some(r) if r.start <= r.end && r.end <= data.len() as u64 => {
            Ok(data[r.start as usize..r.end as usize].to_vec())
        }
        Some(r) => Err(BackendError::Other(anyhow::anyhow!(
            "range {}..{} is outside object {key} of {} bytes",
            r.start,
            r.end,
            data.len()
        ))),
    }
}

impl Backend for MemoryBackend {
    fn location(&self) -> String {
        "memory:".into()
    }
    fn put_if_absent(&self, key: &str, data: &[u8]) -> BResult<PutOutcome> {
        check_key(key)?;
        let mut o = self.objects();
        if o.contains_key(key) {
            return Ok(PutOutcome::AlreadyExists);
        }
        o.insert(key.to_string(), data.to_vec());
        Ok(PutOutcome::Created)
    }
    fn get(&self, key: &str, range: Option<Range<u64>>) -> BResult<Vec<u8>> {
        check_key(key)?;
        let o = self.objects();
        let data = o.get(key).ok_or_else(|| BackendError::NotFound(key.to_string()))?;
        slice_range(data, key, range)
    }
    fn list(&self, prefix: &str) -> BResult<Vec<ObjectInfo>> {
        Ok(self
            .objects()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectInfo { key: k.clone(), size: v.len() as u64 })
            .collect())
    }
    fn stat(&self, key: &str) -> BResult<Option<u64>> {
        check_key(key)?;
        Ok(self.objects().get(key).map(|v| v.len() as u64))
    }
    fn delete(&self, key: &str) -> BResult<()> {
        check_key(key)?;
        self.objects().remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conformance() {
        super::super::conformance::check(&super::MemoryBackend::new());
    }
}
