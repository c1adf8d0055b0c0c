//! Fault injection, as a decorator around any backend: the tests make a
//! real backend fail on a schedule, to prove that retries absorb transient
//! failures and that persistent ones end in a clear error with nothing lost.
//!
//! A rule is `OP:KIND:MODE:N[@PREFIX]`:
//! - OP: `put`, `get`, `list`, `stat`, `delete` or `any`;
//! - KIND: `transient` (worth a retry), `fatal` (not), or `notfound`;
//! - MODE: `every:N` fails calls N, 2N, 3N...; `nth:N` fails call N only;
//!   `after:N` fails every call after the first N;
//! - PREFIX: only keys that start with it count (`@data/` for packs).
//!
//! The binary reads rules from `N2S_FAULT_BACKEND` (comma-separated), a
//! test-only hook like `N2S_FAULT`.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Every(u64),
    Nth(u64),
    After(u64),
}

#[derive(Debug)]
pub struct FaultRule {
    op: Op,
    kind: Kind,
    mode: Mode,
    prefix: String,
    calls: AtomicU64,
}

impl FaultRule {
    pub fn parse(spec: &str) -> anyhow::Result<FaultRule> {
        let (body, prefix) = spec.split_once('@').unwrap_or((spec, ""));
        let parts: Vec<&str> = body.split(':').collect();
        let [op, kind, mode, n] = parts[..] else {
            anyhow::bail!("fault rule {spec:?}: expected OP:KIND:MODE:N[@PREFIX]");
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
        let kind = match kind {
            "transient" => Kind::Transient,
            "fatal" => Kind::Fatal,
            "notfound" => Kind::NotFound,
            _ => anyhow::bail!("fault rule {spec:?}: unknown kind {kind:?}"),
        };
        let n: u64 = n.parse().map_err(|_| anyhow::anyhow!("fault rule {spec:?}: bad count {n:?}"))?;
        let mode = match mode {
            "every" if n > 0 => Mode::Every(n),
            "nth" if n > 0 => Mode::Nth(n),
            "after" => Mode::After(n),
            _ => anyhow::bail!("fault rule {spec:?}: unknown mode {mode:?} (every:N, nth:N, after:N; N > 0)"),
        };
        Ok(FaultRule { op, kind, mode, prefix: prefix.to_string(), calls: AtomicU64::new(0) })
    }

    /// Rules from a comma-separated list.
    pub fn parse_list(specs: &str) -> anyhow::Result<Vec<FaultRule>> {
        specs.split(',').filter(|s| !s.trim().is_empty()).map(|s| FaultRule::parse(s.trim())).collect()
    }

    fn fires(&self, op: Op, key: &str) -> bool {
        if (self.op != Op::Any && self.op != op) || !key.starts_with(&self.prefix) {
            return false;
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        match self.mode {
            Mode::Every(k) => n.is_multiple_of(k),
            Mode::Nth(k) => n == k,
            Mode::After(k) => n > k,
        }
    }
}

pub struct FaultBackend {
    inner: Arc<dyn Backend>,
    rules: Vec<FaultRule>,
    injected: AtomicU64,
}

impl FaultBackend {
    pub fn new(inner: Arc<dyn Backend>, rules: Vec<FaultRule>) -> FaultBackend {
        FaultBackend { inner, rules, injected: AtomicU64::new(0) }
    }

    /// How many failures have been injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    fn check(&self, op: Op, key: &str) -> BResult<()> {
        for r in &self.rules {
            if r.fires(op, key) {
                self.injected.fetch_add(1, Ordering::SeqCst);
                let what = format!("injected fault on {op:?} {key}");
                return Err(match r.kind {
                    Kind::Transient => BackendError::Transient(anyhow::anyhow!("{what} (transient)")),
                    Kind::Fatal => BackendError::Other(anyhow::anyhow!("{what} (fatal)")),
                    Kind::NotFound => BackendError::NotFound(key.to_string()),
                });
            }
        }
        Ok(())
    }
}

impl Backend for FaultBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn put_if_absent(&self, key: &str, data: &[u8]) -> BResult<PutOutcome> {
        self.check(Op::Put, key)?;
        self.inner.put_if_absent(key, data)
    }
    fn get(&self, key: &str, range: Option<Range<u64>>) -> BResult<Vec<u8>> {
        self.check(Op::Get, key)?;
        self.inner.get(key, range)
    }
    fn list(&self, prefix: &str) -> BResult<Vec<ObjectInfo>> {
        self.check(Op::List, prefix)?;
        self.inner.list(prefix)
    }
    fn stat(&self, key: &str) -> BResult<Option<u64>> {
        self.check(Op::Stat, key)?;
        self.inner.stat(key)
    }
    fn delete(&self, key: &str) -> BResult<()> {
        self.check(Op::Delete, key)?;
        self.inner.delete(key)
    }
    fn delete_many(&self, keys: &[String]) -> BResult<()> {
        self.check(Op::Delete, keys.first().map_or("", |k| k.as_str()))?;
        self.inner.delete_many(keys)
    }
    fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }
    fn cleanup_interrupted(&self) -> BResult<u64> {
        self.inner.cleanup_interrupted()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;

    #[test]
    fn rules_parse_and_fire_on_schedule() {
        assert!(FaultRule::parse("get:transient:every:0").is_err());
        assert!(FaultRule::parse("fly:transient:every:1").is_err());
        assert!(FaultRule::parse("get:transient:every").is_err());
        let r = FaultRule::parse("get:fatal:nth:2@data/").unwrap();
        assert!(!r.fires(Op::Get, "manifests/x"), "other prefixes do not count");
        assert!(!r.fires(Op::Put, "data/x"), "other operations do not count");
        assert!(!r.fires(Op::Get, "data/a"));
        assert!(r.fires(Op::Get, "data/b"));
        assert!(!r.fires(Op::Get, "data/c"));
        let r = FaultRule::parse("any:notfound:after:1").unwrap();
        assert!(!r.fires(Op::Stat, "k"));
        assert!(r.fires(Op::List, "k") && r.fires(Op::Delete, "k"));
        assert_eq!(FaultRule::parse_list("put:fatal:nth:1, get:transient:every:3,").unwrap().len(), 2);

        let mem: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let f = FaultBackend::new(mem, FaultRule::parse_list("put:fatal:nth:1").unwrap());
        assert!(matches!(f.put_if_absent("a", b"1"), Err(BackendError::Other(_))));
        assert_eq!(f.put_if_absent("a", b"1").unwrap(), PutOutcome::Created);
        assert_eq!(f.injected(), 1);
    }
}
