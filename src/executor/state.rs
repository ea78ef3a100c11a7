//! Run and step states as stored in PostgreSQL. Decoding refuses unknown strings: an
//! unrecognised state must never be taken for a resumable (or a finished) one.

use std::str::FromStr;

use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Pending,
    Running,
    AwaitingApproval,
    Completed,
    RollingBack,
    RolledBack,
    SafeHalted,
    Cancelled,
    TimedOut,
    Rejected,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Running => "running",
            RunState::AwaitingApproval => "awaiting_approval",
            RunState::Completed => "completed",
            RunState::RollingBack => "rolling_back",
            RunState::RolledBack => "rolled_back",
            RunState::SafeHalted => "safe_halted",
            RunState::Cancelled => "cancelled",
            RunState::TimedOut => "timed_out",
            RunState::Rejected => "rejected",
        }
    }

    /// Terminal states never change.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Completed
                | RunState::RolledBack
                | RunState::SafeHalted
                | RunState::Cancelled
                | RunState::TimedOut
                | RunState::Rejected
        )
    }
}

impl FromStr for RunState {
    type Err = StoreError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "pending" => RunState::Pending,
            "running" => RunState::Running,
            "awaiting_approval" => RunState::AwaitingApproval,
            "completed" => RunState::Completed,
            "rolling_back" => RunState::RollingBack,
            "rolled_back" => RunState::RolledBack,
            "safe_halted" => RunState::SafeHalted,
            "cancelled" => RunState::Cancelled,
            "timed_out" => RunState::TimedOut,
            "rejected" => RunState::Rejected,
            other => return Err(corrupt("execution state", other)),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
    RolledBack,
    RollbackFailed,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::Skipped => "skipped",
            StepState::RolledBack => "rolled_back",
            StepState::RollbackFailed => "rollback_failed",
        }
    }
}

impl FromStr for StepState {
    type Err = StoreError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "pending" => StepState::Pending,
            "running" => StepState::Running,
            "succeeded" => StepState::Succeeded,
            "failed" => StepState::Failed,
            "skipped" => StepState::Skipped,
            "rolled_back" => StepState::RolledBack,
            "rollback_failed" => StepState::RollbackFailed,
            other => return Err(corrupt("step state", other)),
        })
    }
}

/// Why a run is rolling back; decides its terminal state once the rollback succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollbackCause {
    Failed,
    TimedOut,
    Cancelled,
    /// An approval was denied or expired.
    Rejected,
}

impl RollbackCause {
    pub fn as_str(self) -> &'static str {
        match self {
            RollbackCause::Failed => "failed",
            RollbackCause::TimedOut => "timed_out",
            RollbackCause::Cancelled => "cancelled",
            RollbackCause::Rejected => "rejected",
        }
    }

    pub fn terminal_state(self) -> RunState {
        match self {
            RollbackCause::Failed => RunState::RolledBack,
            RollbackCause::TimedOut => RunState::TimedOut,
            RollbackCause::Cancelled => RunState::Cancelled,
            RollbackCause::Rejected => RunState::Rejected,
        }
    }
}

impl FromStr for RollbackCause {
    type Err = StoreError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "failed" => RollbackCause::Failed,
            "timed_out" => RollbackCause::TimedOut,
            "cancelled" => RollbackCause::Cancelled,
            "rejected" => RollbackCause::Rejected,
            other => return Err(corrupt("rollback cause", other)),
        })
    }
}

fn corrupt(what: &'static str, value: &str) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: format!("unknown value `{value}`"),
    }
}
