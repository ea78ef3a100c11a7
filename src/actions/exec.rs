//! `exec`: runs an allowlisted program with an argv built from the step's parameters, never
//! through a shell, in a scrubbed environment, in its own process group that is killed at the
//! deadline or on cancel.
//!
//! Options are the playbook author's, never the decision's. Each rendered template stays one
//! argv element (no word splitting), but an element whose first character comes from the
//! decision could still be read as an option (`--version`, `-i`, `--output=/etc/x`). Such an
//! element — one that begins with a `{{ … }}` template — must not render to a value starting
//! with `-` unless a literal `"--"` element comes before it in `args`: after `--` a program
//! reads only operands (POSIX utility syntax guideline 10). [`find_option_injection`] finds the
//! first violation; intake refuses a decision that would cause one, before anything runs.
//! There is deliberately no way to let a decision choose an option.
//!
//! Children get nothing: each runs through `setpriv(1)` as `actions.exec.run_as` (never the
//! daemon's uid, so it cannot read the node key or the daemon's files, reach its database role
//! by peer authentication, or pass intake's peer check as the daemon), with no supplementary
//! groups, empty inheritable, ambient and bounding capability sets, and `no_new_privs` (no
//! setuid program or file capability can give any back). `setpriv` does in the child what a
//! `pre_exec` hook would, without `unsafe` in this crate. Switching user needs the daemon to
//! hold CAP_SETUID/CAP_SETGID (root): a daemon that cannot switch refuses to run the step
//! rather than run it as itself. Under systemd the daemon holds nothing, so children start
//! through the exec runner instead (`actions.exec.runner_socket`, see [`super::exec_runner`]),
//! as the runner unit's user.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::json;
use tokio::process::Command;

use super::child::run_captured;
use super::{
    Action, ActionContext, ActionError, ActionFuture, ActionOutput, ActionSpec, limits, params,
};
use crate::config::{ExecActionConfig, UserName};
use crate::registry::template::{self, Reference, Segment, TemplateContext};
use crate::sys;

/// The `exec` action.
pub struct Exec {
    allowed_commands: BTreeSet<PathBuf>,
    transient_exit_codes: BTreeSet<i32>,
    /// The user children run as (when the daemon starts them itself).
    run_as: UserName,
    /// The exec runner (`playbookd-exec.socket`); when set, children start there.
    runner_socket: Option<PathBuf>,
}

impl Exec {
    /// From `[actions.exec]`.
    pub fn new(config: &ExecActionConfig) -> Exec {
        Exec {
            allowed_commands: config.allowed_commands.clone(),
            transient_exit_codes: config.transient_exit_codes.clone(),
            run_as: config.run_as.clone(),
            runner_socket: config.runner_socket.clone(),
        }
    }

    async fn run(
        &self,
        params: &serde_json::Value,
        ctx: &ActionContext,
    ) -> Result<ActionOutput, ActionError> {
        let command = params::absolute_path(params, "command")?;
        // The same rule the registry applied at load; here on the rendered value.
        limits::check_exec_command(&command, &self.allowed_commands)
            .map_err(|refusal| ActionError::Permanent(refusal.to_string()))?;
        let args = params::optional_string_list(params, "args")?;
        if args.iter().any(|arg| arg.contains('\0')) {
            return Err(ActionError::Permanent(
                "parameter `args` contains a NUL byte".into(),
            ));
        }
        let env = [
            ("PLAYBOOKD_IDEMPOTENCY_KEY", ctx.idempotency_key_hex()),
            ("PLAYBOOKD_EXECUTION_ID", ctx.execution_id.to_string()),
            ("PLAYBOOKD_STEP_ID", ctx.step_id.clone()),
        ];
        let finished = match &self.runner_socket {
            Some(socket) => {
                let request = super::exec_runner::RunRequest {
                    command: command.clone(),
                    args: args.clone(),
                    env: env
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), v.clone()))
                        .collect(),
                    timeout_ms: u64::try_from(
                        ctx.deadline
                            .saturating_duration_since(tokio::time::Instant::now())
                            .as_millis(),
                    )
                    .unwrap_or(u64::MAX),
                };
                super::exec_runner::run_via(socket, &request, ctx).await?
            }
            None => {
                let mut cmd = unprivileged_command(&self.run_as)?;
                cmd.arg(&command).args(&args).envs(env);
                run_captured(cmd, None, ctx).await?
            }
        };
        let summary = json!({
            "command": command,
            "exit_code": finished.status.code(),
            "stdout": finished.stdout.to_json(),
            "stderr": finished.stderr.to_json(),
        });
        match finished.status.code() {
            Some(0) => Ok(ActionOutput::new(summary)),
            Some(code) => {
                let message = format!(
                    "{} exited with status {code}{}",
                    command.display(),
                    finished.stderr.excerpt()
                );
                if self.transient_exit_codes.contains(&code) {
                    Err(ActionError::Transient(message))
                } else {
                    Err(ActionError::Permanent(message))
                }
            }
            None => Err(ActionError::Permanent(format!(
                "{} was killed by a signal{}",
                command.display(),
                finished.stderr.excerpt()
            ))),
        }
    }
}

impl Action for Exec {
    fn spec(&self) -> &'static ActionSpec {
        &super::specs::EXEC
    }

    fn execute<'a>(
        &'a self,
        params: &'a serde_json::Value,
        ctx: &'a ActionContext,
    ) -> ActionFuture<'a> {
        Box::pin(self.run(params, ctx))
    }
}

