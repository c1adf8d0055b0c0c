//! Retention: which changesets `forget` keeps, and which rule keeps each.
//!
//! Pure: it sees numbers, times and a time zone, never a repository, so it
//! is tested over synthetic timelines (a year of hourly runs, gaps, time
//! zones, DST changes) in milliseconds.
//!
//! The rules are restic's and sanoid's, which sysadmins already know:
//! `last N` keeps the N newest; `hourly N` (daily, weekly, monthly, yearly)
//! keeps the newest changeset of each of the N newest hours (days, ISO
//! weeks, months, years) that have one, in local time; `within D` keeps
//! every changeset taken less than D before the newest one (not before
//! now: an agent that stopped for a month must not forget everything on
//! its first run back). A changeset any rule keeps is kept. The newest
//! changeset and the dataset's diff base are always kept, whatever the
//! policy says.

use serde::Serialize;

use crate::util::{civil_from_days, days_from_civil};

/// How many of each kind to keep. `None` (or 0) means the rule is not used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    /// Seconds before the newest changeset.
    pub keep_within: Option<i64>,
}

impl Policy {
    /// Whether no rule is set: such a policy would forget everything but
    /// the protected changesets, which is never what anyone meant.
    pub fn is_empty(&self) -> bool {
        let counts = [self.keep_last, self.keep_hourly, self.keep_daily, self.keep_weekly, self.keep_monthly];
        counts.iter().chain([&self.keep_yearly]).all(|c| c.unwrap_or(0) == 0) && self.keep_within.is_none()
    }

    /// Rules set in `over` replace those of `self` (flags over the config).
    pub fn overridden_by(&self, over: &Policy) -> Policy {
        Policy {
            keep_last: over.keep_last.or(self.keep_last),
            keep_hourly: over.keep_hourly.or(self.keep_hourly),
            keep_daily: over.keep_daily.or(self.keep_daily),
            keep_weekly: over.keep_weekly.or(self.keep_weekly),
            keep_monthly: over.keep_monthly.or(self.keep_monthly),
            keep_yearly: over.keep_yearly.or(self.keep_yearly),
            keep_within: over.keep_within.or(self.keep_within),
        }
    }
}

/// Seconds east of UTC at a given instant.
pub trait Zone {
    fn offset_at(&self, utc: i64) -> i64;
}

/// A zone with no DST.
pub struct FixedZone(pub i64);

impl Zone for FixedZone {
    fn offset_at(&self, _utc: i64) -> i64 {
        self.0
    }
}

/// The machine's zone (TZ, else /etc/localtime), through the C library,
/// which knows every DST rule of the tz database.
pub struct LocalZone;

impl Zone for LocalZone {
    fn offset_at(&self, utc: i64) -> i64 {
        let t: libc::time_t = utc as libc::time_t;
        // SAFETY: localtime_r writes only into `tm`, which we own; a zeroed
        // tm is a valid value of this plain C struct.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::localtime_r(&t, &mut tm) };
        if r.is_null() { 0 } else { tm.tm_gmtoff }
    }
}

/// One changeset as retention sees it.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub id: i64,
    /// When its snapshot was backed up, seconds since the epoch.
    pub time: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    pub id: i64,
    pub keep: bool,
    /// Every rule that keeps it (empty when it goes).
    pub reasons: Vec<String>,
}

/// Changesets that no policy may forget, and why.
pub struct Protected<'a> {
    pub id: i64,
    pub why: &'a str,
}

