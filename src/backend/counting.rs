//! Request counting: how many PUT, GET, LIST, HEAD (stat) and DELETE
//! requests a run made, and how many body bytes went up and down. On a
//! remote backend each request costs time and often money, so a run reports
//! them (`backup` in its summary, `--json` of backup, restore and verify).
//!
//! `CountingBackend` counts the calls of a backend that does not count its
//! own; a remote backend that knows its real HTTP requests (multipart parts,
//! list pages) keeps a `RequestCounter` of its own and answers `requests()`,
//! and then `backend::open` adds no counting decorator over it.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// Requests made to a backend, and body bytes moved. A plain value: a
/// snapshot of a `RequestCounter`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RequestCounts {
    pub put: u64,
    pub get: u64,
    pub list: u64,
    /// Existence and size checks (`stat`; HEAD on an object store).
    pub head: u64,
    pub delete: u64,
    /// Request bodies sent (put).
    pub bytes_up: u64,
    /// Response bodies received (get).
    pub bytes_down: u64,
}

impl RequestCounts {
    /// All requests, of every kind.
    pub fn requests(&self) -> u64 {
        self.put + self.get + self.list + self.head + self.delete
    }

    /// What was counted between `earlier` and `self`.
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts {
            put: self.put.saturating_sub(earlier.put),
            get: self.get.saturating_sub(earlier.get),
            list: self.list.saturating_sub(earlier.list),
            head: self.head.saturating_sub(earlier.head),
            delete: self.delete.saturating_sub(earlier.delete),
            bytes_up: self.bytes_up.saturating_sub(earlier.bytes_up),
            bytes_down: self.bytes_down.saturating_sub(earlier.bytes_down),
        }
    }
}

/// Thread-safe counters, for any backend to count its requests with.
#[derive(Debug, Default)]
pub struct RequestCounter {
    put: AtomicU64,
    get: AtomicU64,
    list: AtomicU64,
    head: AtomicU64,
    delete: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

impl RequestCounter {
    pub fn new() -> RequestCounter {
        RequestCounter::default()
    }
    /// One PUT request (one multipart part is one request) carrying `bytes`.
    pub fn put(&self, bytes: u64) {
        self.put.fetch_add(1, Ordering::Relaxed);
        self.bytes_up.fetch_add(bytes, Ordering::Relaxed);
    }
    /// One GET request, and the `bytes` of body it returned.
    pub fn get(&self, bytes: u64) {
        self.get.fetch_add(1, Ordering::Relaxed);
        self.bytes_down.fetch_add(bytes, Ordering::Relaxed);
    }
    /// One LIST request (one page).
    pub fn list(&self) {
        self.list.fetch_add(1, Ordering::Relaxed);
    }
    pub fn head(&self) {
        self.head.fetch_add(1, Ordering::Relaxed);
    }
    pub fn delete(&self) {
        self.delete.fetch_add(1, Ordering::Relaxed);
    }
    pub fn snapshot(&self) -> RequestCounts {
        RequestCounts {
            put: self.put.load(Ordering::Relaxed),
            get: self.get.load(Ordering::Relaxed),
            list: self.list.load(Ordering::Relaxed),
            head: self.head.load(Ordering::Relaxed),
            delete: self.delete.load(Ordering::Relaxed),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
        }
    }
}

/// Counts every call that reaches the backend beneath it, failed ones
/// included (a failed request was still made); bytes only of calls that
/// succeeded, since a failed one may have moved any part of its body.
pub struct CountingBackend {
    inner: Arc<dyn Backend>,
    counter: RequestCounter,
}

impl CountingBackend {
    pub fn new(inner: Arc<dyn Backend>) -> CountingBackend {
        CountingBackend { inner, counter: RequestCounter::new() }
    }
}

impl Backend for CountingBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn put_if_absent(&self, key: &str, data: &[u8]) -> BResult<PutOutcome> {
        let r = self.inner.put_if_absent(key, data);
        self.counter.put(if r.is_ok() { data.len() as u64 } else { 0 });
        r
    }
    fn put_shared(&self, key: &str, data: std::sync::Arc<Vec<u8>>) -> BResult<PutOutcome> {
        let n = data.len() as u64;
        let r = self.inner.put_shared(key, data);
        self.counter.put(if r.is_ok() { n } else { 0 });
        r
    }
    fn get(&self, key: &str, range: Option<Range<u64>>) -> BResult<Vec<u8>> {
        let r = self.inner.get(key, range);
        self.counter.get(r.as_ref().map_or(0, |b| b.len() as u64));
        r
    }
    fn list(&self, prefix: &str) -> BResult<Vec<ObjectInfo>> {
        self.counter.list();
        self.inner.list(prefix)
    }
    fn stat(&self, key: &str) -> BResult<Option<u64>> {
        self.counter.head();
        self.inner.stat(key)
    }
    fn delete(&self, key: &str) -> BResult<()> {
        self.counter.delete();
        self.inner.delete(key)
    }
    // delete_many: the default, one counted delete per key.
    fn cleanup_interrupted(&self) -> BResult<u64> {
        self.inner.cleanup_interrupted()
    }
    fn content_address(&self, key: &str) -> BResult<Option<String>> {
        self.inner.content_address(key)
    }
    fn requests(&self) -> Option<RequestCounts> {
        Some(self.counter.snapshot())
    }
    fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;

    #[test]
    fn every_kind_of_request_is_counted_with_its_bytes() {
        let mem: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let c = CountingBackend::new(mem);
        assert_eq!(c.requests(), Some(RequestCounts::default()));
        c.put_if_absent("data/ab/x", b"hello").unwrap();
        c.put_if_absent("data/ab/y", b"abc").unwrap();
        assert_eq!(c.get("data/ab/x", Some(1..4)).unwrap(), b"ell");
        c.get("data/ab/y", None).unwrap();
        assert!(c.get("data/ab/nope", None).is_err());
        c.list("data/").unwrap();
        c.stat("data/ab/x").unwrap();
        c.delete("data/ab/y").unwrap();
        let n = c.requests().unwrap();
        assert_eq!(
            n,
            RequestCounts { put: 2, get: 3, list: 1, head: 1, delete: 1, bytes_up: 8, bytes_down: 6 },
            "a failed get counts as a request with no bytes"
        );
        assert_eq!(n.requests(), 8);
        let later = RequestCounts { put: 5, bytes_up: 20, ..n };
        assert_eq!(later.since(&n), RequestCounts { put: 3, bytes_up: 12, ..Default::default() });
        conformance::check(&CountingBackend::new(Arc::new(MemoryBackend::new())));
    }
}
