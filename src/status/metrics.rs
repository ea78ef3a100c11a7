//! Prometheus metrics: the global recorder, and the name of every metric the daemon emits.
//!
//! Emitters use the constants below with the `metrics` macros, e.g.
//! `metrics::counter!(DECISIONS_TOTAL, "status" => "rejected", "reason" => "stale").increment(1)`.
//! Names carry their unit (`_seconds`) and counters end in `_total`, as Prometheus expects.
//! Labels must be low-cardinality and secret-free: never a subject, a path or a URL.

use std::sync::OnceLock;

use metrics::Unit;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Counter, labels `status` (accepted|no_action|rejected|busy) and `reason`.
pub const DECISIONS_TOTAL: &str = "playbookd_decisions_total";
/// Counter of runs that reached a terminal state, labels `state` and `playbook`.
pub const EXECUTIONS_TOTAL: &str = "playbookd_executions_total";
/// Histogram of one step attempt's wall time, label `action`.
pub const STEP_DURATION_SECONDS: &str = "playbookd_step_duration_seconds";
/// Counter of step retries (attempts after the first), label `action`.
pub const STEP_RETRIES_TOTAL: &str = "playbookd_step_retries_total";
/// Gauge of approval gates currently pending.
pub const APPROVALS_PENDING: &str = "playbookd_approvals_pending";
/// Histogram of the time from a gate opening to its resolution.
pub const APPROVAL_WAIT_SECONDS: &str = "playbookd_approval_wait_seconds";
/// Gauge: 1 while a SAFE-HALT is active, else 0.
pub const SAFE_HALT_ACTIVE: &str = "playbookd_safe_halt_active";
/// Counter of audit rows committed.
pub const AUDIT_APPENDS_TOTAL: &str = "playbookd_audit_appends_total";
/// Histogram of the time from an append request to its COMMIT.
pub const AUDIT_APPEND_SECONDS: &str = "playbookd_audit_append_seconds";
/// Counter of playbook or bindings files refused by the registry, label `reason`.
pub const REGISTRY_REJECTIONS_TOTAL: &str = "playbookd_registry_rejections_total";
/// Gauge: 1 while the circuit breaker for `host` is open, else 0.
pub const HTTP_CIRCUIT_OPEN: &str = "playbookd_http_circuit_open";
/// Counter of decisions dropped by storm control (binding cooldown).
pub const DECISIONS_SUPPRESSED_TOTAL: &str = "playbookd_decisions_suppressed_total";
/// Gauge of bindings whose playbook has no active version (decisions for them get
/// `no_action: no active version`); 0 when every binding can run.
pub const BINDINGS_WITHOUT_ACTIVE_PLAYBOOK: &str = "playbookd_bindings_without_active_playbook";

/// The executor counts its backlog and so owns the gauge's name; listed here with the others.
pub use crate::executor::RUNS_BACKLOG;

/// Counter of used nonces deleted by retention (older than twice the widest freshness window).
pub const NONCES_PRUNED_TOTAL: &str = "playbookd_nonces_pruned_total";

/// Every metric name, for tests and documentation. Each exists from the start (at zero); the
/// labelled ones with every label value known then (see [`install`]).
pub const ALL: [&str; 15] = [
    DECISIONS_TOTAL,
    EXECUTIONS_TOTAL,
    STEP_DURATION_SECONDS,
    STEP_RETRIES_TOTAL,
    APPROVALS_PENDING,
    APPROVAL_WAIT_SECONDS,
    SAFE_HALT_ACTIVE,
    AUDIT_APPENDS_TOTAL,
    AUDIT_APPEND_SECONDS,
    REGISTRY_REJECTIONS_TOTAL,
    HTTP_CIRCUIT_OPEN,
    DECISIONS_SUPPRESSED_TOTAL,
    BINDINGS_WITHOUT_ACTIVE_PLAYBOOK,
    RUNS_BACKLOG,
    NONCES_PRUNED_TOTAL,
];

/// Installs the Prometheus recorder as the process-global `metrics` recorder (once), describes
/// every metric and registers each at zero, so that a fresh `/metrics` already shows every
/// series an alert rule may name (an absent series is not 0 to Prometheus: `rate()` and
/// `absent()` rules misfire). Later calls return the same handle, so tests can call it freely.
///
/// Call it before anything emits a metric: anything recorded before goes nowhere.
///
/// If some other recorder was installed first, metrics go there and this handle renders an
/// empty page; that is logged, not fatal, because metrics never gate a decision.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Only an empty bucket list fails, and ours are non-empty constants.
            let builder = builder().unwrap_or_else(|error| {
                tracing::warn!(error = %error, "histogram buckets not set");
                PrometheusBuilder::new()
            });
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    describe_all();
                    register_all_at_zero();
                }
                Err(error) => tracing::warn!(error = %error, "metrics recorder not installed"),
            }
            handle
        })
        .clone()
}

/// How often [`spawn_upkeep`] folds the histograms' recorded samples into their buckets.
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds recorded histogram samples into their buckets every [`UPKEEP_INTERVAL`] until
/// `shutdown`. The recorder keeps every sample until then; without this a daemon that nobody
/// scrapes would hold one sample per step and audit append for ever (a scrape folds them too).
pub fn spawn_upkeep(shutdown: tokio_util::sync::CancellationToken) {
    let handle = install();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => handle.run_upkeep(),
                () = shutdown.cancelled() => return,
            }
        }
    });
}