/// Decide for every candidate, newest first.
pub fn decide(policy: &Policy, candidates: &[Candidate], protected: &[Protected], zone: &dyn Zone) -> Vec<Decision> {
    let mut order: Vec<&Candidate> = candidates.iter().collect();
    order.sort_by(|a, b| b.time.cmp(&a.time).then(b.id.cmp(&a.id)));
    let mut out: Vec<Decision> =
        order.iter().map(|c| Decision { id: c.id, keep: false, reasons: Vec::new() }).collect();
    if let Some(d) = out.first_mut() {
        d.reasons.push("the newest changeset".into());
    }
    for p in protected {
        if let Some(d) = out.iter_mut().find(|d| d.id == p.id) {
            d.reasons.push(p.why.to_string());
        }
    }
    let n_last = policy.keep_last.unwrap_or(0) as usize;
    for (i, d) in out.iter_mut().enumerate().take(n_last) {
        d.reasons.push(format!("keep-last {} of {n_last}", i + 1));
    }
    let civil: Vec<Civil> = order.iter().map(|c| Civil::of(c.time, zone)).collect();
    for rule in Rule::ALL {
        let Some(mut left) = rule.count(policy).filter(|n| *n > 0) else { continue };
        let mut last_bucket = None;
        for (i, c) in civil.iter().enumerate() {
            let bucket = rule.bucket(c);
            // Newest first: the first changeset of a new bucket is that
            // bucket's newest.
            if last_bucket == Some(bucket) {
                continue;
            }
            last_bucket = Some(bucket);
            out[i].reasons.push(format!("keep-{} ({})", rule.name(), rule.label(c)));
            left -= 1;
            if left == 0 {
                break;
            }
        }
    }
    if let (Some(within), Some(newest)) = (policy.keep_within, order.first()) {
        for (i, c) in order.iter().enumerate() {
            if newest.time - c.time < within {
                out[i].reasons.push(format!("keep-within {}", duration_label(within)));
            }
        }
    }
    for d in &mut out {
        d.keep = !d.reasons.is_empty();
    }
    out
}

