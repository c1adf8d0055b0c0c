//! Logging: `tracing`, with the `log` records of the library bridged into it,
//! one event a line on stderr.
//!
//! - Under systemd (stderr is the journal's stream), each line starts with
//!   sd-daemon(3)'s `<N>` priority prefix, so `journalctl -p warning` filters,
//!   and carries no timestamp of its own (the journal keeps one). The units
//!   set `SyslogIdentifier=n2s-agent`.
//! - On a terminal or a file, the same lines without the prefix.
//! - `-q` shows warnings and errors, `-v` debug lines of the agent, `-vv`
//!   debug lines of every library too, `-vvv` traces. `RUST_LOG` (or
//!   `N2S_LOG`) takes `tracing` filter directives instead
//!   (`n2s_agent::backend=debug,info`).
//! - Every line goes through `redact`, so a password in a URL, an S3
//!   signature or credential, or a key file's text never reaches a log, even
//!   from a library's debug output.

use std::fmt::Write as _;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Install the subscriber for this process.
pub fn init(quiet: bool, verbose: u8) {
    let directives = std::env::var("N2S_LOG").or_else(|_| std::env::var("RUST_LOG")).ok().filter(|s| !s.is_empty());
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "n2s_agent=info,warn",
        (false, 1) => "n2s_agent=debug,info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = match directives.as_deref().map(EnvFilter::try_new) {
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            eprintln!("n2s-agent: warning: RUST_LOG/N2S_LOG is not a valid filter ({e}); using the default");
            EnvFilter::new(default)
        }
        None => EnvFilter::new(default),
    };
    let subscriber = tracing_subscriber::fmt()
        .with_writer(|| AroundProgress)
        .with_env_filter(filter)
        .event_format(LineFormat)
        .finish();
    use tracing_subscriber::util::SubscriberInitExt;
    // Also installs the bridge that turns `log` records into events.
    let _ = subscriber.try_init();
}

/// Stderr, with the progress display lifted while a line is written (the
/// formatter writes each event in one call).
struct AroundProgress;

impl std::io::Write for AroundProgress {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        super::progress::suspend(|| std::io::stderr().write_all(buf)).map(|()| buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Write one line to stderr, around the progress display.
pub fn write_stderr_line(line: &str) {
    use std::io::Write;
    let mut text = line.to_string();
    text.push('\n');
    let _ = AroundProgress.write(text.as_bytes());
}

/// One event, one line: `[<N>]n2s-agent: [error: |warning: ]message [fields]`.
struct LineFormat;

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut out: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        // A bridged `log` record carries its own target and level.
        use tracing_log::NormalizeEvent;
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let level = *meta.level();
        let mut text = String::new();
        ctx.format_fields(Writer::new(&mut text), event)?;
        // Library debug lines are easier to place with their source.
        let target = meta.target();
        let target = (level >= Level::DEBUG && !target.starts_with("n2s_agent")).then_some(target);
        let word = match level {
            Level::ERROR => "error: ",
            Level::WARN => "warning: ",
            _ => "",
        };
        let mut line = String::new();
        let _ = write!(line, "{}n2s-agent: {word}", journal_priority(level));
        if let Some(t) = target {
            let _ = write!(line, "[{t}] ");
        }
        line.push_str(&text);
        writeln!(out, "{}", redact(&one_line(&line)))
    }
}

/// Newlines inside a message would split one event over several journal
/// entries.
pub fn one_line(s: &str) -> String {
    s.trim_end().replace(['\n', '\r'], " ")
}

/// Whether stderr is the journal: systemd sets JOURNAL_STREAM to the
/// device and inode of the stream it connected (systemd.exec(5)); a
/// redirected stderr of a child no longer matches.
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    static IS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *IS.get_or_init(|| {
        let Ok(v) = std::env::var("JOURNAL_STREAM") else { return false };
        let Some((dev, ino)) = v.split_once(':') else { return false };
        let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
        let Ok(f) = std::fs::File::open("/proc/self/fd/2") else { return false };
        f.metadata().is_ok_and(|m| m.dev() == dev && m.ino() == ino)
    })
}

