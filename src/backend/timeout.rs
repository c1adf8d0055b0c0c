//! A deadline per request, as a decorator: a call that has not answered
//! within the timeout fails with `BackendError::Transient("... timed out
//! after Ns")`, which the retry decorator above retries.
//!
//! A synchronous backend call cannot be cancelled. So each call runs on a
//! small pool of worker threads and the caller stops waiting at the
//! deadline; the worker finishes the call whenever it does and its answer
//! is dropped. That is harmless for reads. For writes:
//! - a put that lands after its timeout is put-if-absent of the same bytes
//!   under the same key (packs and segments are named by their content, a
//!   manifest header is compared with what is stored), so the retry answers
//!   `AlreadyExists` or wins the race, and either way one whole object is
//!   stored;
//! - a put or delete is never sent while an abandoned (timed-out) put or
//!   delete of the same key is still running: it waits for it, within its
//!   own deadline. Otherwise a late delete could remove what a later put
//!   stored (repair deletes and rewrites the config).
//!
//! Memory: a put's body is copied for its worker (it must outlive the
//! caller's borrow when the caller gives up). At most one abandoned write
//! per key runs at a time, and an uploader that keeps timing out fails the
//! run once its retries are spent, so abandoned bodies stay bounded by the
//! uploaders' count.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};

use super::*;

/// Threads at most; past them a call waits in the queue (its deadline
/// running). Far above the uploaders and restore workers of a run, so only
/// calls stuck on a dead backend can fill it.
const MAX_THREADS: usize = 256;

/// A call: it runs the request and returns the delivery of its answer,
/// which the worker runs after it has made itself idle again, so a caller
/// that issues one call after another always finds it idle.
type Job = Box<dyn FnOnce() -> Box<dyn FnOnce() + Send> + Send>;

/// Worker threads that grow on demand: a call never waits behind a stuck
/// one while fewer than `MAX_THREADS` exist. Idle workers block on the
/// queue, and end when the pool is dropped.
struct Pool {
    tx: Sender<Job>,
    rx: Receiver<Job>,
    /// Workers waiting for a job, not yet promised one.
    idle: Arc<AtomicUsize>,
    threads: AtomicUsize,
}

impl Pool {
    fn new() -> Pool {
        let (tx, rx) = unbounded();
        Pool { tx, rx, idle: Arc::new(AtomicUsize::new(0)), threads: AtomicUsize::new(0) }
    }

    fn submit(&self, job: Job) -> BResult<()> {
        // Promise the job to an idle worker, or start a new one for it.
        let claimed = self.idle.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if !claimed && self.threads.fetch_add(1, Ordering::SeqCst) < MAX_THREADS {
            let (rx, idle) = (self.rx.clone(), self.idle.clone());
            let spawned = std::thread::Builder::new().name("n2s-request".into()).spawn(move || {
                let mut job = job;
                loop {
                    let deliver = job();
                    idle.fetch_add(1, Ordering::SeqCst);
                    deliver();
                    let Ok(next) = rx.recv() else { break };
                    job = next;
                }
            });
            return spawned.map(|_| ()).map_err(|e| {
                self.threads.fetch_sub(1, Ordering::SeqCst);
                BackendError::Transient(anyhow::anyhow!("cannot start a request thread: {e}"))
            });
        }
        if !claimed {
            self.threads.fetch_sub(1, Ordering::SeqCst);
        }
        self.tx.send(job).map_err(|_| BackendError::Other(anyhow::anyhow!("the request pool is gone")))
    }
}

/// Keys with an abandoned put or delete still running, and how many.
#[derive(Default)]
struct Abandoned {
    keys: Mutex<HashMap<String, usize>>,
    done: Condvar,
}

pub struct TimeoutBackend {
    inner: Arc<dyn Backend>,
    timeout: Duration,
    pool: Pool,
    abandoned: Arc<Abandoned>,
}