/// `7d`, `36h`, `90s`: a duration as a user would have written it.
pub fn duration_label(secs: i64) -> String {
    for (unit, n) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs != 0 && secs % n == 0 {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

/// A local civil time, as the calendar rules need it.
#[derive(Clone, Copy, Debug)]
struct Civil {
    /// Local day number from 1970-01-01.
    days: i64,
    hour: i64,
    year: i64,
    month: u32,
    day: u32,
    iso_year: i64,
    iso_week: i64,
}

impl Civil {
    fn of(utc: i64, zone: &dyn Zone) -> Civil {
        let local = utc + zone.offset_at(utc);
        let days = local.div_euclid(86_400);
        let hour = local.rem_euclid(86_400) / 3600;
        let (year, month, day) = civil_from_days(days);
        // ISO 8601: a week belongs to the year of its Thursday.
        // 1970-01-01 was a Thursday, so Monday-based weekday = (days + 3) mod 7.
        let thursday = days - (days + 3).rem_euclid(7) + 3;
        let (iso_year, _, _) = civil_from_days(thursday);
        let iso_week = (thursday - days_from_civil(iso_year, 1, 1)) / 7 + 1;
        Civil { days, hour, year, month, day, iso_year, iso_week }
    }
}

#[derive(Clone, Copy)]
enum Rule {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Rule {
    const ALL: [Rule; 5] = [Rule::Hourly, Rule::Daily, Rule::Weekly, Rule::Monthly, Rule::Yearly];

    fn count(self, p: &Policy) -> Option<u32> {
        match self {
            Rule::Hourly => p.keep_hourly,
            Rule::Daily => p.keep_daily,
            Rule::Weekly => p.keep_weekly,
            Rule::Monthly => p.keep_monthly,
            Rule::Yearly => p.keep_yearly,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Rule::Hourly => "hourly",
            Rule::Daily => "daily",
            Rule::Weekly => "weekly",
            Rule::Monthly => "monthly",
            Rule::Yearly => "yearly",
        }
    }

    fn bucket(self, c: &Civil) -> i64 {
        match self {
            Rule::Hourly => c.days * 24 + c.hour,
            Rule::Daily => c.days,
            Rule::Weekly => c.iso_year * 100 + c.iso_week,
            Rule::Monthly => c.year * 12 + i64::from(c.month),
            Rule::Yearly => c.year,
        }
    }

    fn label(self, c: &Civil) -> String {
        match self {
            Rule::Hourly => format!("{:04}-{:02}-{:02} {:02}:00", c.year, c.month, c.day, c.hour),
            Rule::Daily => format!("{:04}-{:02}-{:02}", c.year, c.month, c.day),
            Rule::Weekly => format!("{:04}-W{:02}", c.iso_year, c.iso_week),
            Rule::Monthly => format!("{:04}-{:02}", c.year, c.month),
            Rule::Yearly => format!("{:04}", c.year),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: i64 = 3600;
    const D: i64 = 86_400;
    /// 2025-01-01T00:00:00Z
    const Y2025: i64 = 1_735_689_600;

    fn timeline(times: &[i64]) -> Vec<Candidate> {
        times.iter().enumerate().map(|(i, t)| Candidate { id: i as i64 + 1, time: *t }).collect()
    }

    fn kept(policy: &Policy, c: &[Candidate], zone: &dyn Zone) -> Vec<i64> {
        let mut ids: Vec<i64> = decide(policy, c, &[], zone).into_iter().filter(|d| d.keep).map(|d| d.id).collect();
        ids.sort();
        ids
    }

    /// Europe/Berlin's rule: UTC+1, UTC+2 from the last Sunday of March
    /// 01:00 UTC to the last Sunday of October 01:00 UTC.
    struct Berlin;
    fn last_sunday(y: i64, m: u32) -> i64 {
        let last = days_from_civil(y, m + 1, 1) - 1;
        last - (last + 4).rem_euclid(7)
    }
    impl Zone for Berlin {
        fn offset_at(&self, utc: i64) -> i64 {
            let (y, _, _) = civil_from_days(utc.div_euclid(D));
            let start = last_sunday(y, 3) * D + H;
            let end = last_sunday(y, 10) * D + H;
            if utc >= start && utc < end { 2 * H } else { H }
        }
    }

    #[test]
    fn last_sunday_is_a_sunday() {
        // 2025-03-30 and 2025-10-26 were the Sundays of the change.
        assert_eq!(last_sunday(2025, 3), days_from_civil(2025, 3, 30));
        assert_eq!(last_sunday(2025, 10), days_from_civil(2025, 10, 26));
    }

    #[test]
    fn hourly_for_a_year() {
        let times: Vec<i64> = (0..365 * 24).map(|h| Y2025 + h * H).collect();
        let c = timeline(&times);
        let utc = FixedZone(0);
        let p = Policy { keep_hourly: Some(24), ..Default::default() };
        assert_eq!(kept(&p, &c, &utc), ((365 * 24 - 23)..=(365 * 24)).collect::<Vec<_>>());
        let p = Policy { keep_daily: Some(7), ..Default::default() };
        // The newest of each of the 7 newest days: each day's 23:00 run.
        let want: Vec<i64> = (358..365).map(|d| d * 24 + 24).collect();
        assert_eq!(kept(&p, &c, &utc), want);
        let p = Policy { keep_monthly: Some(12), ..Default::default() };
        let k = kept(&p, &c, &utc);
        assert_eq!(k.len(), 12);
        // Every kept one is the last hour of its month.
        for id in k {
            let t = times[id as usize - 1];
            assert_eq!(civil_from_days((t + H).div_euclid(D)).2, 1, "changeset {id} is not its month's last");
        }
        let p = Policy { keep_yearly: Some(5), ..Default::default() };
        assert_eq!(kept(&p, &c, &utc), vec![365 * 24]);
    }

    #[test]
    fn weekly_uses_iso_weeks() {
        // Daily at noon through January 2025. 2025-01-05 is a Sunday (the
        // end of ISO week 1); 2024-12-30..2025-01-05 is 2025-W01.
        let times: Vec<i64> = (0..31).map(|d| Y2025 + d * D + 12 * H).collect();
        let c = timeline(&times);
        let d = decide(&Policy { keep_weekly: Some(10), ..Default::default() }, &c, &[], &FixedZone(0));
        let kept: Vec<(i64, String)> = d.iter().filter(|d| d.keep).map(|d| (d.id, d.reasons.join(","))).collect();
        // Newest first: the 31st (a Friday, W05), then the Sundays 26, 19, 12, 5.
        let ids: Vec<i64> = kept.iter().map(|k| k.0).collect();
        assert_eq!(ids, vec![31, 26, 19, 12, 5]);
        assert!(kept[4].1.contains("keep-weekly (2025-W01)"), "{:?}", kept[4]);
        assert!(kept[0].1.contains("2025-W05"), "{:?}", kept[0]);
    }

    #[test]
    fn iso_week_at_year_edges() {
        let z = FixedZone(0);
        // 2020-12-31 (Thursday) is 2020-W53; 2021-01-03 (Sunday) too; 2021-01-04 is 2021-W01.
        for (y, m, d, iy, w) in
            [(2020, 12, 31, 2020, 53), (2021, 1, 3, 2020, 53), (2021, 1, 4, 2021, 1), (2019, 12, 30, 2020, 1)]
        {
            let c = Civil::of(days_from_civil(y, m, d) * D, &z);
            assert_eq!((c.iso_year, c.iso_week), (iy, w), "{y}-{m}-{d}");
        }
    }

    #[test]
    fn irregular_gaps_count_only_buckets_that_have_a_changeset() {
        // Days 0, 1, 5, 30, 31 (two on day 31).
        let times = [Y2025, Y2025 + D, Y2025 + 5 * D, Y2025 + 30 * D, Y2025 + 31 * D, Y2025 + 31 * D + H];
        let c = timeline(&times);
        let p = Policy { keep_daily: Some(3), ..Default::default() };
        assert_eq!(kept(&p, &c, &FixedZone(0)), vec![3, 4, 6]);
    }

    #[test]
    fn time_zones_move_day_boundaries() {
        // 23:30 UTC and 00:30 UTC the next day: two days in UTC and at
        // UTC-0:30, one day in New York (UTC-5) and in Tokyo (UTC+9).
        let times = [Y2025 + 23 * H + 1800, Y2025 + D + 1800];
        let c = timeline(&times);
        let p = Policy { keep_daily: Some(30), ..Default::default() };
        assert_eq!(kept(&p, &c, &FixedZone(0)), vec![1, 2]);
        assert_eq!(kept(&p, &c, &FixedZone(-5 * H)), vec![2]);
        assert_eq!(kept(&p, &c, &FixedZone(9 * H)), vec![2]);
        assert_eq!(kept(&p, &c, &FixedZone(-H / 2)), vec![1, 2]);
    }

    #[test]
    fn dst_changes() {
        let z = Berlin;
        // Fall back, 2025-10-26: 02:00-03:00 local happens twice (00:xx and
        // 01:xx UTC). Hourly runs through the night: the repeated local
        // hour is one bucket.
        let start = days_from_civil(2025, 10, 25) * D + 22 * H; // 00:00 local (UTC+2)
        let times: Vec<i64> = (0..6).map(|h| start + h * H).collect();
        let c = timeline(&times);
        let d = decide(&Policy { keep_hourly: Some(100), ..Default::default() }, &c, &[], &z);
        // Local hours 00, 01, 02 (CEST), 02 (CET), 03, 04: one fewer bucket than runs.
        assert_eq!(d.iter().filter(|d| d.keep).count(), 5);
        let labels: Vec<String> = d.iter().flat_map(|d| d.reasons.clone()).collect();
        assert!(labels.iter().any(|l| l.contains("2025-10-26 02:00")), "{labels:?}");
        // Spring forward, 2025-03-30: local 02:00 does not exist; a daily
        // policy still sees one day per calendar day.
        let start = days_from_civil(2025, 3, 29) * D + 11 * H; // noon local (UTC+1)
        let times: Vec<i64> = (0..4).map(|d| start + d * D).collect();
        let c = timeline(&times);
        let d = decide(&Policy { keep_daily: Some(10), ..Default::default() }, &c, &[], &z);
        let labels: Vec<String> =
            d.iter().flat_map(|d| d.reasons.clone()).filter(|r| r.starts_with("keep-daily")).collect();
        assert_eq!(
            labels,
            [
                "keep-daily (2025-04-01)",
                "keep-daily (2025-03-31)",
                "keep-daily (2025-03-30)",
                "keep-daily (2025-03-29)"
            ]
        );
        // Midnight local just after the change is still the 31st, not the 30th.
        let c = Civil::of(days_from_civil(2025, 3, 30) * D + 22 * H + 60, &z);
        assert_eq!((c.month, c.day, c.hour), (3, 31, 0));
    }

    #[test]
    fn last_within_and_reasons() {
        let times: Vec<i64> = (0..10).map(|i| Y2025 + i * D).collect();
        let c = timeline(&times);
        let p = Policy { keep_last: Some(2), keep_within: Some(3 * D + 1), ..Default::default() };
        let d = decide(&p, &c, &[Protected { id: 3, why: "the diff base of the next backup" }], &FixedZone(0));
        let kept: Vec<i64> = d.iter().filter(|d| d.keep).map(|d| d.id).collect();
        assert_eq!(kept, vec![10, 9, 8, 7, 3]);
        assert_eq!(d[0].reasons, ["the newest changeset", "keep-last 1 of 2", "keep-within 259201s"]);
        assert_eq!(d[3].reasons, ["keep-within 259201s"]);
        assert_eq!(
            d.iter().find(|d| d.id == 3).map(|d| d.reasons.clone()).unwrap_or_default(),
            ["the diff base of the next backup"]
        );
        assert!(d.iter().filter(|d| !d.keep).all(|d| d.reasons.is_empty()));
    }

    #[test]
    fn empty_policy_and_overrides() {
        assert!(Policy::default().is_empty());
        assert!(Policy { keep_daily: Some(0), ..Default::default() }.is_empty());
        assert!(!Policy { keep_within: Some(0), ..Default::default() }.is_empty());
        let file = Policy { keep_daily: Some(7), keep_last: Some(3), ..Default::default() };
        let flags = Policy { keep_last: Some(1), ..Default::default() };
        assert_eq!(
            file.overridden_by(&flags),
            Policy { keep_daily: Some(7), keep_last: Some(1), ..Default::default() }
        );
        assert_eq!(duration_label(7 * D), "1w");
        assert_eq!(duration_label(36 * H), "36h");
    }

    fn policy() -> impl Strategy<Value = Policy> {
        let n = || proptest::option::of(0u32..6);
        (n(), n(), n(), n(), n(), n(), proptest::option::of(0i64..(40 * D))).prop_map(|(l, h, d, w, m, y, within)| {
            Policy {
                keep_last: l,
                keep_hourly: h,
                keep_daily: d,
                keep_weekly: w,
                keep_monthly: m,
                keep_yearly: y,
                keep_within: within,
            }
        })
    }

    proptest! {
        #[test]
        fn newest_and_protected_are_always_kept(
            p in policy(),
            gaps in proptest::collection::vec(0i64..(20 * D), 1..60),
            base in 0usize..60,
            offset in -14i64..15,
        ) {
            let mut t = Y2025;
            let times: Vec<i64> = gaps.iter().map(|g| { t += g; t }).collect();
            let c = timeline(&times);
            let base = (base % c.len()) as i64 + 1;
            let d = decide(&p, &c, &[Protected { id: base, why: "diff base" }], &FixedZone(offset * H));
            prop_assert_eq!(d.len(), c.len());
            let newest = c.iter().max_by(|a, b| a.time.cmp(&b.time).then(a.id.cmp(&b.id))).map(|c| c.id);
            prop_assert!(d.iter().any(|x| Some(x.id) == newest && x.keep));
            prop_assert!(d.iter().any(|x| x.id == base && x.keep));
            // Every kept one says why; every forgotten one says nothing.
            prop_assert!(d.iter().all(|x| x.keep != x.reasons.is_empty()));
            // A count rule never keeps more than its count.
            let last = d.iter().filter(|x| x.reasons.iter().any(|r| r.starts_with("keep-last"))).count();
            prop_assert!(last <= p.keep_last.unwrap_or(0) as usize);
            let daily = d.iter().filter(|x| x.reasons.iter().any(|r| r.starts_with("keep-daily"))).count();
            prop_assert!(daily <= p.keep_daily.unwrap_or(0) as usize);
        }

        #[test]
        fn a_bigger_count_keeps_a_superset(
            n in 0u32..10,
            gaps in proptest::collection::vec(0i64..(3 * D), 1..80),
        ) {
            let mut t = Y2025;
            let times: Vec<i64> = gaps.iter().map(|g| { t += g; t }).collect();
            let c = timeline(&times);
            let z = FixedZone(0);
            let small = kept(&Policy { keep_daily: Some(n), keep_weekly: Some(n), ..Default::default() }, &c, &z);
            let big = kept(&Policy { keep_daily: Some(n + 1), keep_weekly: Some(n + 1), ..Default::default() }, &c, &z);
            prop_assert!(small.iter().all(|id| big.contains(id)));
        }
    }
}
