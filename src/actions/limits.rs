//! What this host's configuration allows a step to touch, as one function per rule.
//!
//! Each rule is checked twice with the same function: by the registry when a playbook loads
//! (on the literal parameters, so an author learns at load time, not at incident time, that
//! `exec` names a program outside `actions.exec.allowed_commands`), and by the action itself
//! on the rendered parameters just before it acts (the second line, for values a decision
//! supplies through a template). Keeping one function per rule means the two can never drift
//! apart: a playbook that loads never fails later on a rule the daemon already knew.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use reqwest::Url;

use crate::config::{ActionsConfig, HttpActionConfig};

/// A configuration key that constrains a step parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// `exec.command` must be in `actions.exec.allowed_commands`.
    ExecCommand,
    /// An `http.post` URL or `notify` webhook must name a host in `actions.http.allowed_hosts`.
    HttpHost,
    /// Plain `http://` only to hosts in `actions.http.allowed_loopback`.
    HttpScheme,
    /// `file.quarantine`/`file.restore` never act inside `actions.file.quarantine_dir`.
    QuarantineDir,
    /// `net.*` never touch an address overlapping `actions.net.never_block`.
    NeverBlock,
    /// `net.*` never touch loopback or unspecified addresses (fixed, not configurable).
    Loopback,
}

impl Limit {
    /// Every limit, for metrics and documentation.
    pub const ALL: [Limit; 6] = [
        Limit::ExecCommand,
        Limit::HttpHost,
        Limit::HttpScheme,
        Limit::QuarantineDir,
        Limit::NeverBlock,
        Limit::Loopback,
    ];

    /// The configuration key that decides (what an operator edits to allow it).
    pub fn key(self) -> &'static str {
        match self {
            Limit::ExecCommand => "actions.exec.allowed_commands",
            Limit::HttpHost => "actions.http.allowed_hosts",
            Limit::HttpScheme => "actions.http.allowed_loopback",
            Limit::QuarantineDir => "actions.file.quarantine_dir",
            Limit::NeverBlock => "actions.net.never_block",
            Limit::Loopback => "loopback (always refused)",
        }
    }

    /// A short, stable name (metric label of `playbookd_registry_rejections_total`).
    pub fn label(self) -> &'static str {
        match self {
            Limit::ExecCommand => "command_not_allowed",
            Limit::HttpHost => "host_not_allowed",
            Limit::HttpScheme => "plain_http_not_allowed",
            Limit::QuarantineDir => "inside_quarantine_dir",
            Limit::NeverBlock => "address_never_blocked",
            Limit::Loopback => "address_loopback",
        }
    }
}

/// A parameter value the configuration does not allow; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Refusal {
    pub limit: Limit,
    pub detail: String,
}

impl Refusal {
    fn new(limit: Limit, detail: String) -> Refusal {
        Refusal { limit, detail }
    }
}

/// The configuration's limits on step parameters, for the registry's load-time check.
#[derive(Debug, Clone)]
pub struct ActionLimits {
    allowed_commands: BTreeSet<PathBuf>,
    http: HttpAllowlists,
    quarantine_dir: PathBuf,
    never_block: Vec<IpNet>,
}

impl ActionLimits {
    /// The limits `config` sets: the same values the actions themselves are built from.
    pub fn from_config(config: &ActionsConfig) -> ActionLimits {
        ActionLimits {
            allowed_commands: config.exec.allowed_commands.clone(),
            http: HttpAllowlists::from_config(&config.http),
            quarantine_dir: config.file.quarantine_dir.clone(),
            never_block: config.net.never_block.clone(),
        }
    }

    /// See [`check_exec_command`].
    pub fn check_exec_command(&self, command: &Path) -> Result<(), Refusal> {
        check_exec_command(command, &self.allowed_commands)
    }

    /// See [`check_http_url`].
    pub fn check_http_url(&self, url: &Url) -> Result<HttpDestination, Refusal> {
        check_http_url(url, &self.http)
    }

    /// See [`check_outside_quarantine`].
    pub fn check_outside_quarantine(&self, path: &Path) -> Result<(), Refusal> {
        check_outside_quarantine(path, &self.quarantine_dir)
    }

