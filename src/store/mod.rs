//! PostgreSQL: the connection pool for reads, the migrator, the audit writer through which
//! every state change is committed together with its audit event, and one module per aggregate
//! that holds all the SQL for its tables:
//!
//! | module | tables |
//! |---|---|
//! | [`executions`] | `playbook_executions` |
//! | [`steps`], [`undos`] | `playbook_step_runs`, `playbook_rollback_states` |
//! | [`gates`] | `playbook_approval_gates`, `playbook_approvals` |
//! | [`halts`] | `playbook_safe_halt_state` |
//! | [`nonces`] | `playbook_nonces` |
//! | [`nodes`] | `playbook_nodes` |
//! | [`versions`] | `playbook_versions`, `playbook_version_signatures` |
//! | [`scratch`] | a throwaway database with an install's two roles, for the bench and the tests |
//!
//! The per-run modules stand in layers, and none imports one above it: `rows` at the bottom
//! (what they all share: the checks on a run's row, the step-index codec, an effect run as this
//! node), then [`halts`], [`steps`], [`executions`], [`undos`] and [`gates`], and [`joint`] on
//! top, for the changes that by nature span several of them (a rollback's start, entering
//! SAFE-HALT), each made through the owning modules' functions. [`chain`] holds the audit chain's
//! head and clock, which the writer ([`audit`]) and the [`anchor`] both use.
//!
//! States are decoded once, here, into the enums of [`model`]; every state change is a guarded
//! UPDATE from [`transitions`], made in one audit transaction with its event.

// A new state must fail to compile wherever something is decided about it.
#![deny(clippy::wildcard_enum_match_arm)]

pub mod anchor;
pub mod audit;
pub mod chain;
pub mod checkpoint;
pub mod evidence;
pub mod executions;
pub mod gates;
pub mod halts;
pub mod joint;
pub mod migrate;
pub mod model;
pub mod nodes;
pub mod nonces;
pub mod privileges;
pub(crate) mod rows;
pub mod scratch;
pub mod steps;
pub mod transitions;
pub mod undos;
pub mod verify;
pub mod versions;
pub mod wakeups;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

