//! The operator console: server-rendered HTML under `/ui/` on the status listener.
//!
//! It shows; it never acts. Read-only by construction:
//! - GET and HEAD only (anything else is 405 with `Allow: GET, HEAD`); the one form (the runs
//!   filter) submits with GET; no cookie is ever set.
//! - Every page is an askama template ([`view`]), compiled into the binary and checked at build
//!   time; every value is HTML-escaped by the template engine, nothing is marked safe, no HTML
//!   is assembled by hand. A subject carrying `<script>` shows as text.
//! - A strict Content-Security-Policy ([`CONTENT_SECURITY_POLICY`]): only this binary's own
//!   stylesheet, script and icon load; no inline script or style; no other host. The pages
//!   work with JavaScript off; the small script only updates ages and, on `#live`, reloads.
//! - The SQL is the status API's query layer, [`crate::status::queries`] (SELECT only); secrets
//!   are redacted with src/redact.rs through [`crate::status::queries::bounded_json`] before a
//!   template sees them.
//!
//! Routes ([`PAGES`]): `/ui/` (runs), `/ui/runs/{id}`, `/ui/approvals`, `/ui/registry`, and the
//! assets under `/ui/static/`.

pub mod view;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, PrimitiveDateTime};
use uuid::Uuid;

use crate::executor::state::RunState;
use crate::status::StatusState;
use crate::status::console::view::{
    ApprovalsPage, Chrome, ErrorPage, EventLine, FilterView, GateView, HaltBanner, RegistryPage,
    RunLine, RunPage, RunsPage, Stamp, StateOption, StepLine, UndoLine, VersionLine, WaitingView,
};
use crate::status::cursor::Cursor;
use crate::status::queries::{self, RUN_STATES, RunFilter};
use crate::store::StoreError;

/// Every console path the router serves (axum syntax), for tests that walk them all.
pub const PAGES: [&str; 9] = [
    "/ui",
    "/ui/",
    "/ui/runs/{id}",
    "/ui/approvals",
    "/ui/registry",
    "/ui/nodes",
    "/ui/static/console.css",
    "/ui/static/console.js",
    "/ui/static/favicon.svg",
];

/// The policy every console response carries. `default-src 'none'` and then only what the
/// pages use, from this origin: no inline script or style (an injected `<script>` or
/// `onerror=` would not run even if escaping failed), no frames (clickjacking), no `<base>`,
/// forms only to this origin, no connections at all.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

/// The console's routes, merged into the status router.
pub fn router() -> Router<StatusState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(runs_page))
        .route("/ui/runs/{id}", get(run_page))
        .route("/ui/approvals", get(approvals_page))
        .route("/ui/registry", get(registry_page))
        .route("/ui/nodes", get(nodes_page))
        .route("/ui/static/console.css", get(stylesheet))
        .route("/ui/static/console.js", get(script))
        .route("/ui/static/favicon.svg", get(favicon))
        .route("/ui/{*rest}", get(unknown_page))
        .layer(middleware::map_response(finish_response))
}

/// What stopped a page from being shown.
#[derive(Debug)]
enum PageError {
    BadParam { name: String, expected: String },
    NotFound(String),
    Unavailable,
    Corrupt(String),
}

impl From<StoreError> for PageError {
    fn from(error: StoreError) -> PageError {
        // Logged here, once, with the driver's chain; the page gets a fixed message.
        tracing::warn!(error = %crate::store::audit::error_chain(&error), "console query failed");
        match error {
            corrupt @ StoreError::Corrupt { .. } => PageError::Corrupt(corrupt.to_string()),
            _ => PageError::Unavailable,
        }
    }
}

/// What every page reads besides its own rows: the halts and the waiting gates.
struct Frame {
    halts: Vec<queries::ActiveHalt>,
    waiting: i64,
}

type Params = Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>;

async fn runs_page(State(state): State<StatusState>, params: Params) -> Response {
    or_error_page(&state, runs(&state, params).await).await
}

async fn runs(state: &StatusState, params: Params) -> Result<Response, PageError> {
    let (filter, view) = parse_filter(params)?;
    let query = filter.clone();
    let (frame, page) = read(state, move |client| {
        Box::pin(async move { queries::runs(client, &query).await })
    })
    .await?;
    let now = OffsetDateTime::now_utc();
    let filters = view.pairs();
    let older_link = page.next.map(|cursor| {
        let cursor = cursor.encode();
        let mut pairs = filters.clone();
        pairs.push(("cursor", cursor.as_str()));
        view::runs_link(&pairs)
    });
    Ok(render(
        StatusCode::OK,
        &RunsPage {
            chrome: chrome(state, "Runs", "runs", Some(&frame), now),
            newest_link: filter.cursor.map(|_| view::runs_link(&filters)),
            older_link,
            runs: page.runs.iter().map(|run| RunLine::new(run, now)).collect(),
            filter: view,
        },
    ))
}

