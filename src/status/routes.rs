//! The router and its handlers. GET (and so HEAD) only: anything else is 405 with `Allow`.
//!
//! Every error is JSON `{"error": "<kind>", "detail": "<what and which parameter>"}`. Database
//! errors say only that the database did not answer: never a URL, a host or a driver message.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use axum::{Router, middleware};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::status::cursor::Cursor;
use crate::status::queries::{self, RUN_STATES, RunFilter};
use crate::status::{StatusState, read_only};
use crate::store::StoreError;
use crate::store::model::RunState;

/// One route of the API: its path (axum syntax, as in the OpenAPI document) and its handler.
pub struct Route {
    pub path: &'static str,
    method_router: fn() -> MethodRouter<StatusState>,
}

/// Every route the router serves; `router` is built from this list and nothing else, so the
/// OpenAPI test that walks it covers the whole API.
pub const ROUTES: [Route; 11] = [
    Route {
        path: "/v1/health",
        method_router: || get(health),
    },
    Route {
        path: "/v1/playbooks",
        method_router: || get(playbooks),
    },
    Route {
        path: "/v1/executions",
        method_router: || get(executions),
    },
    Route {
        path: "/v1/executions/{id}",
        method_router: || get(execution),
    },
    Route {
        path: "/v1/safe-halt",
        method_router: || get(safe_halt),
    },
    Route {
        path: "/v1/audit",
        method_router: || get(audit),
    },
    Route {
        path: "/v1/audit/{node}/{seq}/proof",
        method_router: || get(audit_proof),
    },
    Route {
        path: "/v1/checkpoint",
        method_router: || get(checkpoint),
    },
    Route {
        path: "/v1/nodes",
        method_router: || get(nodes),
    },
    Route {
        path: "/v1/nodes/{id}",
        method_router: || get(node),
    },
    Route {
        path: "/metrics",
        method_router: || get(metrics),
    },
];

/// The whole API over `state`.
pub fn router(state: StatusState) -> Router {
    let mut router = Router::new();
    for route in &ROUTES {
        router = router.route(route.path, (route.method_router)());
    }
    router
        .fallback(not_found)
        .layer(middleware::map_response(finish_response))
        // Merged after the JSON layer: the console answers its own errors in HTML.
        .merge(crate::status::console::router())
        .with_state(state)
}

/// A JSON error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    detail: String,
}

impl ApiError {
    fn bad_param(name: &str, expected: &str) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error: "bad_request",
            detail: format!("query parameter `{name}`: {expected}"),
        }
    }

    fn database() -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "database_unavailable",
            detail: "the database did not answer in time; try again".into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.error, "detail": self.detail})),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        // Logged here, once, with the driver's chain; the client gets a fixed message.
        tracing::warn!(error = %crate::store::audit::error_chain(&error), "status query failed");
        match error {
            // A value the schema's CHECK constraints forbid: a newer schema, or a tampered row.
            StoreError::Corrupt { .. } => ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                error: "corrupt_row",
                detail: "the database holds a value this version does not know; see the log".into(),
            },
            _ => ApiError::database(),
        }
    }
}

type Params = Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>;

