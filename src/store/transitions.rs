//! The allowed state changes, written once.
//!
//! Every UPDATE that changes a run's or a step's state is guarded by
//! `state = ANY(sources(target))` (computed from these tables) and its row count is checked
//! inside the same audit transaction; migration V11 writes the same pairs (with each non-terminal
//! state's `(s, s)`) as the arguments of the triggers on `playbook_executions` and
//! `playbook_step_runs`, whose function `playbook_guard_transition()` refuses any other change,
//! so the database refuses an illegal change whoever makes it. (V5 had the pairs in the triggers'
//! WHEN arrays, which PostgreSQL re-read from their stored text in every statement.)
//! `tests/it/store.rs` tries every pair of states against those triggers and compares what the
//! database allows with these tables.
//!
//! A pair `(s, s)` says "a state-preserving write is allowed in `s`" (a step started again
//! with the same idempotency key, a gate re-opened after a restart); a state with no pair
//! leaving it is terminal: the trigger refuses every UPDATE of such a row.

use crate::store::model::{RunState, StepState};

/// Run transitions (`from`, `to`).
pub const RUN_TRANSITIONS: &[(RunState, RunState)] = &[
    // The executor picks the run up.
    (RunState::Pending, RunState::Running),
    // Cancelled before its first step, or its pinned playbook no longer verifies.
    (RunState::Pending, RunState::RollingBack),
    (RunState::Pending, RunState::SafeHalted),
    // A step starts (again after a retry or a restart).
    (RunState::Running, RunState::Running),
    (RunState::Running, RunState::AwaitingApproval),
    (RunState::Running, RunState::Completed),
    (RunState::Running, RunState::RollingBack),
    (RunState::Running, RunState::SafeHalted),
    // The gate re-opened after a restart; its step started once approved.
    (RunState::AwaitingApproval, RunState::AwaitingApproval),
    (RunState::AwaitingApproval, RunState::Running),
    (RunState::AwaitingApproval, RunState::RollingBack),
    (RunState::AwaitingApproval, RunState::SafeHalted),
    // The rollback ends: the run's final state says why it rolled back, or an undo failed.
    (RunState::RollingBack, RunState::RolledBack),
    (RunState::RollingBack, RunState::Cancelled),
    (RunState::RollingBack, RunState::TimedOut),
    (RunState::RollingBack, RunState::Rejected),
    (RunState::RollingBack, RunState::SafeHalted),
];

/// Step transitions (`from`, `to`); a step row is created in `running`, `skipped` or `failed`
/// (see [`STEP_CREATED`]).
pub const STEP_TRANSITIONS: &[(StepState, StepState)] = &[
    (StepState::Pending, StepState::Running),
    (StepState::Pending, StepState::Skipped),
    (StepState::Pending, StepState::Failed),
    // Started again (retry, restart) with the same idempotency key; a retry waits in `running`.
    (StepState::Running, StepState::Running),
    (StepState::Running, StepState::Succeeded),
    (StepState::Running, StepState::Failed),
    // Undone during a rollback. A step still `running`, or `failed` because it was stopped
    // while it ran, may have taken effect: it is undone too.
    (StepState::Running, StepState::RolledBack),
    (StepState::Running, StepState::RollbackFailed),
    (StepState::Succeeded, StepState::RolledBack),
    (StepState::Succeeded, StepState::RollbackFailed),
    (StepState::Failed, StepState::RolledBack),
    (StepState::Failed, StepState::RollbackFailed),
];

/// The states a step row may be created in.
pub const STEP_CREATED: &[StepState] = &[StepState::Running, StepState::Skipped, StepState::Failed];

/// Whether a run may go from `from` to `to`.
pub fn run_allowed(from: RunState, to: RunState) -> bool {
    RUN_TRANSITIONS.contains(&(from, to))
}

/// Whether a step may go from `from` to `to`.
pub fn step_allowed(from: StepState, to: StepState) -> bool {
    STEP_TRANSITIONS.contains(&(from, to))
}

/// The stored spellings of the states a run may reach `to` from: the guard of an UPDATE.
pub fn run_sources(to: RunState) -> Vec<&'static str> {
    RUN_TRANSITIONS
        .iter()
        .filter(|(_, target)| *target == to)
        .map(|(from, _)| from.as_str())
        .collect()
}

/// The stored spellings of the states a step may reach `to` from: the guard of an UPDATE.
pub fn step_sources(to: StepState) -> Vec<&'static str> {
    STEP_TRANSITIONS
        .iter()
        .filter(|(_, target)| *target == to)
        .map(|(from, _)| from.as_str())
        .collect()
}

/// `sources` as a PostgreSQL array literal (`{a,b}`), for a statement whose rows each carry
/// their own (`state = ANY(v.sources::text[])`); the states are lower-case words, nothing to
/// quote.
pub fn sources_literal(sources: &[&str]) -> String {
    format!("{{{}}}", sources.join(","))
}

