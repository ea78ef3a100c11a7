//! The actuator's nftables table, behind the `block` and `unblock` requests (`net.block_ip`,
//! `net.unblock_ip`).
//!
//! Table `inet playbookd` holds two sets, `blocked_v4` and `blocked_v6` (intervals, so networks
//! too, with optional per-element timeouts), and three base chains that drop traffic from
//! (input, forward) and to (forward, output) anything in them. Every invocation first
//! (re)declares all of it — `add` is idempotent and the chains are flushed and refilled in the
//! same atomic transaction — so a missing or partly deleted table heals itself.
//! `nft` runs from a configurable argv prefix (no shell) with the script on stdin.

use std::process::Stdio;
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::protocol::Reply;
use crate::config::NetActionConfig;

/// Runs `nft` for the actuator's `block` and `unblock`.
pub struct Nft {
    command: Vec<String>,
    never_block: Vec<IpNet>,
}

impl Nft {
    /// From `[actions.net]`: the argv prefix that runs nft, and the networks never to block.
    pub fn new(config: &NetActionConfig) -> Nft {
        Nft {
            command: config.nft_command.clone(),
            never_block: config.never_block.clone(),
        }
    }

    /// Adds `target` to its set, with an optional timeout; already present → success.
    pub async fn block(&self, target: IpNet, timeout_seconds: Option<u64>) -> Reply {
        if let Err(reason) = check_target(&target, &self.never_block) {
            return Reply::Refused { reason };
        }
        let set = set_for(&target);
        let element = match timeout_seconds {
            Some(seconds) => format!("{} timeout {}s", element_text(&target), seconds.max(1)),
            None => element_text(&target),
        };
        let script = format!(
            "{}add element inet {TABLE} {set} {{ {element} }}\n",
            declare()
        );
        match self.run(script).await {
            Ok(()) => Reply::Blocked {
                net: target,
                set: set.to_owned(),
                timeout_seconds: timeout_seconds.map(|s| s.max(1)),
            },
            Err(failure) => failure.into_reply(),
        }
    }

    /// Removes `target` from its set; not present → success.
    pub async fn unblock(&self, target: IpNet) -> Reply {
        if let Err(reason) = check_target(&target, &self.never_block) {
            return Reply::Refused { reason };
        }
        let set = set_for(&target);
        let script = format!(
            "{}delete element inet {TABLE} {set} {{ {} }}\n",
            declare(),
            element_text(&target)
        );
        let was_blocked = match self.run(script).await {
            Ok(()) => true,
            // The table and sets were declared in the same script, so the only thing that can
            // be missing is the element itself.
            // nft 1.0.6 says "element does not exist", later versions ENOENT's text.
            Err(NftFailure::Failed(stderr))
                if stderr.contains("element does not exist")
                    || stderr.contains("No such file or directory") =>
            {
                false
            }
            Err(failure) => return failure.into_reply(),
        };
        Reply::Unblocked {
            net: target,
            set: set.to_owned(),
            was_blocked,
        }
    }