async fn health(State(state): State<StatusState>) -> Response {
    let node_id = state.audit.node_id().to_owned();
    let audit_writer = state.audit.is_available();
    let runtime = state.runtime.borrow().clone();
    let database = tokio::time::timeout(HEALTH_TIMEOUT, async {
        let client = state
            .store
            .client()
            .await
            .map_err(|_| ApiError::database())?;
        let client: &tokio_postgres::Client = &client;
        let counts = queries::count_by_state(client).await?;
        let head = queries::chain_head(client, &node_id).await?;
        let halt = queries::active_halt(client, &node_id).await?;
        Ok::<_, ApiError>((counts, head, halt))
    })
    .await;
    let (database_ok, counts, head, halt) = match database {
        Ok(Ok((counts, head, halt))) => (true, Some(counts), head, Some(halt)),
        Ok(Err(_)) | Err(_) => (false, None, None, None),
    };
    // Unknown halt state (database down) counts as not ready, never as "no halt".
    let halt_active = halt.as_ref().map(Option::is_some);
    let mut reasons = Vec::new();
    if !database_ok {
        reasons.push("database unreachable");
    }
    if !audit_writer {
        reasons.push("audit writer unavailable");
    }
    if !runtime.registry_loaded {
        reasons.push("playbook registry not loaded");
    }
    if halt_active == Some(true) {
        reasons.push("SAFE-HALT active");
    }
    // A cut chain's halt cannot be written to the cut database: it is known here only.
    let chain_cut = state.audit.chain_loss().map(|loss| {
        json!({
            "message": format!("{loss}; stop the daemon and run `{}`", crate::store::anchor::ACCEPT_COMMAND),
            "lost_seqs": loss.seqs(),
            "database_seq": loss.database.seq,
            "committed_seq": loss.committed.seq,
        })
    });
    if chain_cut.is_some() {
        reasons.push("SAFE-HALT active: the audit chain was cut");
    }
    let ready = reasons.is_empty();
    // Not a reason to be unready (every other binding still runs), but said loudly: an engine
    // sending these decisions gets `no_action: no active version`.
    let warnings: Vec<String> = runtime
        .unresolved_bindings
        .iter()
        .map(|binding| {
            format!(
                "binding {}/{}{} -> playbook `{}` has no active version; its decisions get no_action (see `playbookd ctl reload`)",
                binding.policy,
                binding.outcome,
                binding
                    .org_id
                    .as_deref()
                    .map(|org| format!(" (org {org})"))
                    .unwrap_or_default(),
                binding.playbook
            )
        })
        .collect();
    let body = json!({
        "ready": ready,
        "reasons": reasons,
        "warnings": warnings,
        "unresolved_bindings": runtime.unresolved_bindings,
        "checks": {
            "database": database_ok,
            "audit_writer": audit_writer,
            "registry_loaded": runtime.registry_loaded,
            "safe_halt_active": halt_active,
        },
        "node_id": node_id,
        "version": state.version,
        "uptime_seconds": state.started.elapsed().as_secs(),
        "executions": counts,
        "chain_head": head,
        "safe_halt": halt.flatten(),
        "chain_cut": chain_cut,
        "playbooks": runtime.playbooks.len(),
        "bindings": runtime.bindings,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn playbooks(State(state): State<StatusState>) -> Result<Response, ApiError> {
    let runtime = state.runtime.borrow().clone();
    let known = with_client(&state, |client| {
        Box::pin(async move { queries::known_versions(client).await })
    })
    .await?;
    Ok(Json(json!({
        "registry_loaded": runtime.registry_loaded,
        "bindings": runtime.bindings,
        "active": runtime.playbooks,
        "known_versions": known,
    }))
    .into_response())
}

async fn executions(
    State(state): State<StatusState>,
    params: Params,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(
        params,
        &[
            "state", "playbook", "org", "since", "until", "limit", "cursor",
        ],
    )?;
    let state_filter = match params.text("state")? {
        None => None,
        Some(value) => Some(RunState::decode(value).map_err(|_| {
            ApiError::bad_param(
                "state",
                &format!("expected one of {}", RUN_STATES.join(", ")),
            )
        })?),
    };
    let playbook = params.text("playbook")?.map(str::to_owned);
    if let Some(value) = &playbook
        && !crate::registry::playbook::is_id(value)
    {
        return Err(ApiError::bad_param(
            "playbook",
            "expected a playbook id ([a-z0-9][a-z0-9-]*, at most 64 characters)",
        ));
    }
    let org = params.text("org")?.map(str::to_owned);
    if org.as_ref().is_some_and(|o| o.len() > 256) {
        return Err(ApiError::bad_param("org", "expected 1 to 256 characters"));
    }
    // `until` before `since` is an empty interval, answered with an empty page: the document
    // cannot state a relation between two parameters, and nothing is wrong with either.
    let since = params.timestamp("since")?;
    let until = params.timestamp("until")?;
    let cursor = match params.text("cursor")? {
        None => None,
        Some(text) => Some(Cursor::parse(text).ok_or_else(|| {
            ApiError::bad_param(
                "cursor",
                "not a cursor returned by this API (pass `next_cursor` back unchanged)",
            )
        })?),
    };
    let filter = RunFilter {
        state: state_filter,
        playbook,
        org,
        node: None,
        since,
        until,
        cursor,
        limit: params.integer("limit", 1, MAX_LIMIT, DEFAULT_LIMIT)?,
    };
    let page = with_client(&state, |client| {
        Box::pin(async move { queries::runs(client, &filter).await })
    })
    .await?;
    Ok(Json(page).into_response())
}

async fn execution(
    State(state): State<StatusState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let Ok(id) = Uuid::parse_str(&id) else {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            error: "bad_request",
            detail: "path parameter `id`: expected an execution id (UUID)".into(),
        });
    };
    let detail = with_client(&state, |client| {
        Box::pin(async move { queries::run_detail(client, id).await })
    })
    .await?;
    match detail {
        Some(detail) => Ok(Json(detail).into_response()),
        None => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            error: "not_found",
            detail: format!("no execution {id}"),
        }),
    }
}

