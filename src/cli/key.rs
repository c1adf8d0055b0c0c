//! `key add|list|remove|passwd`: the repository's passphrase-protected
//! copies of its key (FORMAT §3.1). The raw key file stays what unattended
//! agents use; a key object lets a person, or a bare machine, open the
//! repository with a passphrase.

use anyhow::{Result, bail};
use std::path::PathBuf;
use std::process::ExitCode;

use super::passphrase::{self, KeyVia};
use super::{Ctx, GlobalArgs};
use crate::core::keyobject::{self, KeyObject};

#[derive(clap::Subcommand)]
pub enum KeyCommand {
    /// Store the repository key wrapped under a new passphrase (Argon2id).
    Add {
        /// What the key is for ("alice", "dr-laptop"); sealed, so the
        /// backend never sees it.
        #[arg(long, default_value = "")]
        label: String,
        /// Read the new passphrase from this file's first line instead of
        /// asking twice on the terminal.
        #[arg(long, env = "N2S_NEW_PASSWORD_FILE", value_name = "PATH")]
        new_password_file: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the key objects: id, creation time, Argon2id cost, label.
    List {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a key object (by id, or a unique prefix of it). The key that
    /// opened this run cannot be removed.
    Remove {
        #[arg(value_name = "ID")]
        id: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a key's passphrase: the new object is written and read back
    /// before the old one is removed. Without ID, the key that opened this
    /// run (or the repository's only one).
    Passwd {
        #[arg(value_name = "ID")]
        id: Option<String>,
        /// Read the new passphrase from this file's first line.
        #[arg(long, env = "N2S_NEW_PASSWORD_FILE", value_name = "PATH")]
        new_password_file: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(g: &GlobalArgs, c: KeyCommand) -> Result<ExitCode> {
    let ctx = Ctx::open(g)?;
    let backend = &*ctx.repo.backend;
    let loc = backend.location();
    let master = &ctx.key.master;
    let objects = crate::repo::read_key_objects(backend)?;
    let opened_id = match &ctx.key.via {
        KeyVia::Passphrase(id) => Some(id.clone()),
        KeyVia::KeyFile(_) => None,
    };
    match c {
        KeyCommand::Add { label, new_password_file, json } => {
            if label.len() > 1024 {
                bail!("--label is {} bytes long: give at most 1024", label.len());
            }
            let pass = passphrase::read_new(new_password_file.as_deref())?;
            let (salt, params) = keyobject::shared_kdf(&objects)?;
            let k = KeyObject::create(master, pass.as_bytes(), &label, salt, params)?;
            crate::repo::write_key_object(backend, &k)?;
            if json {
                super::output::print_json(&serde_json::json!({"added": k.id, "repository": loc}))?;
            } else {
                println!(
                    "added key {} to {loc}: the repository now opens with its passphrase (N2S_PASSWORD_FILE, N2S_PASSWORD_COMMAND or a terminal)",
                    k.id
                );
            }
        }
        KeyCommand::List { json } => {
            let mut rows = Vec::new();
            for k in &objects {
                let label = k.label(master).unwrap_or_else(|e| format!("<{e}>"));
                rows.push((k, label, opened_id.as_deref() == Some(k.id.as_str())));
            }
            rows.sort_by_key(|(k, _, _)| (k.created_at, k.id.clone()));
            if json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(k, label, current)| {
                        serde_json::json!({
                            "id": k.id, "created_at": k.created_at, "label": label, "current": current,
                            "kdf": {"algorithm": "argon2id", "memory_kib": k.params.memory_kib,
                                    "iterations": k.params.iterations, "parallelism": k.params.parallelism},
                        })
                    })
                    .collect();
                super::output::print_json(&serde_json::json!({"repository": loc, "keys": v}))?;
            } else if rows.is_empty() {
                println!("{loc} has no passphrase keys: add one with `n2s-agent key add`");
            } else {
                println!("  {:<24}  {:<20}  {:<22}  label", "id", "created", "argon2id");
                for (k, label, current) in rows {
                    println!(
                        "{} {:<24}  {:<20}  {:<22}  {label}",
                        if current { "*" } else { " " },
                        k.id,
                        crate::util::utc_timestamp(k.created_at),
                        format!(
                            "m={}MiB t={} p={}",
                            k.params.memory_kib / 1024,
                            k.params.iterations,
                            k.params.parallelism
                        )
                    );
                }
            }
        }
        KeyCommand::Remove { id, json } => {
            let k = find(&objects, &id, &loc)?;
            if opened_id.as_deref() == Some(k.id.as_str()) {
                bail!(
                    "refusing to remove key {}: it is the one this run opened {loc} with; open with another key or the key file",
                    k.id
                );
            }
            backend.delete(&k.key()).map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", k.key()))?;
            if json {
                super::output::print_json(&serde_json::json!({"removed": k.id, "repository": loc}))?;
            } else {
                println!("removed key {} from {loc}", k.id);
            }
        }
        KeyCommand::Passwd { id, new_password_file, json } => {
            let old = match (&id, &opened_id) {
                (Some(id), _) => find(&objects, id, &loc)?,
                (None, Some(opened)) => find(&objects, opened, &loc)?,
                (None, None) if objects.len() == 1 => &objects[0],
                (None, None) => bail!(
                    "{loc} has {} passphrase keys: name the one to change (`n2s-agent key list` shows their ids)",
                    objects.len()
                ),
            };
            let label = old.label(master)?;
            let pass = passphrase::read_new(new_password_file.as_deref())?;
            let new = KeyObject::create(master, pass.as_bytes(), &label, old.salt, old.params)?;
            // New first: a crash in between leaves two keys, never none.
            crate::repo::write_key_object(backend, &new)?;
            backend.delete(&old.key()).map_err(|e| {
                anyhow::anyhow!("the new key {} is stored, but the old {} could not be removed: {e}", new.id, old.key())
            })?;
            if json {
                super::output::print_json(&serde_json::json!({"replaced": old.id, "by": new.id, "repository": loc}))?;
            } else {
                println!("changed the passphrase of key {} (now key {}) in {loc}", old.id, new.id);
            }
        }
    }
    super::ok()
}

/// The key object named by `id` or a unique prefix of it.
fn find<'a>(objects: &'a [KeyObject], id: &str, loc: &str) -> Result<&'a KeyObject> {
    let hits: Vec<_> = objects.iter().filter(|k| !id.is_empty() && k.id.starts_with(id)).collect();
    match hits.as_slice() {
        [one] => Ok(one),
        [] => bail!("{loc} has no key {id:?}: `n2s-agent key list` shows their ids"),
        _ => bail!("{id:?} names {} keys of {loc}: give more of the id", hits.len()),
    }
}