/// An `exec` argument whose first character the decision chose and that would be read as an
/// option (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionInjection {
    /// Its index in `args`.
    pub index: usize,
    /// The references in that argument (what the decision filled in).
    pub references: Vec<Reference>,
}

impl std::fmt::Display for OptionInjection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.references.iter().map(ToString::to_string).collect();
        write!(
            f,
            "args[{}] ({}) would start with `-` and be read as an option; the playbook must put \"--\" before it",
            self.index,
            names.join(", ")
        )
    }
}

/// The first element of `args` (the unrendered `with.args` of an `exec` step or undo) that
/// begins with a template, comes before any literal `"--"` element, and renders in `ctx` to a
/// value starting with `-`. Elements that do not render (a missing optional input) are left to
/// fail when the step runs.
pub fn find_option_injection(
    args: Option<&serde_json::Value>,
    ctx: &TemplateContext<'_>,
) -> Option<OptionInjection> {
    let items = args?.as_array()?;
    for (index, item) in items.iter().enumerate() {
        let Some(text) = item.as_str() else {
            continue;
        };
        if text == END_OF_OPTIONS {
            return None;
        }
        let Ok(segments) = template::segments(text) else {
            continue;
        };
        if !matches!(segments.first(), Some(Segment::Template(_))) {
            continue;
        }
        let rendered = template::render(item, ctx);
        let starts_with_dash = match &rendered {
            Ok(serde_json::Value::String(value)) => value.starts_with('-'),
            // A standalone template of a number renders as a number, which argv cannot take.
            Ok(other) => other.to_string().starts_with('-'),
            Err(_) => false,
        };
        if starts_with_dash {
            let references = segments
                .into_iter()
                .filter_map(|segment| match segment {
                    Segment::Template(reference) => Some(reference),
                    Segment::Text(_) => None,
                })
                .collect();
            return Some(OptionInjection { index, references });
        }
    }
    None
}

/// The argument after which a program reads only operands.
pub const END_OF_OPTIONS: &str = "--";

/// A `setpriv` command line that runs what follows `--` as `user` with no privilege; append
/// the program and its arguments.
fn unprivileged_command(user: &str) -> Result<Command, ActionError> {
    let account = nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .ok_or_else(|| {
            ActionError::Permanent(format!(
                "actions.exec.run_as: no user `{user}` on this host"
            ))
        })?;
    if account.uid.as_raw() == sys::effective_uid() {
        return Err(ActionError::Permanent(format!(
            "actions.exec.run_as `{user}` is the daemon's own uid: children must not share it"
        )));
    }
    // Switching uid needs CAP_SETUID and CAP_SETGID (root): without them, refuse here with the
    // reason rather than let setpriv fail with a bare EPERM.
    if !nix::unistd::geteuid().is_root() {
        return Err(ActionError::Permanent(format!(
            "exec children run as `{user}`, and this daemon (uid {}) cannot switch to it; start it as root or with CAP_SETUID and CAP_SETGID",
            sys::effective_uid()
        )));
    }
    let mut cmd = Command::new(SETPRIV);
    cmd.arg(format!("--reuid={}", account.uid))
        .arg(format!("--regid={}", account.gid))
        .args([
            "--clear-groups",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
        ]);
    Ok(cmd)
}

/// util-linux's `setpriv`, present on every Debian system (util-linux is essential).
const SETPRIV: &str = "/usr/bin/setpriv";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::template::DecisionFields;
    use serde_json::json;

    fn find(args: serde_json::Value, subject: serde_json::Value) -> Option<OptionInjection> {
        let subject = subject.as_object().cloned().unwrap();
        let ctx = TemplateContext {
            subject: &subject,
            decision: DecisionFields {
                decision_id: "-d",
                policy: "p",
                outcome: "o",
                org_id: "acme",
                severity: "high",
            },
            execution_id: uuid::Uuid::nil(),
        };
        find_option_injection(Some(&args), &ctx)
    }

    #[test]
    fn a_decision_cannot_start_an_argument_with_a_dash() {
        let hit = find(
            json!(["--lock", "{{ subject.user }}"]),
            json!({"user": "--help"}),
        )
        .unwrap();
        assert_eq!(hit.index, 1);
        assert_eq!(hit.references, vec![Reference::Subject("user".into())]);
        assert!(hit.to_string().contains("\"--\""));
        assert!(find(json!(["{{ subject.n }}/x"]), json!({"n": -5})).is_some());
        assert!(
            find(
                json!(["{{ subject.a }}{{ subject.b }}"]),
                json!({"a": "", "b": "-x"})
            )
            .is_some()
        );
        assert!(find(json!(["{{ decision.decision_id }}"]), json!({})).is_some());
    }

    #[test]
    fn after_end_of_options_or_behind_the_authors_text_a_dash_is_an_operand() {
        assert_eq!(
            find(
                json!(["--lock", "--", "{{ subject.user }}"]),
                json!({"user": "-x"})
            ),
            None
        );
        assert_eq!(
            find(json!(["--user={{ subject.user }}"]), json!({"user": "-x"})),
            None
        );
        assert_eq!(
            find(json!(["./{{ subject.user }}"]), json!({"user": "-x"})),
            None
        );
        assert_eq!(
            find(json!(["{{ subject.user }}"]), json!({"user": "alice"})),
            None
        );
        // A missing optional input fails when the step runs, not here.
        assert_eq!(find(json!(["{{ subject.user }}"]), json!({})), None);
    }
}
