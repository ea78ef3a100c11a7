//! `playbookd status …`: a client for the read-only status API, tables for people, `--json` for scripts.
//!
//! HTTP/1.1 through hyper's low-level connection API over a tokio `TcpStream` or `UnixStream`:
//! hyper is already in the tree (axum serves with it), it parses responses correctly (chunked
//! bodies, keep-alive, limits) where a hand-written parser would not, and it needs no TLS or
//! connection pool for one request on loopback.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::cli::{OutputError, VerbError, write_stdout, write_stdout_line};
use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH};
use crate::status::StatusAddr;

/// `playbookd status [OPTIONS] [COMMAND]`; without a command, the daemon's health.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The status API: `http://127.0.0.1:9470` or `unix:/path/to/socket`. Default: the
    /// config's `status.listen`.
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// The configuration file read for `status.listen` when `--url` is not given.
    #[arg(long, global = true, value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Print the API's JSON as is.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Option<StatusCommand>,
}

#[derive(Debug, Subcommand)]
pub enum StatusCommand {
    /// List executions, newest first.
    Executions {
        /// Only executions in this state (pending, running, awaiting_approval, completed, …).
        #[arg(long)]
        state: Option<String>,
        /// Only executions of this playbook id.
        #[arg(long)]
        playbook: Option<String>,
        /// Only executions of this org.
        #[arg(long)]
        org: Option<String>,
        /// Only executions started at or after this RFC 3339 time.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only executions started before this RFC 3339 time.
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Rows per page (1-500, default 50).
        #[arg(long)]
        limit: Option<u32>,
        /// `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One execution: its pinned playbook and a timeline of its steps.
    Execution {
        /// The execution id (UUID).
        id: String,
    },
    /// The active SAFE-HALT, if any, and the halt history.
    Halt,
    /// Every node of the fleet: heartbeat age, stale or not, runs in flight, halt, chain head.
    Nodes {
        /// Only this node.
        #[arg(long, value_name = "NODE_ID")]
        node: Option<String>,
    },
    /// This node's audit chain.
    Audit {
        /// Show rows with a seq above this one (default 0: from the start).
        #[arg(long, value_name = "SEQ")]
        after: Option<i64>,
        /// Rows per page (1-500, default 50).
        #[arg(long)]
        limit: Option<u32>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "invalid status API address `{url}`: expected http://IP:PORT, http://localhost:PORT or unix:/path"
    )]
    Address { url: String },
    #[error("cannot connect to the status API at {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with the status API failed")]
    Http(#[source] hyper::Error),
    #[error("the status API did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the status API answered {status}: {error}: {detail}")]
    Api {
        status: u16,
        error: String,
        detail: String,
    },
    #[error("the status API sent a body that is not the expected JSON")]
    Decode(#[source] serde_json::Error),
    #[error("failed to start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("the daemon is not ready")]
    NotReady,
    #[error(transparent)]
    Output(#[from] OutputError),
}

impl VerbError for ClientError {
    /// 78 for a bad configuration, standard output's own status, 1 otherwise.
    fn exit_code(&self) -> std::process::ExitCode {
        match self {
            ClientError::Config(_) => std::process::ExitCode::from(crate::config::EXIT_CONFIG),
            ClientError::Output(error) => error.exit_code(),
            ClientError::Address { .. }
            | ClientError::Connect { .. }
            | ClientError::Http(_)
            | ClientError::Timeout(_)
            | ClientError::Api { .. }
            | ClientError::Decode(_)
            | ClientError::Runtime(_)
            | ClientError::NotReady => std::process::ExitCode::FAILURE,
        }
    }
}

/// Where to send requests: a status listener's address (the daemon's own type), shown as the
/// URL `--url` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint(pub StatusAddr);

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            StatusAddr::Tcp(addr) => write!(f, "http://{addr}"),
            unix @ StatusAddr::Unix(_) => unix.fmt(f),
        }
    }
}

