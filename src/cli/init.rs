//! `init`: create the repository and, if needed, a new key file.

use anyhow::Result;
use std::process::ExitCode;

use super::GlobalArgs;
use crate::core::keys::MasterKey;
use crate::repo::Repository;

#[derive(clap::Args)]
pub struct InitArgs {
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalArgs, a: InitArgs) -> Result<ExitCode> {
    let s = super::config::Settings::resolve(g)?;
    let backend = crate::backend::open_with(&s.repo, &s.backend_options())?;
    // Check first, so an existing repository (even one whose config is
    // lost) never costs a stray key file.
    Repository::check_location_is_free(&*backend)?;
    let key_file = s.required_key_file()?;
    let (key, created_key) = if key_file.exists() {
        (MasterKey::load(key_file)?, false)
    } else {
        let k = MasterKey::generate()?;
        k.save_new(key_file)?;
        (k, true)
    };
    let repo = Repository::init(backend, &key)?;
    if a.json {
        super::output::print_json(&serde_json::json!({
            "repository": repo.backend.location(),
            "id": repo.config.id,
            "key_file": key_file,
            "key_created": created_key,
        }))?;
    } else {
        println!("created repository {} (id {})", repo.backend.location(), repo.config.id);
        if created_key {
            println!(
                "created key file {} (mode 0600): keep a copy somewhere safe, without it nothing can be restored",
                key_file.display()
            );
        } else {
            println!("using existing key file {}", key_file.display());
        }
    }
    super::ok()
}