async fn run_page(State(state): State<StatusState>, Path(id): Path<String>) -> Response {
    or_error_page(&state, run(&state, id).await).await
}

async fn run(state: &StatusState, id: String) -> Result<Response, PageError> {
    let Ok(id) = Uuid::parse_str(&id) else {
        return Err(PageError::BadParam {
            name: "id".into(),
            expected: "an execution id (UUID)".into(),
        });
    };
    let (frame, detail) = read(state, move |client| {
        Box::pin(queries::run_detail(client, id))
    })
    .await?;
    let Some(mut detail) = detail else {
        return Err(PageError::NotFound(format!("no run {id}")));
    };
    // Undos in the order they ran: one that never started (pending) last; undos that share a
    // start instant keep the reverse step order the rollback engine follows (the stable sort
    // keeps the query's order, last step first).
    detail
        .rollback
        .sort_by_key(|undo| (undo.outcome.started_at.is_none(), undo.outcome.started_at));
    let now = OffsetDateTime::now_utc();
    let step_ids: BTreeMap<i32, &str> = detail
        .steps
        .iter()
        .map(|s| (s.step_index, s.step_id.as_str()))
        .collect();
    let step_name = |index: i32| {
        step_ids
            .get(&index)
            .map(|id| (*id).to_owned())
            .unwrap_or_else(|| format!("#{index}"))
    };
    let summary = &detail.summary;
    let events_cut =
        i64::try_from(detail.events.len()).unwrap_or(i64::MAX) >= queries::EVENTS_LIMIT;
    let page = RunPage {
        chrome: chrome(
            state,
            &format!("Run {}", summary.execution_id),
            "",
            Some(&frame),
            now,
        ),
        run: RunLine::new(summary, now),
        current_step: summary
            .current_step
            .map(|index| format!("{} ({index})", step_name(index)))
            .unwrap_or_default(),
        policy: summary.policy.clone(),
        outcome: summary.outcome.clone(),
        decision_id: summary.policy_decision_id.clone(),
        peer_uid: detail.requested_by_uid,
        subject: view::json_excerpt(&detail.subject, JSON_EXCERPT),
        binding: view::json_excerpt(&detail.binding, JSON_EXCERPT),
        rollback_cause: detail.rollback_cause.clone().unwrap_or_default(),
        playbook_sha256: hex::encode(summary.playbook.sha256),
        signers: detail.signer_key_ids.clone(),
        updated: Stamp::new(summary.updated_at, now),
        steps: detail
            .steps
            .iter()
            .map(|step| StepLine::new(step, now))
            .collect(),
        gates: detail
            .gates
            .iter()
            .map(|gate| GateView::new(gate, now))
            .collect(),
        rollback: detail
            .rollback
            .iter()
            .enumerate()
            .map(|(order, undo)| UndoLine::new(order + 1, undo, step_name(undo.step_index), now))
            .collect(),
        events: detail
            .events
            .iter()
            .map(|event| EventLine::new(event, now))
            .collect(),
        events_cut,
        events_limit: queries::EVENTS_LIMIT,
    };
    Ok(render(StatusCode::OK, &page))
}

async fn approvals_page(State(state): State<StatusState>) -> Response {
    or_error_page(&state, approvals(&state).await).await
}

async fn approvals(state: &StatusState) -> Result<Response, PageError> {
    let (frame, waiting) = read(state, |client| Box::pin(queries::waiting_gates(client))).await?;
    let now = OffsetDateTime::now_utc();
    let gates = waiting
        .iter()
        .map(|waiting| {
            let (time_left, expired) = view::time_left(waiting.gate.expires_at, now);
            WaitingView {
                gate: GateView::new(&waiting.gate, now),
                playbook: format!("{}@{}", waiting.playbook_id, waiting.playbook_version),
                org: waiting.org_id.clone(),
                node: waiting.node_id.clone(),
                decision: format!("{} → {}", waiting.policy, waiting.outcome),
                severity: waiting.severity.clone(),
                time_left,
                expired,
            }
        })
        .collect();
    Ok(render(
        StatusCode::OK,
        &ApprovalsPage {
            chrome: chrome(state, "Approvals waiting", "approvals", Some(&frame), now),
            gates,
        },
    ))
}

