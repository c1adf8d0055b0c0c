//! Retry with exponential backoff and jitter, as a decorator around any
//! backend: every read, write, list, stat and delete goes through the same
//! bounded retry, so no caller has a retry loop of its own.
//!
//! Only `BackendError::Transient` is retried. A ranged get whose body is not
//! the length of its range (a connection cut short, a truncating proxy) is
//! made a transient error here, so every caller gets whole ranges or a
//! retry; a whole-object get's length only its backend can check (S3 against
//! Content-Length). A retried `put_if_absent`
//! whose first attempt landed answers `AlreadyExists`; callers that care
//! (manifest headers) compare what is stored with what they meant to store.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use super::*;

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Delay before the second attempt; it doubles up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 5, base_delay: Duration::from_millis(250), max_delay: Duration::from_secs(8) }
    }
}

impl RetryPolicy {
    /// The pause before attempt `attempt + 1` (attempt counts from 1): "equal
    /// jitter", half fixed and half random, so that many clients that failed
    /// together do not come back together.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.base_delay.saturating_mul(1u32 << (attempt - 1).min(16)).min(self.max_delay);
        let half = exp / 2;
        let mut r = [0u8; 4];
        let frac = if getrandom::fill(&mut r).is_ok() { u32::from_le_bytes(r) as f64 / u32::MAX as f64 } else { 0.5 };
        half + half.mul_f64(frac)
    }
}

pub struct RetryBackend {
    inner: Arc<dyn Backend>,
    policy: RetryPolicy,
}

impl RetryBackend {
    pub fn new(inner: Arc<dyn Backend>, policy: RetryPolicy) -> RetryBackend {
        RetryBackend { inner, policy }
    }

    fn run<T>(&self, what: &str, key: &str, mut op: impl FnMut() -> BResult<T>) -> BResult<T> {
        let mut attempt = 1;
        loop {
            match op() {
                Err(BackendError::Transient(e)) if attempt < self.policy.attempts => {
                    let d = self.policy.delay(attempt);
                    log::warn!(
                        "{what} {key} on {} failed (attempt {attempt} of {}): {e:#}; retrying in {:.1}s",
                        self.inner.location(),
                        self.policy.attempts,
                        d.as_secs_f64()
                    );
                    std::thread::sleep(d);
                    attempt += 1;
                }
                Err(BackendError::Transient(e)) => {
                    return Err(BackendError::Transient(
                        e.context(format!("{what} {key} still failing after {attempt} attempts")),
                    ));
                }
                other => return other,
            }
        }
    }
}