/// `2s`, or `250ms` below a second (tests).
fn shown(d: Duration) -> String {
    if d >= Duration::from_secs(1) { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

impl TimeoutBackend {
    pub fn new(inner: Arc<dyn Backend>, timeout: Duration) -> TimeoutBackend {
        TimeoutBackend { inner, timeout, pool: Pool::new(), abandoned: Arc::new(Abandoned::default()) }
    }

    /// The retry decorator above names the request and the key.
    fn timed_out(&self, extra: &str) -> BackendError {
        BackendError::Transient(anyhow::anyhow!(
            "timed out after {}{extra} (raise request_timeout_secs if the backend is only slow)",
            shown(self.timeout)
        ))
    }

    /// Run `op` on a worker and wait for it until the deadline. `write`:
    /// the call changes `key` (put, delete), so it waits for an abandoned
    /// write of the same key first, and is remembered if it is abandoned.
    fn call<T: Send + 'static>(
        &self,
        what: &str,
        key: &str,
        write: bool,
        op: impl FnOnce(&dyn Backend) -> BResult<T> + Send + 'static,
    ) -> BResult<T> {
        let deadline = Instant::now() + self.timeout;
        if write {
            let mut keys = self.abandoned.keys.lock().unwrap_or_else(|e| e.into_inner());
            while keys.contains_key(key) {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(
                        self.timed_out(", waiting for an earlier request on it that timed out and is still running")
                    );
                }
                keys = self.abandoned.done.wait_timeout(keys, left).unwrap_or_else(|e| e.into_inner()).0;
            }
        }
        let (tx, rx) = bounded::<BResult<T>>(1);
        let inner = self.inner.clone();
        let abandoned = self.abandoned.clone();
        let owned_key = key.to_string();
        let what_owned = what.to_string();
        self.pool.submit(Box::new(move || {
            // A panicking backend call answers as an error and keeps the worker.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(&*inner))).unwrap_or_else(|_| {
                Err(BackendError::Other(anyhow::anyhow!("{what_owned} {owned_key}: the backend call panicked (a bug)")))
            });
            Box::new(move || {
                if write {
                    // Under the lock, so the caller either takes the answer or
                    // has recorded the key by the time the send fails.
                    let mut keys = abandoned.keys.lock().unwrap_or_else(|e| e.into_inner());
                    if tx.send(r).is_err()
                        && let Some(n) = keys.get_mut(&owned_key)
                    {
                        *n -= 1;
                        if *n == 0 {
                            keys.remove(&owned_key);
                        }
                        abandoned.done.notify_all();
                    }
                } else {
                    let _ = tx.send(r); // the caller may have stopped waiting
                }
            })
        }))?;
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => {
                if write {
                    let mut keys = self.abandoned.keys.lock().unwrap_or_else(|e| e.into_inner());
                    if let Ok(r) = rx.try_recv() {
                        return r; // it answered just now
                    }
                    *keys.entry(key.to_string()).or_insert(0) += 1;
                    drop(rx); // still under the lock: the worker's send now fails
                }
                Err(self.timed_out(""))
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(BackendError::Other(anyhow::anyhow!("{what} {key}: the request failed without an answer (a bug)")))
            }
        }
    }
}

