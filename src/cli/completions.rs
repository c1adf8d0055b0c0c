//! `completions SHELL` and the hidden `manpage`: shell completion scripts
//! and man pages generated from the command line itself, so they never
//! drift from it.

use anyhow::{Context, Result};
use clap::CommandFactory;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(clap::Args)]
pub struct ManpageArgs {
    /// Write n2s-agent.1 and one page per verb (n2s-agent-backup.1, ...)
    /// into this directory; without it, n2s-agent.1 goes to stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn completions(a: CompletionsArgs) -> Result<ExitCode> {
    let mut cmd = super::Cli::command();
    let mut text = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "n2s-agent", &mut text);
    to_stdout(&text)
}

/// Write all of `bytes` to stdout; a reader that went away (`| head`) ends
/// the run quietly, as for any Unix filter.
fn to_stdout(bytes: &[u8]) -> Result<ExitCode> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => super::ok(),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::from(141)),
        Err(e) => Err(e).context("cannot write to stdout"),
    }
}

pub fn manpage(a: ManpageArgs) -> Result<ExitCode> {
    let cmd = super::Cli::command();
    let Some(dir) = a.dir else {
        let mut text = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut text).context("cannot render the man page")?;
        return to_stdout(&text);
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(cmd, &dir).with_context(|| format!("cannot write man pages into {}", dir.display()))?;
    super::ok()
}
