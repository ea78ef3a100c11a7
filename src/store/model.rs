//! The states and labels stored as text, decoded once at the database boundary.
//!
//! Each enum is declared once, with its stored spelling, by `db_enum!`: `as_str` and
//! `decode` are generated from the same list, so the two directions cannot drift, and `ALL`
//! lists every variant for tests and for the transition table. Decoding an unknown (or
//! missing) value is [`StoreError::Corrupt`], never a default: an unrecognised state must not
//! be taken for a resumable one, and an unrecognised risk must not be taken for a low one.
//!
//! Match these enums exhaustively (no `_ =>` arm): a new variant must fail to compile in every
//! place that decides something about it. README "Checks" says how to grep for wildcards.

use crate::registry::model::RiskTier;
use crate::store::StoreError;

/// Declares a stored enum: its variants with their stored spellings, and what it is called in
/// an error message.
macro_rules! db_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )+ ];

            /// The spelling stored in PostgreSQL (and shown in the status API and audit events).
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }

            /// Decodes a stored value; anything else is [`StoreError::Corrupt`].
            pub fn decode(text: &str) -> Result<$name, StoreError> {
                match text {
                    $( $text => Ok($name::$variant), )+
                    other => Err(StoreError::Corrupt {
                        what: $what,
                        detail: format!("unknown value `{}`", crate::text::storable(other, 64)),
                    }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = StoreError;

            fn from_str(text: &str) -> Result<$name, StoreError> {
                $name::decode(text)
            }
        }
    };
}

/// Stored enums declared outside this module (next to their table) use the same declaration.
pub(crate) use db_enum;

db_enum! {
    /// The state of a run (`playbook_executions.state`). Allowed changes: [`super::transitions`].
    RunState, "execution state" {
        Pending => "pending",
        Running => "running",
        AwaitingApproval => "awaiting_approval",
        Completed => "completed",
        RollingBack => "rolling_back",
        RolledBack => "rolled_back",
        SafeHalted => "safe_halted",
        Cancelled => "cancelled",
        TimedOut => "timed_out",
        /// An approval was denied or expired, and the run was rolled back.
        Rejected => "rejected",
    }
}

impl RunState {
    /// Terminal states never change (the database refuses it too).
    pub fn is_terminal(self) -> bool {
        match self {
            RunState::Completed
            | RunState::RolledBack
            | RunState::SafeHalted
            | RunState::Cancelled
            | RunState::TimedOut
            | RunState::Rejected => true,
            RunState::Pending
            | RunState::Running
            | RunState::AwaitingApproval
            | RunState::RollingBack => false,
        }
    }
}

db_enum! {
    /// The state of one step (`playbook_step_runs.state`). Allowed changes: [`super::transitions`].
    StepState, "step state" {
        Pending => "pending",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Skipped => "skipped",
        RolledBack => "rolled_back",
        RollbackFailed => "rollback_failed",
    }
}

db_enum! {
    /// The state of one step's undo (`playbook_rollback_states.state`).
    UndoState, "rollback state" {
        /// Written by nothing today; accepted as "not finished" like `running`.
        Pending => "pending",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        /// The step said `rollback: none`.
        NotUndoable => "not_undoable",
    }
}

db_enum! {
    /// The state of an approval gate (`playbook_approval_gates.state`).
    GateState, "approval gate state" {
        Pending => "pending",
        Approved => "approved",
        Denied => "denied",
        Expired => "expired",
        /// Withdrawn because the run stopped (cancel, timeout) while the gate waited.
        Cancelled => "cancelled",
    }
}

db_enum! {
    /// One approver's verdict (`playbook_approvals.verdict`).
    Vote, "vote" {
        Approve => "approve",
        Deny => "deny",
    }
}

db_enum! {
    /// How an attempt of a step failed (`playbook_step_runs.error_class`).
    ErrorClass, "error class" {
        /// Might succeed if tried again.
        Transient => "transient",
        /// Will fail again.
        Permanent => "permanent",
        /// The step (or the playbook) deadline passed while the action ran.
        Timeout => "timeout",
        /// A cancel stopped the action while it ran.
        Cancelled => "cancelled",
    }
}

