//! `http.post`: a JSON POST to an allowlisted destination, and the rules every outgoing request
//! follows (`notify`'s webhook goes through [`HttpSender`] too):
//! - the host must be in `actions.http.allowed_hosts`; `https` only, except for hosts in
//!   `allowed_loopback`;
//! - the host is resolved here and every address checked: loopback, link-local and private
//!   addresses are refused unless the host is allowlisted for them, unspecified, multicast
//!   and reserved addresses always; the connection then goes to those checked addresses only
//!   (no second lookup for an attacker to rebind);
//! - no redirects (a 3xx is a permanent error), no proxies;
//! - an `Idempotency-Key` header; a secret, when named, as `Authorization: Bearer`, marked
//!   sensitive and never put in output, errors or logs;
//! - 5xx, timeouts and connection failures are transient and count towards the destination's
//!   circuit breaker; 4xx is permanent.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde_json::{Value, json};

use super::breaker::{Admit, Breakers};
use super::limits::{self, HttpAllowlists};
use super::{Action, ActionContext, ActionError, ActionFuture, ActionOutput, ActionSpec, params};
use crate::config::HttpActionConfig;
use crate::sys;

pub struct HttpPost {
    sender: std::sync::Arc<HttpSender>,
}

impl HttpPost {
    pub fn new(sender: std::sync::Arc<HttpSender>) -> HttpPost {
        HttpPost { sender }
    }
}

impl Action for HttpPost {
    fn spec(&self) -> &'static ActionSpec {
        &super::specs::HTTP_POST
    }

    fn execute<'a>(&'a self, params: &'a Value, ctx: &'a ActionContext) -> ActionFuture<'a> {
        Box::pin(async move {
            let url = params::string(params, "url")?;
            let body = params::optional(params, "body")?
                .cloned()
                .unwrap_or(json!({}));
            let secret = params::optional_string(params, "secret")?;
            self.sender
                .post(url, &body, secret, ctx)
                .await
                .map(ActionOutput::new)
        })
    }
}

/// Sends requests under the rules above; one per daemon, shared by the actions that post.
pub struct HttpSender {
    allowlists: HttpAllowlists,
    connect_timeout: Duration,
    timeout: Duration,
    secrets_dir: PathBuf,
    breakers: Breakers,
}

impl HttpSender {
    pub fn new(config: &HttpActionConfig) -> HttpSender {
        HttpSender {
            allowlists: HttpAllowlists::from_config(config),
            connect_timeout: config.connect_timeout_seconds.duration(),
            timeout: config.timeout_seconds.duration(),
            secrets_dir: config.secrets_dir.clone(),
            breakers: Breakers::new(
                config.breaker_failures.get(),
                Duration::from_secs(config.breaker_reset_seconds),
            ),
        }
    }

    /// POSTs `body` as JSON to `url`; the summary names the destination and the status.
    pub async fn post(
        &self,
        url: &str,
        body: &Value,
        secret: Option<&str>,
        ctx: &ActionContext,
    ) -> Result<Value, ActionError> {
        let target = self.check_url(url)?;
        let authorization = secret.map(|name| self.bearer(name)).transpose()?;
        let trial = match self.breakers.admit(&target.host) {
            Admit::Open => {
                return Err(ActionError::Transient(format!(
                    "circuit open for {}",
                    target.host
                )));
            }
            Admit::Trial => true,
            Admit::Closed => false,
        };
        let result = self.send(&target, body, authorization, ctx).await;
        match &result {
            Ok(_) | Err(Failure::Answered(_)) => self.breakers.record_success(&target.host),
            Err(Failure::Destination(_)) => self.breakers.record_failure(&target.host),
            Err(Failure::Refused(_) | Failure::Local(_)) if trial => {
                self.breakers.release_trial(&target.host);
            }
            Err(Failure::Refused(_) | Failure::Local(_)) => {}
        }
        result.map_err(Failure::into_error)
    }