impl Endpoint {
    /// Parses `--url`: `http://IP:PORT`, `http://localhost:PORT` or `unix:/abs/path`.
    pub fn parse(url: &str) -> Result<Endpoint, ClientError> {
        let bad = || ClientError::Address {
            url: url.to_owned(),
        };
        if url.starts_with("unix:") {
            return match url.parse::<StatusAddr>().map_err(|_| bad())? {
                unix @ StatusAddr::Unix(_) => Ok(Endpoint(unix)),
                StatusAddr::Tcp(_) => Err(bad()),
            };
        }
        let authority = url
            .strip_prefix("http://")
            .ok_or_else(bad)?
            .trim_end_matches('/');
        if let Some(port) = authority.strip_prefix("localhost:") {
            let port = port.parse().map_err(|_| bad())?;
            return Ok(Endpoint(StatusAddr::Tcp(SocketAddr::new(
                Ipv4Addr::LOCALHOST.into(),
                port,
            ))));
        }
        authority
            .parse()
            .map(|addr| Endpoint(StatusAddr::Tcp(addr)))
            .map_err(|_| bad())
    }

    /// Where to reach a daemon that listens on `listen` (its `status.listen`).
    pub fn from_listen(listen: &StatusAddr) -> Result<Endpoint, ClientError> {
        match listen {
            unix @ StatusAddr::Unix(_) => Ok(Endpoint(unix.clone())),
            StatusAddr::Tcp(addr) if addr.port() == 0 => Err(ClientError::Address {
                url: listen.to_string(),
            }),
            StatusAddr::Tcp(addr) => {
                let mut addr = *addr;
                // A daemon listening on every address is reachable on loopback.
                if addr.ip().is_unspecified() {
                    addr.set_ip(match addr.ip() {
                        IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                        IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
                    });
                }
                Ok(Endpoint(StatusAddr::Tcp(addr)))
            }
        }
    }
}

/// A response as received: status, headers (lowercase names) and the whole body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Result<Value, ClientError> {
        serde_json::from_slice(&self.body).map_err(ClientError::Decode)
    }
}

/// Sends one `method path_and_query` request (no body) and reads the whole response.
pub async fn request(
    endpoint: &Endpoint,
    method: &str,
    path_and_query: &str,
) -> Result<HttpResponse, ClientError> {
    tokio::time::timeout(REQUEST_TIMEOUT, exchange(endpoint, method, path_and_query))
        .await
        .unwrap_or(Err(ClientError::Timeout(REQUEST_TIMEOUT)))
}