impl Backend for RetryBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn put_if_absent(&self, key: &str, data: &[u8]) -> BResult<PutOutcome> {
        self.run("storing", key, || self.inner.put_if_absent(key, data))
    }
    fn put_shared(&self, key: &str, data: std::sync::Arc<Vec<u8>>) -> BResult<PutOutcome> {
        self.run("storing", key, || self.inner.put_shared(key, data.clone()))
    }
    fn get(&self, key: &str, range: Option<Range<u64>>) -> BResult<Vec<u8>> {
        self.run("reading", key, || {
            let body = self.inner.get(key, range.clone())?;
            match &range {
                Some(r) if body.len() as u64 != r.end.saturating_sub(r.start) => {
                    Err(BackendError::Transient(anyhow::anyhow!(
                        "short read: {} bytes for the range {}..{} of {} bytes",
                        body.len(),
                        r.start,
                        r.end,
                        r.end.saturating_sub(r.start)
                    )))
                }
                _ => Ok(body),
            }
        })
    }
    fn list(&self, prefix: &str) -> BResult<Vec<ObjectInfo>> {
        self.run("listing", prefix, || self.inner.list(prefix))
    }
    fn stat(&self, key: &str) -> BResult<Option<u64>> {
        self.run("checking", key, || self.inner.stat(key))
    }
    fn delete(&self, key: &str) -> BResult<()> {
        self.run("deleting", key, || self.inner.delete(key))
    }
    fn delete_many(&self, keys: &[String]) -> BResult<()> {
        self.run("deleting", &format!("{} objects", keys.len()), || self.inner.delete_many(keys))
    }
    fn requests(&self) -> Option<RequestCounts> {
        self.inner.requests()
    }
    fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }
    fn cleanup_interrupted(&self) -> BResult<u64> {
        self.run("cleaning up", "interrupted uploads", || self.inner.cleanup_interrupted())
    }
    fn content_address(&self, key: &str) -> BResult<Option<String>> {
        self.run("asking the address of", key, || self.inner.content_address(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fault::{FaultBackend, FaultRule};
    use crate::backend::memory::MemoryBackend;

    fn quick() -> RetryPolicy {
        RetryPolicy { attempts: 4, base_delay: Duration::from_millis(1), max_delay: Duration::from_millis(4) }
    }

    #[test]
    fn transient_failures_are_retried_and_others_are_not() {
        let mem: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        mem.put_if_absent("data/ab/x", b"hello").unwrap();
        // Every second call fails transiently: each op succeeds on its retry.
        let flaky = Arc::new(FaultBackend::new(mem.clone(), vec![FaultRule::parse("any:transient:every:2").unwrap()]));
        let r = RetryBackend::new(flaky.clone(), quick());
        for _ in 0..5 {
            assert_eq!(r.get("data/ab/x", Some(1..3)).unwrap(), b"el");
            assert_eq!(r.stat("data/ab/x").unwrap(), Some(5));
        }
        assert!(flaky.injected() >= 5, "faults were injected and absorbed");

        // A persistent transient failure gives up after the bound.
        let dead = Arc::new(FaultBackend::new(mem.clone(), vec![FaultRule::parse("get:transient:after:0").unwrap()]));
        let r = RetryBackend::new(dead.clone(), quick());
        let e = r.get("data/ab/x", None).unwrap_err();
        assert!(matches!(e, BackendError::Transient(_)));
        assert!(e.to_string().contains("after 4 attempts"), "{e}");
        assert_eq!(dead.injected(), 4);

        // A permanent failure is not retried.
        let bad = Arc::new(FaultBackend::new(mem, vec![FaultRule::parse("put:fatal:after:0").unwrap()]));
        let r = RetryBackend::new(bad.clone(), quick());
        assert!(matches!(r.put_if_absent("data/cd/y", b"x"), Err(BackendError::Other(_))));
        assert_eq!(bad.injected(), 1);
    }

    /// A short ranged read is retried, never handed to the caller.
    #[test]
    fn a_short_ranged_read_is_retried() {
        let mem: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        mem.put_if_absent("data/ab/x", b"0123456789").unwrap();
        let cut = Arc::new(FaultBackend::new(mem.clone(), vec![FaultRule::parse("get:truncate:every:2").unwrap()]));
        let r = RetryBackend::new(cut.clone(), quick());
        for _ in 0..4 {
            assert_eq!(r.get("data/ab/x", Some(2..9)).unwrap(), b"2345678");
        }
        assert!(cut.injected() >= 2, "truncations were injected and absorbed");
        let dead = Arc::new(FaultBackend::new(mem, vec![FaultRule::parse("get:truncate:every:1").unwrap()]));
        let e = RetryBackend::new(dead, quick()).get("data/ab/x", Some(0..10)).unwrap_err();
        assert!(matches!(e, BackendError::Transient(_)), "{e}");
        assert!(
            e.to_string()
                .contains("reading data/ab/x still failing after 4 attempts: short read: 5 bytes for the range 0..10"),
            "{e}"
        );
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        let p = RetryPolicy { attempts: 10, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1) };
        for a in 1..10 {
            let d = p.delay(a);
            let exp = Duration::from_millis(100 * (1 << (a - 1))).min(Duration::from_secs(1));
            assert!(d >= exp / 2 && d <= exp, "attempt {a}: {d:?} outside [{:?}, {exp:?}]", exp / 2);
        }
    }

    #[test]
    fn conformance_through_the_decorators() {
        let mem: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let flaky: Arc<dyn Backend> =
            Arc::new(FaultBackend::new(mem, vec![FaultRule::parse("any:transient:every:3").unwrap()]));
        conformance::check(&RetryBackend::new(flaky, quick()));
    }
}