impl Backend for TimeoutBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn put_if_absent(&self, key: &str, data: &[u8]) -> BResult<PutOutcome> {
        let (k, data) = (key.to_string(), data.to_vec());
        self.call("storing", key, true, move |b| b.put_if_absent(&k, &data))
    }
    fn put_shared(&self, key: &str, data: std::sync::Arc<Vec<u8>>) -> BResult<PutOutcome> {
        // The worker shares the body: no copy of a 16 MiB pack per attempt.
        let k = key.to_string();
        self.call("storing", key, true, move |b| b.put_shared(&k, data))
    }
    fn get(&self, key: &str, range: Option<Range<u64>>) -> BResult<Vec<u8>> {
        let k = key.to_string();
        self.call("reading", key, false, move |b| b.get(&k, range))
    }
    fn list(&self, prefix: &str) -> BResult<Vec<ObjectInfo>> {
        let p = prefix.to_string();
        self.call("listing", prefix, false, move |b| b.list(&p))
    }
    fn stat(&self, key: &str) -> BResult<Option<u64>> {
        let k = key.to_string();
        self.call("checking", key, false, move |b| b.stat(&k))
    }
    fn delete(&self, key: &str) -> BResult<()> {
        let k = key.to_string();
        self.call("deleting", key, true, move |b| b.delete(&k))
    }
    fn delete_many(&self, keys: &[String]) -> BResult<()> {
        let ks = keys.to_vec();
        let what = format!("{} objects from", keys.len());
        self.call("deleting", &what, true, move |b| b.delete_many(&ks))
    }
    fn cleanup_interrupted(&self) -> BResult<u64> {
        self.call("cleaning up", "interrupted uploads", true, move |b| b.cleanup_interrupted())
    }
    fn content_address(&self, key: &str) -> BResult<Option<String>> {
        let k = key.to_string();
        self.call("asking the address of", key, false, move |b| b.content_address(&k))
    }
    fn requests(&self) -> Option<RequestCounts> {
        self.inner.requests()
    }
    fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fault::{FaultBackend, FaultRule};
    use crate::backend::memory::MemoryBackend;
    use crate::backend::retry::{RetryBackend, RetryPolicy};

    #[test]
    fn a_slow_call_times_out_as_transient_and_a_fast_one_does_not() {
        let mem: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        mem.put_if_absent("data/ab/x", b"hello").unwrap();
        let slow: Arc<dyn Backend> =
            Arc::new(FaultBackend::new(mem, FaultRule::parse_list("get:slow:400:every:1@data/ab/x").unwrap()));
        let t = TimeoutBackend::new(slow, Duration::from_millis(100));
        let start = Instant::now();
        let e = t.get("data/ab/x", None).unwrap_err();
        assert!(start.elapsed() < Duration::from_millis(350), "the caller waited {:?}", start.elapsed());
        assert!(matches!(e, BackendError::Transient(_)), "{e}");
        assert!(e.to_string().starts_with("timed out after 100ms"), "{e}");
        assert_eq!(t.stat("data/ab/x").unwrap(), Some(5), "other calls are unaffected");
        conformance::check(&TimeoutBackend::new(Arc::new(MemoryBackend::new()), Duration::from_secs(5)));
    }

    /// A put that lands after its timeout: the retry waits for it and then
    /// finds the object there, whole, with the bytes meant.
    #[test]
    fn a_put_that_lands_after_its_timeout_is_harmless() {
        let mem = Arc::new(MemoryBackend::new());
        let slow: Arc<dyn Backend> =
            Arc::new(FaultBackend::new(mem.clone(), FaultRule::parse_list("put:slow:300:nth:1@data/").unwrap()));
        let t: Arc<dyn Backend> = Arc::new(TimeoutBackend::new(slow, Duration::from_millis(120)));
        let policy =
            RetryPolicy { attempts: 6, base_delay: Duration::from_millis(1), max_delay: Duration::from_millis(2) };
        let r = RetryBackend::new(t, policy);
        assert_eq!(r.put_if_absent("data/ab/p", b"pack").unwrap(), PutOutcome::AlreadyExists);
        assert_eq!(mem.get("data/ab/p", None).unwrap(), b"pack");
    }

    /// A delete is not sent while an abandoned put of the key still runs,
    /// so it can never be overtaken by it.
    #[test]
    fn writes_of_a_key_wait_for_an_abandoned_write_of_it() {
        let mem = Arc::new(MemoryBackend::new());
        let slow: Arc<dyn Backend> =
            Arc::new(FaultBackend::new(mem.clone(), FaultRule::parse_list("put:slow:300:nth:1").unwrap()));
        let t = TimeoutBackend::new(slow, Duration::from_millis(100));
        assert!(matches!(t.put_if_absent("config", b"old"), Err(BackendError::Transient(_))));
        // Still running: a delete waits its whole deadline, then gives up.
        let e = t.delete("config").unwrap_err();
        assert!(e.to_string().contains("still running"), "{e}");
        // Another key is not held up.
        t.put_if_absent("other", b"x").unwrap();
        std::thread::sleep(Duration::from_millis(150));
        t.delete("config").unwrap();
        t.put_if_absent("config", b"new").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(mem.get("config", None).unwrap(), b"new");
    }

    #[test]
    fn the_pool_reuses_its_threads() {
        let mem: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let t = TimeoutBackend::new(mem, Duration::from_secs(5));
        for i in 0..200 {
            t.put_if_absent(&format!("k{i}"), b"x").unwrap();
        }
        let n = t.pool.threads.load(Ordering::SeqCst);
        assert!(n <= 2, "{n} threads for sequential calls");
    }
}
