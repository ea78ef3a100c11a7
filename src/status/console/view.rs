//! What the templates show, already formatted: the page structs (one per template) and the
//! small pieces they share (a timestamp with its age, a state badge, a command to copy).
//!
//! Every string here is plain text. The templates escape each one for HTML when they
//! interpolate it (askama escapes `{{ value }}` in `.html` templates and nothing here is marked
//! safe), so a subject carrying `<script>` shows as those characters and never runs.

use askama::Template;
use serde_json::Value;
use time::OffsetDateTime;

use crate::executor::state::{RunState, StepState};
use crate::registry::model::RiskTier;
use crate::status::queries::{ActiveHalt, EventRow, GateRow, RunSummary, StepRow, UndoRow};
use crate::status::{BindingSummary, RefusedFile};
use crate::store::model::{GateState, UndoState, Vote};

/// What every page carries: title, navigation, the SAFE-HALT banner, the footer.
pub struct Chrome {
    pub title: String,
    /// Which navigation entry is the current page ("runs", "approvals", "registry" or "").
    pub nav: &'static str,
    pub halts: Vec<HaltBanner>,
    /// The halt state could not be read: the banner says so instead of saying nothing.
    pub halt_unknown: bool,
    /// Gates waiting for a vote, when known.
    pub waiting: Option<i64>,
    pub node_id: String,
    pub version: &'static str,
    pub rendered: Stamp,
}

impl Chrome {
    /// `aria-current` for the navigation entry `name`.
    pub fn current(&self, name: &str) -> &'static str {
        if self.nav == name { "page" } else { "false" }
    }
}

/// One active SAFE-HALT, as the banner shows it.
pub struct HaltBanner {
    pub halt_id: i64,
    /// The fleet halt: nothing runs on any node.
    pub fleet: bool,
    pub node_id: String,
    pub since: Stamp,
    pub execution: Option<String>,
    /// The step whose undo failed.
    pub rollback_step: Option<String>,
    pub error: String,
    /// The exact command an admin runs to clear it (the reason is theirs to write).
    pub command: String,
}

impl HaltBanner {
    pub fn new(active: &ActiveHalt, now: OffsetDateTime) -> HaltBanner {
        let halt = &active.halt;
        HaltBanner {
            halt_id: halt.halt_id,
            fleet: active.fleet,
            node_id: halt.node_id.clone(),
            since: Stamp::new(halt.entered_at.0, now),
            execution: halt.execution_id.map(|id| id.to_string()),
            rollback_step: halt.rollback_id.clone(),
            error: excerpt(&halt.error_message, TEXT_EXCERPT),
            command: format!(
                "playbookd ctl halt-resolve{} --reason {}",
                if active.fleet { " --fleet" } else { "" },
                shell_quote("<what was checked and why it is safe to act again>")
            ),
        }
    }
}

/// An instant: UTC text, the machine-readable form, and its age at render time.
#[derive(Clone)]
pub struct Stamp {
    /// RFC 3339, for `<time datetime>` and the refresh script.
    pub iso: String,
    /// `2026-11-30 12:34:56Z`.
    pub utc: String,
    /// `5 min ago`, `in 3 min`.
    pub age: String,
}

impl Stamp {
    pub fn new(at: OffsetDateTime, now: OffsetDateTime) -> Stamp {
        let at = at.to_offset(time::UtcOffset::UTC);
        Stamp {
            iso: crate::store::audit::format_timestamp(at),
            utc: format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
                at.year(),
                u8::from(at.month()),
                at.day(),
                at.hour(),
                at.minute(),
                at.second()
            ),
            age: relative_age(now - at),
        }
    }

    pub fn maybe(at: Option<OffsetDateTime>, now: OffsetDateTime) -> Option<Stamp> {
        at.map(|at| Stamp::new(at, now))
    }
}

/// A state shown as a word with a colour class (`tone`), never colour alone.
#[derive(Clone)]
pub struct Badge {
    pub text: &'static str,
    /// CSS class: `good`, `bad`, `wait`, `busy` or `quiet`.
    pub tone: &'static str,
}

