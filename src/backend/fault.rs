//! Fault injection, as a decorator around any backend: the tests make a
//! real backend fail on a schedule or at a rate, to prove that retries and
//! timeouts absorb transient failures and that persistent ones end in a
//! clear error with nothing lost.
//!
//! A rule is `OP:KIND:MODE:N[@PREFIX]`:
//! - OP: `put`, `get`, `list`, `stat`, `delete` or `any`;
//! - KIND: what happens to a call the rule hits:
//!   - `transient`: fails, worth a retry (before the call is made);
//!   - `fatal`: fails, not worth one; `notfound`: answers not found;
//!   - `5xx`: a transient server error (HTTP 503), before the call;
//!   - `timeout` or `timeout:MS`: hangs MS ms (default 1000), then fails
//!     transiently without making the call (a per-request timeout shorter
//!     than MS fires first);
//!   - `drop`: the call is made, then the connection is reset before the
//!     answer arrives (transient): a put may have landed;
//!   - `slow:MS`: waits MS ms, then makes the call and succeeds;
//!   - `truncate`: a ranged get answers with a body shorter than asked
//!     (only ranged gets count for it);
//! - MODE: `every:N` hits calls N, 2N, 3N...; `nth:N` hits call N only;
//!   `after:N` hits every call after the first N; `rate:P` hits each call
//!   with probability P (0 < P <= 1);
//! - PREFIX: only keys that start with it count (`@data/` for packs).
//!
//! Calls are counted per rule, only those of its operation and prefix, and
//! the first rule that hits a call decides (the rules after it do not see it).
//! `rate:P` draws from a deterministic generator: whether call n of rule r
//! is hit depends only on the seed, r and n. The binary reads rules from
//! `N2S_FAULT_BACKEND` (comma-separated) and the seed from `N2S_FAULT_SEED`
//! (random and printed when unset), test-only hooks like `N2S_FAULT`.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
    List,
    Stat,
    Delete,
    Any,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Transient,
    Fatal,
    NotFound,
    ServerError,
    Timeout(u64),
    Drop,
    Slow(u64),
    Truncate,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Every(u64),
    Nth(u64),
    After(u64),
    Rate(f64),
}

#[derive(Debug)]
pub struct FaultRule {
    op: Op,
    kind: Kind,
    mode: Mode,
    prefix: String,
    calls: AtomicU64,
    /// The rule's own stream of the generator (`rate:P`).
    seed: u64,
}