async fn safe_halt(State(state): State<StatusState>) -> Result<Response, ApiError> {
    let node_id = state.audit.node_id().to_owned();
    let (active, history) = with_client(&state, |client| {
        Box::pin(async move {
            let active = queries::active_halt(client, &node_id).await?;
            let history = queries::halt_history(client, HALT_HISTORY_LIMIT).await?;
            Ok((active, history))
        })
    })
    .await?;
    Ok(Json(json!({"active": active, "history": history})).into_response())
}

async fn audit(State(state): State<StatusState>, params: Params) -> Result<Response, ApiError> {
    let params = QueryParams::parse(params, &["after", "limit"])?;
    let after = params.integer("after", 0, i64::MAX, 0)?;
    let limit = params.integer("limit", 1, MAX_LIMIT, DEFAULT_LIMIT)?;
    let node_id = state.audit.node_id().to_owned();
    let rows = {
        let node_id = node_id.clone();
        with_client(&state, |client| {
            Box::pin(async move { queries::audit_rows(client, &node_id, after, limit).await })
        })
        .await?
    };
    let next_after = match rows.last() {
        Some(last) if i64::try_from(rows.len()).unwrap_or(i64::MAX) == limit => Some(last.seq),
        _ => None,
    };
    Ok(Json(json!({"node_id": node_id, "rows": rows, "next_after": next_after})).into_response())
}

fn bad_node_id(name: &str, location: &str) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        error: "bad_request",
        detail: format!(
            "{location} parameter `{name}`: expected a node id (1-64 characters of [A-Za-z0-9._-])"
        ),
    }
}

/// The newest stored checkpoint note of `node` (this daemon's node when omitted), or with `size`
/// the note of the checkpoint of exactly that many rows, as `text/plain` in the C2SP signed-note
/// form transparency logs serve: check it with the node's verifier key
/// (`playbookd audit checkpoint-text --vkey`).
async fn checkpoint(
    State(state): State<StatusState>,
    params: Params,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(params, &["node", "size"])?;
    let node_id = match params.text("node")? {
        Some(node) if crate::config::is_valid_node_id(node) => node.to_owned(),
        Some(_) => return Err(bad_node_id("node", "query")),
        None => state.audit.node_id().to_owned(),
    };
    let size = match params.text("size")? {
        Some(_) => Some(params.integer("size", 1, i64::MAX, 1)?),
        None => None,
    };
    let stored = {
        let node_id = node_id.clone();
        with_client(&state, |client| {
            Box::pin(async move { queries::checkpoint_note(client, &node_id, size).await })
        })
        .await?
    };
    match stored {
        Some((_, note)) => Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            note,
        )
            .into_response()),
        None => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            error: "not_found",
            detail: match size {
                Some(size) => {
                    format!("node `{node_id}` has no stored checkpoint note of size {size}")
                }
                None => format!("node `{node_id}` has no stored checkpoint note yet"),
            },
        }),
    }
}