async fn exchange(
    endpoint: &Endpoint,
    method: &str,
    path_and_query: &str,
) -> Result<HttpResponse, ClientError> {
    let connect_error = |source| ClientError::Connect {
        endpoint: endpoint.to_string(),
        source,
    };
    let request = hyper::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(hyper::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .map_err(|_| ClientError::Address {
            url: format!("{endpoint}{path_and_query}"),
        })?;
    let response = match &endpoint.0 {
        StatusAddr::Tcp(addr) => {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(connect_error)?;
            send(TokioIo::new(stream), request).await?
        }
        StatusAddr::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(connect_error)?;
            send(TokioIo::new(stream), request).await?
        }
    };
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(ClientError::Http)?
        .to_bytes()
        .to_vec();
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

async fn send<IO>(
    io: IO,
    request: hyper::Request<Empty<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, ClientError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(ClientError::Http)?;
    tokio::spawn(async move {
        // The connection ends with the response; an error here surfaces through send_request.
        let _ = connection.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(ClientError::Http)
}

/// Runs `playbookd status …` and prints the result.
pub fn run(args: StatusArgs) -> Result<(), ClientError> {
    let endpoint = match &args.url {
        Some(url) => Endpoint::parse(url)?,
        None => Endpoint::from_listen(&Config::load(&args.config)?.status.listen)?,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ClientError::Runtime)?;
    runtime.block_on(run_command(&endpoint, args.command, args.json))
}

async fn run_command(
    endpoint: &Endpoint,
    command: Option<StatusCommand>,
    json: bool,
) -> Result<(), ClientError> {
    let (path, render): (String, fn(&Value) -> String) = match command {
        None => ("/v1/health".into(), render_health),
        Some(StatusCommand::Executions {
            state,
            playbook,
            org,
            since,
            until,
            limit,
            cursor,
        }) => {
            let query = query_string(&[
                ("state", state),
                ("playbook", playbook),
                ("org", org),
                ("since", since),
                ("until", until),
                ("limit", limit.map(|l| l.to_string())),
                ("cursor", cursor),
            ]);
            (format!("/v1/executions{query}"), render_executions)
        }
        Some(StatusCommand::Execution { id }) => (
            format!("/v1/executions/{}", percent_encode(&id)),
            render_execution,
        ),
        Some(StatusCommand::Halt) => ("/v1/safe-halt".into(), render_halt),
        Some(StatusCommand::Nodes { node: None }) => ("/v1/nodes".into(), render_nodes),
        Some(StatusCommand::Nodes { node: Some(id) }) => {
            (format!("/v1/nodes/{}", percent_encode(&id)), render_node)
        }
        Some(StatusCommand::Audit { after, limit }) => {
            let query = query_string(&[
                ("after", after.map(|a| a.to_string())),
                ("limit", limit.map(|l| l.to_string())),
            ]);
            (format!("/v1/audit{query}"), render_audit)
        }
    };
    let response = request(endpoint, "GET", &path).await?;
    let is_health = path == "/v1/health";
    // Health answers 503 with a full body when not ready: show it, then fail.
    let usable = (200..300).contains(&response.status) || (is_health && response.status == 503);
    if !usable {
        let body = response.json().unwrap_or(Value::Null);
        return Err(ClientError::Api {
            status: response.status,
            error: text(&body["error"]),
            detail: text(&body["detail"]),
        });
    }
    let body = response.json()?;
    if json {
        write_stdout_line(&serde_json::to_string_pretty(&body).map_err(ClientError::Decode)?)?;
    } else {
        write_stdout(&render(&body))?;
    }
    if is_health && body["ready"] != Value::Bool(true) {
        return Err(ClientError::NotReady);
    }
    Ok(())
}

fn query_string(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(name, value)| {
            value
                .as_ref()
                .map(|value| format!("{name}={}", percent_encode(value)))
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn render_health(body: &Value) -> String {
    let checks = &body["checks"];
    let yes_no = |v: &Value, good: &str, bad: &str| match v.as_bool() {
        Some(true) => good.to_owned(),
        Some(false) => bad.to_owned(),
        None => "unknown".to_owned(),
    };
    let mut out = String::new();
    let ready = body["ready"].as_bool() == Some(true);
    let reasons: Vec<String> = body["reasons"]
        .as_array()
        .map(|r| r.iter().map(text).collect())
        .unwrap_or_default();
    out.push_str(&if ready {
        "ready: yes\n".to_owned()
    } else {
        format!("ready: NO ({})\n", reasons.join("; "))
    });
    out.push_str(&format!(
        "node: {}   version: {}   uptime: {}s\n",
        text(&body["node_id"]),
        text(&body["version"]),
        text(&body["uptime_seconds"])
    ));
    out.push_str(&format!(
        "database: {}   audit writer: {}   registry: {}   safe-halt: {}\n",
        yes_no(&checks["database"], "ok", "UNREACHABLE"),
        yes_no(&checks["audit_writer"], "ok", "UNAVAILABLE"),
        yes_no(&checks["registry_loaded"], "loaded", "NOT LOADED"),
        yes_no(&checks["safe_halt_active"], "ACTIVE", "none"),
    ));
    out.push_str(&format!(
        "playbooks: {}   bindings: {}\n",
        text(&body["playbooks"]),
        text(&body["bindings"])
    ));
    if body["chain_cut"].is_object() {
        out.push_str(&format!(
            "SAFE-HALT: AUDIT CHAIN CUT: {}\n",
            text(&body["chain_cut"]["message"])
        ));
    }
    let head = &body["chain_head"];
    if head.is_object() {
        out.push_str(&format!(
            "audit chain head: seq {} hash {}\n",
            text(&head["seq"]),
            text(&head["hash"])
        ));
    }
    if let Some(counts) = body["executions"].as_object() {
        let counts: Vec<String> = counts
            .iter()
            .filter(|(_, n)| n.as_i64() != Some(0))
            .map(|(state, n)| format!("{state} {}", text(n)))
            .collect();
        out.push_str(&format!(
            "executions: {}\n",
            if counts.is_empty() {
                "none".to_owned()
            } else {
                counts.join(", ")
            }
        ));
    }
    out
}

fn render_executions(body: &Value) -> String {
    let rows: Vec<Vec<String>> = items(&body["executions"])
        .map(|e| {
            vec![
                text(&e["execution_id"]),
                format!(
                    "{}@{}",
                    text(&e["playbook"]["id"]),
                    text(&e["playbook"]["version"])
                ),
                text(&e["state"]),
                text(&e["org_id"]),
                text(&e["started_at"]),
                text(&e["completed_at"]),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "EXECUTION",
            "PLAYBOOK",
            "STATE",
            "ORG",
            "STARTED",
            "COMPLETED",
        ],
        &rows,
    );
    if let Some(cursor) = body["next_cursor"].as_str() {
        out.push_str(&format!("more: --cursor {cursor}\n"));
    }
    out
}

fn render_execution(body: &Value) -> String {
    let [
        execution,
        state,
        org,
        policy,
        outcome,
        severity,
        started,
        completed,
    ] = texts(
        body,
        [
            "execution_id",
            "state",
            "org_id",
            "policy",
            "outcome",
            "severity",
            "started_at",
            "completed_at",
        ],
    );
    let [id, version, sha256] = texts(&body["playbook"], ["id", "version", "sha256"]);
    let mut out = format!(
        "execution {execution}  state {state}\nplaybook {id}@{version} sha256 {sha256}\n\
         org {org}  policy {policy} → {outcome}  severity {severity}\n\
         started {started}  completed {completed}\n",
    );
    if !body["end_reason"].is_null() {
        out.push_str(&format!("end reason: {}\n", text(&body["end_reason"])));
    }
    out.push('\n');
    let steps: Vec<Vec<String>> = items(&body["steps"])
        .map(|s| {
            let note = if !s["error"].is_null() {
                format!("{}: {}", text(&s["error_class"]), text(&s["error"]))
            } else {
                text(&s["skip_reason"])
            };
            let mut row = texts(
                s,
                [
                    "step_index",
                    "step_id",
                    "action",
                    "state",
                    "attempts",
                    "started_at",
                    "duration_ms",
                ],
            )
            .to_vec();
            row.push(note);
            row
        })
        .collect();
    out.push_str(&table(
        &[
            "#", "STEP", "ACTION", "STATE", "TRIES", "STARTED", "MS", "NOTE",
        ],
        &steps,
    ));
    for gate in items(&body["approvals"]) {
        let [step, state, risk, required, expires] = texts(
            gate,
            ["step_index", "state", "risk", "required", "expires_at"],
        );
        out.push_str(&format!(
            "approval gate step {step}: {state} (risk {risk}, {required} required, expires {expires})\n"
        ));
        for vote in items(&gate["votes"]) {
            let [uid, verdict, reason] = texts(vote, ["approver_uid", "verdict", "reason"]);
            out.push_str(&format!("  uid {uid} {verdict}: {reason}\n"));
        }
    }
    for rollback in items(&body["rollback"]) {
        let [step, state, attempts, error] =
            texts(rollback, ["step_index", "state", "attempts", "error"]);
        out.push_str(&format!(
            "rollback step {step}: {state} ({attempts} attempts) {error}\n"
        ));
    }
    let seqs: Vec<String> = items(&body["audit"])
        .map(|a| format!("{}#{}", text(&a["node_id"]), text(&a["seq"])))
        .collect();
    out.push_str(&format!("audit: {}\n", seqs.join(" ")));
    out
}

fn render_halt(body: &Value) -> String {
    let active = &body["active"];
    let mut out = if active.is_object() {
        format!(
            "SAFE-HALT ACTIVE since {} on {} (execution {}): {}\n",
            text(&active["entered_at"]),
            text(&active["node_id"]),
            text(&active["execution_id"]),
            text(&active["error_message"])
        )
    } else {
        "no active SAFE-HALT\n".to_owned()
    };
    let rows: Vec<Vec<String>> = items(&body["history"])
        .map(|h| {
            texts(
                h,
                [
                    "halt_id",
                    "node_id",
                    "entered_at",
                    "resolved_at",
                    "resolved_by",
                    "reason",
                ],
            )
            .to_vec()
        })
        .collect();
    if !rows.is_empty() {
        out.push_str(&table(
            &["HALT", "NODE", "ENTERED", "RESOLVED", "BY UID", "REASON"],
            &rows,
        ));
    }
    out
}

fn node_row(n: &Value) -> Vec<String> {
    let state = if n["stale"] == Value::Bool(true) {
        if n["stopped_at"].is_null() {
            "STALE"
        } else {
            "stopped"
        }
    } else {
        "alive"
    };
    vec![
        text(&n["node_id"]),
        state.to_owned(),
        format!(
            "{:.1}s",
            n["heartbeat_age_seconds"].as_f64().unwrap_or(f64::NAN)
        ),
        text(&n["version"]),
        text(&n["runs_in_flight"]),
        text(&n["safe_halt"]),
        text(&n["chain_head"]["seq"]),
        text(&n["last_checkpoint"]["seq"]),
    ]
}

const NODE_HEADERS: [&str; 8] = [
    "NODE",
    "STATE",
    "HEARTBEAT",
    "VERSION",
    "IN FLIGHT",
    "HALT",
    "HEAD",
    "CHECKPOINT",
];

fn render_nodes(body: &Value) -> String {
    let rows: Vec<Vec<String>> = items(&body["nodes"]).map(node_row).collect();
    let stale = items(&body["nodes"])
        .filter(|n| n["stale"] == Value::Bool(true))
        .count();
    let mut out = table(&NODE_HEADERS, &rows);
    out.push_str(&format!(
        "{} nodes, {stale} stale (no heartbeat for {} s, or stopped)\n",
        rows.len(),
        text(&body["stale_after_seconds"])
    ));
    out
}

fn render_node(body: &Value) -> String {
    table(&NODE_HEADERS, &[node_row(body)])
}

fn render_audit(body: &Value) -> String {
    let rows: Vec<Vec<String>> = items(&body["rows"])
        .map(|r| {
            vec![
                text(&r["seq"]),
                text(&r["created_at"]),
                text(&r["event_type"]),
                text(&r["event_data"]["execution_id"]),
                text(&r["hash"]).chars().take(16).collect(),
            ]
        })
        .collect();
    let mut out = table(&["SEQ", "CREATED", "EVENT", "EXECUTION", "HASH"], &rows);
    if !body["next_after"].is_null() {
        out.push_str(&format!("more: --after {}\n", text(&body["next_after"])));
    }
    out
}

fn items(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

/// A JSON value as table text: strings bare, null as `-`.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.chars().filter(|c| !c.is_control()).collect(),
        other => other.to_string(),
    }
}

/// The fields `keys` of a JSON object, each as [`text`].
fn texts<const N: usize>(value: &Value, keys: [&str; N]) -> [String; N] {
    keys.map(|key| text(&value[key]))
}

/// Left-aligned columns separated by two spaces.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_to_endpoints() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:9470").unwrap(),
            Endpoint(StatusAddr::Tcp("127.0.0.1:9470".parse().unwrap()))
        );
        assert_eq!(
            Endpoint::parse("http://localhost:80/").unwrap(),
            Endpoint(StatusAddr::Tcp("127.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(
            Endpoint::parse("unix:/run/s.sock").unwrap(),
            Endpoint(StatusAddr::Unix("/run/s.sock".into()))
        );
        assert!(Endpoint::parse("https://127.0.0.1:1").is_err());
        assert!(Endpoint::parse("http://example.org:80").is_err());
    }

    #[test]
    fn wildcard_listen_is_reached_on_loopback_and_port_zero_is_refused() {
        assert_eq!(
            Endpoint::from_listen(&"0.0.0.0:9470".parse().unwrap()).unwrap(),
            Endpoint(StatusAddr::Tcp("127.0.0.1:9470".parse().unwrap()))
        );
        assert!(Endpoint::from_listen(&"127.0.0.1:0".parse().unwrap()).is_err());
    }

    #[test]
    fn table_aligns_columns() {
        let out = table(
            &["A", "LONGER"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(out, "A    LONGER\nxyz  1\nq    22\n");
    }
}