/// SplitMix64: a tiny, well-mixed, stateless generator step.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl FaultRule {
    pub fn parse(spec: &str) -> anyhow::Result<FaultRule> {
        let (body, prefix) = spec.split_once('@').unwrap_or((spec, ""));
        let parts: Vec<&str> = body.split(':').collect();
        let ms = |v: &str| -> anyhow::Result<u64> {
            v.parse().map_err(|_| anyhow::anyhow!("fault rule {spec:?}: bad milliseconds {v:?}"))
        };
        // KIND takes an argument for `slow:MS` (required) and `timeout:MS`.
        let (op, kind, mode, n) = match parts[..] {
            [op, "slow", arg, mode, n] => (op, Kind::Slow(ms(arg)?), mode, n),
            [op, "timeout", arg, mode, n] => (op, Kind::Timeout(ms(arg)?), mode, n),
            [op, kind, mode, n] => {
                let kind = match kind {
                    "transient" => Kind::Transient,
                    "fatal" => Kind::Fatal,
                    "notfound" => Kind::NotFound,
                    "5xx" => Kind::ServerError,
                    "timeout" => Kind::Timeout(1000),
                    "drop" => Kind::Drop,
                    "truncate" => Kind::Truncate,
                    "slow" => anyhow::bail!("fault rule {spec:?}: slow needs its delay: slow:MS"),
                    _ => anyhow::bail!(
                        "fault rule {spec:?}: unknown kind {kind:?} (transient, fatal, notfound, 5xx, timeout[:MS], drop, slow:MS, truncate)"
                    ),
                };
                (op, kind, mode, n)
            }
            _ => anyhow::bail!("fault rule {spec:?}: expected OP:KIND:MODE:N[@PREFIX]"),
        };
        let op = match op {
            "put" => Op::Put,
            "get" => Op::Get,
            "list" => Op::List,
            "stat" => Op::Stat,
            "delete" => Op::Delete,
            "any" => Op::Any,
            _ => anyhow::bail!("fault rule {spec:?}: unknown operation {op:?}"),
        };
        if kind == Kind::Truncate && !matches!(op, Op::Get | Op::Any) {
            anyhow::bail!("fault rule {spec:?}: only a get can be truncated");
        }
        let mode = if mode == "rate" {
            match n.parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 1.0 => Mode::Rate(p),
                _ => anyhow::bail!("fault rule {spec:?}: rate:P needs 0 < P <= 1, not {n:?}"),
            }
        } else {
            let n: u64 = n.parse().map_err(|_| anyhow::anyhow!("fault rule {spec:?}: bad count {n:?}"))?;
            match mode {
                "every" if n > 0 => Mode::Every(n),
                "nth" if n > 0 => Mode::Nth(n),
                "after" => Mode::After(n),
                _ => anyhow::bail!(
                    "fault rule {spec:?}: unknown mode {mode:?} (every:N, nth:N, after:N with N > 0, rate:P)"
                ),
            }
        };
        Ok(FaultRule { op, kind, mode, prefix: prefix.to_string(), calls: AtomicU64::new(0), seed: 0 })
    }

    /// Rules from a comma-separated list.
    pub fn parse_list(specs: &str) -> anyhow::Result<Vec<FaultRule>> {
        specs.split(',').filter(|s| !s.trim().is_empty()).map(|s| FaultRule::parse(s.trim())).collect()
    }

    /// Whether the rule draws at random (and so the seed matters).
    pub fn is_random(&self) -> bool {
        matches!(self.mode, Mode::Rate(_))
    }

    /// `ranged`: the call is a ranged get (the only kind `truncate` hits).
    fn fires(&self, op: Op, key: &str, ranged: bool) -> bool {
        if (self.op != Op::Any && self.op != op) || !key.starts_with(&self.prefix) {
            return false;
        }
        if self.kind == Kind::Truncate && !(op == Op::Get && ranged) {
            return false;
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        match self.mode {
            Mode::Every(k) => n.is_multiple_of(k),
            Mode::Nth(k) => n == k,
            Mode::After(k) => n > k,
            // 53 random bits as a fraction in [0, 1).
            Mode::Rate(p) => ((mix(self.seed ^ mix(n)) >> 11) as f64 / (1u64 << 53) as f64) < p,
        }
    }
}

pub struct FaultBackend {
    inner: Arc<dyn Backend>,
    rules: Vec<FaultRule>,
    injected: AtomicU64,
}

/// What a call does after the rules had their say.
enum Plan {
    Call,
    /// Make the call, then fail it (a connection reset).
    Drop,
    /// Make the call, then cut the body.
    Truncate,
}

impl FaultBackend {
    /// With the generator seeded by 0 (unit tests).
    pub fn new(inner: Arc<dyn Backend>, rules: Vec<FaultRule>) -> FaultBackend {
        FaultBackend::with_seed(inner, rules, 0)
    }

    pub fn with_seed(inner: Arc<dyn Backend>, mut rules: Vec<FaultRule>, seed: u64) -> FaultBackend {
        for (i, r) in rules.iter_mut().enumerate() {
            r.seed = mix(seed ^ mix(i as u64 + 1));
        }
        FaultBackend { inner, rules, injected: AtomicU64::new(0) }
    }

    /// How many failures have been injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// The first rule that hits this call decides; the rules after it do
    /// not see the call.
    fn check(&self, op: Op, key: &str, ranged: bool) -> BResult<Plan> {
        let Some(kind) = self.rules.iter().find(|r| r.fires(op, key, ranged)).map(|r| r.kind) else {
            return Ok(Plan::Call);
        };
        self.injected.fetch_add(1, Ordering::SeqCst);
        let what = format!("injected fault on {op:?} {key}");
        Err(match kind {
            Kind::Transient => BackendError::Transient(anyhow::anyhow!("{what} (transient)")),
            Kind::Fatal => BackendError::Other(anyhow::anyhow!("{what} (fatal)")),
            Kind::NotFound => BackendError::NotFound(key.to_string()),
            Kind::ServerError => BackendError::Transient(anyhow::anyhow!("{what}: HTTP 503 Service Unavailable")),
            Kind::Timeout(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                BackendError::Transient(anyhow::anyhow!("{what}: no answer within {ms} ms"))
            }
            Kind::Slow(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                return Ok(Plan::Call);
            }
            Kind::Drop => return Ok(Plan::Drop),
            Kind::Truncate => return Ok(Plan::Truncate),
        })
    }