/// The RFC 6962 inclusion proof of row `seq` of `node`'s chain against the newest stored
/// checkpoint note. Cost: one read of the chain hashes up to the checkpoint (32 bytes a row) and
/// one tree build, off the async workers; see README for figures.
async fn audit_proof(
    State(state): State<StatusState>,
    Path((node_id, seq)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as BASE64;
    if !crate::config::is_valid_node_id(&node_id) {
        return Err(bad_node_id("node", "path"));
    }
    let seq = match seq.parse::<u64>() {
        Ok(seq) if seq >= 1 && i64::try_from(seq).is_ok() => seq,
        _ => {
            return Err(ApiError {
                status: StatusCode::BAD_REQUEST,
                error: "bad_request",
                detail: "path parameter `seq`: expected an integer of at least 1".into(),
            });
        }
    };
    let loaded = {
        let node_id = node_id.clone();
        tokio::time::timeout(QUERY_TIMEOUT, async move {
            let client = state.store.client().await?;
            let Some(stored) = crate::store::evidence::latest_note(&client, &node_id).await? else {
                return Ok(None);
            };
            if seq > stored.seq {
                return Ok(Some((stored, Vec::new())));
            }
            let hashes =
                crate::store::evidence::chain_hashes(&client, &node_id, stored.seq).await?;
            Ok::<_, crate::store::StoreError>(Some((stored, hashes)))
        })
        .await
    };
    let (stored, hashes) = match loaded {
        Ok(Ok(Some(found))) => found,
        Ok(Ok(None)) => {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                error: "not_found",
                detail: format!("node `{node_id}` has no stored checkpoint note yet"),
            });
        }
        Ok(Err(error)) => {
            tracing::warn!(error = %crate::store::audit::error_chain(&error), "audit proof query failed");
            return Err(ApiError::database());
        }
        Err(_) => return Err(ApiError::database()),
    };
    if seq > stored.seq {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            error: "not_found",
            detail: format!(
                "seq {seq} of node `{node_id}` is beyond its newest checkpoint (size {}); ask again after the next one",
                stored.seq
            ),
        });
    }
    let signed = crate::note::parse_unverified(&stored.note).ok();
    let built = tokio::task::spawn_blocking(move || {
        let tree =
            crate::merkle::Tree::new(hashes.iter().map(|h| crate::merkle::leaf_hash(h)).collect());
        let proof = tree.inclusion_proof(seq - 1);
        (
            tree.root(),
            hashes[usize::try_from(seq - 1).unwrap_or_default()],
            proof,
        )
    })
    .await;
    let Ok((root, hash, Ok(proof))) = built else {
        return Err(evidence_mismatch(&node_id, stored.seq));
    };
    // Fail closed: a proof is only handed out against the note that signs this very tree.
    if signed.is_none_or(|head| head.size != stored.seq || head.root != root) {
        return Err(evidence_mismatch(&node_id, stored.seq));
    }
    Ok(Json(json!({
        "node_id": node_id,
        "seq": seq,
        "hash": hex::encode(hash),
        "leaf_index": seq - 1,
        "leaf_hash": BASE64.encode(crate::merkle::leaf_hash(&hash)),
        "tree_size": stored.seq,
        "inclusion_proof": proof.iter().map(|h| BASE64.encode(h)).collect::<Vec<_>>(),
        "checkpoint": stored.note,
    }))
    .into_response())
}

fn evidence_mismatch(node_id: &str, size: u64) -> ApiError {
    tracing::error!(
        node_id,
        size,
        "the stored audit chain does not match its signed checkpoint note"
    );
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        error: "evidence_mismatch",
        detail: format!(
            "the stored chain of node `{node_id}` does not match its checkpoint note of size {size}; \
             run `playbookd audit verify`"
        ),
    }
}

/// Every node of the fleet that ever reported, with its heartbeat and whether it is stale.
async fn nodes(State(state): State<StatusState>) -> Result<Response, ApiError> {
    let rows = store_call(crate::store::nodes::list(&state.store)).await?;
    let stale_after = state.stale_after_seconds;
    let nodes: Vec<_> = rows.iter().map(|row| node_json(row, stale_after)).collect();
    Ok(Json(json!({
        "stale_after_seconds": stale_after,
        "nodes": nodes,
    }))
    .into_response())
}

async fn node(
    State(state): State<StatusState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if !crate::config::is_valid_node_id(&id) {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            error: "bad_request",
            detail: "path parameter `id`: expected a node id (1-64 characters of [A-Za-z0-9._-])"
                .into(),
        });
    }
    match store_call(crate::store::nodes::get(&state.store, &id)).await? {
        Some(row) => Ok(Json(node_json(&row, state.stale_after_seconds)).into_response()),
        None => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            error: "not_found",
            detail: format!("no node `{id}` has reported a heartbeat"),
        }),
    }
}

/// A node as the API shows it (schemas/openapi.yaml `Node`).
pub fn node_json(
    row: &crate::store::nodes::NodeRow,
    stale_after_seconds: u64,
) -> serde_json::Value {
    use crate::store::audit::format_timestamp;
    json!({
        "node_id": row.node_id,
        "version": row.version,
        "started_at": format_timestamp(row.started_at),
        "heartbeat_at": format_timestamp(row.heartbeat_at),
        "heartbeat_age_seconds": row.heartbeat_age_seconds.max(0.0),
        "stale": row.is_stale(stale_after_seconds),
        "stopped_at": row.stopped_at.map(format_timestamp),
        "chain_head": {
            "seq": row.chain_head_seq,
            "hash": row.chain_head_hash.as_deref().map(hex::encode),
        },
        "last_checkpoint": row.last_checkpoint_seq.map(|seq| json!({
            "seq": seq,
            "at": row.last_checkpoint_at.map(format_timestamp),
        })),
        "runs_in_flight": row.runs_in_flight,
        "safe_halt": row.halt.as_str(),
    })
}