    async fn run(&self, script: String) -> Result<(), NftFailure> {
        let Some((program, prefix_args)) = self.command.split_first() else {
            return Err(NftFailure::Other("actions.net.nft_command is empty".into()));
        };
        let mut child = Command::new(program)
            .args(prefix_args)
            .args(["-f", "-"])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| NftFailure::Other(format!("cannot start {program}: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A few hundred bytes: fits the pipe, so this cannot block on a stuck nft.
            let _ = stdin.write_all(script.as_bytes()).await;
        }
        let output = tokio::time::timeout(NFT_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| {
                NftFailure::Transient(format!("{program} did not finish in {NFT_TIMEOUT:?}"))
            })?
            .map_err(|e| NftFailure::Transient(format!("waiting for {program}: {e}")))?;
        if output.status.success() {
            return Ok(());
        }
        Err(NftFailure::Failed(
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }
}

/// How long one nft run may take.
const NFT_TIMEOUT: Duration = Duration::from_secs(10);

enum NftFailure {
    /// nft ran and said no; its stderr.
    Failed(String),
    /// nft could not be run at all.
    Other(String),
    /// nft hung or its wait failed: a retry may do better.
    Transient(String),
}

impl NftFailure {
    fn into_reply(self) -> Reply {
        match self {
            NftFailure::Failed(stderr) if stderr.contains("Operation not permitted") => {
                Reply::permanent("nft: operation not permitted (the actuator needs CAP_NET_ADMIN)")
            }
            NftFailure::Failed(stderr) => {
                let excerpt: String = stderr.trim().chars().take(512).collect();
                Reply::permanent(format!("nft failed: {excerpt}"))
            }
            NftFailure::Other(reason) => Reply::permanent(reason),
            NftFailure::Transient(reason) => Reply::transient(reason),
        }
    }
}

/// Refuses loopback, unspecified and `never_block` addresses, whoever asks (the daemon checks
/// first with its own list; the actuator checks again with its own).
pub fn check_target(target: &IpNet, never_block: &[IpNet]) -> Result<(), String> {
    if let IpNet::V6(v6) = target
        && v6.addr().to_ipv4_mapped().is_some()
    {
        return Err(format!(
            "refusing to block {target}: an IPv4-mapped IPv6 address; use the IPv4 form"
        ));
    }
    if target.trunc() != *target {
        return Err(format!(
            "refusing to block {target}: host bits set; the network is {}",
            target.trunc()
        ));
    }
    // The rule the registry applies at load, here on the rendered (or requested) value.
    crate::actions::limits::check_network_target(target, never_block)
        .map_err(|refusal| format!("refusing to block {target}: {refusal}"))
}

/// An address (`192.0.2.7`, `2001:db8::1`) or a network in CIDR form with no host bits set
/// (`192.0.2.0/24`). IPv4-mapped IPv6 addresses are refused: write the IPv4 form.
pub fn parse_target(text: &str) -> Result<IpNet, String> {
    let net = if text.contains('/') {
        let net: IpNet = text
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or CIDR network"))?;
        if net.trunc() != net {
            return Err(format!(
                "`{text}` has host bits set; the network is {}",
                net.trunc()
            ));
        }
        net
    } else {
        let ip: std::net::IpAddr = text
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or CIDR network"))?;
        IpNet::from(ip)
    };
    if let IpNet::V6(v6) = net
        && v6.addr().to_ipv4_mapped().is_some()
    {
        return Err(format!(
            "`{text}` is an IPv4-mapped IPv6 address; use the IPv4 form"
        ));
    }
    Ok(net)
}

fn set_for(target: &IpNet) -> &'static str {
    match target {
        IpNet::V4(_) => "blocked_v4",
        IpNet::V6(_) => "blocked_v6",
    }
}

/// Canonical text from the parsed value (never the caller's string), so nothing but an
/// address can reach the script.
fn element_text(target: &IpNet) -> String {
    if target.prefix_len() == target.max_prefix_len() {
        target.addr().to_string()
    } else {
        target.to_string()
    }
}

/// The table, sets and chains, declared idempotently.
fn declare() -> String {
    let mut script = format!(
        "add table inet {TABLE}\n\
         add set inet {TABLE} blocked_v4 {{ type ipv4_addr; flags interval,timeout; }}\n\
         add set inet {TABLE} blocked_v6 {{ type ipv6_addr; flags interval,timeout; }}\n"
    );
    for (chain, hook) in [
        ("input", "input"),
        ("forward", "forward"),
        ("output", "output"),
    ] {
        script.push_str(&format!(
            "add chain inet {TABLE} {chain} {{ type filter hook {hook} priority -10; policy accept; }}\n\
             flush chain inet {TABLE} {chain}\n"
        ));
    }
    for (family, set) in [("ip", "blocked_v4"), ("ip6", "blocked_v6")] {
        script.push_str(&format!(
            "add rule inet {TABLE} input {family} saddr @{set} drop\n\
             add rule inet {TABLE} forward {family} saddr @{set} drop\n\
             add rule inet {TABLE} forward {family} daddr @{set} drop\n\
             add rule inet {TABLE} output {family} daddr @{set} drop\n"
        ));
    }
    script
}

/// The daemon's own table; nothing else in the ruleset is touched.
pub const TABLE: &str = "playbookd";

#[cfg(test)]
mod tests {
    use super::*;

    fn check(never: &[&str], address: &str) -> Result<(), String> {
        let never: Vec<IpNet> = never.iter().map(|n| n.parse().unwrap()).collect();
        check_target(&parse_target(address)?, &never)
    }

    #[test]
    fn addresses_and_networks_parse_strictly() {
        assert_eq!(
            parse_target("192.0.2.7").unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(
            parse_target("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        for bad in [
            "192.0.2.1/24",
            "192.0.2",
            "1.2.3.4; flush ruleset",
            "::ffff:1.2.3.4",
            "",
            "10.0.0.0/33",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_unspecified_and_never_block_are_refused() {
        let never = ["10.10.0.0/16"];
        for refused in [
            "127.0.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "0.0.0.0/0",
            "10.10.3.4",
            "10.0.0.0/8",
        ] {
            let error = check(&never, refused).unwrap_err();
            assert!(error.contains("refusing to block"), "{refused}: {error}");
        }
        assert!(check(&never, "10.11.0.1").is_ok());
        assert!(check(&never, "2001:db8::1").is_ok());
    }
}