    fn dropped(op: Op, key: &str) -> BackendError {
        BackendError::Transient(anyhow::anyhow!("injected fault on {op:?} {key}: connection reset by peer"))
    }

    /// Run a call under the plan for it.
    fn run<T>(&self, op: Op, key: &str, ranged: bool, call: impl FnOnce() -> BResult<T>) -> BResult<T> {
        match self.check(op, key, ranged)? {
            Plan::Call | Plan::Truncate => call(),
            Plan::Drop => {
                let _ = call();
                Err(Self::dropped(op, key))
            }
        }
    }
}

impl Backend for FaultBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn put_if_absent(&self, key: &str, data: &[u8]) -> BResult<PutOutcome> {
        self.run(Op::Put, key, false, || self.inner.put_if_absent(key, data))
    }
    fn put_shared(&self, key: &str, data: std::sync::Arc<Vec<u8>>) -> BResult<PutOutcome> {
        self.run(Op::Put, key, false, || self.inner.put_shared(key, data.clone()))
    }
    fn get(&self, key: &str, range: Option<Range<u64>>) -> BResult<Vec<u8>> {
        let ranged = range.as_ref().is_some_and(|r| r.end > r.start);
        match self.check(Op::Get, key, ranged)? {
            Plan::Call => self.inner.get(key, range),
            Plan::Drop => {
                let _ = self.inner.get(key, range);
                Err(Self::dropped(Op::Get, key))
            }
            Plan::Truncate => {
                let mut body = self.inner.get(key, range)?;
                body.truncate(body.len() / 2);
                Ok(body)
            }
        }
    }
    fn list(&self, prefix: &str) -> BResult<Vec<ObjectInfo>> {
        self.run(Op::List, prefix, false, || self.inner.list(prefix))
    }
    fn stat(&self, key: &str) -> BResult<Option<u64>> {
        self.run(Op::Stat, key, false, || self.inner.stat(key))
    }
    fn delete(&self, key: &str) -> BResult<()> {
        self.run(Op::Delete, key, false, || self.inner.delete(key))
    }
    fn requests(&self) -> Option<RequestCounts> {
        self.inner.requests()
    }
    fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }
    fn delete_many(&self, keys: &[String]) -> BResult<()> {
        self.check(Op::Delete, keys.first().map_or("", |k| k.as_str()), false)?;
        self.inner.delete_many(keys)
    }
    fn cleanup_interrupted(&self) -> BResult<u64> {
        self.inner.cleanup_interrupted()
    }
    fn content_address(&self, key: &str) -> BResult<Option<String>> {
        self.inner.content_address(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;
    use std::time::Instant;

    #[test]
    fn rules_parse_and_fire_on_schedule() {
        assert!(FaultRule::parse("get:transient:every:0").is_err());
        assert!(FaultRule::parse("fly:transient:every:1").is_err());
        assert!(FaultRule::parse("get:transient:every").is_err());
        let r = FaultRule::parse("get:fatal:nth:2@data/").unwrap();
        assert!(!r.fires(Op::Get, "manifests/x", false), "other prefixes do not count");
        assert!(!r.fires(Op::Put, "data/x", false), "other operations do not count");
        assert!(!r.fires(Op::Get, "data/a", false));
        assert!(r.fires(Op::Get, "data/b", false));
        assert!(!r.fires(Op::Get, "data/c", false));
        let r = FaultRule::parse("any:notfound:after:1").unwrap();
        assert!(!r.fires(Op::Stat, "k", false));
        assert!(r.fires(Op::List, "k", false) && r.fires(Op::Delete, "k", false));
        assert_eq!(FaultRule::parse_list("put:fatal:nth:1, get:transient:every:3,").unwrap().len(), 2);

        let mem: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let f = FaultBackend::new(mem, FaultRule::parse_list("put:fatal:nth:1").unwrap());
        assert!(matches!(f.put_if_absent("a", b"1"), Err(BackendError::Other(_))));
        assert_eq!(f.put_if_absent("a", b"1").unwrap(), PutOutcome::Created);
        assert_eq!(f.injected(), 1);
    }

    #[test]
    fn new_kinds_and_modes_parse_and_bad_ones_are_named() {
        for ok in [
            "get:transient:rate:0.2",
            "any:5xx:rate:1",
            "put:timeout:every:2",
            "put:timeout:50:nth:1@data/",
            "any:drop:after:3",
            "get:slow:200:rate:0.5",
            "get:truncate:rate:0.1@data/",
            "any:truncate:every:1",
        ] {
            assert!(FaultRule::parse(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("get:transient:rate:0", "0 < P <= 1"),
            ("get:transient:rate:1.5", "0 < P <= 1"),
            ("get:transient:rate:x", "0 < P <= 1"),
            ("get:slow:every:1", "slow:MS"),
            ("get:slow:fast:every:1", "bad milliseconds"),
            ("put:truncate:every:1", "only a get"),
            ("get:teapot:every:1", "unknown kind"),
            ("get:transient:often:1", "unknown mode"),
        ] {
            let e = FaultRule::parse(bad).err().unwrap().to_string();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
    }

    /// `rate:P` hits about P of the calls, the same ones for the same seed.
    #[test]
    fn rates_are_about_right_and_repeat_with_the_seed() {
        let draws = |seed: u64| -> Vec<bool> {
            let f = FaultBackend::with_seed(
                Arc::new(MemoryBackend::new()),
                FaultRule::parse_list("stat:transient:rate:0.2").unwrap(),
                seed,
            );
            (0..5000).map(|_| f.stat("k").is_err()).collect()
        };
        let a = draws(42);
        let hits = a.iter().filter(|h| **h).count();
        assert!((850..1150).contains(&hits), "{hits} of 5000 at rate 0.2");
        assert_eq!(a, draws(42), "the same seed hits the same calls");
        assert_ne!(a, draws(43), "another seed hits other calls");
        let f = FaultBackend::new(Arc::new(MemoryBackend::new()), FaultRule::parse_list("any:fatal:rate:1").unwrap());
        assert!((0..100).all(|_| f.stat("k").is_err()), "rate 1 hits every call");
    }

    #[test]
    fn each_kind_does_what_it_says() {
        let mem = Arc::new(MemoryBackend::new());
        mem.put_if_absent("data/x", b"0123456789").unwrap();
        let with = |spec: &str| FaultBackend::new(mem.clone(), FaultRule::parse_list(spec).unwrap());

        let e = with("get:5xx:every:1").get("data/x", None).unwrap_err();
        assert!(matches!(e, BackendError::Transient(_)) && e.to_string().contains("503"), "{e}");

        let start = Instant::now();
        let e = with("get:timeout:60:every:1").get("data/x", None).unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(60));
        assert!(matches!(e, BackendError::Transient(_)), "{e}");

        let start = Instant::now();
        assert_eq!(with("get:slow:60:every:1").get("data/x", Some(0..3)).unwrap(), b"012");
        assert!(start.elapsed() >= Duration::from_millis(60));

        // A dropped put has landed: the error comes after the call.
        let f = with("put:drop:nth:1");
        let e = f.put_if_absent("data/y", b"y").unwrap_err();
        assert!(matches!(e, BackendError::Transient(_)) && e.to_string().contains("connection reset"), "{e}");
        assert_eq!(f.put_if_absent("data/y", b"y").unwrap(), PutOutcome::AlreadyExists);

        // Truncation hits ranged gets only, and answers short.
        let f = with("get:truncate:every:1");
        assert_eq!(f.get("data/x", None).unwrap(), b"0123456789", "a whole-object get is not counted");
        assert_eq!(f.get("data/x", Some(2..8)).unwrap(), b"234");
        assert_eq!(f.injected(), 1);
    }
}