/// The stored spellings of every non-terminal run state.
pub fn open_run_states() -> Vec<&'static str> {
    RunState::ALL
        .iter()
        .filter(|state| !state.is_terminal())
        .map(|state| state.as_str())
        .collect()
}

/// Whether a step state has no transition leaving it.
pub fn step_is_terminal(state: StepState) -> bool {
    !STEP_TRANSITIONS.iter().any(|(from, _)| *from == state)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Applies `to` to `state` as a guarded UPDATE would: refused (unchanged) when not allowed.
    fn apply_run(state: RunState, to: RunState) -> RunState {
        if run_allowed(state, to) { to } else { state }
    }

    fn apply_step(state: StepState, to: StepState) -> StepState {
        if step_allowed(state, to) { to } else { state }
    }

    fn run_state() -> impl Strategy<Value = RunState> {
        prop::sample::select(RunState::ALL)
    }

    fn step_state() -> impl Strategy<Value = StepState> {
        prop::sample::select(StepState::ALL)
    }

    #[test]
    fn the_tables_terminal_states_are_the_enums_terminal_states() {
        for state in RunState::ALL {
            let leaves = RUN_TRANSITIONS.iter().any(|(from, _)| from == state);
            assert_eq!(leaves, !state.is_terminal(), "{state}");
        }
        for state in [
            StepState::Skipped,
            StepState::RolledBack,
            StepState::RollbackFailed,
        ] {
            assert!(step_is_terminal(state), "{state}");
        }
    }

    #[test]
    fn every_run_state_is_reachable_from_pending() {
        let mut reached = vec![RunState::Pending];
        let mut changed = true;
        while changed {
            changed = false;
            for (from, to) in RUN_TRANSITIONS {
                if reached.contains(from) && !reached.contains(to) {
                    reached.push(*to);
                    changed = true;
                }
            }
        }
        for state in RunState::ALL {
            assert!(reached.contains(state), "{state} unreachable");
        }
    }

    #[test]
    fn guards_list_exactly_the_tables_sources() {
        assert_eq!(
            run_sources(RunState::Completed),
            vec![RunState::Running.as_str()]
        );
        assert_eq!(
            run_sources(RunState::Cancelled),
            vec![RunState::RollingBack.as_str()]
        );
        assert!(run_sources(RunState::Pending).is_empty());
        assert!(!step_sources(StepState::Running).contains(&"succeeded"));
    }

    proptest! {
        /// Random sequences of requested changes never leave the table: every change that
        /// happens is a listed pair, a terminal state never changes again, a run that began
        /// rolling back never runs or completes, and `completed` is reached only from `running`.
        #[test]
        fn run_sequences_never_reach_an_illegal_state(steps in prop::collection::vec(run_state(), 0..64)) {
            let mut state = RunState::Pending;
            let mut rolled_back = false;
            for to in steps {
                let next = apply_run(state, to);
                if next != state {
                    prop_assert!(run_allowed(state, next));
                    prop_assert!(!state.is_terminal(), "{state} changed to {next}");
                    if next == RunState::Completed {
                        prop_assert_eq!(state, RunState::Running);
                    }
                }
                if state.is_terminal() {
                    prop_assert_eq!(next, state, "terminal state is absorbing");
                }
                rolled_back |= next == RunState::RollingBack;
                if rolled_back {
                    prop_assert!(
                        !matches!(next, RunState::Running | RunState::AwaitingApproval | RunState::Completed | RunState::Pending),
                        "{next} after a rollback began"
                    );
                }
                state = next;
            }
        }

        /// The same for steps: a step that succeeded never runs again, a terminal step never
        /// changes, and only a step that may have acted is ever marked undone.
        #[test]
        fn step_sequences_never_reach_an_illegal_state(
            created in prop::sample::select(STEP_CREATED),
            steps in prop::collection::vec(step_state(), 0..64),
        ) {
            let mut state = created;
            let mut finished = false;
            for to in steps {
                let next = apply_step(state, to);
                if step_is_terminal(state) {
                    prop_assert_eq!(next, state, "terminal step state is absorbing");
                }
                finished |= matches!(next, StepState::Succeeded | StepState::Failed | StepState::Skipped);
                if finished {
                    prop_assert!(!matches!(next, StepState::Running | StepState::Pending), "{next} after the step ended");
                }
                if matches!(next, StepState::RolledBack | StepState::RollbackFailed) && next != state {
                    prop_assert!(matches!(state, StepState::Succeeded | StepState::Running | StepState::Failed));
                }
                state = next;
            }
        }

        /// Every guard derived from the table admits exactly the table's pairs.
        #[test]
        fn guards_agree_with_the_table(from in run_state(), to in run_state(), sfrom in step_state(), sto in step_state()) {
            prop_assert_eq!(run_sources(to).contains(&from.as_str()), run_allowed(from, to));
            prop_assert_eq!(step_sources(sto).contains(&sfrom.as_str()), step_allowed(sfrom, sto));
        }
    }
}