    fn check_url(&self, text: &str) -> Result<Target, ActionError> {
        let url = params::http_url(text)
            .map_err(|error| ActionError::Permanent(format!("url {error}")))?;
        // The same rule the registry applied at load; here on the rendered URL.
        let destination = limits::check_http_url(&url, &self.allowlists)
            .map_err(|refusal| ActionError::Permanent(refusal.to_string()))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| ActionError::Permanent("url has no port".into()))?;
        let mut shown = url.clone();
        shown.set_query(None);
        shown.set_fragment(None);
        Ok(Target {
            allowed: Allowed {
                private: destination.private,
                local: destination.local,
            },
            host: destination.host,
            literal: destination.literal,
            port,
            shown: shown.to_string(),
            url,
        })
    }

    /// `Bearer <secret>` as a sensitive header value. Only the name ever appears in errors.
    fn bearer(&self, name: &str) -> Result<HeaderValue, ActionError> {
        let secret = read_secret(name, &self.secrets_dir)?;
        let mut value = HeaderValue::from_str(&format!("Bearer {secret}")).map_err(|_| {
            ActionError::Permanent(format!(
                "secret {name} holds characters not allowed in an HTTP header"
            ))
        })?;
        value.set_sensitive(true);
        Ok(value)
    }

    async fn send(
        &self,
        target: &Target,
        body: &Value,
        authorization: Option<HeaderValue>,
        ctx: &ActionContext,
    ) -> Result<Value, Failure> {
        let addresses = self.resolve(target).await?;
        let remaining = ctx
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(self.connect_timeout.min(remaining))
            .timeout(self.timeout.min(remaining))
            .https_only(!target.allowed.local);
        if target.literal.is_none() {
            // Pin the connection to the addresses checked above.
            builder = builder.resolve_to_addrs(&target.host, &addresses);
        }
        let client = builder
            .build()
            .map_err(|e| Failure::Local(format!("cannot build HTTP client: {e}")))?;
        let mut request = client
            .post(target.url.clone())
            .header("Idempotency-Key", ctx.idempotency_key_hex())
            .json(body);
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        let response = tokio::select! {
            response = request.send() => response.map_err(|e| describe_send_error(&target.host, &e))?,
            () = ctx.cancel.cancelled() => return Err(Failure::Local("cancelled".into())),
        };
        let status = response.status();
        let summary = json!({"url": target.shown, "status": status.as_u16()});
        if status.is_success() {
            Ok(summary)
        } else if status.is_redirection() {
            // The destination answered; refusing its redirect says nothing about its health.
            Err(Failure::Answered(format!(
                "redirect refused: {} answered {status}",
                target.host
            )))
        } else if status.is_server_error() {
            Err(Failure::Destination(format!(
                "{} answered {status}",
                target.host
            )))
        } else {
            Err(Failure::Answered(format!(
                "{} answered {status}",
                target.host
            )))
        }
    }

    /// The addresses to connect to, each checked against what the host is allowed to reach.
    async fn resolve(&self, target: &Target) -> Result<Vec<SocketAddr>, Failure> {
        let addresses: Vec<SocketAddr> = match target.literal {
            Some(ip) => vec![SocketAddr::new(ip, target.port)],
            None => {
                let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
                tokio::time::timeout(self.connect_timeout, lookup)
                    .await
                    .map_err(|_| {
                        Failure::Destination(format!("resolving {} timed out", target.host))
                    })?
                    .map_err(|e| {
                        Failure::Destination(format!("cannot resolve {}: {e}", target.host))
                    })?
                    .collect()
            }
        };
        if addresses.is_empty() {
            return Err(Failure::Destination(format!(
                "{} has no addresses",
                target.host
            )));
        }
        // One refused address refuses the host: a name that resolves both ways is suspect.
        for address in &addresses {
            let class = classify(address.ip());
            let allowed = match class {
                AddressClass::Public => true,
                AddressClass::Private => target.allowed.private,
                AddressClass::Local => target.allowed.local,
                AddressClass::Forbidden => false,
            };
            if !allowed {
                return Err(Failure::Refused(format!(
                    "{} resolves to {} address {}: refused (not allowlisted for it)",
                    target.host,
                    class.describe(),
                    address.ip()
                )));
            }
        }
        Ok(addresses)
    }
}

struct Target {
    url: Url,
    /// Lower-case host name or IP literal (IPv6 without brackets): the allowlist and breaker key.
    host: String,
    literal: Option<IpAddr>,
    port: u16,
    /// The URL without query or fragment (which may carry tokens), for summaries.
    shown: String,
    allowed: Allowed,
}

struct Allowed {
    private: bool,
    local: bool,
}

/// Why a request failed, and whether it counts against the destination's circuit.
enum Failure {
    /// The destination failed (5xx, timeout, connection): transient, counted.
    Destination(String),
    /// The destination answered, definitively (4xx, 3xx): permanent; it is up, so the
    /// circuit closes.
    Answered(String),
    /// Refused here before anything was sent: permanent, not counted.
    Refused(String),
    /// Nothing was learnt about the destination (cancelled, local error): transient, not
    /// counted.
    Local(String),
}