async fn registry_page(State(state): State<StatusState>) -> Response {
    or_error_page(&state, registry(&state).await).await
}

async fn registry(state: &StatusState) -> Result<Response, PageError> {
    let (frame, known) = read(state, |client| Box::pin(queries::known_versions(client))).await?;
    let runtime = state.runtime.borrow().clone();
    let now = OffsetDateTime::now_utc();
    let is_active = |id: &str, version: i64| {
        runtime
            .playbooks
            .iter()
            .any(|p| p.id == id && i64::try_from(p.version).is_ok_and(|v| v == version))
    };
    let page = RegistryPage {
        chrome: chrome(state, "Registry", "registry", Some(&frame), now),
        loaded: runtime.registry_loaded,
        loaded_at: runtime.loaded_at.map(|at| Stamp::new(at.0, now)),
        active: runtime
            .playbooks
            .iter()
            .map(|p| {
                let version = i64::try_from(p.version).unwrap_or(i64::MAX);
                VersionLine::new(&p.id, version, &p.sha256_hex, &p.signers, None, true)
            })
            .collect(),
        known: known
            .iter()
            .map(|k| {
                VersionLine::new(
                    &k.id,
                    k.version,
                    &k.sha256,
                    &k.signer_key_ids,
                    Some(Stamp::new(k.first_seen.0, now)),
                    is_active(&k.id, k.version),
                )
            })
            .collect(),
        bindings: runtime.binding_rules.clone(),
        refused: runtime
            .refused_files
            .iter()
            .map(|refused| crate::status::RefusedFile {
                path: view::excerpt(&refused.path, 512),
                label: refused.label.clone(),
                reason: view::excerpt(&refused.reason, 1000),
            })
            .collect(),
    };
    Ok(render(StatusCode::OK, &page))
}

async fn nodes_page(State(state): State<StatusState>) -> Response {
    or_error_page(&state, nodes(&state).await).await
}

async fn nodes(state: &StatusState) -> Result<Response, PageError> {
    let (frame, ()) = read(state, |_| Box::pin(async { Ok(()) })).await?;
    let rows = match tokio::time::timeout(QUERY_TIMEOUT, crate::store::nodes::list(&state.store))
        .await
    {
        Ok(Ok(rows)) => rows,
        Ok(Err(error)) => {
            tracing::warn!(error = %crate::store::audit::error_chain(&error), "console: nodes not read");
            return Err(PageError::Unavailable);
        }
        Err(_) => return Err(PageError::Unavailable),
    };
    let now = OffsetDateTime::now_utc();
    let stale_after = state.stale_after_seconds;
    let nodes = rows
        .iter()
        .map(|row| view::NodeLine {
            node_id: row.node_id.clone(),
            state: if row.stopped_at.is_some() {
                "stopped"
            } else if row.is_stale(stale_after) {
                "stale"
            } else {
                "alive"
            },
            heartbeat: Stamp::new(row.heartbeat_at, now),
            started: Stamp::new(row.started_at, now),
            version: view::excerpt(&row.version, 64),
            runs_in_flight: row.runs_in_flight,
            halt: row.halt.as_str(),
            chain_head_seq: row.chain_head_seq,
            last_checkpoint_seq: row.last_checkpoint_seq,
        })
        .collect();
    Ok(render(
        StatusCode::OK,
        &view::NodesPage {
            chrome: chrome(state, "Nodes", "nodes", Some(&frame), now),
            stale_after_seconds: stale_after,
            nodes,
        },
    ))
}

async fn unknown_page(State(state): State<StatusState>) -> Response {
    error_page(
        &state,
        PageError::NotFound("no such console page; start at /ui/".into()),
    )
    .await
}

async fn stylesheet() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    )
}

async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    )
}

async fn favicon() -> Response {
    asset("image/svg+xml", include_str!("assets/favicon.svg"))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

/// A page, or the error page for why it could not be built.
async fn or_error_page(state: &StatusState, page: Result<Response, PageError>) -> Response {
    match page {
        Ok(page) => page,
        Err(error) => error_page(state, error).await,
    }
}

/// Reads the halts and the waiting count, then the page's own rows, on one pooled
/// connection, within [`QUERY_TIMEOUT`].
async fn read<T>(
    state: &StatusState,
    work: impl for<'c> FnOnce(&'c tokio_postgres::Client) -> BoxFuture<'c, Result<T, StoreError>>,
) -> Result<(Frame, T), PageError> {
    let attempt = tokio::time::timeout(QUERY_TIMEOUT, async {
        let client = state.store.client().await.map_err(|error| {
            tracing::warn!(error = %crate::store::audit::error_chain(&error), "console: no database connection");
            PageError::Unavailable
        })?;
        let client: &tokio_postgres::Client = &client;
        let frame = Frame {
            halts: queries::active_halts(client).await?,
            waiting: queries::waiting_gate_count(client).await?,
        };
        let rows = work(client).await?;
        Ok((frame, rows))
    })
    .await;
    attempt.unwrap_or(Err(PageError::Unavailable))
}