impl ErrorClass {
    /// Whether the action may have taken effect although it did not report success: it was
    /// stopped while it ran (cancel, deadline). Such a step is undone during the rollback
    /// (undos are idempotent), as a succeeded one is.
    pub fn possibly_done(self) -> bool {
        match self {
            ErrorClass::Timeout | ErrorClass::Cancelled => true,
            ErrorClass::Transient | ErrorClass::Permanent => false,
        }
    }

    /// Whether another attempt may be made (within the step's retry budget).
    pub fn is_retryable(self) -> bool {
        match self {
            ErrorClass::Transient | ErrorClass::Timeout => true,
            ErrorClass::Permanent | ErrorClass::Cancelled => false,
        }
    }
}

db_enum! {
    /// Why a run is rolling back (`playbook_executions.rollback_cause`); decides its final state.
    RollbackCause, "rollback cause" {
        Failed => "failed",
        TimedOut => "timed_out",
        Cancelled => "cancelled",
        /// An approval was denied or expired.
        Rejected => "rejected",
    }
}

impl RollbackCause {
    /// The run's state once the rollback succeeded.
    pub fn terminal_state(self) -> RunState {
        match self {
            RollbackCause::Failed => RunState::RolledBack,
            RollbackCause::TimedOut => RunState::TimedOut,
            RollbackCause::Cancelled => RunState::Cancelled,
            RollbackCause::Rejected => RunState::Rejected,
        }
    }
}

db_enum! {
    /// A decision's severity (`playbook_executions.severity`), in the spelling the policy engine
    /// sent (`medium` and `moderate` are the same level, kept as sent for templates).
    Severity, "decision severity" {
        Low => "low",
        Medium => "medium",
        Moderate => "moderate",
        High => "high",
        Critical => "critical",
    }
}

db_enum! {
    /// Whom a SAFE-HALT stops (`playbook_safe_halt_state.scope`): one node, or every node.
    HaltScope, "SAFE-HALT scope" {
        Node => "node",
        Fleet => "fleet",
    }
}

/// Decodes a stored risk tier (`playbook_approval_gates.risk`).
pub fn decode_risk(text: &str) -> Result<RiskTier, StoreError> {
    match text {
        "low" => Ok(RiskTier::Low),
        "moderate" => Ok(RiskTier::Moderate),
        "high" => Ok(RiskTier::High),
        "critical" => Ok(RiskTier::Critical),
        other => Err(StoreError::Corrupt {
            what: "risk tier",
            detail: format!("unknown value `{}`", crate::text::storable(other, 64)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_decodes_from_its_own_spelling() {
        // Every `db_enum!`, by one loop.
        macro_rules! assert_round_trips {
            ($($name:ident),+) => {
                $(
                    for value in $name::ALL {
                        assert_eq!($name::decode(value.as_str()).unwrap(), *value);
                    }
                )+
            };
        }
        assert_round_trips!(
            RunState,
            StepState,
            UndoState,
            GateState,
            Vote,
            ErrorClass,
            RollbackCause,
            Severity,
            HaltScope
        );
        for risk in [
            RiskTier::Low,
            RiskTier::Moderate,
            RiskTier::High,
            RiskTier::Critical,
        ] {
            assert_eq!(decode_risk(risk.as_str()).unwrap(), risk);
        }
    }

    #[test]
    fn unknown_values_are_corrupt_never_a_default() {
        for text in ["", "RUNNING", "done", "running ", "\0"] {
            assert!(matches!(
                RunState::decode(text),
                Err(StoreError::Corrupt { .. })
            ));
        }
        assert!(matches!(
            decode_risk("none"),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            Vote::decode("abstain"),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn only_interrupted_actions_count_as_possibly_done() {
        assert!(ErrorClass::Cancelled.possibly_done());
        assert!(ErrorClass::Timeout.possibly_done());
        assert!(!ErrorClass::Permanent.possibly_done());
        assert!(!ErrorClass::Transient.possibly_done());
    }
}
