//! Bandwidth limits (`--limit-upload`, `--limit-download`), as a decorator:
//! a token bucket per direction, shared by every thread that uses the
//! backend (the CLI opens one backend per run, so per process), charged
//! with put bodies before they are sent and get bodies as they arrive.
//!
//! The bucket may go into debt: a 16 MiB pack at 512 KiB/s is sent at once
//! and the next request waits the 32 s it cost. So the average rate holds
//! whatever the request sizes, and a request larger than the bucket is
//! never refused. The wait happens here, outside the per-request timeout
//! (this decorator sits above it), so a slow limit never times a request out.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

/// The burst a bucket allows after a pause: this fraction of a second at
/// full rate.
const BURST_SECS: f64 = 0.25;

#[derive(Debug)]
pub struct TokenBucket {
    /// Bytes per second.
    rate: f64,
    burst: f64,
    /// Tokens (bytes; negative: debt) as of the instant.
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(bytes_per_sec: u64) -> TokenBucket {
        let rate = bytes_per_sec.max(1) as f64;
        let burst = rate * BURST_SECS;
        TokenBucket { rate, burst, state: Mutex::new((burst, Instant::now())) }
    }

    /// Charge `n` bytes, waiting until the bucket has paid for them.
    pub fn take(&self, n: u64) {
        let wait = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let refill = now.saturating_duration_since(s.1).as_secs_f64() * self.rate;
            s.0 = (s.0 + refill).min(self.burst) - n as f64;
            s.1 = now;
            // In debt: this caller waits until the debt (its own bytes and
            // those of every caller before it) is paid; later callers queue
            // behind through the debt they find.
            if s.0 < 0.0 { Duration::from_secs_f64(-s.0 / self.rate) } else { Duration::ZERO }
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

pub struct RateLimitBackend {
    inner: Arc<dyn Backend>,
    up: Option<TokenBucket>,
    down: Option<TokenBucket>,
}

impl RateLimitBackend {
    /// Limits in bytes per second; `None`: that direction is not limited.
    pub fn new(inner: Arc<dyn Backend>, up: Option<u64>, down: Option<u64>) -> RateLimitBackend {
        RateLimitBackend { inner, up: up.map(TokenBucket::new), down: down.map(TokenBucket::new) }
    }
}

impl Backend for RateLimitBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn put_if_absent(&self, key: &str, data: &[u8]) -> BResult<PutOutcome> {
        if let Some(b) = &self.up {
            b.take(data.len() as u64);
        }
        self.inner.put_if_absent(key, data)
    }
    fn put_shared(&self, key: &str, data: std::sync::Arc<Vec<u8>>) -> BResult<PutOutcome> {
        if let Some(b) = &self.up {
            b.take(data.len() as u64);
        }
        self.inner.put_shared(key, data)
    }
    fn get(&self, key: &str, range: Option<Range<u64>>) -> BResult<Vec<u8>> {
        let body = self.inner.get(key, range)?;
        if let Some(b) = &self.down {
            b.take(body.len() as u64);
        }
        Ok(body)
    }
    fn list(&self, prefix: &str) -> BResult<Vec<ObjectInfo>> {
        self.inner.list(prefix)
    }
    fn stat(&self, key: &str) -> BResult<Option<u64>> {
        self.inner.stat(key)
    }
    fn delete(&self, key: &str) -> BResult<()> {
        self.inner.delete(key)
    }
    fn delete_many(&self, keys: &[String]) -> BResult<()> {
        self.inner.delete_many(keys)
    }
    fn cleanup_interrupted(&self) -> BResult<u64> {
        self.inner.cleanup_interrupted()
    }
    fn content_address(&self, key: &str) -> BResult<Option<String>> {
        self.inner.content_address(key)
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
    use crate::backend::memory::MemoryBackend;

    /// 1 MiB through 4 threads at 2 MiB/s takes about half a second: the
    /// bucket is shared, and debt makes large requests pay in full.
    #[test]
    fn the_limit_holds_across_threads_and_request_sizes() {
        let mem: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let b = Arc::new(RateLimitBackend::new(mem, Some(2 << 20), Some(2 << 20)));
        let start = Instant::now();
        std::thread::scope(|s| {
            for t in 0..4 {
                let b = b.clone();
                s.spawn(move || {
                    for i in 0..4 {
                        // Three small pieces and one large one: 256 KiB per thread.
                        let len = if i == 3 { 160 << 10 } else { 32 << 10 };
                        b.put_if_absent(&format!("data/{t}/{i}"), &vec![0u8; len]).unwrap();
                    }
                });
            }
        });
        let up = start.elapsed();
        // (1 MiB - the 0.5 MiB burst) / 2 MiB/s = 0.25 s at least.
        assert!(up >= Duration::from_millis(240), "1 MiB at 2 MiB/s took {up:?}");
        assert!(up < Duration::from_secs(5), "1 MiB at 2 MiB/s took {up:?}");

        // Downloads are charged by the body actually received.
        let start = Instant::now();
        for t in 0..4 {
            for i in 0..4 {
                b.get(&format!("data/{t}/{i}"), None).unwrap();
            }
        }
        let down = start.elapsed();
        // (1 MiB - the 0.5 MiB burst) / 2 MiB/s = 0.25 s at least.
        assert!(down >= Duration::from_millis(240), "1 MiB at 2 MiB/s took {down:?}");
        // Listing and stat are not limited.
        let start = Instant::now();
        for _ in 0..100 {
            b.stat("data/0/0").unwrap();
        }
        assert!(start.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn one_request_larger_than_the_bucket_pays_its_whole_size() {
        let bucket = TokenBucket::new(1 << 20);
        let start = Instant::now();
        // 0.5 s worth, 0.25 s of it from the burst: the caller waits out the rest.
        bucket.take(1 << 19);
        let t = start.elapsed();
        assert!(t >= Duration::from_millis(240) && t < Duration::from_secs(2), "{t:?}");
    }
}