    /// See [`check_network_target`].
    pub fn check_network_target(&self, target: &IpNet) -> Result<(), Refusal> {
        check_network_target(target, &self.never_block)
    }
}

/// `exec` runs only allowlisted programs: the exact absolute path must be listed.
pub fn check_exec_command(command: &Path, allowed: &BTreeSet<PathBuf>) -> Result<(), Refusal> {
    if allowed.contains(command) {
        Ok(())
    } else {
        Err(Refusal::new(
            Limit::ExecCommand,
            format!(
                "command {} is not in {}",
                command.display(),
                Limit::ExecCommand.key()
            ),
        ))
    }
}

/// The destinations outgoing requests may reach, host names lowercased.
#[derive(Debug, Clone, Default)]
pub struct HttpAllowlists {
    allowed_hosts: BTreeSet<String>,
    allowed_loopback: BTreeSet<String>,
    allowed_private: BTreeSet<String>,
}

impl HttpAllowlists {
    /// From `[actions.http]`.
    pub fn from_config(config: &HttpActionConfig) -> HttpAllowlists {
        let lower = |set: &BTreeSet<String>| set.iter().map(|h| h.to_ascii_lowercase()).collect();
        HttpAllowlists {
            allowed_hosts: lower(&config.allowed_hosts),
            allowed_loopback: lower(&config.allowed_loopback),
            allowed_private: lower(&config.allowed_private),
        }
    }
}

/// Where an allowed request may go, and which non-public addresses its host may resolve to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpDestination {
    /// Lowercase host name, or the IP literal in canonical form.
    pub host: String,
    /// The host when it is an IP literal.
    pub literal: Option<IpAddr>,
    /// In `allowed_loopback`: plain http, loopback and other local addresses allowed.
    pub local: bool,
    /// In `allowed_loopback` or `allowed_private`: private addresses allowed.
    pub private: bool,
}

/// An outgoing request goes only to an allowlisted host, over https unless the host is
/// allowlisted for loopback. `url` is parsed already, so IP literals are normalised
/// (`127.1` → `127.0.0.1`) and IPv6 ones bracketed, the same at load and at run time.
pub fn check_http_url(url: &Url, allow: &HttpAllowlists) -> Result<HttpDestination, Refusal> {
    let raw_host = url.host_str().ok_or_else(|| {
        Refusal::new(
            Limit::HttpHost,
            format!(
                "url has no host, so it cannot be in {}",
                Limit::HttpHost.key()
            ),
        )
    })?;
    let unbracketed = raw_host.trim_start_matches('[').trim_end_matches(']');
    let literal: Option<IpAddr> = unbracketed.parse().ok();
    let host = match literal {
        Some(ip) => ip.to_string(),
        None => raw_host.to_ascii_lowercase(),
    };
    if !allow.allowed_hosts.contains(&host) {
        return Err(Refusal::new(
            Limit::HttpHost,
            format!("host {host} is not in {}", Limit::HttpHost.key()),
        ));
    }
    let local = allow.allowed_loopback.contains(&host);
    match url.scheme() {
        "https" => {}
        "http" if local => {}
        "http" => {
            return Err(Refusal::new(
                Limit::HttpScheme,
                format!(
                    "plain http to {host} refused: https only, unless the host is in {}",
                    Limit::HttpScheme.key()
                ),
            ));
        }
        other => {
            return Err(Refusal::new(
                Limit::HttpScheme,
                format!("scheme {other} refused: https only"),
            ));
        }
    }
    Ok(HttpDestination {
        private: local || allow.allowed_private.contains(&host),
        local,
        host,
        literal,
    })
}

/// `file.quarantine`/`file.restore` never act on the quarantine directory or anything in it
/// (a step could otherwise move or overwrite the evidence of other runs). A lexical check:
/// the action also checks the resolved path when it runs.
pub fn check_outside_quarantine(path: &Path, quarantine_dir: &Path) -> Result<(), Refusal> {
    if path.starts_with(quarantine_dir) {
        Err(Refusal::new(
            Limit::QuarantineDir,
            format!(
                "{} is inside the quarantine directory {} ({})",
                path.display(),
                quarantine_dir.display(),
                Limit::QuarantineDir.key()
            ),
        ))
    } else {
        Ok(())
    }
}

