//! Greylist-only allow lists: clients, senders and recipients that skip greylisting and nothing
//! else (`[greylist] allow_client_files`, `allow_sender_files`, `allow_recipient_files`).
//!
//! `[trusted]` and an access-file `OK` skip every check; these lists exist for what postgrey's
//! `whitelist_clients`/`whitelist_recipients` and milter-greylist's `racl whitelist` do: mail
//! providers that retry from another address of a pool (a new triplet each time, so the mail
//! waits hours), and recipients that must never wait. HELO, rDNS, DNSBL and sender rules still
//! apply to a listed client.
//!
//! # File format
//!
//! One entry per line; `#` starts a comment at the start of a line or after whitespace; blank
//! lines are ignored. Everything is compared case-insensitively.
//!
//! * Client files: an IP address (`192.0.2.1`, `2001:db8::1`), a network (`192.0.2.0/24`,
//!   `2001:db8::/32`), a domain name (`example.com`: the client's *FCrDNS-verified* name is
//!   `example.com` or ends in `.example.com`) or `/regex/` (searched in the verified name).
//!   Names never match a bare PTR name or the HELO: anyone can publish a PTR record ending in
//!   `google.com`, only Google can make it resolve back to the address.
//! * Sender and recipient files (postgrey's `whitelist_recipients` format): `user@example.com`
//!   (that address), `example.com` (that domain and its subdomains), `user@` (that local part
//!   at any domain), `@example.com` (exactly that domain) or `/regex/` (searched in the whole
//!   address; anchor it with `^...$` to match all of it).
//!
//! # Cost
//!
//! Addresses and networks are hash lookups (one per prefix length present in the files),
//! names one hash lookup per label of the client's name, and all regexes of a list run as one
//! `RegexSet` pass: the price of a lookup does not grow with the number of entries.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use regex::{RegexSet, RegexSetBuilder};

use crate::config::GreylistConfig;

mod parse;
#[cfg(test)]
mod tests;

use parse::canonical;
pub use parse::{line_entry, parse_address_entry, parse_client_entry, AddressEntry, ClientEntry};

/// Most bad lines reported at once; past them a count (a wrong file can have thousands).
const MAX_REPORTED_ERRORS: usize = 20;

/// Compiled-size limit of one regex and of a list's combined `RegexSet`.
pub(crate) const REGEX_SIZE_LIMIT: usize = 64 << 20;

/// Which list an entry is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Client,
    Sender,
    Recipient,
}

impl ListKind {
    /// `client`, `sender`, `recipient`.
    pub fn as_str(self) -> &'static str {
        match self {
            ListKind::Client => "client",
            ListKind::Sender => "sender",
            ListKind::Recipient => "recipient",
        }
    }
}

/// Where an entry was written.
#[derive(Debug)]
struct Written {
    file: u16,
    line: u32,
    text: Box<str>,
}

/// A matching entry: where it is written, for logs and `explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowHit<'a> {
    pub kind: ListKind,
    pub file: &'a Path,
    pub line: u32,
    /// The entry as written.
    pub entry: &'a str,
}

impl fmt::Display for AllowHit<'_> {
    /// `/etc/mxsentry/greylist-allow-clients:12 (example.com)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} ({})", self.file.display(), self.line, self.entry)
    }
}

/// Regexes of one list, combined; entry numbers by pattern index.
#[derive(Debug, Default)]
struct Regexes {
    patterns: Vec<String>,
    entries: Vec<u32>,
    set: Option<RegexSet>,
}

impl Regexes {
    fn push(&mut self, pattern: String, entry: u32) {
        self.patterns.push(pattern);
        self.entries.push(entry);
    }

    fn build(&mut self, what: &str) -> Result<(), String> {
        if self.patterns.is_empty() {
            return Ok(());
        }
        let set = RegexSetBuilder::new(&self.patterns)
            .case_insensitive(true)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| format!("{what}: the regexes together do not compile: {e}"))?;
        self.set = Some(set);
        Ok(())
    }

    /// The first (in file order) regex found in `text`.
    fn find(&self, text: &str) -> Option<u32> {
        let set = self.set.as_ref()?;
        // `is_match` stops at the first match; `matches` (which one) runs every pattern, so
        // only for the rare hit.
        if !set.is_match(text) {
            return None;
        }
        let first = set.matches(text).iter().next()?;
        self.entries.get(first).copied()
    }
}

/// Finds `name` or its closest parent domain in `domains` (`a.b.example.com`, `b.example.com`,
/// `example.com`, `com`): one hash lookup per label.
fn find_domain(domains: &HashMap<Box<str>, u32>, name: &str) -> Option<u32> {
    if domains.is_empty() {
        return None;
    }
    let mut rest = name;
    loop {
        if let Some(&n) = domains.get(rest) {
            return Some(n);
        }
        rest = &rest[rest.find('.')? + 1..];
    }
}

/// Records `value → entry` unless an earlier line has it (duplicates are harmless: the
/// first one is named in logs).
fn insert<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: K, entry: u32) {
    map.entry(key).or_insert(entry);
}