/// Failures talking to PostgreSQL. Each variant says which operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to PostgreSQL at {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("timed out connecting to PostgreSQL at {endpoint}")]
    ConnectTimeout { endpoint: String },
    #[error("no database connection available from the pool")]
    Pool(#[source] deadpool_postgres::PoolError),
    #[error("failed to build the database pool")]
    BuildPool(#[source] deadpool_postgres::BuildError),
    #[error("database query failed")]
    Query(#[from] tokio_postgres::Error),
    /// A statement that wrote the rows of several requests at once failed
    /// (`store::audit::SetRow`): each of them sees its error.
    #[error("database query failed (a statement writing the rows of several requests)")]
    QueryTogether(#[source] std::sync::Arc<tokio_postgres::Error>),
    #[error("failed to apply migrations")]
    Migrate(#[source] refinery::Error),
    #[error(
        "cannot act as the owner role `{role}` (SET ROLE); the connected role must be a member of it"
    )]
    SetRole {
        role: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "runtime role `{role}` does not exist; create it first, as a superuser: CREATE ROLE {role} LOGIN"
    )]
    NoSuchRole { role: String },
    #[error("failed to grant the runtime privileges to `{role}`")]
    Grant {
        role: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("stored {what} is invalid: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("no {what} {detail}")]
    NotFound { what: &'static str, detail: String },
    /// A guarded change matched no row: the row is not in a state the transition table allows
    /// the change from.
    #[error("{what} {id} is `{from}`: {to} is not allowed from there")]
    Transition {
        what: &'static str,
        id: String,
        from: String,
        to: &'static str,
    },
    /// A host acts only for its own runs.
    #[error(
        "execution {execution_id} belongs to node `{owner}`, not to this node (`{node_id}`): \
         send the request to node `{owner}`"
    )]
    OtherNode {
        execution_id: uuid::Uuid,
        owner: String,
        node_id: String,
    },
    /// The nonce was used before; with its first use when the refusing transaction read it
    /// (`None` after a unique violation, which leaves nothing to read in that transaction).
    #[error("replay: this nonce has been used before")]
    Replay(Option<nonces::FirstUse>),
    /// The database lost rows this node committed: nothing is appended on top of the cut.
    #[error("{0}; an admin stops the daemon and runs `{cmd}`", cmd = anchor::ACCEPT_COMMAND)]
    ChainCut(Box<anchor::ChainLoss>),
    /// A SAFE-HALT is in force; the change was refused inside its transaction.
    #[error("{0}; an admin clears it with `{cmd}`", cmd = .0.clear_command())]
    Halted(Box<halts::ActiveHalt>),
}

/// Read access to the database through a bounded pool.
///
/// Writes that change state go through [`audit::AuditHandle`] instead, so that each one is
/// committed together with its audit event.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
}

impl Store {
    /// Builds the pool and proves the database answers, or says which endpoint did not.
    pub async fn connect(
        pg: &tokio_postgres::Config,
        max_size: usize,
        timeout: Duration,
    ) -> Result<Store, StoreError> {
        let manager = Manager::from_config(
            pg.clone(),
            NoTls,
            ManagerConfig {
                // Verified: a connection that died while idle is noticed before it is handed out.
                recycling_method: RecyclingMethod::Verified,
            },
        );
        // Explicit timeouts: without them a frozen database hangs `pool.get()` forever.
        let pool = Pool::builder(manager)
            .max_size(max_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(StoreError::BuildPool)?;
        let store = Store { pool };
        store.ping(pg).await?;
        Ok(store)
    }

    /// The pool, for modules that run their own read queries.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A pooled connection, or an error naming why none could be had.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(StoreError::Pool)
    }

    /// Checks that the database answers a trivial query.
    // The pool's error enum is the driver's, not a state of ours: the other variants are one case.
    #[allow(clippy::wildcard_enum_match_arm)]
    pub async fn ping(&self, pg: &tokio_postgres::Config) -> Result<(), StoreError> {
        let client = self.pool.get().await.map_err(|error| match error {
            deadpool_postgres::PoolError::Backend(source) => StoreError::Connect {
                endpoint: endpoint(pg),
                source,
            },
            deadpool_postgres::PoolError::Timeout(_) => StoreError::ConnectTimeout {
                endpoint: endpoint(pg),
            },
            other => StoreError::Pool(other),
        })?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }
}

/// The statements that write the rows of several runs at once ([`audit::SetRow::MANY`]), with
/// the parameters of `rows` of each: the rows of a step's end, of a step's start with its run,
/// and of a run's change of state, for those `runs` and their first step. For the test that
/// checks how they are planned (`tests/it/store.rs`).
#[doc(hidden)]
pub fn set_row_statements(
    runs: &[uuid::Uuid],
    node_id: &str,
) -> Vec<(&'static str, audit::TypedParams)> {
    use audit::SetRow;
    vec![
        (
            steps::AttemptEnd::MANY,
            steps::AttemptEnd::many(&steps::attempt_ends(runs)),
        ),
        (
            steps::RunAndStepStart::MANY,
            steps::RunAndStepStart::many(&steps::run_and_step_starts(runs, node_id)),
        ),
        (
            executions::RunStateChange::MANY,
            executions::RunStateChange::many(&executions::completions(runs, node_id)),
        ),
    ]
}

/// Opens one dedicated connection (not pooled), with a deadline, and drives it in the background.
pub async fn connect_single(
    pg: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, StoreError> {
    let deadline = pg
        .get_connect_timeout()
        .copied()
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let attempt = tokio::time::timeout(deadline, pg.connect(NoTls)).await;
    let (client, connection) = match attempt {
        Ok(Ok(pair)) => pair,
        Ok(Err(source)) => {
            return Err(StoreError::Connect {
                endpoint: endpoint(pg),
                source,
            });
        }
        Err(_) => {
            return Err(StoreError::ConnectTimeout {
                endpoint: endpoint(pg),
            });
        }
    };
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(error = %error, "database connection closed");
        }
    });
    Ok(client)
}

/// `host:port[,host:port…]` of a connection config, for error messages (never the password).
pub fn endpoint(pg: &tokio_postgres::Config) -> String {
    let ports = pg.get_ports();
    pg.get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                tokio_postgres::config::Host::Unix(dir) => {
                    format!("{}/.s.PGSQL.{port}", dir.display())
                }
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
