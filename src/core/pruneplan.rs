//! Prune plans: what one prune run marked for deletion, sealed, so that
//! every agent of the repository learns it before anything goes
//! (docs/FORMAT.md §9).
//!
//! Object `prune/plan-<created_at:010>-<16 hex>` while marked; once a later
//! run sweeps it, `prune/swept-<created_at:010>-<16 hex>` with the same
//! content, written before the first delete. The object is
//! `seal("n2s prune plan", compress(JSON))`.

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};

use super::compress;
use super::pack::PackId;
use super::seal::Sealer;

pub const PLAN_PREFIX: &str = "prune/";
pub const PLAN_AAD: &[u8] = b"n2s prune plan";
pub const PLAN_FORMAT: u32 = 1;
/// Decoding refuses a plan that would inflate past this.
const PLAN_MAX: usize = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanState {
    /// Marked: nothing is deleted yet.
    Marked,
    /// A sweep has begun (or ended): what it still found unused is gone.
    Swept,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunePlan {
    pub format: u32,
    /// Seconds since the epoch; the sweep waits until this + grace.
    pub created_at: i64,
    /// Packs no live manifest referenced when the plan was made, in hex.
    pub packs: Vec<String>,
    /// Segment keys no live header named.
    pub segments: Vec<String>,
    /// Header revisions a newer revision of the same number supersedes.
    pub revisions: Vec<String>,
}

impl PrunePlan {
    pub fn new(created_at: i64) -> PrunePlan {
        PrunePlan { format: PLAN_FORMAT, created_at, packs: Vec::new(), segments: Vec::new(), revisions: Vec::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.packs.is_empty() && self.segments.is_empty() && self.revisions.is_empty()
    }

    pub fn pack_ids(&self) -> Result<Vec<PackId>> {
        self.packs
            .iter()
            .map(|h| {
                let b = hex::decode(h).ok().and_then(|b| <[u8; 32]>::try_from(b).ok());
                b.map(PackId).with_context(|| format!("prune plan names a malformed pack id {h:?}"))
            })
            .collect()
    }

    pub fn seal(&self, sealer: &Sealer) -> Result<Vec<u8>> {
        Ok(sealer.seal(PLAN_AAD, &compress::compress(&serde_json::to_vec(self)?)))
    }

    pub fn open(sealer: &Sealer, sealed: &[u8]) -> Result<PrunePlan> {
        let payload = sealer.open(PLAN_AAD, sealed)?;
        let json = compress::decompress(&payload, PLAN_MAX)?;
        let p: PrunePlan = serde_json::from_slice(&json).context("prune plan is not valid JSON")?;
        ensure!(p.format == PLAN_FORMAT, "prune plan format {} is not supported", p.format);
        p.pack_ids()?;
        Ok(p)
    }
}

/// The key of a plan in a state; `name` is `<created_at:010>-<16 hex>`.
pub fn plan_key(state: PlanState, name: &str) -> String {
    match state {
        PlanState::Marked => format!("{PLAN_PREFIX}plan-{name}"),
        PlanState::Swept => format!("{PLAN_PREFIX}swept-{name}"),
    }
}

/// A fresh plan name.
pub fn new_name(created_at: i64) -> Result<String> {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(format!("{created_at:010}-{}", hex::encode(r)))
}

/// The state, name and creation time a plan key says, if it is one.
pub fn parse_key(key: &str) -> Option<(PlanState, &str, i64)> {
    let rest = key.strip_prefix(PLAN_PREFIX)?;
    let (state, name) = if let Some(n) = rest.strip_prefix("plan-") {
        (PlanState::Marked, n)
    } else {
        (PlanState::Swept, rest.strip_prefix("swept-")?)
    };
    let (ts, rnd) = name.split_once('-')?;
    let ok = ts.len() == 10
        && ts.bytes().all(|b| b.is_ascii_digit())
        && rnd.len() == 16
        && rnd.bytes().all(|b| b.is_ascii_hexdigit());
    if !ok {
        return None;
    }
    Some((state, name, ts.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_round_trip() {
        let name = new_name(1_800_000_000).unwrap();
        for st in [PlanState::Marked, PlanState::Swept] {
            assert_eq!(parse_key(&plan_key(st, &name)), Some((st, name.as_str(), 1_800_000_000)));
        }
        for bad in ["prune/plan-1-abc", "prune/other-1800000000-0011223344556677", "prune/plan-1800000000-zz"] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn seal_round_trip_and_refusals() {
        let s = Sealer::new(&[3; 32]);
        let mut p = PrunePlan::new(5);
        p.packs.push(hex::encode([7u8; 32]));
        p.segments.push("segments/ab".into());
        let sealed = p.seal(&s).unwrap();
        assert_eq!(PrunePlan::open(&s, &sealed).unwrap(), p);
        assert!(PrunePlan::open(&Sealer::new(&[4; 32]), &sealed).is_err());
        p.packs.push("not hex".into());
        assert!(PrunePlan::open(&s, &p.seal(&s).unwrap()).unwrap_err().to_string().contains("malformed"));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300), key in ".{0,60}") {
            let s = Sealer::new(&[3; 32]);
            let _ = PrunePlan::open(&s, &data);
            let _ = parse_key(&key);
        }

        #[test]
        fn any_plan_round_trips(packs in proptest::collection::vec(any::<[u8; 32]>(), 0..20), t in 0i64..4_000_000_000) {
            let s = Sealer::new(&[9; 32]);
            let mut p = PrunePlan::new(t);
            p.packs = packs.iter().map(hex::encode).collect();
            prop_assert_eq!(PrunePlan::open(&s, &p.seal(&s).unwrap()).unwrap(), p);
        }
    }
}
