//! The two commands, as `main` calls them: files in, report out, exit code.
//!
//! Exit codes: 0 everything understood (or mapped), 1 some lines skipped as bad (or not
//! mapped; the rest is still imported/written), 2 nothing could be done (unreadable input,
//! a configuration or store error, a file that exists without `--force`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{conf_map, greylist_import};

fn fail(message: &str) -> ExitCode {
    eprintln!("{message}");
    ExitCode::from(2)
}

/// `mxsentry greylist import milter-greylist DUMPFILE --config F`.
pub fn greylist_import(dump: &Path, config_path: &Path) -> ExitCode {
    let config = match crate::config::Config::load(config_path) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let stderr = std::io::stderr();
    let mut report = |line: String| {
        let _ = writeln!(stderr.lock(), "{line}");
    };
    let result = runtime.block_on(greylist_import::import(&config, dump, &mut report));
    let summary = match result {
        Ok(s) => s,
        Err(greylist_import::Failed(e)) => return fail(&e),
    };
    let mut text = summary.text(&dump.display().to_string());
    if config.greylist.pool_by_rdns {
        text.push_str(
            "note: greylist.pool_by_rdns is on: sessions key clients with a forward-confirmed name \
             by their rDNS pool; the dump has no names, so their triplets are keyed by network here \
             and such clients are greylisted once more\n",
        );
    }
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    if summary.bad > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `mxsentry config import milter-greylist GREYLIST_CONF [--out-dir DIR] [--force]`.
pub fn config_import(conf: &Path, out_dir: &Path, force: bool) -> ExitCode {
    let text = match std::fs::read(conf) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => return fail(&format!("{}: cannot read: {e}", conf.display())),
    };
    let out_dir: PathBuf = if out_dir.is_absolute() {
        out_dir.to_path_buf()
    } else {
        match std::env::current_dir() {
            Ok(d) => d.join(out_dir),
            Err(e) => return fail(&format!("cannot find the current directory: {e}")),
        }
    };
    let source = conf.display().to_string();
    let mapping = conf_map::map(&text, &source, &out_dir);
    // Refuse before writing anything: all files or none.
    for f in &mapping.files {
        let path = out_dir.join(f.name);
        if path.exists() && !force {
            return fail(&format!(
                "{}: exists; not overwritten (use --force)",
                path.display()
            ));
        }
    }
    if !mapping.files.is_empty() {
        if let Err(e) = std::fs::create_dir_all(&out_dir) {
            return fail(&format!("{}: cannot create: {e}", out_dir.display()));
        }
    }
    for f in &mapping.files {
        let path = out_dir.join(f.name);
        if let Err(e) = std::fs::write(&path, &f.content) {
            return fail(&format!("{}: cannot write: {e}", path.display()));
        }
        eprintln!("wrote {}", path.display());
    }
    let _ = std::io::stdout().lock().write_all(mapping.toml.as_bytes());
    for (line, reason) in &mapping.unmapped {
        eprintln!("{source}:{line}: not mapped: {reason}");
    }
    if mapping.unmapped.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("{} statements not mapped", mapping.unmapped.len());
        ExitCode::FAILURE
    }
}
