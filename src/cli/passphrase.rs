//! Where a passphrase comes from, and which key opens the repository.
//!
//! A passphrase never comes from the command line (argv is readable by
//! every user of the machine through /proc): it is read from a file
//! (`--password-file`, N2S_PASSWORD_FILE), from a command's standard output
//! (`--password-command`, N2S_PASSWORD_COMMAND), or from the terminal with
//! echo off.

use anyhow::{Context, Result, bail};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

use super::UsageError;
use super::config::Settings;
use crate::backend::Backend;
use crate::core::keyobject;
use crate::core::keys::MasterKey;

/// The passphrase sources a run was given.
#[derive(Clone, Debug, Default)]
pub struct PasswordSource {
    pub file: Option<PathBuf>,
    pub command: Option<String>,
}

/// How this run's key was obtained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyVia {
    KeyFile(PathBuf),
    /// The id of the key object the passphrase opened.
    Passphrase(String),
}

pub struct OpenedKey {
    pub master: MasterKey,
    pub via: KeyVia,
}

impl PasswordSource {
    pub fn is_given(&self) -> bool {
        self.file.is_some() || self.command.is_some()
    }

    /// Read the passphrase: file, then command, then the terminal.
    pub fn read(&self, what: &str) -> Result<Zeroizing<String>> {
        if let Some(f) = &self.file {
            return read_password_file(f);
        }
        if let Some(c) = &self.command {
            return run_password_command(c);
        }
        if has_terminal() {
            let p = Zeroizing::new(
                rpassword::prompt_password(format!("passphrase for {what}: "))
                    .context("cannot read the passphrase from the terminal")?,
            );
            return non_empty(p, "the passphrase typed");
        }
        Err(UsageError(format!(
            "no key for {what}: pass --key-file PATH (N2S_KEY_FILE, `key_file`), or the passphrase of one of its keys with N2S_PASSWORD_FILE or N2S_PASSWORD_COMMAND (or run on a terminal)"
        ))
        .into())
    }
}

/// A new passphrase: from `file` when given, else typed twice.
pub fn read_new(file: Option<&Path>) -> Result<Zeroizing<String>> {
    if let Some(f) = file {
        return read_password_file(f);
    }
    if !has_terminal() {
        return Err(UsageError(
            "no new passphrase: pass --new-password-file PATH (N2S_NEW_PASSWORD_FILE), or run on a terminal".into(),
        )
        .into());
    }
    let a = Zeroizing::new(rpassword::prompt_password("new passphrase: ").context("cannot read from the terminal")?);
    let a = non_empty(a, "the new passphrase")?;
    let b = Zeroizing::new(rpassword::prompt_password("the same again: ").context("cannot read from the terminal")?);
    if *a != *b {
        bail!("the two passphrases differ: nothing was changed; try again");
    }
    Ok(a)
}

fn has_terminal() -> bool {
    std::fs::File::open("/dev/tty").is_ok()
}

fn non_empty(p: Zeroizing<String>, what: &str) -> Result<Zeroizing<String>> {
    if p.is_empty() {
        bail!("{what} is empty: a key needs a passphrase");
    }
    Ok(p)
}

/// The file's first line. A regular file that others can read is refused,
/// as a key file is: it is as good as the key.
fn read_password_file(path: &Path) -> Result<Zeroizing<String>> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read password file {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if meta.is_file() && mode & 0o077 != 0 {
        bail!(
            "password file {} has mode {mode:04o}, which lets others read it: run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read password file {}", path.display()))?,
    );
    first_line(&text, &format!("the first line of password file {}", path.display()))
}

/// The first line of the command's output (`sh -c`). Its own stderr goes to
/// ours; its exit status must be 0. The command is not repeated in errors:
/// it may hold a secret of its own.
fn run_password_command(cmd: &str) -> Result<Zeroizing<String>> {
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run the password command (N2S_PASSWORD_COMMAND): is /bin/sh there?")?;
    let stdout = Zeroizing::new(out.stdout);
    if !out.status.success() {
        bail!("the password command (N2S_PASSWORD_COMMAND) failed ({}): fix it or give --password-file", out.status);
    }
    let text = Zeroizing::new(String::from_utf8_lossy(&stdout).into_owned());
    first_line(&text, "the password command's output")
}

fn first_line(text: &str, what: &str) -> Result<Zeroizing<String>> {
    non_empty(Zeroizing::new(text.lines().next().unwrap_or("").to_string()), what)
}

/// The key that opens the repository at `backend`: the key file when there
/// is one, else a passphrase tried against the repository's key objects.
pub fn open_key(settings: &Settings, backend: &dyn Backend) -> Result<OpenedKey> {
    // A configured key file that is missing falls back to a passphrase only
    // when one was given: otherwise its own error says what is wrong.
    match settings.key_file_in_use() {
        Some(p) => Ok(OpenedKey { master: MasterKey::load(p)?, via: KeyVia::KeyFile(p.to_path_buf()) }),
        None => unlock_with_passphrase(&settings.password, backend),
    }
}

fn unlock_with_passphrase(source: &PasswordSource, backend: &dyn Backend) -> Result<OpenedKey> {
    let loc = backend.location();
    let objects = crate::repo::read_key_objects(backend)?;
    if objects.is_empty() {
        // Asking for a passphrase first would only waste the user's typing.
        return Err(UsageError(format!(
            "the repository at {loc} has no passphrase keys: open it with its key file (--key-file), and add one with `n2s-agent key add`"
        ))
        .into());
    }
    let pass = source.read(&loc)?;
    match keyobject::unlock(&objects, pass.as_bytes())? {
        Some(u) => Ok(OpenedKey { master: u.master, via: KeyVia::Passphrase(u.key_id) }),
        None => bail!(
            "the passphrase opens none of the {} key(s) of the repository at {loc}: check it, or open with the key file (--key-file)",
            objects.len()
        ),
    }
}
