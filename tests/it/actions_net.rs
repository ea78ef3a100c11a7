//! `net.block_ip` / `net.unblock_ip` through a real actuator running the real `nft` inside a
//! network namespace made for the test (root only): the packets are really dropped, then pass
//! again. The actuator's own refusals are shown with raw requests.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use playbookd::actions::ActionError;
use playbookd::config::ActionsConfig;
use serde_json::json;

use crate::actions_support::{ActuatorSetup, TestActuator, ctx, must, root_for, run};
use crate::helpers::assert_contains;

/// A namespace joined to the host by a veth pair: host side `.1`, namespace side `.2`.
/// Deleted (with its veth pair) when dropped.
pub struct NetNs {
    name: String,
    pub host: Ipv4Addr,
    inside: Ipv4Addr,
}

impl NetNs {
    /// A namespace of its own for each call (several tests of this binary run at once).
    pub fn create() -> NetNs {
        static CREATED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        let n = CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10;
        let tag = format!("{:05}{n}", std::process::id() % 100_000);
        let name = format!("pbd-test-{tag}");
        let subnet = 1 + (std::process::id() % 250) as u8;
        let (host, inside) = (
            Ipv4Addr::new(10, 231 + n, subnet, 1),
            Ipv4Addr::new(10, 231 + n, subnet, 2),
        );
        let (outer, inner) = (format!("pbdh{tag}"), format!("pbdn{tag}"));
        let _ = Command::new("/usr/sbin/ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        let ns = NetNs { name, host, inside };
        must(&["/usr/sbin/ip", "netns", "add", &ns.name]);
        must(&[
            "/usr/sbin/ip",
            "link",
            "add",
            &outer,
            "type",
            "veth",
            "peer",
            "name",
            &inner,
        ]);
        must(&["/usr/sbin/ip", "link", "set", &inner, "netns", &ns.name]);
        must(&[
            "/usr/sbin/ip",
            "addr",
            "add",
            &format!("{host}/24"),
            "dev",
            &outer,
        ]);
        must(&["/usr/sbin/ip", "link", "set", &outer, "up"]);
        ns.exec(&[
            "/usr/sbin/ip",
            "addr",
            "add",
            &format!("{inside}/24"),
            "dev",
            &inner,
        ]);
        ns.exec(&["/usr/sbin/ip", "link", "set", &inner, "up"]);
        ns.exec(&["/usr/sbin/ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, argv: &[&str]) {
        let mut full = vec!["/usr/sbin/ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        must(&full);
    }

    pub fn nft_command(&self) -> Vec<String> {
        ["/usr/sbin/ip", "netns", "exec", &self.name, "/usr/sbin/nft"]
            .map(str::to_owned)
            .to_vec()
    }

    /// Whether a packet from the host reaches the namespace: a TCP SYN to a closed port is
    /// answered at once with a reset when it arrives, and times out when dropped.
    pub fn reachable(&self) -> bool {
        let ping = Command::new("ping")
            .args(["-c", "1", "-W", "1", &self.inside.to_string()])
            .output()
            .unwrap()
            .status
            .success();
        let tcp = match TcpStream::connect_timeout(
            &SocketAddr::from((self.inside, 9)),
            Duration::from_millis(800),
        ) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => true,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => false,
            other => panic!("unexpected connect result: {other:?}"),
        };
        assert_eq!(ping, tcp, "ping and TCP disagree");
        ping
    }

    pub fn ruleset(&self) -> String {
        let output = Command::new("/usr/sbin/ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "/usr/sbin/nft",
                "list",
                "table",
                "inet",
                "playbookd",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace destroys the veth pair with it.
        let _ = Command::new("/usr/sbin/ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[tokio::test]
async fn a_blocked_address_is_dropped_and_passes_again_once_unblocked() {
    if !root_for("creating a network namespace") {
        return;
    }
    let ns = NetNs::create();
    let actuator = TestActuator::start(ActuatorSetup {
        nft_command: ns.nft_command(),
        never_block: &["192.0.2.0/24"],
        ..ActuatorSetup::default()
    });
    let config = ActionsConfig::default();
    let host = ns.host.to_string();
    assert!(
        ns.reachable(),
        "the namespace is not reachable before any block"
    );

    let block = actuator
        .act(&config, "net.block_ip", json!({"address": host}))
        .await
        .unwrap();
    assert_eq!(block.summary["set"], "blocked_v4");
    assert_contains(&ns.ruleset(), &host);
    assert!(
        !ns.reachable(),
        "packets from a blocked address still arrive"
    );
    // Blocking again is a success and changes nothing.
    actuator
        .act(&config, "net.block_ip", json!({"address": host}))
        .await
        .unwrap();
    assert!(!ns.reachable());

    let unblock = actuator
        .act(&config, "net.unblock_ip", json!({"address": host}))
        .await
        .unwrap();
    assert_eq!(unblock.summary["was_blocked"], true);
    assert!(ns.reachable(), "packets still dropped after unblock");
    let again = actuator
        .act(&config, "net.unblock_ip", json!({"address": host}))
        .await
        .unwrap();
    assert_eq!(again.summary["was_blocked"], false);

    // A timed block of a network; the element carries its timeout.
    let timed = json!({"address": "198.51.100.0/24", "timeout": "10m"});
    actuator.act(&config, "net.block_ip", timed).await.unwrap();
    let ruleset = ns.ruleset();
    assert_contains(&ruleset, "198.51.100.0/24 timeout 10m");
    actuator
        .act(&config, "net.block_ip", json!({"address": "2001:db8::1"}))
        .await
        .unwrap();
    assert!(ns.ruleset().contains("2001:db8::1"));
}

#[tokio::test]
async fn loopback_never_block_and_malformed_addresses_are_refused() {
    // Refused before nft runs, so this needs no privileges: point nft at something that fails.
    let mut config = ActionsConfig::default();
    config.net.nft_command = vec!["/bin/false".into()];
    config.net.never_block = vec!["10.20.0.0/16".parse().unwrap()];
    for address in [
        "127.0.0.1",
        "::1",
        "0.0.0.0",
        "0.0.0.0/0",
        "10.20.5.5",
        "10.0.0.0/8",
        "10.1.1.1/24",
        "1.2.3.4 ; flush ruleset",
        "::ffff:8.8.8.8",
    ] {
        let error = run(
            &config,
            "net.block_ip",
            json!({"address": address}),
            &ctx(Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(error, ActionError::Permanent(_)),
            "{address}: {error}"
        );
    }
    // A valid address reaches the actuator, whose nft (here /bin/false) fails.
    let actuator = TestActuator::start(ActuatorSetup {
        nft_command: vec!["/bin/false".into()],
        ..ActuatorSetup::default()
    });
    let error = actuator
        .act(&config, "net.block_ip", json!({"address": "203.0.113.9"}))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("nft failed"), "{error}");
}

#[tokio::test]
async fn the_actuator_itself_refuses_loopback_and_never_block_addresses() {
    // nft would succeed (/bin/true): only the actuator's own checks can refuse.
    let actuator = TestActuator::start(ActuatorSetup {
        nft_command: vec!["/bin/true".into()],
        never_block: &["10.20.0.0/16"],
        ..ActuatorSetup::default()
    });
    for net in [
        "127.0.0.1/32",
        "127.0.0.0/8",
        "::1/128",
        "0.0.0.0/0",
        "10.20.5.5/32",
        "10.0.0.0/8",
        "::ffff:8.8.8.8/128",
    ] {
        for op in ["block", "unblock"] {
            let line = if op == "block" {
                json!({"block": {"net": net, "timeout_seconds": null}})
            } else {
                json!({"unblock": {"net": net}})
            };
            let reply = actuator.raw(line.to_string().as_bytes());
            assert!(
                reply.contains("\"refused\"") && reply.contains("refusing to block"),
                "{op} {net}: {reply}"
            );
        }
    }
    let reply = actuator.raw(
        json!({"block": {"net": "203.0.113.9/32", "timeout_seconds": 60}})
            .to_string()
            .as_bytes(),
    );
    assert_contains(&reply, "\"blocked\"");
}