impl Badge {
    pub fn run(state: RunState) -> Badge {
        let tone = match state {
            RunState::Completed => GOOD,
            RunState::SafeHalted => BAD,
            RunState::RolledBack
            | RunState::Cancelled
            | RunState::TimedOut
            | RunState::Rejected => QUIET,
            RunState::AwaitingApproval => WAIT,
            RunState::Pending | RunState::Running | RunState::RollingBack => BUSY,
        };
        Badge {
            text: state.as_str(),
            tone,
        }
    }

    pub fn step(state: StepState) -> Badge {
        let tone = match state {
            StepState::Succeeded => GOOD,
            StepState::Failed | StepState::RollbackFailed => BAD,
            StepState::Skipped | StepState::RolledBack => QUIET,
            StepState::Pending | StepState::Running => BUSY,
        };
        Badge {
            text: state.as_str(),
            tone,
        }
    }

    pub fn undo(state: UndoState) -> Badge {
        let (text, tone) = match state {
            UndoState::Pending => ("pending", BUSY),
            UndoState::Running => ("running", BUSY),
            UndoState::Succeeded => ("undone", GOOD),
            UndoState::Failed => ("undo failed", BAD),
            UndoState::NotUndoable => ("not undoable", QUIET),
        };
        Badge { text, tone }
    }

    pub fn gate(state: GateState) -> Badge {
        let (text, tone) = match state {
            GateState::Pending => ("waiting", WAIT),
            GateState::Approved => ("approved", GOOD),
            GateState::Denied => ("denied", BAD),
            GateState::Expired => ("expired", BAD),
            GateState::Cancelled => ("cancelled", QUIET),
        };
        Badge { text, tone }
    }

    pub fn risk(risk: RiskTier) -> Badge {
        let tone = match risk {
            RiskTier::Low | RiskTier::Moderate => QUIET,
            RiskTier::High => WAIT,
            RiskTier::Critical => BAD,
        };
        Badge {
            text: risk.as_str(),
            tone,
        }
    }

    pub fn verdict(verdict: Vote) -> Badge {
        match verdict {
            Vote::Approve => Badge {
                text: "approve",
                tone: GOOD,
            },
            Vote::Deny => Badge {
                text: "deny",
                tone: BAD,
            },
        }
    }
}

// ---- the runs page ----

/// `/ui/`: every run, newest first, with its filters.
#[derive(Template)]
#[template(path = "runs.html")]
pub struct RunsPage {
    pub chrome: Chrome,
    pub filter: FilterView,
    pub runs: Vec<RunLine>,
    /// Back to the newest page with the same filters (when not on it).
    pub newest_link: Option<String>,
    /// The next (older) page.
    pub older_link: Option<String>,
}

/// The filter form's current values (empty when not set).
pub struct FilterView {
    pub state: String,
    pub playbook: String,
    pub org: String,
    pub node: String,
    pub since: String,
    pub until: String,
    pub states: Vec<StateOption>,
    /// Any filter set (the page says so and offers to clear them).
    pub active: bool,
}

/// One `<option>` of the state filter.
pub struct StateOption {
    pub value: &'static str,
    pub selected: bool,
}

/// One run in the list.
pub struct RunLine {
    pub id: String,
    pub link: String,
    pub state: Badge,
    pub playbook: String,
    pub playbook_link: String,
    pub org: String,
    pub node: String,
    pub decision: String,
    pub severity: String,
    pub started: Stamp,
    pub ended: Option<Stamp>,
    pub end_reason: String,
}

impl RunLine {
    pub fn new(run: &RunSummary, now: OffsetDateTime) -> RunLine {
        RunLine {
            id: run.execution_id.to_string(),
            link: run_link(&run.execution_id.to_string()),
            state: Badge::run(run.state),
            playbook: format!("{}@{}", run.playbook.id, run.playbook.version),
            playbook_link: runs_link(&[("playbook", &run.playbook.id)]),
            org: run.org_id.clone(),
            node: run.node_id.clone(),
            decision: format!("{} → {}", run.policy, run.outcome),
            severity: run.severity.clone(),
            started: Stamp::new(run.started_at, now),
            ended: Stamp::maybe(run.completed_at, now),
            end_reason: run
                .end_reason
                .as_deref()
                .map(|r| excerpt(r, SHORT_EXCERPT))
                .unwrap_or_default(),
        }
    }
}

// ---- one run ----