/// The `<N>` prefix of sd-daemon(3) that gives a line its syslog priority
/// in the journal, or nothing when stderr is not the journal.
pub fn journal_priority(level: Level) -> &'static str {
    if !stderr_is_journal() {
        return "";
    }
    match level {
        Level::ERROR => "<3>",
        Level::WARN => "<4>",
        Level::INFO => "<6>",
        _ => "<7>",
    }
}

/// The line of a run's final error (printed by `main`, not an event).
pub fn error_line(e: &anyhow::Error) -> String {
    redact(&one_line(&format!("{}n2s-agent: error: {e:#}", journal_priority(Level::ERROR))))
}

/// Hide secrets that could reach a line: the password of a URL
/// (`sftp://user:PASSWORD@host`), query parameters that carry S3
/// credentials or signatures, `Authorization` and token headers, AWS secret
/// environment assignments, and a key file's text.
pub fn redact(line: &str) -> String {
    let mut out = redact_url_passwords(line);
    for marker in [
        "X-Amz-Signature=",
        "X-Amz-Credential=",
        "X-Amz-Security-Token=",
        "AWS_SECRET_ACCESS_KEY=",
        "AWS_SESSION_TOKEN=",
        "aws_secret_access_key=",
        "secret_access_key: ",
        "authorization: ",
        "Authorization: ",
        "x-amz-security-token: ",
        "Bearer ",
        "n2s-key-v1 ",
    ] {
        out = redact_after(&out, marker);
    }
    out
}

/// Replace what follows each `marker`, up to a delimiter, with `***`.
fn redact_after(s: &str, marker: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(marker) {
        let start = i + marker.len();
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let end = tail.find(|c: char| c.is_whitespace() || "&\"',;)]}".contains(c)).unwrap_or(tail.len());
        if end > 0 {
            out.push_str("***");
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `scheme://user:secret@host` -> `scheme://user:***@host`.
fn redact_url_passwords(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let start = i + 3;
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let authority_end =
            tail.find(|c: char| c == '/' || c.is_whitespace() || "\"'".contains(c)).unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..colon + 1]);
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn passwords_signatures_and_keys_are_hidden_and_the_rest_kept() {
        assert_eq!(
            redact("cannot reach sftp://backup:hunter2@10.0.0.1:22/srv/repo: refused"),
            "cannot reach sftp://backup:***@10.0.0.1:22/srv/repo: refused"
        );
        assert_eq!(redact("s3://bucket/prefix and file:///srv/x"), "s3://bucket/prefix and file:///srv/x");
        assert_eq!(redact("user@host:path sftp://u@h/p"), "user@host:path sftp://u@h/p");
        let r = redact("GET /b/k?X-Amz-Credential=AKIA/2026&X-Amz-Signature=abcdef&x=1 HTTP/1.1");
        assert!(!r.contains("AKIA") && !r.contains("abcdef") && r.contains("x=1"), "{r}");
        let r = redact("headers {\"authorization\": \"AWS4-HMAC\"} Authorization: AWS4-HMAC-SHA256 Credential=x");
        assert!(!r.contains("AWS4-HMAC-SHA256"), "{r}");
        assert_eq!(redact("key n2s-key-v1 00ff00ff"), "key n2s-key-v1 ***");
        assert_eq!(redact("AWS_SECRET_ACCESS_KEY=wJalr x"), "AWS_SECRET_ACCESS_KEY=*** x");
    }

    #[test]
    fn one_event_is_one_line() {
        assert_eq!(one_line("a\nb\r\nc\n"), "a b  c");
    }

    proptest! {
        // Log lines carry text from outside (paths, server answers).
        #[test]
        fn a_url_password_never_survives(user in "[a-z]{1,8}", pw in "[A-Za-z0-9]{6,16}", pre in "\\PC{0,20}", post in "[/a-z]{0,20}") {
            let line = format!("{pre} sftp://{user}:{pw}@host{post}");
            let r = redact(&line);
            prop_assert!(!r.contains(&format!(":{pw}@")), "{}", r);
        }

        #[test]
        fn redaction_never_panics_and_keeps_plain_text(s in "\\PC{0,80}") {
            let r = redact(&s);
            if !s.contains("://") && !s.contains('=') && !s.contains(": ") && !s.contains("Bearer ") && !s.contains("n2s-key-v1 ") {
                prop_assert_eq!(r, s);
            }
        }
    }
}
