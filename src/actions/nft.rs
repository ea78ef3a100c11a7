//! The daemon's own nftables table, shared by `net.block_ip` and `net.unblock_ip`.
//!
//! Table `inet playbookd` holds two sets, `blocked_v4` and `blocked_v6` (intervals, so networks
//! too, with optional per-element timeouts), and three base chains that drop traffic from
//! (input, forward) and to (forward, output) anything in them. Every invocation first
//! (re)declares all of it — `add` is idempotent and the chains are flushed and refilled in the
//! same atomic transaction — so a missing or partly deleted table heals itself.
//! `nft` runs from a configurable argv prefix (no shell) with the script on stdin.

use std::time::Duration;

use ipnet::IpNet;
use serde_json::{Value, json};
use tokio::process::Command;

use super::exec::run_captured;
use super::{ActionContext, ActionError, ActionOutput, limits};
use crate::config::NetActionConfig;

pub struct Nft {
    command: Vec<String>,
    never_block: Vec<IpNet>,
}

impl Nft {
    pub fn new(config: &NetActionConfig) -> Nft {
        Nft {
            command: config.nft_command.clone(),
            never_block: config.never_block.clone(),
        }
    }

    /// Adds `target` to its set, with an optional timeout; already present → success.
    pub async fn block(
        &self,
        address: &str,
        timeout: Option<Duration>,
        ctx: &ActionContext,
    ) -> Result<ActionOutput, ActionError> {
        let target = self.check(address)?;
        let set = set_for(&target);
        let timeout_seconds = timeout.map(|t| t.as_secs().max(1) + u64::from(t.subsec_nanos() > 0));
        let element = match timeout_seconds {
            Some(seconds) => format!("{} timeout {seconds}s", element_text(&target)),
            None => element_text(&target),
        };
        let script = format!(
            "{}add element inet {TABLE} {set} {{ {element} }}\n",
            declare()
        );
        self.run(script, ctx)
            .await
            .map_err(|failure| failure.into_error())?;
        Ok(ActionOutput::new(json!({
            "address": target.to_string(),
            "set": set,
            "timeout_seconds": timeout_seconds,
        })))
    }

    /// Removes `target` from its set; not present → success.
    pub async fn unblock(
        &self,
        address: &str,
        ctx: &ActionContext,
    ) -> Result<ActionOutput, ActionError> {
        let target = self.check(address)?;
        let set = set_for(&target);
        let script = format!(
            "{}delete element inet {TABLE} {set} {{ {} }}\n",
            declare(),
            element_text(&target)
        );
        let was_blocked = match self.run(script, ctx).await {
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
            Err(failure) => return Err(failure.into_error()),
        };
        Ok(ActionOutput::new(json!({
            "address": target.to_string(),
            "set": set,
            "was_blocked": was_blocked,
        })))
    }

    fn check(&self, address: &str) -> Result<IpNet, ActionError> {
        let target = parse_target(address).map_err(ActionError::Permanent)?;
        // The same rule the registry applied at load; here on the rendered value.
        limits::check_network_target(&target, &self.never_block).map_err(|refusal| {
            ActionError::Permanent(format!("refusing to block {target}: {refusal}"))
        })?;
        Ok(target)
    }

    async fn run(&self, script: String, ctx: &ActionContext) -> Result<(), NftFailure> {
        let Some((program, prefix_args)) = self.command.split_first() else {
            return Err(NftFailure::Other(ActionError::Permanent(
                "actions.net.nft_command is empty".into(),
            )));
        };
        let mut cmd = Command::new(program);
        cmd.args(prefix_args).args(["-f", "-"]);
        let finished = run_captured(cmd, Some(script.into_bytes()), ctx)
            .await
            .map_err(NftFailure::Other)?;
        if finished.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&finished.stderr.bytes).into_owned();
        Err(NftFailure::Failed(stderr))
    }
}

enum NftFailure {
    /// nft ran and said no; its stderr.
    Failed(String),
    Other(ActionError),
}

impl NftFailure {
    fn into_error(self) -> ActionError {
        match self {
            NftFailure::Failed(stderr) if stderr.contains("Operation not permitted") => {
                ActionError::Permanent("nft: operation not permitted (needs CAP_NET_ADMIN)".into())
            }
            NftFailure::Failed(stderr) => {
                let excerpt: String = stderr.trim().chars().take(512).collect();
                ActionError::Permanent(format!("nft failed: {excerpt}"))
            }
            NftFailure::Other(error) => error,
        }
    }
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

/// Reads the optional `timeout` parameter (`10m`, `1h`, …).
pub fn timeout_param(params: &Value) -> Result<Option<Duration>, ActionError> {
    super::params::optional_string(params, "timeout")?
        .map(|text| {
            crate::registry::model::DurationSpec::parse(text)
                .map(|spec| spec.0)
                .map_err(|e| ActionError::Permanent(format!("parameter `timeout`: {e}")))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nft(never: &[&str]) -> Nft {
        Nft {
            command: vec!["/usr/sbin/nft".into()],
            never_block: never.iter().map(|n| n.parse().unwrap()).collect(),
        }
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
        let nft = nft(&["10.10.0.0/16"]);
        for refused in [
            "127.0.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "0.0.0.0/0",
            "10.10.3.4",
            "10.0.0.0/8",
        ] {
            let error = nft.check(refused).unwrap_err();
            assert!(
                error.to_string().contains("refusing to block"),
                "{refused}: {error}"
            );
        }
        assert!(nft.check("10.11.0.1").is_ok());
        assert!(nft.check("2001:db8::1").is_ok());
    }
}