impl Failure {
    fn into_error(self) -> ActionError {
        match self {
            Failure::Destination(m) | Failure::Local(m) => ActionError::Transient(m),
            Failure::Answered(m) | Failure::Refused(m) => ActionError::Permanent(m),
        }
    }
}

/// The error text without the URL (its query may hold tokens), with its causes.
fn describe_send_error(host: &str, error: &reqwest::Error) -> Failure {
    if error.is_timeout() {
        return Failure::Destination(format!("request to {host} timed out"));
    }
    let mut text = String::new();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    Failure::Destination(format!("request to {host} failed{text}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddressClass {
    Public,
    /// RFC 1918, carrier-grade NAT, IPv6 unique-local.
    Private,
    /// Loopback and link-local.
    Local,
    /// Unspecified, multicast, broadcast, documentation and other reserved ranges.
    Forbidden,
}

impl AddressClass {
    fn describe(self) -> &'static str {
        match self {
            AddressClass::Public => "a public",
            AddressClass::Private => "a private",
            AddressClass::Local => "a loopback or link-local",
            AddressClass::Forbidden => "an unspecified, multicast or reserved",
        }
    }
}

fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() || ip.is_link_local() {
        AddressClass::Local
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        AddressClass::Private
    } else if ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || a >= 240
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
    {
        AddressClass::Forbidden
    } else {
        AddressClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let first = ip.segments()[0];
    if ip.is_loopback() || (first & 0xffc0) == 0xfe80 {
        AddressClass::Local
    } else if (first & 0xfe00) == 0xfc00 {
        AddressClass::Private
    } else if ip.is_unspecified()
        || ip.is_multicast()
        || first == 0x2001 && ip.segments()[1] == 0x0db8
        || (first & 0xe000) != 0x2000
    {
        // Only 2000::/3 is global unicast today.
        AddressClass::Forbidden
    } else {
        AddressClass::Public
    }
}

/// Reads secret `name` from `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`) or else from
/// `secrets_dir`. The file must be the daemon's own and private to it.
fn read_secret(name: &str, secrets_dir: &Path) -> Result<String, ActionError> {
    let valid_name = (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid_name {
        return Err(ActionError::Permanent(
            "secret name must be 1-128 characters of [A-Za-z0-9._-], not starting with a dot"
                .into(),
        ));
    }
    let from_credentials = std::env::var_os("CREDENTIALS_DIRECTORY")
        .map(|dir| PathBuf::from(dir).join(name))
        .filter(|path| path.exists());
    let path = from_credentials.unwrap_or_else(|| secrets_dir.join(name));
    let unreadable = |reason: String| {
        ActionError::Permanent(format!("secret {name} ({}): {reason}", path.display()))
    };
    let file = sys::open_private_file(&path).map_err(|e| unreadable(e.to_string()))?;
    let mut text = String::new();
    file.take(MAX_SECRET_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| unreadable(e.to_string()))?;
    if text.len() as u64 > MAX_SECRET_BYTES {
        return Err(unreadable("larger than 8 KiB".into()));
    }
    let secret = text.trim_end_matches(['\n', '\r']).to_owned();
    if secret.is_empty() {
        return Err(unreadable("empty".into()));
    }
    Ok(secret)
}

const MAX_SECRET_BYTES: u64 = 8 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_classified() {
        let class = |s: &str| classify(s.parse().unwrap());
        assert_eq!(class("93.184.216.34"), AddressClass::Public);
        assert_eq!(class("127.0.0.1"), AddressClass::Local);
        assert_eq!(class("169.254.169.254"), AddressClass::Local);
        assert_eq!(class("10.1.2.3"), AddressClass::Private);
        assert_eq!(class("100.64.0.1"), AddressClass::Private);
        assert_eq!(class("0.0.0.0"), AddressClass::Forbidden);
        assert_eq!(class("224.0.0.1"), AddressClass::Forbidden);
        assert_eq!(class("::1"), AddressClass::Local);
        assert_eq!(class("::ffff:127.0.0.1"), AddressClass::Local);
        assert_eq!(class("fe80::1"), AddressClass::Local);
        assert_eq!(class("fd00::1"), AddressClass::Private);
        assert_eq!(class("::"), AddressClass::Forbidden);
        assert_eq!(class("ff02::1"), AddressClass::Forbidden);
        assert_eq!(class("2606:4700::1111"), AddressClass::Public);
    }

    #[test]
    fn bad_secret_names_are_refused_before_any_read() {
        for name in ["", "../etc/shadow", ".hidden", "a/b"] {
            let error = read_secret(name, Path::new("/nonexistent")).unwrap_err();
            assert!(error.to_string().contains("secret name"), "{name}: {error}");
        }
    }
}
