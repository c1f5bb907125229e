//! The command-line arguments of `mxsentry greylist import postgrey` and `mxsentry config
//! import postgrey` (src/main.rs only names these types).

use std::path::PathBuf;

use super::records::PostgreySettings;
use super::whitelists::{ConfigImport, PostgreyFlags};
use crate::config::Config;

/// `mxsentry greylist import postgrey DBDIR`.
#[derive(clap::Args, Debug)]
pub struct GreylistImportArgs {
    /// postgrey's --dbdir (postgrey.db, postgrey_clients.db, log.*). Stop postgrey first.
    pub dbdir: PathBuf,
    #[arg(long, short, default_value = "/etc/mxsentry/milter.toml")]
    pub config: PathBuf,
    /// postgrey's --delay (its database does not record it): a triplet whose last - first
    /// reached it has passed. Seconds as postgrey takes them, or a duration ("5m").
    #[arg(long, default_value = "300")]
    pub delay: String,
    /// postgrey's --auto-whitelist-clients: clients with this many passes are autowhitelisted.
    #[arg(long, default_value_t = 5)]
    pub auto_whitelist_clients: u64,
    /// postgrey's --ipv4cidr: the length of the IPv4 networks in its keys.
    #[arg(long, default_value_t = 24)]
    pub ipv4cidr: u8,
    /// postgrey's --ipv6cidr: the length of the IPv6 networks in its keys.
    #[arg(long, default_value_t = 64)]
    pub ipv6cidr: u8,
}

impl GreylistImportArgs {
    pub fn settings(&self) -> Result<PostgreySettings, String> {
        let delay = match self.delay.trim().parse::<u64>() {
            Ok(secs) => secs,
            Err(_) => crate::config::parse_duration(&self.delay)
                .map_err(|e| format!("--delay: {e}"))?
                .as_secs(),
        };
        Ok(PostgreySettings {
            delay,
            auto_whitelist_clients: self.auto_whitelist_clients,
            ipv4cidr: self.ipv4cidr,
            ipv6cidr: self.ipv6cidr,
        })
    }
}

/// Runs `greylist import postgrey` with the loaded configuration; returns the report.
pub async fn greylist_import(config: &Config, args: &GreylistImportArgs) -> Result<String, String> {
    let settings = args.settings()?;
    super::import(config, &args.dbdir, &settings).await
}

/// `mxsentry config import postgrey`.
#[derive(clap::Args, Debug)]
pub struct ConfigImportArgs {
    /// postgrey's --whitelist-clients file (repeat for several; default: postgrey's
    /// /etc/postgrey/whitelist_clients and .local, when they exist).
    #[arg(long)]
    pub whitelist_clients: Vec<PathBuf>,
    /// postgrey's --whitelist-recipients file (repeat for several; default: postgrey's
    /// /etc/postgrey/whitelist_recipients and .local, when they exist).
    #[arg(long)]
    pub whitelist_recipients: Vec<PathBuf>,
    /// Where the allow-list files are written.
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
    /// Replace allow-list files that exist.
    #[arg(long)]
    pub force: bool,
    /// postgrey's --delay (seconds) → greylist.delay.
    #[arg(long)]
    pub delay: Option<u64>,
    /// postgrey's --max-age (days) → greylist.autowhite.
    #[arg(long)]
    pub max_age: Option<u64>,
    /// postgrey's --retry-window (days, or hours with "h") → greylist.retry_window.
    #[arg(long)]
    pub retry_window: Option<String>,
    /// postgrey's --auto-whitelist-clients → greylist.client_autowhite_after.
    #[arg(long)]
    pub auto_whitelist_clients: Option<u32>,
    /// postgrey's --ipv4cidr → greylist.ipv4_prefix.
    #[arg(long)]
    pub ipv4cidr: Option<u8>,
    /// postgrey's --ipv6cidr → greylist.ipv6_prefix.
    #[arg(long)]
    pub ipv6cidr: Option<u8>,
    /// postgrey's --lookup-by-host → prefixes 32 and 128.
    #[arg(long)]
    pub lookup_by_host: bool,
}

impl ConfigImportArgs {
    pub fn to_import(&self) -> ConfigImport {
        ConfigImport {
            client_files: self.whitelist_clients.clone(),
            recipient_files: self.whitelist_recipients.clone(),
            out_dir: self.out_dir.clone(),
            force: self.force,
            flags: PostgreyFlags {
                delay: self.delay,
                max_age: self.max_age,
                retry_window: self.retry_window.clone(),
                auto_whitelist_clients: self.auto_whitelist_clients,
                ipv4cidr: self.ipv4cidr,
                ipv6cidr: self.ipv6cidr,
                lookup_by_host: self.lookup_by_host,
            },
        }
    }
}
