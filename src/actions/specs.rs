//! The static description of every action this build knows: parameters, undo, default risk.
//! The registry validates playbooks against these; the implementations live beside them.

use super::{ActionSpec, ParamKind, ParamSpec, Undo};
use crate::registry::model::RiskTier;

const fn required(name: &'static str, kind: ParamKind) -> ParamSpec {
    ParamSpec {
        name,
        kind,
        required: true,
    }
}

const fn optional(name: &'static str, kind: ParamKind) -> ParamSpec {
    ParamSpec {
        name,
        kind,
        required: false,
    }
}

pub static NOOP: ActionSpec = ActionSpec {
    name: "noop",
    params: &[],
    undo: Undo::By("noop"),
    default_risk: RiskTier::Low,
};

pub static EXEC: ActionSpec = ActionSpec {
    name: super::exec::NAME,
    params: &[
        required("command", ParamKind::AbsolutePath),
        optional("args", ParamKind::StringList),
    ],
    undo: Undo::PlaybookDefined,
    default_risk: RiskTier::High,
};

pub static HTTP_POST: ActionSpec = ActionSpec {
    name: "http.post",
    params: &[
        required("url", ParamKind::Url),
        optional("body", ParamKind::Json),
        optional("secret", ParamKind::SecretName),
    ],
    undo: Undo::PlaybookDefined,
    default_risk: RiskTier::Moderate,
};

pub static NOTIFY: ActionSpec = ActionSpec {
    name: "notify",
    params: &[
        required("message", ParamKind::String),
        optional("priority", ParamKind::Priority),
        optional("webhook", ParamKind::Url),
    ],
    undo: Undo::NotUndoable,
    default_risk: RiskTier::Low,
};

pub static FILE_QUARANTINE: ActionSpec = ActionSpec {
    name: "file.quarantine",
    params: &[required("path", ParamKind::AbsolutePath)],
    undo: Undo::By("file.restore"),
    default_risk: RiskTier::Moderate,
};

pub static FILE_RESTORE: ActionSpec = ActionSpec {
    name: "file.restore",
    params: &[required("path", ParamKind::AbsolutePath)],
    undo: Undo::By("file.quarantine"),
    default_risk: RiskTier::Moderate,
};

pub static PROCESS_KILL: ActionSpec = ActionSpec {
    name: "process.kill",
    params: &[
        required("pid", ParamKind::Integer),
        optional("signal", ParamKind::Signal),
        // Guards against PID reuse: the process must still be the one the decision named.
        optional("start_time", ParamKind::Integer),
        optional("executable", ParamKind::AbsolutePath),
    ],
    undo: Undo::NotUndoable,
    default_risk: RiskTier::High,
};

pub static NET_BLOCK_IP: ActionSpec = ActionSpec {
    name: "net.block_ip",
    params: &[
        required("address", ParamKind::IpOrCidr),
        optional("timeout", ParamKind::Duration),
    ],
    undo: Undo::By("net.unblock_ip"),
    default_risk: RiskTier::High,
};

pub static NET_UNBLOCK_IP: ActionSpec = ActionSpec {
    name: "net.unblock_ip",
    params: &[required("address", ParamKind::IpOrCidr)],
    undo: Undo::By("net.block_ip"),
    default_risk: RiskTier::Moderate,
};

/// Every action, in the order the README documents them.
pub static ALL: &[&ActionSpec] = &[
    &NOOP,
    &EXEC,
    &HTTP_POST,
    &NOTIFY,
    &FILE_QUARANTINE,
    &FILE_RESTORE,
    &PROCESS_KILL,
    &NET_BLOCK_IP,
    &NET_UNBLOCK_IP,
];
