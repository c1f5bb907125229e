//! The man pages, generated from what they document so they cannot drift: mxsentry(8) from the
//! clap command line (every subcommand appears as soon as it is declared) and milter.toml(5)
//! from the commented `milter.toml` of the repository (each section and key with its comment).
//! `mxsentry generate-man DIR` writes both; tests/package.sh runs it before `cargo deb`.

mod cli_page;
mod config_page;
mod roff;

use std::path::{Path, PathBuf};

pub use cli_page::mxsentry_8;
pub use config_page::milter_toml_5;

/// The repository's commented `milter.toml`, the source of milter.toml(5).
pub const MILTER_TOML: &str = include_str!("../../milter.toml");

/// The version named in the pages' footers.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Writes `mxsentry.8` (from `cli`, the daemon's clap command) and `milter.toml.5` into `dir`
/// (created if missing) and returns their paths.
pub fn write_pages(dir: &Path, cli: clap::Command) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let pages = [
        ("mxsentry.8", mxsentry_8(cli)?),
        ("milter.toml.5", milter_toml_5(MILTER_TOML)),
    ];
    let mut written = Vec::new();
    for (name, text) in pages {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}