/// The client list, indexed.
#[derive(Debug, Default)]
struct ClientList {
    entries: Vec<Written>,
    v4: HashMap<(u32, u8), u32>,
    v6: HashMap<(u128, u8), u32>,
    /// The prefix lengths present, longest first: a lookup tries each once.
    v4_lens: Vec<u8>,
    v6_lens: Vec<u8>,
    names: HashMap<Box<str>, u32>,
    regexes: Regexes,
}

impl ClientList {
    fn add(&mut self, entry: ClientEntry, written: Written) {
        let n = self.entries.len() as u32;
        self.entries.push(written);
        match entry {
            ClientEntry::Net(IpNet::V4(net)) => {
                let len = net.prefix_len();
                insert(&mut self.v4, (u32::from(net.network()), len), n);
                if !self.v4_lens.contains(&len) {
                    self.v4_lens.push(len);
                    self.v4_lens.sort_unstable_by(|a, b| b.cmp(a));
                }
            }
            ClientEntry::Net(IpNet::V6(net)) => {
                let len = net.prefix_len();
                insert(&mut self.v6, (u128::from(net.network()), len), n);
                if !self.v6_lens.contains(&len) {
                    self.v6_lens.push(len);
                    self.v6_lens.sort_unstable_by(|a, b| b.cmp(a));
                }
            }
            ClientEntry::Name(name) => insert(&mut self.names, name.into_boxed_str(), n),
            ClientEntry::Regex(pattern) => self.regexes.push(pattern, n),
        }
    }

    fn find(&self, ip: IpAddr, verified_name: Option<&str>) -> Option<u32> {
        match canonical(ip) {
            IpAddr::V4(v4) => {
                let a = u32::from(v4);
                for &len in &self.v4_lens {
                    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                    if let Some(&n) = self.v4.get(&(a & mask, len)) {
                        return Some(n);
                    }
                }
            }
            IpAddr::V6(v6) => {
                let a = u128::from(v6);
                for &len in &self.v6_lens {
                    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                    if let Some(&n) = self.v6.get(&(a & mask, len)) {
                        return Some(n);
                    }
                }
            }
        }
        if self.names.is_empty() && self.regexes.set.is_none() {
            return None;
        }
        let name = verified_name?.trim_end_matches('.').to_lowercase();
        if name.is_empty() {
            return None;
        }
        find_domain(&self.names, &name).or_else(|| self.regexes.find(&name))
    }
}

/// A sender or recipient list, indexed.
#[derive(Debug, Default)]
struct AddressList {
    entries: Vec<Written>,
    addresses: HashMap<Box<str>, u32>,
    local_parts: HashMap<Box<str>, u32>,
    exact_domains: HashMap<Box<str>, u32>,
    domains: HashMap<Box<str>, u32>,
    regexes: Regexes,
}

impl AddressList {
    fn add(&mut self, entry: AddressEntry, written: Written) {
        let n = self.entries.len() as u32;
        self.entries.push(written);
        match entry {
            AddressEntry::Address(a) => insert(&mut self.addresses, a.into_boxed_str(), n),
            AddressEntry::Domain(d) => insert(&mut self.domains, d.into_boxed_str(), n),
            AddressEntry::LocalPart(l) => insert(&mut self.local_parts, l.into_boxed_str(), n),
            AddressEntry::ExactDomain(d) => insert(&mut self.exact_domains, d.into_boxed_str(), n),
            AddressEntry::Regex(pattern) => self.regexes.push(pattern, n),
        }
    }

    /// `address`: as the MTA gave it, without angle brackets (empty: the null sender).
    fn find(&self, address: &str) -> Option<u32> {
        if self.entries.is_empty() {
            return None;
        }
        let mut address = address.to_lowercase();
        if address.contains('@') {
            // A trailing dot on the domain is the same address.
            address.truncate(address.trim_end_matches('.').len());
        }
        let (local, domain) = match address.rsplit_once('@') {
            Some((l, d)) => (l, Some(d)),
            None => (address.as_str(), None),
        };
        let exact = domain.and_then(|_| self.addresses.get(address.as_str()).copied());
        exact
            .or_else(|| {
                (!local.is_empty())
                    .then(|| self.local_parts.get(local).copied())
                    .flatten()
            })
            .or_else(|| domain.and_then(|d| self.exact_domains.get(d).copied()))
            .or_else(|| domain.and_then(|d| find_domain(&self.domains, d)))
            .or_else(|| self.regexes.find(&address))
    }
}

/// The three lists, as loaded from the configured files.
#[derive(Debug, Default)]
pub struct AllowLists {
    files: Vec<PathBuf>,
    clients: ClientList,
    senders: AddressList,
    recipients: AddressList,
}

/// Collects the lists and every bad line while reading the files.
struct Loader {
    lists: AllowLists,
    errors: Vec<String>,
    more_errors: usize,
}