/// A store read bounded by [`QUERY_TIMEOUT`]; any failure is "database unavailable".
async fn store_call<T>(
    work: impl std::future::Future<Output = Result<T, crate::store::StoreError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(QUERY_TIMEOUT, work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => {
            tracing::warn!(error = %crate::store::audit::error_chain(&error), "status query failed");
            Err(ApiError::database())
        }
        Err(_) => Err(ApiError::database()),
    }
}

async fn metrics(State(state): State<StatusState>) -> Response {
    state.metrics.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        error: "not_found",
        detail: "no such path; see schemas/openapi.yaml for the API".into(),
    }
}

/// Turns axum's bare 405 into our JSON error with `Allow`, and marks every response uncacheable.
async fn finish_response(response: Response) -> Response {
    read_only(response, || {
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            error: "method_not_allowed",
            detail: "the status API is read-only: use GET or HEAD".into(),
        }
        .into_response()
    })
}

/// Runs `work` on a pooled connection, bounded by [`QUERY_TIMEOUT`].
async fn with_client<T>(
    state: &StatusState,
    work: impl for<'c> FnOnce(
        &'c tokio_postgres::Client,
    ) -> futures::future::BoxFuture<'c, Result<T, StoreError>>,
) -> Result<T, ApiError> {
    let attempt = tokio::time::timeout(QUERY_TIMEOUT, async {
        let client = state.store.client().await.map_err(|error| {
            tracing::warn!(error = %crate::store::audit::error_chain(&error), "no database connection");
            ApiError::database()
        })?;
        Ok(work(&client).await?)
    })
    .await;
    attempt.unwrap_or_else(|_| Err(ApiError::database()))
}

/// Query parameters, each at most once, from a known list.
struct QueryParams(BTreeMap<String, String>);

impl QueryParams {
    fn parse(params: Params, allowed: &[&str]) -> Result<QueryParams, ApiError> {
        let Ok(Query(pairs)) = params else {
            return Err(ApiError {
                status: StatusCode::BAD_REQUEST,
                error: "bad_request",
                detail: "the query string is not valid URL encoding".into(),
            });
        };
        let mut map = BTreeMap::new();
        for (name, value) in pairs {
            if !allowed.contains(&name.as_str()) {
                return Err(ApiError {
                    status: StatusCode::BAD_REQUEST,
                    error: "bad_request",
                    detail: format!(
                        "unknown query parameter `{}`; expected {}",
                        printable(&name),
                        allowed.join(", ")
                    ),
                });
            }
            // A NUL byte would reach PostgreSQL, which refuses it (and the client would see a
            // 503); no parameter holds control characters, so say which one is wrong.
            if value.chars().any(char::is_control) {
                return Err(ApiError::bad_param(
                    &name,
                    "contains a control character (such as NUL)",
                ));
            }
            if map.insert(name.clone(), value).is_some() {
                return Err(ApiError::bad_param(&name, "given more than once"));
            }
        }
        Ok(QueryParams(map))
    }

    /// The value; an empty `name=` is refused rather than read as absent, since the document
    /// gives every parameter a type an empty string does not have.
    fn text(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.0.get(name).map(String::as_str) {
            Some("") => Err(ApiError::bad_param(
                name,
                "is empty; omit the parameter or give it a value",
            )),
            other => Ok(other),
        }
    }

    fn integer(&self, name: &str, min: i64, max: i64, default: i64) -> Result<i64, ApiError> {
        let Some(text) = self.text(name)? else {
            return Ok(default);
        };
        match text.parse::<i64>() {
            Ok(value) if (min..=max).contains(&value) => Ok(value),
            _ if max == i64::MAX => Err(ApiError::bad_param(
                name,
                &format!("expected an integer of at least {min}"),
            )),
            _ => Err(ApiError::bad_param(
                name,
                &format!("expected an integer from {min} to {max}"),
            )),
        }
    }

    fn timestamp(&self, name: &str) -> Result<Option<OffsetDateTime>, ApiError> {
        self.text(name)?
            .map(|text| {
                OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
                    ApiError::bad_param(
                        name,
                        "expected an RFC 3339 timestamp such as 2026-01-31T12:00:00Z",
                    )
                })
            })
            .transpose()
    }
}

/// A parameter name echoed in an error: short and printable, so the error cannot be abused.
fn printable(name: &str) -> String {
    name.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// `limit` when none is given.
pub const DEFAULT_LIMIT: i64 = 50;
/// The largest `limit` accepted.
pub const MAX_LIMIT: i64 = 500;
const HALT_HISTORY_LIMIT: i64 = 100;
/// Readiness must answer fast even when the database hangs.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