/// The page frame; without `frame` (the database did not answer) the banner says the halt
/// state is unknown rather than showing nothing.
fn chrome(
    state: &StatusState,
    title: &str,
    nav: &'static str,
    frame: Option<&Frame>,
    now: OffsetDateTime,
) -> Chrome {
    Chrome {
        title: title.to_owned(),
        nav,
        halts: frame
            .map(|f| f.halts.iter().map(|h| HaltBanner::new(h, now)).collect())
            .unwrap_or_default(),
        halt_unknown: frame.is_none(),
        waiting: frame.map(|f| f.waiting),
        node_id: state.audit.node_id().to_owned(),
        version: state.version,
        rendered: Stamp::new(now, now),
    }
}

async fn error_page(state: &StatusState, error: PageError) -> Response {
    let (status, heading, detail) = match error {
        PageError::BadParam { name, expected } => (
            StatusCode::BAD_REQUEST,
            "Bad request".to_owned(),
            format!(
                "parameter `{}`: expected {expected}",
                view::excerpt(&name, 64)
            ),
        ),
        PageError::NotFound(what) => (StatusCode::NOT_FOUND, "Not found".to_owned(), what),
        PageError::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Database unavailable".to_owned(),
            "the database did not answer in time; reload to try again".to_owned(),
        ),
        PageError::Corrupt(what) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Unreadable record".to_owned(),
            what,
        ),
    };
    // The banner still matters on an error page: read the halts if the database answers.
    let frame = match status {
        StatusCode::SERVICE_UNAVAILABLE => None,
        _ => read(state, |_| Box::pin(async { Ok(()) }))
            .await
            .ok()
            .map(|(frame, ())| frame),
    };
    let now = OffsetDateTime::now_utc();
    render(
        status,
        &ErrorPage {
            chrome: chrome(state, &heading, "", frame.as_ref(), now),
            status: status.as_u16(),
            heading,
            detail,
        },
    )
}

fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            )],
            html,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(error = %error, "console page could not be rendered");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the console could not render this page",
            )
                .into_response()
        }
    }
}

/// Security headers on every console response, and 405 (any method but GET and HEAD) as a
/// short text naming the allowed methods.
async fn finish_response(response: Response) -> Response {
    let mut response = crate::status::read_only(response, || {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            "405 method not allowed: the console is read-only (GET and HEAD); act with `playbookd ctl`\n",
        )
            .into_response()
    });
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.remove(header::SET_COOKIE);
    response
}