impl Loader {
    fn error(&mut self, text: String) {
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(text);
        } else {
            self.more_errors += 1;
        }
    }

    fn add_file(&mut self, kind: ListKind, path: &Path, text: &str) {
        let Ok(file) = u16::try_from(self.lists.files.len()) else {
            self.error(format!("{}: too many allow files", path.display()));
            return;
        };
        self.lists.files.push(path.to_path_buf());
        // A byte-order mark (files saved by some Windows editors) is not part of line 1.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (i, line) in text.lines().enumerate() {
            let Some(entry) = line_entry(line) else {
                continue;
            };
            let line_no = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let written = Written {
                file,
                line: line_no,
                text: entry.into(),
            };
            let added = match kind {
                ListKind::Client => {
                    parse_client_entry(entry).map(|e| self.lists.clients.add(e, written))
                }
                ListKind::Sender => {
                    parse_address_entry(entry).map(|e| self.lists.senders.add(e, written))
                }
                ListKind::Recipient => {
                    parse_address_entry(entry).map(|e| self.lists.recipients.add(e, written))
                }
            };
            if let Err(reason) = added {
                self.error(format!("{}:{line_no}: {reason}", path.display()));
            }
        }
    }

    fn finish(mut self) -> Result<AllowLists, String> {
        let built = [
            self.lists.clients.regexes.build("allow_client_files"),
            self.lists.senders.regexes.build("allow_sender_files"),
            self.lists.recipients.regexes.build("allow_recipient_files"),
        ];
        for e in built.into_iter().filter_map(Result::err) {
            self.error(e);
        }
        if self.errors.is_empty() {
            return Ok(self.lists);
        }
        let mut text = self.errors.join("\n");
        if self.more_errors > 0 {
            text.push_str(&format!("\n... and {} more bad lines", self.more_errors));
        }
        Err(text)
    }
}

impl AllowLists {
    /// Reads the files `[greylist]` names. Every unreadable file and bad line is reported, one
    /// `file:line: reason` per line; nothing is loaded then (the caller keeps its old lists).
    pub fn load(cfg: &GreylistConfig) -> Result<AllowLists, String> {
        let files = [
            (ListKind::Client, &cfg.allow_client_files),
            (ListKind::Sender, &cfg.allow_sender_files),
            (ListKind::Recipient, &cfg.allow_recipient_files),
        ];
        let mut texts = Vec::new();
        let mut unreadable = Vec::new();
        for (kind, paths) in files {
            for path in paths {
                match std::fs::read_to_string(path) {
                    Ok(text) => texts.push((kind, path.as_path(), text)),
                    Err(e) => unreadable.push(format!("{}: cannot read: {e}", path.display())),
                }
            }
        }
        let texts: Vec<_> = texts.iter().map(|(k, p, t)| (*k, *p, t.as_str())).collect();
        let lists = AllowLists::parse(&texts);
        if unreadable.is_empty() {
            return lists;
        }
        let mut errors = unreadable.join("\n");
        if let Err(e) = lists {
            errors.push('\n');
            errors.push_str(&e);
        }
        Err(errors)
    }

    /// Builds the lists from file texts (`load` without the reading).
    pub fn parse(files: &[(ListKind, &Path, &str)]) -> Result<AllowLists, String> {
        let mut loader = Loader {
            lists: AllowLists::default(),
            errors: Vec::new(),
            more_errors: 0,
        };
        for (kind, path, text) in files {
            loader.add_file(*kind, path, text);
        }
        loader.finish()
    }

    /// Entries loaded (clients, senders, recipients).
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.clients.entries.len(),
            self.senders.entries.len(),
            self.recipients.entries.len(),
        )
    }

    /// True when no list has an entry.
    pub fn is_empty(&self) -> bool {
        self.counts() == (0, 0, 0)
    }

    /// Whether a client entry needs the client's verified name (a name or a regex): then the
    /// client's rDNS has to be looked up even when no rDNS check is on.
    pub fn needs_client_name(&self) -> bool {
        !self.clients.names.is_empty() || !self.clients.regexes.patterns.is_empty()
    }

    /// The entry that lets this client skip greylisting. `verified_name`: the client's
    /// FCrDNS-verified name (`RdnsResult::verified_name`), never a bare PTR name or the HELO.
    pub fn client(&self, ip: IpAddr, verified_name: Option<&str>) -> Option<AllowHit<'_>> {
        let n = self.clients.find(ip, verified_name)?;
        self.hit(ListKind::Client, &self.clients.entries, n)
    }

    /// The entry that lets this sender skip greylisting.
    pub fn sender(&self, address: &str) -> Option<AllowHit<'_>> {
        let n = self.senders.find(address)?;
        self.hit(ListKind::Sender, &self.senders.entries, n)
    }

    /// The entry that lets this recipient skip greylisting.
    pub fn recipient(&self, address: &str) -> Option<AllowHit<'_>> {
        let n = self.recipients.find(address)?;
        self.hit(ListKind::Recipient, &self.recipients.entries, n)
    }

    fn hit<'a>(&'a self, kind: ListKind, entries: &'a [Written], n: u32) -> Option<AllowHit<'a>> {
        let w = entries.get(n as usize)?;
        Some(AllowHit {
            kind,
            file: self.files.get(usize::from(w.file))?,
            line: w.line,
            entry: &w.text,
        })
    }
}
