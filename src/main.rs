//! The `mxsentry` command line.

// No unwrap/expect outside tests: input must never panic the daemon. An invariant that cannot
// fail is allowed one by one, with its reason (`#[allow(clippy::expect_used, reason = ...)]`).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use mxsentry::checks::sender_rules;
use mxsentry::{decision_log, policy, server::Server};

/// jemalloc: returns the memory of the store's freed memtables to the kernel, where glibc
/// malloc kept it (src/store/embedded/malloc.rs has the figures).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings ([`mxsentry::store::embedded::JEMALLOC_CONF`]), read before `main`.
#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_CONF: &[u8; 60] = mxsentry::store::embedded::JEMALLOC_CONF;

const DEFAULT_CONFIG: &str = "/etc/mxsentry/milter.toml";

#[derive(Parser)]
#[command(
    name = "mxsentry",
    version,
    about = "A fast, observable mail filter (milter) for Postfix and sendmail"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the milter in the foreground; logs go to stderr (journald friendly).
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate the configuration and the rule files it names; prints `file:line: reason` on error.
    CheckConfig {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Run every check for real (DNS included) and print each finding and the verdict with
    /// its SMTP reply: what would happen to this client, HELO, sender and recipients, and why.
    Explain {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The client's IP address.
        #[arg(long)]
        client_ip: std::net::IpAddr,
        /// The client's verified host name as the MTA would send it (default: `[ip]`).
        #[arg(long)]
        client_name: Option<String>,
        /// The HELO/EHLO name.
        #[arg(long, default_value = "")]
        helo: String,
        /// The envelope sender (empty for the null sender).
        #[arg(long, default_value = "")]
        from: String,
        /// A recipient; repeat for several.
        #[arg(long)]
        rcpt: Vec<String>,
        /// The client authenticated (SMTP AUTH).
        #[arg(long)]
        authenticated: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Decide the recipients of a JSON decision log again with another configuration, from
    /// the DNS answers the log carries; print every flip (old -> new verdict, cause) and totals.
    Replay {
        /// The NEW configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// The daemon's log (`[log] format = "json"`).
        #[arg(long)]
        log: PathBuf,
        /// One JSON object per flip, then a totals object.
        #[arg(long)]
        json: bool,
        /// Look nothing up: recipients whose answers the log lacks are reported undecidable.
        #[arg(long)]
        no_dns: bool,
    },
    /// Inspect and edit the greylist store: through the running daemon when it answers on its
    /// control socket, else directly.
    Greylist {
        #[command(subcommand)]
        command: GreylistCommand,
    },
    /// Work with sendmail access files.
    Access {
        #[command(subcommand)]
        command: AccessCommand,
    },
    /// Work with configurations: import another daemon's.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Write the man pages mxsentry.8 and milter.toml.5 into DIR (packaging; hidden).
    #[command(hide = true)]
    GenerateMan { dir: PathBuf },
    /// The running daemon's state: version, uptime, configuration, connections, store.
    Status {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate the configuration, then make the running daemon reload it; exit 1 with
    /// `file:line: reason` on a bad file (the daemon keeps its rules) or when no daemon answers.
    Reload {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print a milter.toml fragment for another daemon's configuration and write the rule files
    /// it needs; every line that does not map is listed on stderr as `FILE:LINE: reason`.
    /// Exit 0: all mapped; 1: some lines not mapped; 2: unreadable input or files not written.
    Import {
        #[command(subcommand)]
        source: ImportSource,
    },
}

/// Where a config import comes from.
#[derive(Subcommand)]
enum ImportSource {
    /// milter-greylist's greylist.conf.
    MilterGreylist {
        /// The greylist.conf file.
        greylist_conf: PathBuf,
        /// Where the rule files go (allow lists, access file).
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        /// Overwrite rule files that exist.
        #[arg(long)]
        force: bool,
    },
    /// postgrey's whitelist files and command-line settings.
    Postgrey(mxsentry::import::postgrey::cli::ConfigImportArgs),
}

/// Where a greylist import comes from.
#[derive(Subcommand)]
enum GreylistImportSource {
    /// milter-greylist's dump file (greylist.db): greylisted tuples become pending triplets,
    /// AUTO tuples autowhitelisted until their expiry. Exit 0: every line understood; 1: some
    /// bad lines skipped (the rest imported); 2: unreadable dump, configuration or store.
    MilterGreylist {
        /// The dump file.
        dumpfile: PathBuf,
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// postgrey's postgrey.db and postgrey_clients.db (read with db_dump from db5.3-util).
    Postgrey(mxsentry::import::postgrey::cli::GreylistImportArgs),
}

#[derive(clap::Args)]
struct TargetArgs {
    /// The client's IP address (its network or rDNS pool is what is stored).
    #[arg(long)]
    client_ip: std::net::IpAddr,
    /// The client's FCrDNS-verified name (greylist.pool_by_rdns keys pools by it).
    #[arg(long)]
    client_name: Option<String>,
    /// Envelope sender; with --rcpt names a triplet, without both the client entry.
    #[arg(long)]
    from: Option<String>,
    /// Recipient.
    #[arg(long)]
    rcpt: Option<String>,
}

#[derive(Subcommand)]
enum GreylistCommand {
    /// List entries (`t:` triplets, `c:` clients).
    List {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Only keys starting with this prefix.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many entries.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Whitelist a triplet (with --from and --rcpt) or a client, for greylist.autowhite
    /// (extended by each accepted delivery) or, with --permanent, until deleted.
    Add {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[command(flatten)]
        target: TargetArgs,
        /// The entry never expires (remove it with `greylist del`).
        #[arg(long)]
        permanent: bool,
    },
    /// Delete a triplet (with --from and --rcpt) or a client entry.
    Del {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Remove expired entries now (the daemon also does it periodically).
    Purge {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Import another greylisting daemon's learned state; prints counts and skipped records.
    Import {
        #[command(subcommand)]
        source: GreylistImportSource,
    },
}

#[derive(Subcommand)]
enum AccessCommand {
    /// Read a sendmail access file and print the rules mxsentry understood, and every line it
    /// could not use with its line number. Exits 1 if any line was not understood.
    Import {
        /// The access file (plain text, as for makemap).
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(config),
        Command::GenerateMan { dir } => {
            match mxsentry::manpage::write_pages(&dir, <Cli as clap::CommandFactory>::command()) {
                Ok(paths) => {
                    for p in paths {
                        println!("{}", p.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { config } => match policy::load(&config) {
            Ok((_, policy)) => {
                let (access, regex) = policy.rule_counts();
                let allow = policy.greylist_allow_entries();
                println!(
                    "{}: OK ({access} access rules, {regex} regex rules, {allow} greylist allow entries)",
                    config.display()
                );
                if let (Some(shadow), Some(path)) = (policy.shadow(), policy.shadow_path()) {
                    let (access, regex) = shadow.rule_counts();
                    println!(
                        "{}: OK as shadow candidate ({access} access rules, {regex} regex rules)",
                        path.display()
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Explain {
            config,
            client_ip,
            client_name,
            helo,
            from,
            rcpt,
            authenticated,
            json,
        } => {
            let query = mxsentry::explain::Query {
                client_ip,
                client_name,
                helo,
                from: from
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string(),
                rcpts: rcpt
                    .iter()
                    .map(|r| r.trim_start_matches('<').trim_end_matches('>').to_string())
                    .collect(),
                authenticated,
            };
            explain(config, query, json)
        }
        Command::Greylist { command } => greylist(command),
        Command::Replay {
            config,
            log,
            json,
            no_dns,
        } => ExitCode::from(mxsentry::replay::run(&mxsentry::replay::Options {
            config: &config,
            log: &log,
            json,
            no_dns,
        })),
        Command::Config {
            command: ConfigCommand::Import { source },
        } => config_import(source),
        Command::Status { config } => {
            control_command(|| mxsentry::control::commands::status(&config))
        }
        Command::Reload { config } => {
            control_command(|| mxsentry::control::commands::reload(&config))
        }
        Command::Access {
            command: AccessCommand::Import { file },
        } => match std::fs::read_to_string(&file) {
            Ok(text) => {
                let (report, bad) = sender_rules::import_report(&text);
                let written = print_output(&report);
                if bad == 0 {
                    written
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("{}: cannot read: {e}", file.display());
                ExitCode::FAILURE
            }
        },
    }
}

fn greylist(command: GreylistCommand) -> ExitCode {
    use mxsentry::admin;
    let command = match command {
        GreylistCommand::Import {
            source: GreylistImportSource::MilterGreylist { dumpfile, config },
        } => return mxsentry::import::milter_greylist::cli::greylist_import(&dumpfile, &config),
        other => other,
    };
    let target = |t: TargetArgs, permanent: bool| admin::Target {
        permanent,
        client_ip: t.client_ip,
        client_name: t.client_name,
        from: t
            .from
            .map(|f| f.trim_start_matches('<').trim_end_matches('>').to_string()),
        rcpt: t
            .rcpt
            .map(|r| r.trim_start_matches('<').trim_end_matches('>').to_string()),
    };
    let config_path = match &command {
        GreylistCommand::List { config, .. }
        | GreylistCommand::Add { config, .. }
        | GreylistCommand::Del { config, .. }
        | GreylistCommand::Purge { config } => config.clone(),
        GreylistCommand::Import {
            source: GreylistImportSource::Postgrey(args),
        } => args.config.clone(),
        // Answered at the top of this function.
        GreylistCommand::Import {
            source: GreylistImportSource::MilterGreylist { .. },
        } => return ExitCode::FAILURE,
    };
    let config = match mxsentry::config::Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async {
        match command {
            GreylistCommand::List { prefix, limit, .. } => {
                admin::list(&config, &prefix, limit).await
            }
            GreylistCommand::Add {
                target: t,
                permanent,
                ..
            } => admin::add(&config, &target(t, permanent)).await,
            GreylistCommand::Del { target: t, .. } => admin::del(&config, &target(t, false)).await,
            GreylistCommand::Purge { .. } => admin::purge(&config).await,
            GreylistCommand::Import {
                source: GreylistImportSource::Postgrey(args),
            } => mxsentry::import::postgrey::cli::greylist_import(&config, &args).await,
            GreylistCommand::Import {
                source: GreylistImportSource::MilterGreylist { .. },
            } => Err("answered above".into()),
        }
    });
    match result {
        Ok(out) => print_output(&out),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn config_import(source: ImportSource) -> ExitCode {
    let outcome = match source {
        ImportSource::MilterGreylist {
            greylist_conf,
            out_dir,
            force,
        } => {
            return mxsentry::import::milter_greylist::cli::config_import(
                &greylist_conf,
                &out_dir,
                force,
            )
        }
        ImportSource::Postgrey(args) => {
            mxsentry::import::postgrey::whitelists::run(&args.to_import())
        }
    };
    eprint!("{}", outcome.stderr);
    match print_output(&outcome.stdout) {
        ExitCode::SUCCESS => ExitCode::from(outcome.code),
        failed => failed,
    }
}

/// Runs `status` or `reload`: its output on stdout, exit 0; or its error on stderr, exit 1.
fn control_command<F, Fut>(command: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(command()) {
        Ok(out) => print_output(&out),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes a command's output; a reader that went away (`| head`) ends it quietly, as with the
/// usual Unix tools, instead of a panic.
fn print_output(out: &str) -> ExitCode {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cannot write the output: {e}");
            ExitCode::FAILURE
        }
    }
}

fn explain(config_path: PathBuf, query: mxsentry::explain::Query, json: bool) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let (config, policy) = match policy::load(&config_path) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let (policy, live) = mxsentry::control::commands::with_live_greylist(&config, policy).await;
        let mut explanation = mxsentry::explain::explain(&policy, &query).await;
        explanation.greylist_from_daemon = live;
        if json {
            print_output(&format!("{}\n", explanation.json(&query)))
        } else {
            print_output(&explanation.text(&query))
        }
    })
}

fn run(config_path: PathBuf) -> ExitCode {
    let (config, policy) = match policy::load(&config_path) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    decision_log::init(&config.log);
    mxsentry::store::embedded::limit_malloc_arenas();
    let Some(runtime) = daemon_runtime(config.milter.worker_threads) else {
        return ExitCode::FAILURE;
    };
    let server = Server::new(config_path, config, policy);
    match runtime.block_on(server.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The daemon's runtime: `worker_threads` workers (0: tokio's default, one per CPU). Not a
/// current-thread runtime even with one worker: `block_on` (signals, reload) then runs on the
/// main thread, beside the worker, so a reload of a large rule file never holds up sessions.
fn daemon_runtime(worker_threads: usize) -> Option<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if worker_threads > 0 {
        builder.worker_threads(worker_threads);
    }
    build_runtime(builder)
}

/// The one-shot commands' runtime: one thread.
fn runtime() -> Option<tokio::runtime::Runtime> {
    build_runtime(tokio::runtime::Builder::new_current_thread())
}

fn build_runtime(mut builder: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    match builder.enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            None
        }
    }
}
