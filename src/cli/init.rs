//! `init`: create the repository and, if needed, a new key file.

use anyhow::Result;
use std::process::ExitCode;

use super::GlobalArgs;

#[derive(clap::Args)]
pub struct InitArgs {
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalArgs, a: InitArgs) -> Result<ExitCode> {
    let s = super::config::Settings::resolve(g)?;
    let key_file = s.required_key_file()?;
    let backend = crate::backend::open_with(&s.repo, &s.backend_options())?;
    let (repo, created_key) = crate::client::init_repository(backend, key_file)?;
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
