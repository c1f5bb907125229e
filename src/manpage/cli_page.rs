//! mxsentry(8), from the clap command line. clap_mangen writes the standard parts (title, name,
//! synopsis, description, global options, version); its subcommand list would point to one page
//! per subcommand, which we do not ship, so the COMMANDS section (every subcommand, nested ones
//! included, with its usage and options) is written here from the same clap definitions.

use std::fmt::Write as _;

use clap::{Arg, Command};

use super::roff::{bold, escape, italic};
use super::VERSION;

/// The text of mxsentry(8) for `cli`, the daemon's clap command.
pub fn mxsentry_8(cli: Command) -> Result<String, String> {
    let mut cli = cli.disable_help_subcommand(true);
    cli.build();
    let man = clap_mangen::Man::new(cli.clone())
        .section("8")
        .manual("System Manager's Manual")
        .source(format!("mxsentry {VERSION}"));
    let mut head = Vec::new();
    let rendered = man
        .render_title(&mut head)
        .and_then(|()| man.render_name_section(&mut head))
        .and_then(|()| man.render_synopsis_section(&mut head))
        .and_then(|()| man.render_description_section(&mut head))
        .and_then(|()| man.render_options_section(&mut head));
    rendered.map_err(|e| format!("rendering mxsentry(8): {e}"))?;
    let mut page = String::from_utf8(head).map_err(|e| format!("mxsentry(8): {e}"))?;

    page.push_str(".SH COMMANDS\n");
    for sub in visible_subcommands(&cli) {
        commands(&mut page, sub, cli.get_name());
    }
    page.push_str(TAIL);

    let mut version = Vec::new();
    man.render_version_section(&mut version)
        .map_err(|e| format!("rendering mxsentry(8): {e}"))?;
    page.push_str(&String::from_utf8(version).map_err(|e| format!("mxsentry(8): {e}"))?);
    Ok(page)
}

/// The subcommands a user sees (`--help` lists them): hidden ones and `help` are left out.
fn visible_subcommands(cmd: &Command) -> impl Iterator<Item = &Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

/// One `.SS` per command, depth first: `mxsentry greylist` then `mxsentry greylist list`, ...
fn commands(page: &mut String, cmd: &Command, parent: &str) {
    let path = format!("{parent} {}", cmd.get_name());
    let _ = writeln!(page, ".SS \"{}\"", escape(&path));
    let usage = cmd
        .clone()
        .bin_name(&path)
        .render_usage()
        .to_string()
        .replace("Usage: ", "");
    let _ = writeln!(page, "{}", bold(usage.trim()));
    if let Some(about) = cmd.get_long_about().or_else(|| cmd.get_about()) {
        paragraphs(page, &about.to_string());
    }
    let args: Vec<&Arg> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !matches!(a.get_id().as_str(), "help" | "version"))
        .collect();
    for arg in args {
        argument(page, arg);
    }
    for sub in visible_subcommands(cmd) {
        commands(page, sub, &path);
    }
}

/// An option or positional argument as a `.TP` item: its form, then its help and default.
fn argument(page: &mut String, arg: &Arg) {
    let value = arg
        .get_value_names()
        .and_then(|names| names.first())
        .map(|n| n.to_string())
        .unwrap_or_else(|| arg.get_id().as_str().to_ascii_uppercase());
    let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
    let form = if arg.is_positional() {
        italic(&value)
    } else {
        let mut names = Vec::new();
        if let Some(short) = arg.get_short() {
            names.push(bold(&format!("-{short}")));
        }
        if let Some(long) = arg.get_long() {
            names.push(bold(&format!("--{long}")));
        }
        let mut form = names.join(", ");
        if takes_value {
            let _ = write!(form, " {}", italic(&value));
        }
        form
    };
    let _ = writeln!(page, ".TP\n{form}");
    let help = arg
        .get_long_help()
        .or_else(|| arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .filter(|v| !v.is_empty())
        .collect();
    let mut text = help.trim().to_string();
    if takes_value && !defaults.is_empty() {
        let _ = write!(text, " [default: {}]", defaults.join(", "));
    }
    if !text.trim().is_empty() {
        let _ = writeln!(page, "{}", escape(text.trim()));
    }
}

/// Text with blank lines as paragraph breaks.
fn paragraphs(page: &mut String, text: &str) {
    page.push_str(".PP\n");
    for line in text.lines() {
        if line.trim().is_empty() {
            page.push_str(".PP\n");
        } else {
            let _ = writeln!(page, "{}", escape(line.trim()));
        }
    }
}

/// What every admin looks for in a daemon's page beyond its options.
const TAIL: &str = r#".SH SIGNALS
.TP
.B SIGHUP
Re\-reads the configuration and the rule files it names; a bad file is logged as
\fIfile\fR:\fIline\fR: \fIreason\fR and the running rules stay.
.TP
.B SIGTERM
Stops accepting connections and lets the sessions in flight finish.
.SH EXIT STATUS
0 on success; 1 on a bad configuration (printed as \fIfile\fR:\fIline\fR: \fIreason\fR) or any
other failure.
.SH FILES
.TP
.I /etc/mxsentry/milter.toml
The configuration, see \fBmilter.toml\fR(5).
.TP
.I /etc/mxsentry/access
sendmail access-file rules, when \fB[sender_rules] access_file\fR names it.
.TP
.I /var/lib/mxsentry/greylist.db
The embedded greylist store.
.TP
.I /usr/share/doc/mxsentry/
The README, the operations guide and example configurations.
.SH SEE ALSO
\fBmilter.toml\fR(5), \fBpostconf\fR(5), \fBsendmail\fR(8)
"#;