/// Registers the per-playbook series of [`EXECUTIONS_TOTAL`] (one per terminal state) for
/// playbooks that just became active. Existing values are kept.
pub fn register_playbooks<'a>(ids: impl IntoIterator<Item = &'a str>) {
    use std::str::FromStr;

    use crate::executor::state::RunState;
    // The states in which an execution is counted: the terminal ones.
    let terminal: Vec<&'static str> = super::queries::RUN_STATES
        .iter()
        .copied()
        .filter(|state| RunState::from_str(state).is_ok_and(RunState::is_terminal))
        .collect();
    for id in ids {
        for state in terminal.iter().copied() {
            metrics::counter!(EXECUTIONS_TOTAL, "state" => state, "playbook" => id.to_owned())
                .increment(0);
        }
    }
}

/// Registers [`HTTP_CIRCUIT_OPEN`] for every destination the configuration allows (a breaker
/// only ever exists for those). Existing values are kept.
pub fn register_http_hosts<'a>(hosts: impl IntoIterator<Item = &'a String>) {
    for host in hosts {
        metrics::gauge!(HTTP_CIRCUIT_OPEN, "host" => host.to_ascii_lowercase()).increment(0.0);
    }
}

/// The series whose labels are known before anything happens, at zero. `increment(0)` rather
/// than `set(0)` so that a value set earlier is never reset.
fn register_all_at_zero() {
    metrics::counter!(DECISIONS_TOTAL, "status" => "accepted", "reason" => "accepted").increment(0);
    for spec in crate::actions::specs() {
        let _ = metrics::histogram!(STEP_DURATION_SECONDS, "action" => spec.name);
        metrics::counter!(STEP_RETRIES_TOTAL, "action" => spec.name).increment(0);
    }
    metrics::gauge!(APPROVALS_PENDING).increment(0.0);
    let _ = metrics::histogram!(APPROVAL_WAIT_SECONDS);
    metrics::gauge!(SAFE_HALT_ACTIVE).increment(0.0);
    metrics::counter!(AUDIT_APPENDS_TOTAL).increment(0);
    let _ = metrics::histogram!(AUDIT_APPEND_SECONDS);
    for reason in crate::registry::REJECTION_LABELS {
        metrics::counter!(REGISTRY_REJECTIONS_TOTAL, "reason" => reason).increment(0);
    }
    metrics::counter!(DECISIONS_SUPPRESSED_TOTAL).increment(0);
    metrics::counter!(NONCES_PRUNED_TOTAL).increment(0);
    metrics::gauge!(BINDINGS_WITHOUT_ACTIVE_PLAYBOOK).increment(0.0);
    metrics::gauge!(RUNS_BACKLOG).increment(0.0);
}

/// Histograms (not summaries) so that Prometheus can aggregate them across nodes.
fn builder() -> Result<PrometheusBuilder, BuildError> {
    let histogram = |name: &str| Matcher::Full(name.to_owned());
    PrometheusBuilder::new()
        .set_buckets_for_metric(histogram(STEP_DURATION_SECONDS), STEP_BUCKETS)?
        .set_buckets_for_metric(histogram(APPROVAL_WAIT_SECONDS), APPROVAL_BUCKETS)?
        .set_buckets_for_metric(histogram(AUDIT_APPEND_SECONDS), AUDIT_BUCKETS)
}

fn describe_all() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        NONCES_PRUNED_TOTAL,
        Unit::Count,
        "Used nonces deleted by retention: older than twice the widest freshness window of any node."
    );
    describe_counter!(
        crate::witness::submit::SUBMISSIONS_METRIC,
        Unit::Count,
        "Checkpoint submissions to witnesses, by witness and result (cosigned, conflict, refused, unreachable, bad_cosignature, store_error)."
    );
    describe_counter!(
        DECISIONS_TOTAL,
        Unit::Count,
        "Decisions received, by reply status and reason."
    );
    describe_counter!(
        EXECUTIONS_TOTAL,
        Unit::Count,
        "Executions that reached a terminal state, by state and playbook."
    );
    describe_histogram!(
        STEP_DURATION_SECONDS,
        Unit::Seconds,
        "Wall time of one step attempt, by action."
    );
    describe_counter!(
        STEP_RETRIES_TOTAL,
        Unit::Count,
        "Step attempts after the first, by action."
    );
    describe_gauge!(
        APPROVALS_PENDING,
        Unit::Count,
        "Approval gates waiting for a vote."
    );
    describe_histogram!(
        APPROVAL_WAIT_SECONDS,
        Unit::Seconds,
        "Time from an approval gate opening to its resolution."
    );
    describe_gauge!(
        SAFE_HALT_ACTIVE,
        Unit::Count,
        "1 while a SAFE-HALT is active (nothing new runs), else 0."
    );
    describe_counter!(
        AUDIT_APPENDS_TOTAL,
        Unit::Count,
        "Audit rows committed to this node's chain."
    );
    describe_histogram!(
        AUDIT_APPEND_SECONDS,
        Unit::Seconds,
        "Time from an audit append request to its commit."
    );
    describe_counter!(
        REGISTRY_REJECTIONS_TOTAL,
        Unit::Count,
        "Playbook or bindings files refused by the registry, by reason."
    );
    describe_gauge!(
        HTTP_CIRCUIT_OPEN,
        Unit::Count,
        "1 while the webhook circuit breaker for a host is open, else 0."
    );
    describe_counter!(
        DECISIONS_SUPPRESSED_TOTAL,
        Unit::Count,
        "Decisions dropped by a binding's cooldown (storm control)."
    );
    describe_gauge!(
        BINDINGS_WITHOUT_ACTIVE_PLAYBOOK,
        Unit::Count,
        "Bindings whose playbook has no active version: their decisions get no_action."
    );
    describe_gauge!(
        RUNS_BACKLOG,
        Unit::Count,
        "Accepted runs waiting for an executor slot (intake.max_backlog bounds it: beyond, busy)."
    );
}

const STEP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const APPROVAL_BUCKETS: &[f64] = &[1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0];
const AUDIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