/// `net.block_ip`/`net.unblock_ip` never touch loopback or the unspecified address (blocking
/// them cuts the host off from itself) nor a network overlapping `actions.net.never_block`
/// (management networks: blocking them locks the responders out).
pub fn check_network_target(target: &IpNet, never_block: &[IpNet]) -> Result<(), Refusal> {
    for special in always_refused() {
        if overlaps(target, &special) {
            return Err(Refusal::new(
                Limit::Loopback,
                format!("{target} overlaps {special} (loopback or unspecified)"),
            ));
        }
    }
    if let Some(net) = never_block.iter().find(|net| overlaps(target, net)) {
        return Err(Refusal::new(
            Limit::NeverBlock,
            format!("{target} overlaps {net} in {}", Limit::NeverBlock.key()),
        ));
    }
    Ok(())
}

fn always_refused() -> [IpNet; 4] {
    [
        IpNet::V4(ipnet::Ipv4Net::new_assert(
            std::net::Ipv4Addr::new(127, 0, 0, 0),
            8,
        )),
        IpNet::V4(ipnet::Ipv4Net::new_assert(
            std::net::Ipv4Addr::UNSPECIFIED,
            32,
        )),
        IpNet::V6(ipnet::Ipv6Net::new_assert(
            std::net::Ipv6Addr::LOCALHOST,
            128,
        )),
        IpNet::V6(ipnet::Ipv6Net::new_assert(
            std::net::Ipv6Addr::UNSPECIFIED,
            128,
        )),
    ]
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    /// The limit a check refused on (panics when it passed).
    fn refused<T: std::fmt::Debug>(checked: Result<T, Refusal>) -> Limit {
        checked.unwrap_err().limit
    }

    #[test]
    fn a_command_must_be_listed_exactly() {
        let allowed = BTreeSet::from([PathBuf::from("/usr/bin/true")]);
        assert!(check_exec_command(Path::new("/usr/bin/true"), &allowed).is_ok());
        let refusal = check_exec_command(Path::new("/usr/bin/false"), &allowed).unwrap_err();
        assert_eq!(refusal.limit, Limit::ExecCommand);
        assert!(refusal.detail.contains("actions.exec.allowed_commands"));
    }

    #[test]
    fn urls_need_an_allowlisted_host_and_https_unless_local() {
        let allow = HttpAllowlists {
            allowed_hosts: BTreeSet::from(["hooks.example.org".into(), "127.0.0.1".into()]),
            allowed_loopback: BTreeSet::from(["127.0.0.1".into()]),
            allowed_private: BTreeSet::new(),
        };
        let url = |text: &str| Url::parse(text).unwrap();
        assert!(check_http_url(&url("https://HOOKS.example.org/x"), &allow).is_ok());
        let to_local = check_http_url(&url("http://127.1:8080/x"), &allow).unwrap();
        assert!(to_local.local && to_local.private);
        for (text, limit) in [
            ("https://evil.example.org/", Limit::HttpHost),
            ("http://hooks.example.org/", Limit::HttpScheme),
        ] {
            assert_eq!(refused(check_http_url(&url(text), &allow)), limit, "{text}");
        }
    }

    #[test]
    fn quarantine_dir_and_its_contents_are_refused() {
        let dir = Path::new("/var/lib/playbookd/quarantine");
        assert!(check_outside_quarantine(Path::new("/srv/x"), dir).is_ok());
        assert!(check_outside_quarantine(Path::new("/var/lib/playbookd/quarantined"), dir).is_ok());
        for inside in [dir.to_path_buf(), dir.join("abc")] {
            assert_eq!(
                refused(check_outside_quarantine(&inside, dir)),
                Limit::QuarantineDir
            );
        }
    }

    #[test]
    fn loopback_and_never_block_networks_are_refused() {
        let never = [net("10.9.0.0/16")];
        assert!(check_network_target(&net("203.0.113.7/32"), &never).is_ok());
        for (target, limit) in [
            ("127.0.0.2/32", Limit::Loopback),
            ("10.0.0.0/8", Limit::NeverBlock),
            ("10.9.1.1/32", Limit::NeverBlock),
        ] {
            assert_eq!(
                refused(check_network_target(&net(target), &never)),
                limit,
                "{target}"
            );
        }
    }
}