/// `/ui/runs/{id}`: the decision, the pinned version, the timeline and its evidence.
#[derive(Template)]
#[template(path = "run.html")]
pub struct RunPage {
    pub chrome: Chrome,
    pub run: RunLine,
    pub current_step: String,
    pub policy: String,
    pub outcome: String,
    pub decision_id: String,
    pub peer_uid: i64,
    pub subject: String,
    pub binding: String,
    pub rollback_cause: String,
    pub playbook_sha256: String,
    /// `None`: the pinned version's row is missing.
    pub signers: Option<Vec<String>>,
    pub updated: Stamp,
    pub steps: Vec<StepLine>,
    pub gates: Vec<GateView>,
    pub rollback: Vec<UndoLine>,
    pub events: Vec<EventLine>,
    /// More events exist than are shown.
    pub events_cut: bool,
    pub events_limit: i64,
}

/// One step of the timeline.
pub struct StepLine {
    pub index: i32,
    pub id: String,
    pub action: String,
    pub state: Badge,
    pub started: Option<Stamp>,
    pub finished: Option<Stamp>,
    pub duration: String,
    pub attempts: i32,
    pub error_class: String,
    pub error: String,
    pub skip_reason: String,
    /// Redacted, bounded JSON of the step's output.
    pub output: String,
}

impl StepLine {
    pub fn new(step: &StepRow, now: OffsetDateTime) -> StepLine {
        StepLine {
            index: step.step_index,
            id: step.step_id.clone(),
            action: step.action.clone(),
            state: Badge::step(step.state),
            started: Stamp::maybe(step.outcome.started_at, now),
            finished: Stamp::maybe(step.outcome.finished_at, now),
            duration: duration_between(step.outcome.started_at, step.outcome.finished_at),
            attempts: step.attempts,
            error_class: step.error_class.clone().unwrap_or_default(),
            error: step
                .outcome
                .error
                .as_deref()
                .map(|e| excerpt(e, TEXT_EXCERPT))
                .unwrap_or_default(),
            skip_reason: step
                .skip_reason
                .as_deref()
                .map(|r| excerpt(r, SHORT_EXCERPT))
                .unwrap_or_default(),
            output: step
                .output
                .as_ref()
                .map(|o| json_excerpt(o, OUTPUT_EXCERPT))
                .unwrap_or_default(),
        }
    }
}

/// One undo, in the order the rollback ran it.
pub struct UndoLine {
    pub order: usize,
    pub step_index: i32,
    pub step_id: String,
    pub state: Badge,
    pub attempts: i32,
    pub started: Option<Stamp>,
    pub finished: Option<Stamp>,
    pub duration: String,
    pub error: String,
}

impl UndoLine {
    pub fn new(order: usize, undo: &UndoRow, step_id: String, now: OffsetDateTime) -> UndoLine {
        UndoLine {
            order,
            step_index: undo.step_index,
            step_id,
            state: Badge::undo(undo.state),
            attempts: undo.attempts,
            started: Stamp::maybe(undo.outcome.started_at, now),
            finished: Stamp::maybe(undo.outcome.finished_at, now),
            duration: duration_between(undo.outcome.started_at, undo.outcome.finished_at),
            error: undo
                .outcome
                .error
                .as_deref()
                .map(|e| excerpt(e, TEXT_EXCERPT))
                .unwrap_or_default(),
        }
    }
}

/// An approval gate with its votes and the commands to copy.
pub struct GateView {
    pub run_id: String,
    pub run_link: String,
    pub step_index: i32,
    pub step_id: String,
    pub action: String,
    pub risk: Badge,
    pub required: i32,
    pub approvals: usize,
    pub state: Badge,
    pub waiting: bool,
    pub opened: Stamp,
    pub expires: Stamp,
    pub resolved: Option<Stamp>,
    pub votes: Vec<VoteLine>,
    /// Rendered parameters, secrets redacted, bounded.
    pub params: String,
    pub approve_command: String,
    pub deny_command: String,
}

