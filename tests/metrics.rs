//! Metrics through the real binary: the node_exporter textfile a backup
//! writes is parsed back and checked against the run's own `--json`
//! report, `promtool check metrics` accepts it, the real node_exporter
//! serves it, `status --json` carries the same figures, a failed run keeps
//! the time of the last success, and the sample alert rule fires (under
//! `promtool test rules`) only after two hours without a success.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

const PROMTOOL: &str = "/usr/bin/promtool";
const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";

/// `name{labels}` -> value, from the exposition format.
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {l:?}"));
            (k.to_string(), v.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")))
        })
        .collect()
}

fn get(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| panic!("{key} missing from {m:#?}"))
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn promtool_check_metrics(text: &str) {
    let mut child =
        Command::new(PROMTOOL).args(["check", "metrics"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    // promtool prints lint advice (e.g. on units) but fails only on errors.
    assert!(out.status.success(), "promtool check metrics: {}\n{text}", stderr(&out));
}

#[test]
fn a_backup_writes_figures_that_match_its_report_and_promtool_accepts() {
    if !have_tool(PROMTOOL) {
        return;
    }
    let env = Env::new();
    env.init();
    let src = env.path("src");
    for i in 0..5 {
        write(&src, &format!("d/f{i}"), &vec![i as u8; 10_000 + i]);
    }
    let prom = env.path("textfile/n2s.prom");
    std::fs::create_dir_all(prom.parent().unwrap()).unwrap();
    let before = n2s_agent::util::now();
    let out = env
        .cmd()
        .arg("--metrics-file")
        .arg(&prom)
        .args(["backup", "--json", "--dataset", "d", "--source", "walk", "--path"])
        .arg(&src)
        .args(["--snapshot", "one"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cs = &report["changesets"][0];
    let text = std::fs::read_to_string(&prom).unwrap();
    promtool_check_metrics(&text);
    let m = parse(&text);
    let d = |name: &str| get(&m, &format!("{name}{{dataset=\"d\"}}"));
    let success_at = d("n2s_backup_last_success_timestamp_seconds");
    assert!(success_at >= before as f64 && success_at <= n2s_agent::util::now() as f64, "{text}");
    assert_eq!(d("n2s_backup_last_run_success"), 1.0);
    assert_eq!(d("n2s_backup_last_run_errors"), 0.0);
    assert_eq!(d("n2s_backup_last_run_changesets"), 1.0);
    let files = ["added", "modified", "metadata", "removed"].iter().map(|k| cs[k].as_u64().unwrap()).sum::<u64>();
    assert!(files >= 7, "5 files, their directory and the root: {cs}");
    assert_eq!(d("n2s_backup_last_run_files"), files as f64);
    assert_eq!(d("n2s_backup_last_run_read_bytes"), cs["bytes_read"].as_u64().unwrap() as f64);
    assert_eq!(d("n2s_backup_last_run_stored_bytes"), cs["bytes_uploaded"].as_u64().unwrap() as f64);
    assert!(d("n2s_backup_last_run_stored_bytes") > 0.0);
    assert_eq!(d("n2s_backup_oldest_unconfirmed_age_seconds"), 0.0);
    let puts = get(&m, "n2s_backup_last_run_requests{dataset=\"d\",kind=\"put\"}");
    assert_eq!(puts, report["requests"]["put"].as_u64().unwrap() as f64, "one dataset: its requests are the run's");
    assert!(puts > 0.0);
    // status --json carries the same figures.
    let status: serde_json::Value = serde_json::from_str(&env.ok(["status", "--json"])).unwrap();
    let sm = &status["datasets"][0]["metrics"];
    assert_eq!(sm["last_success_at"].as_f64().unwrap(), success_at, "{sm}");
    assert_eq!(sm["last_run"]["files"].as_u64().unwrap(), files);
    assert_eq!(sm["last_run"]["requests"]["put"].as_f64().unwrap(), puts);
    assert_eq!(sm["oldest_unconfirmed_age_secs"], 0);
}

#[test]
fn a_failed_run_counts_an_error_and_keeps_the_time_of_the_last_success() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src, "f", b"f");
    let prom = env.path("n2s.prom");
    let backup = |path: &Path| {
        env.cmd()
            .env("N2S_METRICS_FILE", &prom)
            .args(["backup", "--dataset", "d", "--source", "walk", "--path"])
            .arg(path)
            .output()
            .unwrap()
    };
    assert!(backup(&src).status.success());
    let first = parse(&std::fs::read_to_string(&prom).unwrap());
    let ok_at = get(&first, "n2s_backup_last_success_timestamp_seconds{dataset=\"d\"}");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = backup(&env.path("gone"));
    assert!(!out.status.success());
    let text = std::fs::read_to_string(&prom).unwrap();
    let m = parse(&text);
    assert_eq!(get(&m, "n2s_backup_last_success_timestamp_seconds{dataset=\"d\"}"), ok_at, "{text}");
    assert_eq!(get(&m, "n2s_backup_last_run_success{dataset=\"d\"}"), 0.0);
    assert_eq!(get(&m, "n2s_backup_last_run_errors{dataset=\"d\"}"), 1.0);
    assert!(get(&m, "n2s_backup_last_run_timestamp_seconds{dataset=\"d\"}") > ok_at);
    let status: serde_json::Value = serde_json::from_str(&env.ok(["status", "--json"])).unwrap();
    let err = status["datasets"][0]["metrics"]["last_run"]["last_error"].as_str().unwrap().to_string();
    assert!(err.contains("gone"), "{err}");
    // An unwritable metrics file is a warning, never a failed backup.
    let out = env
        .cmd()
        .env("N2S_METRICS_FILE", env.path("no/such/dir/n2s.prom"))
        .args(["backup", "--dataset", "d", "--source", "walk", "--path"])
        .arg(&src)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("no/such/dir/n2s.prom"), "{}", stderr(&out));
}

/// Kills the child on drop, even when the test fails.
struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

#[test]
fn the_real_node_exporter_serves_the_textfile() {
    if !have_tool(NODE_EXPORTER) {
        return;
    }
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src, "f", b"data");
    let dir = env.path("collector");
    std::fs::create_dir_all(&dir).unwrap();
    let out = env
        .cmd()
        .arg("--metrics-file")
        .arg(dir.join("n2s-agent.prom"))
        .args(["backup", "--dataset", "tank/home", "--source", "walk", "--path"])
        .arg(&src)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let port = free_port();
    let _exporter = Killed(
        Command::new(NODE_EXPORTER)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--collector.disable-defaults")
            .arg("--collector.textfile")
            .arg(format!("--collector.textfile.directory={}", dir.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let body = loop {
        if let Some(b) = http_get(port, "/metrics").filter(|b| b.contains("200 OK")) {
            break b;
        }
        assert!(std::time::Instant::now() < deadline, "node_exporter did not answer on 127.0.0.1:{port}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(body.contains("n2s_backup_last_run_success{dataset=\"tank/home\"} 1"), "{body}");
    // node_exporter reports a textfile it could not parse as an error.
    assert!(body.contains("node_textfile_scrape_error 0"), "{body}");
}

#[test]
fn the_sample_alert_fires_after_two_hours_without_a_success_and_not_before() {
    if !have_tool(PROMTOOL) {
        return;
    }
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("agent-config/n2s-agent-alerts.yml");
    let out = Command::new(PROMTOOL).args(["check", "rules"]).arg(&rules).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    // One dataset stopped succeeding at t=0; the other succeeds every
    // minute. Evaluation time starts at 0 in promtool's tests.
    let dir = tempfile::tempdir().unwrap();
    let test = dir.path().join("test.yml");
    std::fs::write(
        &test,
        format!(
            r#"rule_files: [{rules:?}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'n2s_backup_last_success_timestamp_seconds{{dataset="stuck"}}'
        values: '0+0x200'
      - series: 'n2s_backup_last_success_timestamp_seconds{{dataset="fine"}}'
        values: '0+60x200'
      - series: 'n2s_metrics_written_timestamp_seconds'
        values: '0+60x200'
    alert_rule_test:
      - eval_time: 1h50m
        alertname: N2sBackupStale
        exp_alerts: []
      - eval_time: 2h10m
        alertname: N2sBackupStale
        exp_alerts:
          - exp_labels: {{severity: warning, dataset: stuck}}
            exp_annotations:
              summary: "no successful n2s-agent backup of stuck on  for 2 hours"
              description: "Run `n2s-agent status --dataset stuck` and `journalctl -u n2s-agent.service` on the host."
      - eval_time: 2h10m
        alertname: N2sAgentNotRunning
        exp_alerts: []
"#,
            rules = rules.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = Command::new(PROMTOOL).args(["test", "rules"]).arg(&test).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
}
