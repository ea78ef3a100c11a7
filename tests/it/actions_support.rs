//! Shared fixtures for the action tests: a context, and the enabled actions from a config.

use std::time::Duration;

use playbookd::actions::{ActionContext, ActionError, ActionOutput, Actions};
use playbookd::config::ActionsConfig;
use tokio_util::sync::CancellationToken;

pub fn ctx(within: Duration) -> ActionContext {
    let execution_id = uuid::Uuid::new_v4();
    let mut idempotency_key = [0u8; 32];
    rand::Rng::fill(&mut rand::thread_rng(), &mut idempotency_key);
    ActionContext {
        execution_id,
        step_id: "step-1".into(),
        org_id: "acme".into(),
        idempotency_key,
        deadline: tokio::time::Instant::now() + within,
        cancel: CancellationToken::new(),
    }
}

/// A context with `seconds` until its deadline.
pub fn within(seconds: u64) -> ActionContext {
    ctx(Duration::from_secs(seconds))
}

/// How an action must fail.
#[derive(Debug, Clone, Copy)]
pub enum Fails {
    Transient,
    Permanent,
}

/// Asserts that `result` is a failure of `class` whose message contains every one of `says`,
/// and returns the message.
#[track_caller]
pub fn assert_fails<T: std::fmt::Debug>(
    result: Result<T, ActionError>,
    class: Fails,
    says: &[&str],
) -> String {
    let error = match result {
        Ok(output) => panic!("expected a {class:?} failure saying {says:?}, got {output:?}"),
        Err(error) => error,
    };
    let message = match (&error, class) {
        (ActionError::Transient(m), Fails::Transient)
        | (ActionError::Permanent(m), Fails::Permanent) => m.clone(),
        _ => panic!("expected a {class:?} failure saying {says:?}, got {error}"),
    };
    for part in says {
        assert!(message.contains(part), "expected {part:?} in: {error}");
    }
    message
}

pub async fn run(
    config: &ActionsConfig,
    action: &str,
    params: serde_json::Value,
    ctx: &ActionContext,
) -> Result<ActionOutput, ActionError> {
    let actions = Actions::from_config(config).expect("actions");
    actions
        .get(action)
        .unwrap_or_else(|| panic!("action {action} is not registered"))
        .execute(&params, ctx)
        .await
}

pub fn is_root() -> bool {
    playbookd::sys::effective_uid() == 0
}

/// Whether a test that needs root for `what` (a mount, a namespace) can run here; when it
/// cannot, it says it is skipped (and the caller returns).
pub fn root_for(what: &str) -> bool {
    let root = is_root();
    if !root {
        eprintln!("skipped: {what} needs root");
    }
    root
}

/// Runs a setup command the test needs (ip, mount); panics with its stderr on failure.
pub fn must(argv: &[&str]) {
    let output = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(
        output.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A real `playbookd actuator` (the binary under test) on a socket in a temp dir, serving
/// `daemon_user`; killed when dropped.
pub struct TestActuator {
    pub child: std::process::Child,
    pub socket: std::path::PathBuf,
    pub dir: tempfile::TempDir,
}

/// What the actuator under test may act on.
pub struct ActuatorSetup<'a> {
    pub daemon_user: &'a str,
    pub nft_command: Vec<String>,
    pub never_block: &'a [&'a str],
    pub quarantine_dir: Option<std::path::PathBuf>,
    pub roots: Vec<std::path::PathBuf>,
}

impl Default for ActuatorSetup<'_> {
    fn default() -> Self {
        ActuatorSetup {
            daemon_user: "root",
            nft_command: vec!["/usr/sbin/nft".into()],
            never_block: &[],
            quarantine_dir: None,
            roots: Vec::new(),
        }
    }
}

impl TestActuator {
    pub fn start(setup: ActuatorSetup<'_>) -> TestActuator {
        let dir = tempfile::Builder::new()
            .prefix("pbd-actuator-")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("actuator.sock");
        let quarantine = setup
            .quarantine_dir
            .unwrap_or_else(|| dir.path().join("quarantine"));
        let list = |items: Vec<String>| {
            items
                .iter()
                .map(|i| format!("{i:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let config = format!(
            "[actions.net]\nnft_command = [{}]\nnever_block = [{}]\n\
             [actions.file]\nquarantine_dir = {:?}\nroots = [{}]\n\
             [actuator]\nsocket = {:?}\ndaemon_user = {:?}\n",
            list(setup.nft_command),
            list(setup.never_block.iter().map(|s| (*s).to_owned()).collect()),
            quarantine.display().to_string(),
            list(
                setup
                    .roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect()
            ),
            socket.display().to_string(),
            setup.daemon_user,
        );
        let config_path = dir.path().join("actuator.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("actuator.log")).unwrap();
        let child = std::process::Command::new(crate::helpers::binary())
            .args(["actuator", "--config"])
            .arg(&config_path)
            .env("PLAYBOOKD_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn playbookd actuator");
        let mut actuator = TestActuator { child, socket, dir };
        let start = std::time::Instant::now();
        while !actuator.log_text().contains("playbookd actuator ready") {
            if let Ok(Some(status)) = actuator.child.try_wait() {
                panic!("actuator exited ({status}):\n{}", actuator.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "actuator not ready:\n{}",
                actuator.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        actuator
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("actuator.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs one action through this actuator.
    /// [`Self::run`] of a file action on `{"path": path}`, which must succeed.
    pub async fn on_path(
        &self,
        config: &ActionsConfig,
        action: &str,
        path: &std::path::Path,
        ctx: &ActionContext,
    ) -> ActionOutput {
        self.run(config, action, serde_json::json!({ "path": path }), ctx)
            .await
            .unwrap_or_else(|e| panic!("{action} {}: {e}", path.display()))
    }

    pub async fn run(
        &self,
        config: &ActionsConfig,
        action: &str,
        params: serde_json::Value,
        ctx: &ActionContext,
    ) -> Result<ActionOutput, ActionError> {
        let actions = Actions::with_actuator(config, &self.socket).expect("actions");
        actions
            .get(action)
            .unwrap_or_else(|| panic!("action {action} is not registered"))
            .execute(&params, ctx)
            .await
    }

    /// Like [`TestActuator::run`], with a fresh context and 10 s to finish.
    pub async fn act(
        &self,
        config: &ActionsConfig,
        action: &str,
        params: serde_json::Value,
    ) -> Result<ActionOutput, ActionError> {
        self.run(config, action, params, &within(10)).await
    }

    /// Sends one raw line and returns the raw reply line (the protocol without the daemon's
    /// own checks in front).
    pub fn raw(&self, line: &[u8]) -> String {
        use std::io::{BufRead, Write};
        let mut stream = std::os::unix::net::UnixStream::connect(&self.socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(line).unwrap();
        stream.write_all(b"\n").unwrap();
        let mut reply = String::new();
        std::io::BufReader::new(&stream)
            .read_line(&mut reply)
            .unwrap();
        reply
    }
}

impl Drop for TestActuator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `program` run as `nobody` with no supplementary group, no capability in any set and
/// `no_new_privs`, as systemd starts a unit with `User=`, `CapabilityBoundingSet=` and
/// `NoNewPrivileges=yes`.
pub fn as_nobody_with_nothing(program: &std::path::Path) -> std::process::Command {
    let mut command = std::process::Command::new("/usr/bin/setpriv");
    command
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
        ])
        .arg(program);
    command
}