impl GateView {
    pub fn new(gate: &GateRow, now: OffsetDateTime) -> GateView {
        let run_id = gate.execution_id.to_string();
        let step_id = gate
            .context
            .get("step_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            // The gate's context always names its step; the index still identifies it.
            .unwrap_or_else(|| format!("#{}", gate.step_index));
        let command = |verb: &str| {
            format!(
                "playbookd ctl {verb} {run_id} {} --reason {}",
                shell_quote(&step_id),
                shell_quote("<why>")
            )
        };
        GateView {
            run_link: run_link(&run_id),
            approve_command: command("approve"),
            deny_command: command("deny"),
            run_id,
            step_index: gate.step_index,
            action: gate
                .context
                .get("action")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            step_id,
            risk: Badge::risk(gate.risk),
            required: gate.required,
            approvals: gate
                .votes
                .iter()
                .filter(|v| v.verdict == Vote::Approve)
                .count(),
            state: Badge::gate(gate.state),
            waiting: gate.state == GateState::Pending,
            opened: Stamp::new(gate.opened_at, now),
            expires: Stamp::new(gate.expires_at, now),
            resolved: Stamp::maybe(gate.resolved_at, now),
            votes: gate
                .votes
                .iter()
                .map(|vote| VoteLine {
                    uid: vote.approver_uid,
                    verdict: Badge::verdict(vote.verdict),
                    at: Stamp::new(vote.created_at, now),
                    reason: excerpt(&vote.reason, SHORT_EXCERPT),
                })
                .collect(),
            params: gate
                .context
                .get("params")
                .map(|p| json_excerpt(p, OUTPUT_EXCERPT))
                .unwrap_or_default(),
        }
    }
}

/// One vote.
pub struct VoteLine {
    pub uid: i64,
    pub verdict: Badge,
    pub at: Stamp,
    pub reason: String,
}

/// One audit event of the run, with who did it and its evidence.
pub struct EventLine {
    pub at: Stamp,
    pub event_type: String,
    pub step: String,
    pub actor: String,
    pub detail: String,
    pub evidence: Evidence,
}

/// Why an event can be trusted: its place in the chain and the signed checkpoint over it.
/// A struct of its own so that later evidence (Merkle inclusion, witness cosignatures) is a
/// field here and a line in `evidence` of run.html, nothing else.
pub struct Evidence {
    pub node: String,
    pub seq: i64,
    pub hash: String,
    pub hash_prefix: String,
    pub checkpoint: Option<CheckpointView>,
}

/// A signed chain head covering an event.
pub struct CheckpointView {
    pub seq: i64,
    pub at: Stamp,
    pub key_id_prefix: String,
    /// `/v1/checkpoint?node=…&size=…`: the checkpoint's signed note, when one was stored.
    pub note_link: Option<String>,
    /// `/v1/audit/NODE/SEQ/proof`: the event's inclusion proof (against the newest note).
    pub proof_link: Option<String>,
    /// How many of the configured witnesses cosigned a checkpoint covering the event; `None`
    /// when none did.
    pub witnesses: Option<u32>,
}

impl EventLine {
    pub fn new(event: &EventRow, now: OffsetDateTime) -> EventLine {
        let hash = hex::encode(&event.hash);
        EventLine {
            at: Stamp::new(event.created_at, now),
            event_type: event.event_type.clone(),
            step: event
                .data
                .get("step_id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            actor: actor(&event.event_type, event.data.get("actor")),
            detail: event_detail(&event.data),
            evidence: Evidence {
                node: event.node_id.clone(),
                seq: event.seq,
                hash_prefix: hash.chars().take(HASH_PREFIX).collect(),
                hash,
                checkpoint: event.checkpoint.as_ref().map(|c| CheckpointView {
                    seq: c.seq,
                    at: Stamp::new(c.created_at, now),
                    key_id_prefix: c.key_id.chars().take(HASH_PREFIX).collect(),
                    // Node ids are [A-Za-z0-9._-]: nothing in them needs escaping in a URL.
                    note_link: c
                        .has_note
                        .then(|| format!("/v1/checkpoint?node={}&size={}", event.node_id, c.seq)),
                    proof_link: c
                        .has_note
                        .then(|| format!("/v1/audit/{}/{}/proof", event.node_id, event.seq)),
                    witnesses: u32::try_from(event.witnesses).ok().filter(|n| *n > 0),
                }),
            },
        }
    }
}

// ---- nodes ----

/// `/ui/nodes`: every node of the fleet, by id, with its heartbeat.
#[derive(Template)]
#[template(path = "nodes.html")]
pub struct NodesPage {
    pub chrome: Chrome,
    pub stale_after_seconds: u64,
    pub nodes: Vec<NodeLine>,
}

/// One node as the console shows it.
pub struct NodeLine {
    pub node_id: String,
    /// `alive`, `stale` or `stopped`.
    pub state: &'static str,
    pub heartbeat: Stamp,
    pub started: Stamp,
    pub version: String,
    pub runs_in_flight: i64,
    /// `none`, `node` or `fleet`.
    pub halt: &'static str,
    pub chain_head_seq: i64,
    pub last_checkpoint_seq: Option<i64>,
}

// ---- approvals ----

/// `/ui/approvals`: the gates waiting now, most critical first.
#[derive(Template)]
#[template(path = "approvals.html")]
pub struct ApprovalsPage {
    pub chrome: Chrome,
    pub gates: Vec<WaitingView>,
}

/// A waiting gate with its run.
pub struct WaitingView {
    pub gate: GateView,
    pub playbook: String,
    pub org: String,
    pub node: String,
    pub decision: String,
    pub severity: String,
    /// `12 min left`, or `expired, rolling back` once past its expiry.
    pub time_left: String,
    pub expired: bool,
}

// ---- registry ----

/// `/ui/registry`: active versions, every version recorded, bindings, refused files.
#[derive(Template)]
#[template(path = "registry.html")]
pub struct RegistryPage {
    pub chrome: Chrome,
    pub loaded: bool,
    pub loaded_at: Option<Stamp>,
    pub active: Vec<VersionLine>,
    pub known: Vec<VersionLine>,
    pub bindings: Vec<BindingSummary>,
    pub refused: Vec<RefusedFile>,
}

/// A playbook version with its signers.
pub struct VersionLine {
    pub id: String,
    pub version: i64,
    pub sha256: String,
    pub sha256_prefix: String,
    pub signers: Vec<String>,
    pub first_seen: Option<Stamp>,
    /// The version the registry runs now.
    pub active: bool,
    pub runs_link: String,
}

impl VersionLine {
    pub fn new(
        id: &str,
        version: i64,
        sha256: &str,
        signers: &[String],
        first_seen: Option<Stamp>,
        active: bool,
    ) -> VersionLine {
        VersionLine {
            id: id.to_owned(),
            version,
            sha256: sha256.to_owned(),
            sha256_prefix: sha256.chars().take(HASH_PREFIX).collect(),
            signers: signers.to_vec(),
            first_seen,
            active,
            runs_link: runs_link(&[("playbook", id)]),
        }
    }
}

// ---- errors ----

/// Any page that could not be shown: what went wrong and what to do.
#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub chrome: Chrome,
    pub status: u16,
    pub heading: String,
    pub detail: String,
}

// ---- helpers ----

/// `/ui/runs/{id}`.
pub fn run_link(id: &str) -> String {
    format!("{RUNS_PATH}runs/{id}")
}

/// The runs page with these query parameters (empty values left out).
pub fn runs_link(params: &[(&str, &str)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in params.iter().filter(|(_, v)| !v.is_empty()) {
        query.append_pair(name, value);
    }
    let query = query.finish();
    if query.is_empty() {
        RUNS_PATH.to_owned()
    } else {
        format!("{RUNS_PATH}?{query}")
    }
}

/// `text` bounded to `max` bytes, control and invisible characters made visible (src/text.rs).
pub fn excerpt(text: &str, max: usize) -> String {
    crate::text::storable(text, max)
}

/// Pretty JSON, bounded.
pub fn json_excerpt(value: &Value, max: usize) -> String {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    excerpt(&text, max)
}

/// `word` as one shell word: unchanged when it is plainly safe, otherwise single-quoted.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:@%+=,".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// `5 s ago`, `3 min ago`, `2 h 5 min ago`, `4 d ago`, `in 12 min`.
pub fn relative_age(elapsed: time::Duration) -> String {
    let seconds = elapsed.whole_seconds();
    if seconds.abs() < 2 {
        return "just now".to_owned();
    }
    let span = span_text(seconds.unsigned_abs());
    if seconds > 0 {
        format!("{span} ago")
    } else {
        format!("in {span}")
    }
}

/// How long until `deadline`, or that it has passed.
pub fn time_left(deadline: OffsetDateTime, now: OffsetDateTime) -> (String, bool) {
    let left = (deadline - now).whole_seconds();
    if left <= 0 {
        ("expired: the run rolls back".to_owned(), true)
    } else {
        (format!("{} left", span_text(left.unsigned_abs())), false)
    }
}

fn span_text(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min", seconds / 60),
        3600..86_400 => format!("{} h {} min", seconds / 3600, (seconds % 3600) / 60),
        _ => format!("{} d", seconds / 86_400),
    }
}

/// `320 ms`, `1.5 s`, `2 min 3 s`; empty when the interval is not closed.
fn duration_between(start: Option<OffsetDateTime>, end: Option<OffsetDateTime>) -> String {
    let (Some(start), Some(end)) = (start, end) else {
        return String::new();
    };
    let millis = (end - start).whole_milliseconds();
    match millis {
        ..1_000 => format!("{millis} ms"),
        1_000..60_000 => format!("{:.1} s", millis as f64 / 1000.0),
        _ => {
            let seconds = millis / 1000;
            format!("{} min {} s", seconds / 60, seconds % 60)
        }
    }
}

/// Who did it: the automation itself, or a peer uid named with the role its event implies.
fn actor(event_type: &str, actor: Option<&Value>) -> String {
    let Some(text) = actor.and_then(Value::as_str) else {
        return "unknown (no actor recorded)".to_owned();
    };
    if text == "system" {
        return "playbookd (automation)".to_owned();
    }
    let Some(uid) = text.strip_prefix("uid:") else {
        return excerpt(text, SHORT_EXCERPT);
    };
    let role = match event_type.split('.').next().unwrap_or("") {
        "decision" => "policy engine",
        "approval" => "approver",
        "execution" => "operator",
        "safe_halt" => "admin",
        "control" => "control.sock client",
        _ => "peer",
    };
    format!("uid {} ({role})", excerpt(uid, 32))
}

/// The fields of an event worth reading beside it, in a fixed order, bounded.
fn event_detail(data: &Value) -> String {
    let parts: Vec<String> = DETAIL_FIELDS
        .iter()
        .filter_map(|key| {
            let value = data.get(*key)?;
            let text = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            Some(format!("{key}: {text}"))
        })
        .collect();
    excerpt(&parts.join("; "), SHORT_EXCERPT)
}

const GOOD: &str = "good";
const BAD: &str = "bad";
const WAIT: &str = "wait";
const BUSY: &str = "busy";
const QUIET: &str = "quiet";
/// Where the runs page is.
pub const RUNS_PATH: &str = "/ui/";
/// Hex characters shown of a hash or key id (the full value is in the title attribute).
const HASH_PREFIX: usize = 12;
const SHORT_EXCERPT: usize = 300;
const TEXT_EXCERPT: usize = 1000;
const OUTPUT_EXCERPT: usize = 1500;
const DETAIL_FIELDS: [&str; 13] = [
    "playbook",
    "state",
    "cause",
    "verdict",
    "gate_state",
    "approvals",
    "required",
    "risk",
    "attempt",
    "error_class",
    "error",
    "reason",
    "result",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_people_say_them() {
        assert_eq!(relative_age(time::Duration::seconds(1)), "just now");
        assert_eq!(relative_age(time::Duration::seconds(42)), "42 s ago");
        assert_eq!(relative_age(time::Duration::seconds(185)), "3 min ago");
        assert_eq!(relative_age(time::Duration::seconds(7500)), "2 h 5 min ago");
        assert_eq!(relative_age(time::Duration::days(3)), "3 d ago");
        assert_eq!(relative_age(time::Duration::seconds(-720)), "in 12 min");
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("contain-host"), "contain-host");
        assert_eq!(shell_quote("<why>"), "'<why>'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn links_keep_filters_and_drop_empty_ones() {
        assert_eq!(runs_link(&[]), "/ui/");
        assert_eq!(
            runs_link(&[("playbook", "a b"), ("org", ""), ("node", "n&1")]),
            "/ui/?playbook=a+b&node=n%261"
        );
    }

    #[test]
    fn actors_name_the_role_their_event_implies() {
        let uid = Value::String("uid:1000".into());
        assert_eq!(
            actor("decision.accepted", Some(&uid)),
            "uid 1000 (policy engine)"
        );
        assert_eq!(actor("approval.vote", Some(&uid)), "uid 1000 (approver)");
        assert_eq!(
            actor("step.started", Some(&Value::String("system".into()))),
            "playbookd (automation)"
        );
        assert_eq!(actor("step.started", None), "unknown (no actor recorded)");
    }
}