/// The runs filters from the query string: each at most once, from a known list, empty values
/// (as the form sends them) meaning "not set".
fn parse_filter(params: Params) -> Result<(RunFilter, FilterView), PageError> {
    let bad = |name: &str, expected: &str| PageError::BadParam {
        name: name.to_owned(),
        expected: expected.to_owned(),
    };
    let Ok(Query(pairs)) = params else {
        return Err(bad("query", "valid URL encoding"));
    };
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in pairs {
        if !FILTER_PARAMS.contains(&name.as_str()) {
            return Err(bad(
                &name,
                &format!(
                    "no such filter; the filters are {}",
                    FILTER_PARAMS.join(", ")
                ),
            ));
        }
        if values.insert(name.clone(), value).is_some() {
            return Err(bad(&name, "at most one value"));
        }
    }
    let text = |name: &str| {
        values
            .get(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let state = text("state")
        .map(|s| {
            RunState::from_str(&s)
                .map_err(|_| bad("state", &format!("one of {}", RUN_STATES.join(", "))))
        })
        .transpose()?;
    let playbook = text("playbook");
    if let Some(id) = &playbook
        && !crate::registry::playbook::is_id(id)
    {
        return Err(bad(
            "playbook",
            "a playbook id ([a-z0-9][a-z0-9-]*, at most 64 characters)",
        ));
    }
    let org = text("org");
    let node = text("node");
    for (name, value) in [("org", &org), ("node", &node)] {
        if value.as_ref().is_some_and(|v| v.len() > 256) {
            return Err(bad(name, "at most 256 characters"));
        }
    }
    let instant = |name: &str| {
        text(name)
            .map(|t| parse_instant(&t))
            .transpose()
            .map_err(|()| {
                bad(
                    name,
                    "a UTC time such as 2026-01-31T12:00 or 2026-01-31T12:00:00Z",
                )
            })
    };
    let (since, until) = (instant("since")?, instant("until")?);
    if let (Some(since), Some(until)) = (since, until)
        && since > until
    {
        return Err(bad("until", "a time not before `since`"));
    }
    let cursor = text("cursor")
        .map(|c| Cursor::parse(&c).ok_or(()))
        .transpose()
        .map_err(|()| bad("cursor", "a cursor from an \"older\" link of this console"))?;
    let view = FilterView {
        state: state.map(|s| s.as_str().to_owned()).unwrap_or_default(),
        playbook: playbook.clone().unwrap_or_default(),
        org: org.clone().unwrap_or_default(),
        node: node.clone().unwrap_or_default(),
        since: text("since").unwrap_or_default(),
        until: text("until").unwrap_or_default(),
        states: RUN_STATES
            .iter()
            .map(|value| StateOption {
                value,
                selected: state.is_some_and(|s| s.as_str() == *value),
            })
            .collect(),
        active: state.is_some()
            || playbook.is_some()
            || org.is_some()
            || node.is_some()
            || since.is_some()
            || until.is_some(),
    };
    Ok((
        RunFilter {
            state,
            playbook,
            org,
            node,
            since,
            until,
            cursor,
            limit: PAGE_SIZE,
        },
        view,
    ))
}

impl FilterView {
    /// The filters set, as query parameters for links that keep them.
    fn pairs(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("state", self.state.as_str()),
            ("playbook", self.playbook.as_str()),
            ("org", self.org.as_str()),
            ("node", self.node.as_str()),
            ("since", self.since.as_str()),
            ("until", self.until.as_str()),
        ]
    }
}

/// RFC 3339, or what a `datetime-local` input sends (`2026-01-31T12:00[:00]`), read as UTC.
fn parse_instant(text: &str) -> Result<OffsetDateTime, ()> {
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(at);
    }
    let local = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
    let local_seconds =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    PrimitiveDateTime::parse(text, &local)
        .or_else(|_| PrimitiveDateTime::parse(text, &local_seconds))
        .map(PrimitiveDateTime::assume_utc)
        .map_err(|_| ())
}

const FILTER_PARAMS: [&str; 7] = [
    "state", "playbook", "org", "node", "since", "until", "cursor",
];
/// Runs per page.
const PAGE_SIZE: i64 = 50;
/// Subject and binding shown as is up to this many bytes of pretty JSON.
const JSON_EXCERPT: usize = 4000;
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_rfc3339_or_datetime_local_in_utc() {
        let at = time::macros::datetime!(2026-01-31 12:00 UTC);
        assert_eq!(parse_instant("2026-01-31T12:00:00Z"), Ok(at));
        assert_eq!(parse_instant("2026-01-31T13:00:00+01:00"), Ok(at));
        assert_eq!(parse_instant("2026-01-31T12:00"), Ok(at));
        assert_eq!(parse_instant("2026-01-31T12:00:00"), Ok(at));
        assert!(parse_instant("yesterday").is_err());
        assert!(parse_instant("2026-13-01T00:00").is_err());
    }

    #[test]
    fn filters_name_the_parameter_they_refuse() {
        for (query, name) in [
            ("state=exploded", "state"),
            ("playbook=Bad_Id", "playbook"),
            ("since=soon", "since"),
            ("since=2026-02-01T00:00&until=2026-01-01T00:00", "until"),
            ("cursor=abc", "cursor"),
            ("org=a&org=b", "org"),
            ("colour=red", "colour"),
        ] {
            let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            match parse_filter(Ok(Query(pairs))) {
                Err(PageError::BadParam { name: got, .. }) => assert_eq!(got, name, "{query}"),
                Err(other) => panic!("{query}: {other:?}"),
                Ok((filter, _)) => panic!("{query} accepted: {filter:?}"),
            }
        }
    }

    #[test]
    fn empty_filters_are_not_set() {
        let pairs = ["state", "playbook", "org", "node", "since", "until"]
            .iter()
            .map(|name| ((*name).to_owned(), String::new()))
            .collect();
        let Ok((filter, view)) = parse_filter(Ok(Query(pairs))) else {
            panic!("empty filters refused");
        };
        assert!(filter.state.is_none() && filter.playbook.is_none() && filter.since.is_none());
        assert!(!view.active);
    }
}
