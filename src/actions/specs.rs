//! The static description of every action this build knows: parameters, undo, default risk.
//! The registry validates playbooks against these; the implementations live beside them.

use super::ParamKind::{
    AbsolutePath, Integer, IpOrCidr, Json, Priority, SecretName, Signal, StringList, Url,
};
use super::Undo::{By, NotUndoable, PlaybookDefined};
use super::{ActionSpec, ParamKind, ParamSpec, Undo};
use crate::registry::model::RiskTier::{self, High, Low, Moderate};

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

/// One row of the table below: name, default risk, undo, parameters.
const fn action(
    name: &'static str,
    default_risk: RiskTier,
    undo: Undo,
    params: &'static [ParamSpec],
) -> ActionSpec {
    ActionSpec {
        name,
        params,
        undo,
        default_risk,
    }
}

// The parameters, one list per action (the file actions share theirs: each undoes the other).
const EXEC_PARAMS: &[ParamSpec] = &[
    required("command", AbsolutePath),
    optional("args", StringList),
];
const HTTP_POST_PARAMS: &[ParamSpec] = &[
    required("url", Url),
    optional("body", Json),
    optional("secret", SecretName),
];
const NOTIFY_PARAMS: &[ParamSpec] = &[
    required("message", ParamKind::String),
    optional("priority", Priority),
    optional("webhook", Url),
];
const FILE_PARAMS: &[ParamSpec] = &[required("path", AbsolutePath)];
const PROCESS_KILL_PARAMS: &[ParamSpec] = &[
    required("pid", Integer),
    optional("signal", Signal),
    // Guards against PID reuse: the process must still be the one the decision named.
    optional("start_time", Integer),
    optional("executable", AbsolutePath),
];
const BLOCK_PARAMS: &[ParamSpec] = &[
    required("address", IpOrCidr),
    optional("timeout", ParamKind::Duration),
];
const UNBLOCK_PARAMS: &[ParamSpec] = &[required("address", IpOrCidr)];

pub static NOOP: ActionSpec = action("noop", Low, By("noop"), &[]);
pub static EXEC: ActionSpec = action("exec", High, PlaybookDefined, EXEC_PARAMS);
pub static HTTP_POST: ActionSpec = action("http.post", Moderate, PlaybookDefined, HTTP_POST_PARAMS);
pub static NOTIFY: ActionSpec = action("notify", Low, NotUndoable, NOTIFY_PARAMS);
pub static FILE_QUARANTINE: ActionSpec =
    action("file.quarantine", Moderate, By("file.restore"), FILE_PARAMS);
pub static FILE_RESTORE: ActionSpec =
    action("file.restore", Moderate, By("file.quarantine"), FILE_PARAMS);
pub static PROCESS_KILL: ActionSpec =
    action("process.kill", High, NotUndoable, PROCESS_KILL_PARAMS);
pub static NET_BLOCK_IP: ActionSpec =
    action("net.block_ip", High, By("net.unblock_ip"), BLOCK_PARAMS);
pub static NET_UNBLOCK_IP: ActionSpec = action(
    "net.unblock_ip",
    Moderate,
    By("net.block_ip"),
    UNBLOCK_PARAMS,
);

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
