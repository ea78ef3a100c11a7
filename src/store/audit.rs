//! The hash-chained audit log and the single writer that commits every state change with it.
//!
//! # Chain
//! Each node keeps its own chain in `playbook_audit_log`. Row `seq` (from 1) stores
//! `hash = SHA-256(prev_hash ‖ canonical(row))` where `prev_hash` is the previous row's hash
//! (32 zero bytes for seq 1) and `canonical(row)` is the RFC 8785 (JCS) serialization of
//!
//! ```json
//! {"created_at":"2026-11-24T14:54:15.123456Z","event_data":{…},"event_type":"…","node_id":"…","seq":1}
//! ```
//!
//! `created_at` is UTC with exactly six fractional digits, as PostgreSQL stores it.
//!
//! # Writer
//! One task owns one dedicated connection that holds a session advisory lock for the node id,
//! so there is exactly one writer per chain and chains never fork. Callers send it an
//! request ([`AuditHandle::append_with`]): an optional transactional effect (SQL that changes state) plus the audit event
//! that describes it. Concurrent appends are batched into one transaction (group commit), each
//! effect in its own savepoint so one caller's failed effect does not fail the others. A caller's
//! future resolves only after COMMIT: when it returns `Ok`, the change and its audit record are
//! both durable; when it returns `Err`, the caller must not act.
//!
//! A batch costs few round trips: the savepoint commands travel in the same flight as the
//! effect's first statement (nothing is awaited between them), effects run statements prepared
//! once per connection ([`Tx`]), and the batch's audit rows are one INSERT (`unnest` of arrays)
//! sent together with the last savepoint's release, then COMMIT.
//!
//! A batch (even of one request) is first written without savepoints, the effects of requests
//! in different [`Scope`]s side by side and the jobs of one request side by side too (their
//! statements pipelined on the one connection, a request's reaching the server in its order),
//! so that the batch's outcome and chain order are those of running its requests one by one in
//! batch order, each request's jobs one by one; if any effect fails there, that attempt is
//! rolled back and the batch is written again the savepoint way above (effects are `Fn`, so
//! they can run again).
//!
//! While a batch's COMMIT is in flight, the next batch's effects run on a second connection of
//! the writer, when none of its requests can see what the committing batch changed; it commits
//! only after that batch committed, and fails with it (see `Writer::run`).
//!
//! A lone request whose every append is foreseen ([`Body::foreseen`]: its records known before
//! its statements run, and those statements raising unless they do what the records say) is
//! written before any of that as one statement: the checked statements' changes and the INSERT
//! of the records, its own transaction (`write_in_one_flight`). Any surprise rolls it back and
//! the request is written as above. A run's records are foreseen (its admission, each step's
//! start and end, its state changes), so a lone run costs one round trip per transaction.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};
use tokio_util::sync::CancellationToken;

use crate::merkle::{self, Frontier};
use crate::store::anchor::{Anchor, ChainLoss, OpenCheck, RecordedCut};
use crate::store::chain::{ChainHead, GENESIS_HASH, now_micros};
use crate::store::{StoreError, connect_single};

mod together;
use together::Together;
pub use together::{Params, SetRow, TypedParams, column, refs};

/// Who caused an event: a peer on one of the sockets, or the daemon itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    System,
    Uid(u32),
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::System => f.write_str("system"),
            Actor::Uid(uid) => write!(f, "uid:{uid}"),
        }
    }
}

/// One audit event before it is chained. Never put a secret in `data`: hash it.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub event_type: &'static str,
    pub actor: Actor,
    pub execution_id: Option<uuid::Uuid>,
    pub data: Map<String, Value>,
    /// A refusal because of a SAFE-HALT read in memory or in the database. Not stored: where
    /// such an event stands in the chain says when the halt was seen, which only the writer's
    /// savepoint path orders (see [`prepare_pipelined`]).
    halt_refusal: bool,
}

impl AuditEvent {
    pub fn new(event_type: &'static str, actor: Actor) -> AuditEvent {
        AuditEvent {
            event_type,
            actor,
            execution_id: None,
            data: Map::new(),
            halt_refusal: false,
        }
    }

    /// Marks the event as a refusal read from the SAFE-HALT state: the writer then writes its
    /// batch one request at a time (see `prepare_pipelined`).
    pub fn refused_by_halt(mut self) -> AuditEvent {
        self.halt_refusal = true;
        self
    }

    pub fn execution(mut self, id: uuid::Uuid) -> AuditEvent {
        self.execution_id = Some(id);
        self
    }

    /// Adds one field to the event data.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> AuditEvent {
        self.data.insert(key.to_owned(), value.into());
        self
    }

    /// The event with every string of its data made storable ([`crate::text`]): what the
    /// writer hashes and stores, so no content can make an append fail.
    pub fn into_storable(mut self) -> AuditEvent {
        self.data = crate::text::storable_map(self.data);
        self
    }

    /// The JSON stored in `event_data`: the fields plus `actor` and `execution_id`.
    pub fn to_event_data(&self) -> Value {
        let mut data = self.data.clone();
        data.insert("actor".into(), Value::String(self.actor.to_string()));
        if let Some(id) = self.execution_id {
            data.insert("execution_id".into(), Value::String(id.to_string()));
        }
        Value::Object(data)
    }
}

/// SQL that changes state, run inside the audit transaction. It returns the event describing
/// what it did (which may depend on what it found, e.g. a nonce already used) and a typed
/// result for the caller, so nothing has to be re-read from the event's JSON.
///
/// `Fn`, not `FnOnce`: the writer may run an effect more than once (a batch whose attempt
/// failed is rolled back and written again), so an effect clones what it captured on each
/// call and must do nothing outside the transaction that cannot be repeated.
pub type Effect<T> = Box<
    dyn for<'t> Fn(&'t Tx<'t>) -> BoxFuture<'t, Result<(AuditEvent, T), StoreError>> + Send + Sync,
>;

/// An [`Effect`] whose statement changes what several records describe (a run's start and its
/// first step's start, see `steps::record_first_start_after`): it returns them all, in the
/// order they happened, and the writer chains them in that order, in the effect's place.
pub type RecordsEffect<T> = Box<
    dyn for<'t> Fn(&'t Tx<'t>) -> BoxFuture<'t, Result<(Records, T), StoreError>> + Send + Sync,
>;

/// The events one effect records, in the order they happened: chained one after another in
/// its transaction. Its caller is answered with the last one's row.
#[derive(Debug, Clone)]
pub struct Records {
    earlier: Vec<AuditEvent>,
    last: AuditEvent,
}

impl Records {
    /// `earlier`, then `last`.
    pub fn after(earlier: impl IntoIterator<Item = AuditEvent>, last: AuditEvent) -> Records {
        Records {
            earlier: earlier.into_iter().collect(),
            last,
        }
    }

    fn len(&self) -> usize {
        self.earlier.len() + 1
    }

    fn iter(&self) -> impl Iterator<Item = &AuditEvent> {
        self.earlier.iter().chain(std::iter::once(&self.last))
    }
}

impl From<AuditEvent> for Records {
    fn from(last: AuditEvent) -> Records {
        Records {
            earlier: Vec::new(),
            last,
        }
    }
}

/// What an append's effect may change, so that the writer knows which effects it may run side
/// by side in one transaction (see `prepare_pipelined`). Declaring a scope narrower than what the
/// effect touches breaks the serial equivalence of batches: when in doubt, [`Scope::Global`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Nothing: the event only.
    Event,
    /// The rows of this run only (the run, its steps, gates, votes, undos and its nonce). The
    /// effect may read rows that only [`Scope::Global`] effects change (the halts).
    Execution(uuid::Uuid),
    /// Anything: runs alone in its batch, after what was queued before it and before what
    /// was queued after it.
    Global,
}

impl Scope {
    /// The scope of a request holding jobs of both scopes.
    fn join(self, other: Scope) -> Scope {
        match (self, other) {
            (Scope::Event, scope) | (scope, Scope::Event) => scope,
            (Scope::Execution(a), Scope::Execution(b)) if a == b => self,
            _ => Scope::Global,
        }
    }
}

/// [`Tx`]'s `execute` and `query*`: each the client's method of that name, sent with the
/// statement prepared once per connection, after the request's order guard has seen it.
macro_rules! through_statement_cache {
    ($($method:ident -> $output:ty;)+) => {$(
        pub async fn $method(
            &self,
            sql: &str,
            params: &[&(dyn ToSql + Sync)],
        ) -> Result<$output, tokio_postgres::Error> {
            let statement = self.statement(sql).await?;
            self.sending();
            self.transaction.$method(&statement, params).await
        }
    )+};
}

/// The transaction an effect runs in. Its `execute` and `query*` take SQL text like a
/// client's but reuse a statement prepared once per writer connection: an unnamed statement
/// costs a round trip of its own on every call. The writer's client is reachable through
/// `Deref` (a helper taking a `GenericClient` still works, uncached); the writer opened the
/// transaction on it (its BEGIN travels with the first effect's first statement, see
/// `prepare_pipelined`), so whatever is sent through it is part of the batch's transaction.
///
/// The jobs of one request run side by side (see `run_request`): each statement sent through
/// `execute` or `query*` first checks that no later job of the request sent one before it.
/// Statements sent through the client itself are not seen one by one: reaching for it from
/// any job but the request's last sends the batch the savepoint way.
pub struct Tx<'t> {
    transaction: &'t Client,
    statements: &'t StatementCache,
    /// This job's place in its request, when the request's jobs run side by side.
    turn: Option<Turn>,
    /// Where rows of the requests side by side meet ([`Tx::query_set`]): in a pipelined attempt.
    together: Option<&'t Together>,
}

impl std::ops::Deref for Tx<'_> {
    type Target = Client;

    fn deref(&self) -> &Client {
        if let Some(turn) = &self.turn {
            turn.raw();
        }
        self.transaction
    }
}

impl<'t> Tx<'t> {
    fn new(transaction: &'t Client, statements: &'t StatementCache) -> Tx<'t> {
        Tx {
            transaction,
            statements,
            turn: None,
            together: None,
        }
    }

    /// A pipelined attempt's transaction: its requests' rows of one kind meet in `together`.
    fn side_by_side(
        transaction: &'t Client,
        statements: &'t StatementCache,
        together: &'t Together,
    ) -> Tx<'t> {
        Tx {
            together: Some(together),
            ..Tx::new(transaction, statements)
        }
    }

    /// The same transaction, for job `job` of a request whose jobs run side by side.
    fn in_turn(&self, order: &Arc<RequestOrder>, job: usize) -> Tx<'t> {
        Tx {
            transaction: self.transaction,
            statements: self.statements,
            turn: Some(Turn {
                order: Arc::clone(order),
                job,
            }),
            together: self.together,
        }
    }

    /// Called just before a statement is sent (nothing is awaited in between, so the
    /// statements reach the server in the order of these calls).
    fn sending(&self) {
        if let Some(turn) = &self.turn {
            turn.sending();
        }
    }

    /// The prepared statement for `sql`, prepared on first use by this connection.
    pub async fn statement(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement);
        }
        let statement = self.transaction.prepare(sql).await?;
        self.statements.insert(sql, &statement);
        Ok(statement)
    }

    through_statement_cache! {
        execute -> u64;
        query -> Vec<Row>;
        query_one -> Row;
        query_opt -> Option<Row>;
    }
}

/// A job's place among the jobs of its request when they run side by side (see `run_request`).
#[derive(Clone)]
struct Turn {
    order: Arc<RequestOrder>,
    job: usize,
}

impl Turn {
    /// Whether both are jobs of one request.
    fn same_request(&self, other: &Turn) -> bool {
        Arc::ptr_eq(&self.order, &other.order)
    }

    /// This job sends a statement now: out of order if a later job of the request sent one
    /// already (its effect then did not run after this one's, as the request says).
    fn sending(&self) {
        if self.order.latest.fetch_max(self.job, Ordering::Relaxed) > self.job {
            self.order.broken.store(true, Ordering::Relaxed);
        }
    }

    /// This job reaches for the client itself, whose statements are not seen one by one: in
    /// order only if no later job can send anything after them, i.e. for the request's last.
    fn raw(&self) {
        if self.job + 1 < self.order.jobs {
            self.order.broken.store(true, Ordering::Relaxed);
        }
        self.sending();
    }
}

/// The order guard of one request whose jobs run side by side: their statements must reach
/// the server job by job, in the request's order.
struct RequestOrder {
    jobs: usize,
    /// The latest job (by its place in the request) that sent a statement.
    latest: AtomicUsize,
    /// Set when a statement went out after a later job's: the attempt must not stand.
    broken: AtomicBool,
}

impl RequestOrder {
    fn new(jobs: usize) -> RequestOrder {
        RequestOrder {
            jobs,
            latest: AtomicUsize::new(0),
            broken: AtomicBool::new(false),
        }
    }
}

/// Statements prepared on the writer's connection, by SQL text. Dropped with the connection
/// (a statement belongs to its session). Bounded: SQL built at run time must not grow it.
#[derive(Default)]
pub struct StatementCache {
    statements: Mutex<HashMap<String, Statement>>,
}

impl StatementCache {
    fn get(&self, sql: &str) -> Option<Statement> {
        let statements = self.statements.lock().unwrap_or_else(|e| e.into_inner());
        statements.get(sql).cloned()
    }

    /// A writer connection's cache, the audit INSERT already prepared: it is never prepared
    /// inside a batch (see `insert_and_commit`).
    async fn for_writer(client: &Client) -> Result<StatementCache, tokio_postgres::Error> {
        let statements = StatementCache::default();
        statements.insert(INSERT_ROWS, &client.prepare(INSERT_ROWS).await?);
        Ok(statements)
    }

    fn insert(&self, sql: &str, statement: &Statement) {
        let mut statements = self.statements.lock().unwrap_or_else(|e| e.into_inner());
        if statements.len() < MAX_CACHED_STATEMENTS {
            statements.insert(sql.to_owned(), statement.clone());
        }
    }
}

/// What the writer reports back once the batch holding an append has committed.
#[derive(Debug, Clone)]
pub struct Appended {
    pub seq: i64,
    pub hash: [u8; 32],
    /// The event as written (an effect may have chosen it).
    pub event: AuditEvent,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Nothing was committed for this append; the effect's own error is the source.
    #[error("the change was refused by the database")]
    Effect(#[source] StoreError),
    /// The batch did not commit (or its outcome is unknown): treat as not written.
    #[error("the audit log is unavailable; nothing was recorded")]
    Unavailable(#[source] Option<StoreError>),
    #[error("the audit writer has stopped")]
    Stopped,
}

impl AppendError {
    /// The error a refused append gets while the chain is cut (see [`crate::store::anchor`]).
    fn chain_cut(loss: &ChainLoss) -> AppendError {
        AppendError::Unavailable(Some(StoreError::ChainCut(Box::new(loss.clone()))))
    }
}

/// The database or the audit log failed: nothing further was done, what was committed stands,
/// and the work that met it stays resumable.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// A read or a change outside the audit writer failed.
    #[error("database unavailable")]
    Store(#[from] StoreError),
    /// The audit writer did not commit the record (nor the change that went with it).
    #[error("audit log unavailable; nothing further was done")]
    Audit(#[from] AppendError),
}

#[derive(Debug, thiserror::Error)]
pub enum AuditStartError {
    #[error(
        "another playbookd already writes the audit chain of node `{node_id}` (its advisory lock is held); \
         give each daemon its own node_id"
    )]
    ChainLocked { node_id: String },
    /// The database lost rows this node committed; the cut is recorded in the anchor file.
    #[error(
        "SAFE-HALT: {loss}: nothing is appended on top of it. Preserve the database as evidence, run \
             `playbookd audit verify --anchor {anchor}`, then, with the daemon stopped, `{accept}`"
    )]
    ChainCut {
        loss: Box<ChainLoss>,
        anchor: String,
        accept: &'static str,
    },
    #[error("cannot use the chain anchor")]
    Anchor(#[source] crate::store::anchor::AnchorError),
    #[error("failed to open the audit chain of node `{node_id}`")]
    Store {
        node_id: String,
        #[source]
        source: StoreError,
    },
}

/// The committed chain head with the RFC 6962 root of the tree over rows 1..=`head.seq`: what a
/// checkpoint note signs ([`crate::note`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MerkleHead {
    pub head: ChainHead,
    pub root: merkle::Hash,
}

/// What the writer publishes and every handle reads.
struct Published {
    /// False while the writer has no working connection.
    available: AtomicBool,
    anchor: Option<Arc<Anchor>>,
    /// Notified after a commit holding an event that calls for a checkpoint at once.
    checkpoint_wanted: tokio::sync::Notify,
    /// The Merkle frontier, updated after each COMMIT, before the head. `None` while the stored
    /// chain it was seeded from had a gap or a row out of order: no tree head is then signed.
    tree: Mutex<Option<Frontier>>,
}

fn lock_frontier(tree: &Mutex<Option<Frontier>>) -> std::sync::MutexGuard<'_, Option<Frontier>> {
    // Only pushes run under this lock; none can leave the frontier half-updated.
    tree.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// True when `frontier` covers exactly the chain up to `head`.
fn frontier_matches(frontier: &Frontier, head: ChainHead) -> bool {
    u64::try_from(head.seq).is_ok_and(|seq| seq == frontier.size())
        && frontier.last().unwrap_or(GENESIS_HASH) == head.hash
}

/// Builds the frontier of `node_id`'s stored chain up to `head` from its chain hashes, streamed
/// in seq order (32 bytes a row; nothing but the frontier is kept). `Ok(None)` when the stored
/// rows do not form the chain 1..=`head.seq` ending at `head.hash`.
async fn seed_frontier(
    client: &tokio_postgres::Client,
    node_id: &str,
    head: ChainHead,
) -> Result<Option<Frontier>, tokio_postgres::Error> {
    use futures::TryStreamExt;
    let params: [&(dyn ToSql + Sync); 2] = [&node_id, &head.seq];
    let rows = client
        .query_raw(
            "SELECT seq, hash FROM playbook_audit_log WHERE node_id = $1 AND seq <= $2 ORDER BY seq",
            params,
        )
        .await?;
    futures::pin_mut!(rows);
    let mut frontier = Frontier::new();
    while let Some(row) = rows.try_next().await? {
        let seq: i64 = row.get(0);
        let hash: Vec<u8> = row.get(1);
        let (Ok(index), Ok(hash)) = (
            u64::try_from(seq - 1),
            <merkle::Hash>::try_from(hash.as_slice()),
        ) else {
            return Ok(None);
        };
        if frontier.push_at(index, &hash).is_err() {
            tracing::error!(
                node_id,
                seq,
                "the audit chain has a gap before seq {seq}: checkpoints carry no tree head until it is resolved"
            );
            return Ok(None);
        }
    }
    Ok(frontier_matches(&frontier, head).then_some(frontier))
}

/// An append prepared by [`AuditHandle::defer`], not sent yet.
pub struct Deferred {
    job: Box<dyn Job>,
    scope: Scope,
    /// `None` for an append whose outcome is answered to its own caller
    /// ([`AuditHandle::defer_answered_in`]): whoever sends it does not wait for it.
    response: Option<oneshot::Receiver<Result<(Appended, ()), AppendError>>>,
}

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deferred")
    }
}

/// Cheap, cloneable handle to the audit writer task.
#[derive(Clone)]
pub struct AuditHandle {
    sender: mpsc::Sender<Request>,
    node_id: Arc<str>,
    /// Updated by the writer after each COMMIT (and after reopening the chain), never before.
    head: watch::Receiver<ChainHead>,
    /// Set when the database lost rows this node committed: from then on nothing is appended.
    chain_loss: watch::Receiver<Option<ChainLoss>>,
    published: Arc<Published>,
}

impl AuditHandle {
    /// Appends one event with no other change. Resolves after COMMIT.
    pub async fn append(&self, event: AuditEvent) -> Result<Appended, AppendError> {
        let foreseen = event.clone();
        let effect: Effect<()> = Box::new(move |_tx| {
            let event = event.clone();
            Box::pin(async move { Ok((event, ())) })
        });
        let body = Body::from(effect).foreseen(Box::new(move || {
            Some(Foreseen {
                records: foreseen.clone().into(),
                value: (),
                checked: Vec::new(),
            })
        }));
        self.append_after_in(Scope::Event, Vec::new(), body)
            .await
            .map(|(appended, ())| appended)
    }

    /// Runs `effect` and appends the event it returns, atomically. Resolves after COMMIT with
    /// the appended row and the effect's result; on `Err` nothing of it was committed.
    pub async fn append_with<T: Send + 'static>(
        &self,
        effect: Effect<T>,
    ) -> Result<(Appended, T), AppendError> {
        self.append_after_in(Scope::Global, Vec::new(), effect)
            .await
    }

    /// [`Self::append_with`] for an effect that changes only what `scope` says: the writer may
    /// run it side by side with effects of other scopes.
    pub async fn append_in<T: Send + 'static>(
        &self,
        scope: Scope,
        effect: impl Into<Body<T>>,
    ) -> Result<(Appended, T), AppendError> {
        self.append_after_in(scope, Vec::new(), effect).await
    }

    /// Prepares an append that is sent later, with the caller's next append ([`Self::append_after_in`])
    /// or alone ([`Self::flush`]). For a record with no side effect after it (a step's end, a
    /// run's start): it can share the next record's transaction, one COMMIT instead of two.
    /// Nothing of it is written until it is sent; dropped unsent, it is never written.
    pub fn defer(&self, effect: Effect<()>) -> Deferred {
        self.defer_in(Scope::Global, effect)
    }

    /// [`Self::defer`] for an effect that changes only what `scope` says.
    pub fn defer_in(&self, scope: Scope, effect: impl Into<Body<()>>) -> Deferred {
        let (job, response) = TypedJob::new(effect.into());
        Deferred {
            job: Box::new(job),
            scope,
            response: Some(response),
        }
    }

    /// [`Self::defer_in`] for an append whose outcome goes to the returned receiver, not to
    /// whoever sends it: one caller prepares it and awaits its COMMIT (or refusal), another
    /// sends it ahead of its own records, in their transaction ([`Self::append_after_in`],
    /// [`Self::flush`], which then do not wait for it). Its later records are attempted only
    /// if it succeeded, as for any deferred append. Dropped unsent, it is never written and
    /// the receiver sees the sender gone.
    pub fn defer_answered_in<T: Send + 'static>(
        &self,
        scope: Scope,
        effect: impl Into<Body<T>>,
    ) -> (Deferred, Answer<T>) {
        let (job, response) = TypedJob::new(effect.into());
        let deferred = Deferred {
            job: Box::new(job),
            scope,
            response: None,
        };
        (deferred, response)
    }

    /// Appends `before` (in order), then `effect` (which changes only what `scope` says), in
    /// one transaction: each with its own savepoint as usual, but each attempted only if
    /// everything before it succeeded. Resolves after COMMIT; the first failure among `before`
    /// is returned as the outcome. An effect that makes several records is answered with the
    /// last one's row.
    pub async fn append_after_in<T: Send + 'static>(
        &self,
        scope: Scope,
        before: Vec<Deferred>,
        effect: impl Into<Body<T>>,
    ) -> Result<(Appended, T), AppendError> {
        self.send_after(scope, before, TypedJob::new(effect.into()))
            .await
    }

    /// Sends `before` and then `job` as one request, and waits for their outcomes.
    async fn send_after<T: Send + 'static>(
        &self,
        scope: Scope,
        before: Vec<Deferred>,
        (job, response): NewJob<T>,
    ) -> Result<(Appended, T), AppendError> {
        let mut jobs: Vec<Box<dyn Job>> = Vec::with_capacity(before.len() + 1);
        let mut earlier = Vec::with_capacity(before.len());
        let mut request_scope = scope;
        for deferred in before {
            jobs.push(deferred.job);
            earlier.extend(deferred.response);
            request_scope = request_scope.join(deferred.scope);
        }
        jobs.push(Box::new(job));
        self.sender
            .send(Request {
                jobs,
                queued_at: std::time::Instant::now(),
                scope: request_scope,
            })
            .await
            .map_err(|_| AppendError::Stopped)?;
        for response in earlier {
            response.await.map_err(|_| AppendError::Stopped)??;
        }
        response.await.map_err(|_| AppendError::Stopped)?
    }

    /// Sends deferred appends on their own, in one transaction. `Ok` once all have committed.
    pub async fn flush(&self, deferred: Vec<Deferred>) -> Result<(), AppendError> {
        if deferred.is_empty() {
            return Ok(());
        }
        let mut jobs: Vec<Box<dyn Job>> = Vec::with_capacity(deferred.len());
        let mut responses = Vec::with_capacity(deferred.len());
        let mut scope = Scope::Event;
        for deferred in deferred {
            jobs.push(deferred.job);
            responses.extend(deferred.response);
            scope = scope.join(deferred.scope);
        }
        self.sender
            .send(Request {
                jobs,
                queued_at: std::time::Instant::now(),
                scope,
            })
            .await
            .map_err(|_| AppendError::Stopped)?;
        for response in responses {
            response.await.map_err(|_| AppendError::Stopped)??;
        }
        Ok(())
    }

    /// False while the writer has no working connection: nothing new may start.
    pub fn is_available(&self) -> bool {
        self.published.available.load(Ordering::Acquire)
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The chain head as of the last COMMIT: every row up to it is durable.
    pub fn head(&self) -> ChainHead {
        *self.head.borrow()
    }

    /// The committed head and the Merkle root over the chain up to it, read together; `None`
    /// when the stored chain has a gap (the tree would not match the seqs).
    pub fn merkle_head(&self) -> Option<MerkleHead> {
        let tree = lock_frontier(&self.published.tree);
        let frontier = tree.as_ref()?;
        Some(MerkleHead {
            head: ChainHead {
                seq: i64::try_from(frontier.size()).ok()?,
                hash: frontier.last().unwrap_or(GENESIS_HASH),
            },
            root: frontier.root(),
        })
    }

    /// The rows the database lost, once the writer found that it did (it then appends nothing).
    pub fn chain_loss(&self) -> Option<ChainLoss> {
        self.chain_loss.borrow().clone()
    }

    /// A receiver that sees the chain loss when the writer finds one.
    pub fn watch_chain_loss(&self) -> watch::Receiver<Option<ChainLoss>> {
        self.chain_loss.clone()
    }

    /// The chain anchor the writer keeps, if the daemon gave it one.
    pub fn anchor(&self) -> Option<&Arc<Anchor>> {
        self.published.anchor.as_ref()
    }

    /// Resolves after a commit that calls for a checkpoint at once (SAFE-HALT entered or
    /// cleared, an approval decided).
    pub async fn checkpoint_wanted(&self) {
        self.published.checkpoint_wanted.notified().await;
    }
}

/// Events after whose commit a checkpoint is taken at once, so that the head covering them is
/// signed and anchored before anything else happens: cutting them off is then detectable.
/// `safe_halt.entered` also covers a failed rollback (its record is in the same transaction).
pub const CHECKPOINT_NOW_EVENTS: &[&str] = &[
    "safe_halt.entered",
    "safe_halt.cleared",
    "approval.vote",
    "approval.expired",
    "audit.cut_accepted",
];

/// Starts the writer for `node_id`: connects, takes the chain's advisory lock, loads the head.
/// Fails if another daemon holds the chain. The task stops when `shutdown` fires and the
/// queue drains.
pub async fn start_writer(
    pg: tokio_postgres::Config,
    node_id: String,
    shutdown: CancellationToken,
) -> Result<(AuditHandle, tokio::task::JoinHandle<()>), AuditStartError> {
    start_writer_anchored(pg, node_id, None, shutdown)
        .await
        .map(|(handle, task, _)| (handle, task))
}

/// What [`start_writer_anchored`] returns: the handle, the writer task, and the cut an admin
/// accepted (if any), which the caller's first append must record.
pub type AnchoredWriter = (
    AuditHandle,
    tokio::task::JoinHandle<()>,
    Option<RecordedCut>,
);

/// Like [`start_writer`], checking the chain against `anchor` first (see
/// [`crate::store::anchor`]): a database that lost rows this node committed is refused with
/// [`AuditStartError::ChainCut`].
pub async fn start_writer_anchored(
    pg: tokio_postgres::Config,
    node_id: String,
    anchor: Option<Arc<Anchor>>,
    shutdown: CancellationToken,
) -> Result<AnchoredWriter, AuditStartError> {
    let connection = open_with_lock_grace(&pg, &node_id)
        .await
        .map_err(|error| error.into_start_error(&node_id))?;
    let mut accepted = None;
    if let Some(anchor) = &anchor {
        let check = anchor
            .check_open(&connection.client)
            .await
            .map_err(|source| AuditStartError::Store {
                node_id: node_id.clone(),
                source,
            })?
            .map_err(AuditStartError::Anchor)?;
        match check {
            OpenCheck::Intact => {}
            OpenCheck::Accepted(cut) => accepted = Some(cut),
            OpenCheck::Cut(loss) => {
                tracing::error!(node_id = %node_id, missing_seqs = %loss.seqs(), priority = "critical",
                    "SAFE-HALT: {loss}; nothing is appended on top of it");
                return Err(AuditStartError::ChainCut {
                    loss: Box::new(loss),
                    anchor: anchor.path().display().to_string(),
                    accept: crate::store::anchor::ACCEPT_COMMAND,
                });
            }
        }
    }
    let frontier = seed_frontier(&connection.client, &node_id, connection.head)
        .await
        .map_err(|source| AuditStartError::Store {
            node_id: node_id.clone(),
            source: source.into(),
        })?;
    let published = Arc::new(Published {
        available: AtomicBool::new(true),
        anchor,
        checkpoint_wanted: tokio::sync::Notify::new(),
        tree: Mutex::new(frontier),
    });
    let (sender, receiver) = mpsc::channel(QUEUE_DEPTH);
    let (head_sender, head) = watch::channel(connection.head);
    if let Some(anchor) = &published.anchor {
        tokio::spawn(anchor_heads(anchor.clone(), head_sender.subscribe()));
    }
    let (loss_sender, chain_loss) = watch::channel(None);
    let writer = Writer {
        pg,
        node_id: node_id.clone(),
        connection: Some(connection),
        spare: None,
        head: head_sender,
        chain_loss: loss_sender,
        published: published.clone(),
    };
    let task = tokio::spawn(writer.run(receiver, shutdown));
    let handle = AuditHandle {
        sender,
        node_id: node_id.into(),
        head,
        chain_loss,
        published,
    };
    Ok((handle, task, accepted))
}

/// Writes each committed head to the anchor (rename, no fsync: see [`crate::store::anchor`]),
/// off the writer's path: under load, heads that follow each other quickly coalesce into one
/// write. Ends when the writer does.
async fn anchor_heads(anchor: Arc<Anchor>, mut heads: watch::Receiver<ChainHead>) {
    while heads.changed().await.is_ok() {
        let head = *heads.borrow_and_update();
        let anchor = anchor.clone();
        match tokio::task::spawn_blocking(move || anchor.record_head(head, false)).await {
            Ok(Ok(())) => {}
            // The head stays in memory; the next commit or checkpoint writes it again.
            Ok(Err(error)) => {
                tracing::warn!(error = %error_chain(&error), "chain anchor not updated");
            }
            Err(error) => tracing::warn!(error = %error, "chain anchor update did not run"),
        }
    }
}

/// Opens the chain, waiting briefly for its lock: after a crash, PostgreSQL may hold the dead
/// session's advisory lock until it notices the connection is gone, and a quick systemd
/// restart must not mistake that for a second live daemon (exit 78 stops the restarts).
async fn open_with_lock_grace(
    pg: &tokio_postgres::Config,
    node_id: &str,
) -> Result<ChainConnection, OpenError> {
    let deadline = tokio::time::Instant::now() + LOCK_GRACE;
    loop {
        match ChainConnection::open(pg, node_id).await {
            Err(OpenError::Locked) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            outcome => return outcome,
        }
    }
}

/// How long start-up waits for a chain lock that may belong to a dead session.
const LOCK_GRACE: Duration = Duration::from_secs(3);

/// The canonical bytes hashed for one row (see the module docs).
pub fn canonical_bytes(
    node_id: &str,
    seq: i64,
    event_type: &str,
    event_data: &Value,
    created_at: OffsetDateTime,
) -> Vec<u8> {
    let row = serde_json::json!({
        "node_id": node_id,
        "seq": seq,
        "event_type": event_type,
        "event_data": event_data,
        "created_at": format_timestamp(created_at),
    });
    // JCS never fails on a Value built from JSON (no NaN or infinity can be in one).
    serde_json_canonicalizer::to_vec(&row).unwrap_or_default()
}

/// `SHA-256(prev_hash ‖ canonical)`.
pub fn chain_hash(prev_hash: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(canonical);
    hasher.finalize().into()
}

/// RFC 3339 in UTC with exactly six fractional digits.
pub fn format_timestamp(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.microsecond()
    )
}

/// The advisory-lock key of a node's chain: the first 8 bytes of SHA-256("playbookd-chain:" ‖ id).
pub fn chain_lock_key(node_id: &str) -> i64 {
    let digest = Sha256::digest(format!("playbookd-chain:{node_id}"));
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

// ---------------------------------------------------------------------------------------------

/// Appends sent together: one transaction, in order, and each only if the ones before it in
/// the request succeeded (a later record may depend on an earlier one).
struct Request {
    jobs: Vec<Box<dyn Job>>,
    queued_at: std::time::Instant,
    /// What its jobs may change, all together.
    scope: Scope,
}

/// One caller's append with its result type erased, so one batch can carry many types.
trait Job: Send {
    /// Runs the caller's effect in the batch's transaction; keeps its typed result for `finish`.
    /// May be called again after an attempt was rolled back: the last call's result counts.
    fn apply<'t>(&'t mut self, tx: &'t Tx<'t>) -> BoxFuture<'t, Result<Records, StoreError>>;
    /// The records and checked statements of the effect's foreseen outcome ([`Body::foreseen`]),
    /// keeping its typed result for `finish` as `apply` does; `None` when it has no foresight
    /// or its foresight declines.
    fn foresee(&mut self) -> Option<(Records, Vec<Checked>)>;
    /// Answers the caller once the batch's outcome is known.
    fn finish(self: Box<Self>, outcome: Result<Appended, AppendError>);
}

/// An append: its effect, and what it will record when nothing unexpected happens, if that is
/// known before it runs ([`Body::foreseen`]).
pub struct Body<T> {
    effect: Run<T>,
    foresight: Option<Foresight<T>>,
}

/// An append's effect: one record or several.
enum Run<T> {
    One(Effect<T>),
    Records(RecordsEffect<T>),
}

impl<T> Body<T> {
    /// This append with `foresight`: what its effect records and returns when its statements do
    /// what is expected of them, and those statements in a form that fails otherwise. The
    /// writer may then write the append's changes and its audit rows as one statement
    /// ([`Foreseen`]); on any surprise that statement rolls back and the effect runs as usual.
    /// The foresight must build its records as the effect does when it succeeds (the same
    /// functions, from the same captured values): a record that differs from the effect's would
    /// be chained for what the effect did.
    pub fn foreseen(self, foresight: Foresight<T>) -> Body<T> {
        Body {
            foresight: Some(foresight),
            ..self
        }
    }
}

impl<T> From<Effect<T>> for Body<T> {
    fn from(effect: Effect<T>) -> Body<T> {
        Body {
            effect: Run::One(effect),
            foresight: None,
        }
    }
}

impl<T> From<RecordsEffect<T>> for Body<T> {
    fn from(effect: RecordsEffect<T>) -> Body<T> {
        Body {
            effect: Run::Records(effect),
            foresight: None,
        }
    }
}

/// What an append's effect does when nothing unexpected happens ([`Body::foreseen`]); `None`
/// when that cannot be known before it runs (e.g. a SAFE-HALT known in memory would refuse it).
/// Called by the writer each time it considers a one-flight write, so it reads what it depends
/// on then, as the effect would.
pub type Foresight<T> = Box<dyn Fn() -> Option<Foreseen<T>> + Send + Sync>;

/// An effect's records and result, known before its statements run, and those statements.
pub struct Foreseen<T> {
    pub records: Records,
    pub value: T,
    /// Written with the records in one statement, which raises an error (`playbook_expect`,
    /// migration V13) unless each did what `records` say, so that it commits only what was
    /// foreseen.
    pub checked: Vec<Checked>,
}

/// `$statement` (an UPDATE or INSERT of one row, without `RETURNING`) as a [`CheckedSql`]: its
/// `WITH` list names it `$name`, and it holds, naming `$what`, only if it changed a row.
macro_rules! checked_change {
    ($name:literal, $statement:expr, $what:literal) => {
        $crate::store::audit::CheckedSql {
            with: concat!($name, " AS (", $statement, " RETURNING 1)"),
            expect: concat!("EXISTS (SELECT 1 FROM ", $name, ")"),
            what: $what,
        }
    };
}
pub(crate) use checked_change;

/// The statement of a one-flight write in parts, so that a request's statements and its audit
/// INSERT travel as one statement (`write_in_one_flight`).
///
/// `with` is a `WITH` list (`name AS (…), …`) whose data-modifying queries make the change; its
/// names must differ from those of every other `CheckedSql` (a test lists them). `expect` is
/// an SQL boolean over them that holds only if they did what the append's records say; when it
/// does not, `playbook_expect` (migration V13) raises, naming `what`. Parameters are `$1`, `$2`…
/// across `with` and `expect`; no other `$` may appear.
#[derive(Debug)]
pub struct CheckedSql {
    pub with: &'static str,
    pub expect: &'static str,
    pub what: &'static str,
}

/// A statement that fails unless its outcome is the one foreseen ([`Foreseen::checked`]),
/// with its parameters.
pub struct Checked {
    sql: &'static CheckedSql,
    params: Params,
}

impl Checked {
    pub fn new(sql: &'static CheckedSql, params: Params) -> Checked {
        Checked { sql, params }
    }
}

struct TypedJob<T> {
    /// Run by each `apply`: the writer may apply a job again after rolling back an attempt.
    body: Body<T>,
    /// Set by `apply` when the effect succeeded; handed over only after COMMIT.
    value: Option<T>,
    /// How many rows the last `apply` recorded.
    rows: usize,
    reply: oneshot::Sender<Result<(Appended, T), AppendError>>,
    /// When the caller asked: `playbookd_audit_append_seconds` runs from here to the COMMIT.
    requested_at: std::time::Instant,
}

/// Where an append's answer arrives: after COMMIT, or its refusal.
pub type Answer<T> = oneshot::Receiver<Result<(Appended, T), AppendError>>;

/// What [`TypedJob::new`] returns: the job, and where its answer arrives.
type NewJob<T> = (TypedJob<T>, Answer<T>);

impl<T: Send + 'static> TypedJob<T> {
    fn new(body: Body<T>) -> NewJob<T> {
        let (reply, response) = oneshot::channel();
        let job = TypedJob {
            body,
            value: None,
            rows: 0,
            reply,
            requested_at: std::time::Instant::now(),
        };
        (job, response)
    }
}

impl<T: Send + 'static> Job for TypedJob<T> {
    fn apply<'t>(&'t mut self, tx: &'t Tx<'t>) -> BoxFuture<'t, Result<Records, StoreError>> {
        Box::pin(async move {
            // A value from an attempt that was rolled back must not be handed over.
            self.value = None;
            let (records, value) = match &self.body.effect {
                Run::One(effect) => {
                    let (event, value) = effect(tx).await?;
                    (Records::from(event), value)
                }
                Run::Records(effect) => effect(tx).await?,
            };
            self.value = Some(value);
            self.rows = records.len();
            Ok(records)
        })
    }

    fn foresee(&mut self) -> Option<(Records, Vec<Checked>)> {
        self.value = None;
        let Foreseen {
            records,
            value,
            checked,
        } = (self.body.foresight.as_ref()?)()?;
        self.value = Some(value);
        self.rows = records.len();
        Some((records, checked))
    }

    fn finish(self: Box<Self>, outcome: Result<Appended, AppendError>) {
        let TypedJob {
            value,
            rows,
            reply,
            requested_at,
            ..
        } = *self;
        let answer = match (outcome, value) {
            (Ok(appended), Some(value)) => {
                // One sample per row, as `playbookd_audit_appends_total` counts them.
                metrics::histogram!("playbookd_audit_append_seconds")
                    .record_many(requested_at.elapsed().as_secs_f64(), rows);
                Ok((appended, value))
            }
            // Committed without a value cannot happen (apply sets it before the row is
            // inserted); answer "not recorded" rather than invent one.
            (Ok(_), None) => Err(AppendError::Unavailable(None)),
            (Err(error), _) => Err(error),
        };
        // The caller may have gone away (its task was cancelled); the append stands.
        let _ = reply.send(answer);
    }
}

/// The connection that holds the chain lock, and the chain head as of its last commit.
struct ChainConnection {
    client: tokio_postgres::Client,
    statements: StatementCache,
    head: ChainHead,
}

enum OpenError {
    Locked,
    Store(StoreError),
}

impl OpenError {
    fn into_start_error(self, node_id: &str) -> AuditStartError {
        match self {
            OpenError::Locked => AuditStartError::ChainLocked {
                node_id: node_id.to_owned(),
            },
            OpenError::Store(source) => AuditStartError::Store {
                node_id: node_id.to_owned(),
                source,
            },
        }
    }
}

impl From<tokio_postgres::Error> for OpenError {
    fn from(error: tokio_postgres::Error) -> Self {
        OpenError::Store(StoreError::Query(error))
    }
}

impl ChainConnection {
    async fn open(pg: &tokio_postgres::Config, node_id: &str) -> Result<Self, OpenError> {
        let client = connect_single(pg).await.map_err(OpenError::Store)?;
        let locked: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1)",
                &[&chain_lock_key(node_id)],
            )
            .await?
            .get(0);
        if !locked {
            return Err(OpenError::Locked);
        }
        let head = client
            .query_opt(
                "SELECT seq, hash FROM playbook_audit_log WHERE node_id = $1 ORDER BY seq DESC LIMIT 1",
                &[&node_id],
            )
            .await?;
        let head = match head {
            None => ChainHead {
                seq: 0,
                hash: GENESIS_HASH,
            },
            Some(row) => {
                let hash: Vec<u8> = row.get(1);
                let hash = <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| {
                    OpenError::Store(StoreError::Corrupt {
                        what: "audit chain head",
                        detail: "hash is not 32 bytes".into(),
                    })
                })?;
                ChainHead {
                    seq: row.get(0),
                    hash,
                }
            }
        };
        let statements = StatementCache::for_writer(&client).await?;
        Ok(ChainConnection {
            client,
            statements,
            head,
        })
    }

    fn link(&self) -> Link<'_> {
        Link {
            client: &self.client,
            statements: &self.statements,
        }
    }
}

struct Writer {
    pg: tokio_postgres::Config,
    node_id: String,
    /// None after a failure: the next batch reconnects, relocks and reloads the head first.
    connection: Option<ChainConnection>,
    /// The second connection, opened with the chain connection (none while it cannot be):
    /// see [`Writer::run`].
    spare: Option<Spare>,
    head: watch::Sender<ChainHead>,
    chain_loss: watch::Sender<Option<ChainLoss>>,
    published: Arc<Published>,
}

struct Staged {
    seq: i64,
    hash: [u8; 32],
    event: AuditEvent,
    /// The job whose caller this row answers: `None` for a job's earlier records.
    job: Option<Box<dyn Job>>,
}

impl Writer {
    /// Writes batches until shutdown, then what is still queued. A batch's effects run and its
    /// rows are chained first ([`prepare`]); then its INSERT and COMMIT are sent ([`commit`]).
    /// While that COMMIT is in flight (the server flushing its WAL, the writer waiting), the
    /// next batch's effects run on the other connection ([`Spare`]), its rows chained on the
    /// committing batch's, and it commits only after that batch committed; when that one
    /// failed, so does the next (its connection is dropped, which rolls it back).
    ///
    /// This is the outcome of writing them one after the other because the next batch holds
    /// only requests that may not see what the committing one changed ([`Open::may_overlap`]):
    /// none of an execution the committing batch changes, and no [`Scope::Global`] request on
    /// either side (a global change, e.g. a SAFE-HALT, is seen by everything after it). Its
    /// effects start after the committing batch's have all run, so a SAFE-HALT read in memory
    /// or in the database is read in chain order; a row the committing batch locked (a nonce
    /// used twice) makes the next one's statement wait for the COMMIT, then see its outcome.
    async fn run(mut self, receiver: mpsc::Receiver<Request>, shutdown: CancellationToken) {
        let node_id = self.node_id.clone();
        let mut queue = Queue {
            receiver,
            held: VecDeque::new(),
            closing: false,
        };
        self.open_spare().await;
        let mut open: Option<Box<Open<'_>>> = None;
        loop {
            let Some(current) = open.take() else {
                let Some(batch) = queue.next(&shutdown).await else {
                    break;
                };
                open = self.prepare_first(&node_id, batch).await;
                continue;
            };
            let next = if self.can_overlap(current.side.other()) {
                queue.independent_of(&current)
            } else {
                None
            };
            open = self.commit_with(&node_id, current, next).await;
        }
    }

    /// The connection on `side`.
    fn link(&self, side: Side) -> Option<Link<'_>> {
        match side {
            Side::Chain => self.connection.as_ref().map(ChainConnection::link),
            Side::Spare => self.spare.as_ref().map(Spare::link),
        }
    }

    /// Whether a batch may be written on `side` while the other side commits.
    fn can_overlap(&self, side: Side) -> bool {
        self.link(side).is_some_and(|link| !link.client.is_closed())
    }

    /// Opens the spare connection. Without it the writer writes one batch at a time.
    async fn open_spare(&mut self) {
        match Spare::open(&self.pg).await {
            Ok(spare) => self.spare = Some(spare),
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "audit writer: no second connection; batches are written one at a time");
            }
        }
    }

    /// Runs `batch`'s effects on the chain connection (reopened first if it was lost): the open
    /// batch, or `None` when nothing is left to commit (its callers are answered).
    async fn prepare_first<'n>(
        &mut self,
        node_id: &'n str,
        batch: Vec<Request>,
    ) -> Option<Box<Open<'n>>> {
        if self
            .connection
            .as_ref()
            .is_none_or(|c| c.client.is_closed())
        {
            self.connection = None;
            self.spare = None;
            self.reconnect().await;
            if self.connection.is_some() {
                self.open_spare().await;
            }
        }
        // After the reconnect: it is what finds a cut.
        let loss = self.chain_loss.borrow().clone();
        if let Some(loss) = loss {
            // Nothing goes on top of a cut chain; the connection (and its lock) is kept so no
            // other writer takes the chain either.
            for job in batch.into_iter().flat_map(|request| request.jobs) {
                job.finish(Err(AppendError::chain_cut(&loss)));
            }
            return None;
        }
        let Some(connection) = self.connection.as_ref() else {
            fail_all(batch.into_iter().flat_map(|request| request.jobs));
            return None;
        };
        let tip = Tip {
            node_id,
            head: connection.head,
        };
        let batch = if batch.len() <= ONE_FLIGHT_REQUESTS {
            match write_in_one_flight(connection.link(), node_id, tip, batch).await {
                OneFlight::Sent(committed) => {
                    self.settle(*committed);
                    return None;
                }
                OneFlight::Declined(batch) => batch,
            }
        } else {
            batch
        };
        let prepared = prepare(connection.link(), Side::Chain, tip, batch).await;
        self.after_prepare(prepared)
    }

    /// Commits `current`; meanwhile, when `next` is given, runs its effects on the other
    /// connection, chained on `current`'s rows (see [`Writer::run`]). The next open batch.
    async fn commit_with<'n>(
        &mut self,
        node_id: &'n str,
        current: Box<Open<'n>>,
        next: Option<Vec<Request>>,
    ) -> Option<Box<Open<'n>>> {
        let side = current.side;
        let tip = current.chain.tip();
        let (committed, prepared) = match (self.link(side), self.link(side.other()), next) {
            (Some(link), Some(other), Some(batch)) => {
                let (committed, prepared) = futures::join!(
                    commit(link, node_id, current),
                    prepare(other, side.other(), tip, batch)
                );
                (committed, Some(prepared))
            }
            (Some(link), _, next) => {
                // `next` is taken only when the other connection is there.
                fail_all(next.into_iter().flatten().flat_map(|request| request.jobs));
                (commit(link, node_id, current).await, None)
            }
            (None, _, next) => {
                // Not reached: a connection is dropped only with every batch on it answered.
                current.fail();
                fail_all(next.into_iter().flatten().flat_map(|request| request.jobs));
                return None;
            }
        };
        let committed = self.settle(committed);
        match prepared? {
            Prepared::Open(open) if committed => Some(open),
            Prepared::Open(open) => {
                // Chained on rows that are not there; its transaction ended with its
                // connection, dropped with the failure.
                open.fail();
                None
            }
            done @ Prepared::Done(_) => self.after_prepare(done),
        }
    }

    /// What a [`prepare`] left: the open batch, or nothing left to commit.
    fn after_prepare<'n>(&mut self, prepared: Prepared<'n>) -> Option<Box<Open<'n>>> {
        match prepared {
            Prepared::Open(open) => Some(open),
            Prepared::Done(Ok(())) => None,
            Prepared::Done(Err(error)) => {
                self.failed(&error);
                None
            }
        }
    }

    /// Moves the head on after a batch committed and answers its callers ([`settle`]);
    /// whether it committed.
    fn settle(&mut self, committed: Committed<'_>) -> bool {
        let Committed {
            outcome,
            chain,
            refused,
        } = committed;
        let Some(connection) = self.connection.as_mut() else {
            // Not reached: the chain connection is dropped only with every batch answered.
            let error = StoreError::Corrupt {
                what: "audit writer",
                detail: "a batch committed without the chain connection".into(),
            };
            settle_failed(chain, refused);
            self.failed(&error);
            return false;
        };
        let mut sink = Sink {
            connection,
            head: &self.head,
            tree: &self.published.tree,
        };
        match settle(&mut sink, outcome, chain, refused) {
            Ok(wants_checkpoint) => {
                self.published.available.store(true, Ordering::Release);
                if wants_checkpoint {
                    self.published.checkpoint_wanted.notify_one();
                }
                true
            }
            Err(error) => {
                self.failed(&error);
                false
            }
        }
    }

    /// After a failed batch: both connections are dropped (a batch open on either ends with
    /// it), and the next batch reconnects first.
    fn failed(&mut self, error: &StoreError) {
        tracing::error!(error = %error_chain(error), "audit batch failed; reconnecting before the next append");
        self.connection = None;
        self.spare = None;
        self.published.available.store(false, Ordering::Release);
    }

    /// Stops appending for good: the database lost rows this node committed.
    fn enter_cut(&mut self, loss: ChainLoss) {
        tracing::error!(node_id = %self.node_id, missing_seqs = %loss.seqs(), priority = "critical",
            "SAFE-HALT: {loss}; nothing is appended on top of it. Preserve the database as evidence; \
             stop the daemon, then `{}`", crate::store::anchor::ACCEPT_COMMAND);
        if let Some(anchor) = &self.published.anchor
            && let Err(error) = anchor.record_cut(&loss)
        {
            tracing::error!(error = %error_chain(&error), "the cut is not recorded in the chain anchor; it holds in memory");
        }
        self.published.available.store(false, Ordering::Release);
        self.chain_loss.send_replace(Some(loss));
    }

    async fn reconnect(&mut self) {
        self.published.available.store(false, Ordering::Release);
        match ChainConnection::open(&self.pg, &self.node_id).await {
            Ok(connection) => {
                // What this writer committed (and the last signed head) must still be there: a
                // database that lost it (a cut, a failover to a lagging standby) is not appended to.
                let mut committed = vec![*self.head.borrow()];
                committed.extend(
                    self.published
                        .anchor
                        .as_ref()
                        .and_then(|a| a.checkpoint_head()),
                );
                match crate::store::anchor::find_chain_loss(
                    &connection.client,
                    &self.node_id,
                    &committed,
                )
                .await
                {
                    Ok(None) => {}
                    Ok(Some(loss)) => {
                        self.enter_cut(loss);
                        self.connection = Some(connection);
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(error = %error_chain(&error), "cannot compare the reopened chain; appends refused");
                        tokio::time::sleep(RECONNECT_PAUSE).await;
                        return;
                    }
                }
                let current = lock_frontier(&self.published.tree)
                    .as_ref()
                    .is_some_and(|frontier| frontier_matches(frontier, connection.head));
                if !current {
                    // A commit whose acknowledgement was lost, or a cut accepted meanwhile: the
                    // frontier follows the stored chain again before anything is appended.
                    match seed_frontier(&connection.client, &self.node_id, connection.head).await {
                        Ok(frontier) => *lock_frontier(&self.published.tree) = frontier,
                        Err(error) => {
                            tracing::warn!(error = %error_chain(&error), "cannot reload the audit chain's Merkle frontier; appends refused");
                            tokio::time::sleep(RECONNECT_PAUSE).await;
                            return;
                        }
                    }
                }
                tracing::info!(node_id = %self.node_id, seq = connection.head.seq, "audit chain reopened");
                self.head.send_replace(connection.head);
                self.connection = Some(connection);
                self.published.available.store(true, Ordering::Release);
            }
            Err(OpenError::Locked) => {
                tracing::error!(node_id = %self.node_id, "audit chain lock is held elsewhere; appends refused");
            }
            Err(OpenError::Store(error)) => {
                tracing::warn!(error = %error_chain(&error), "audit database unavailable; appends refused");
                // Pace reconnect attempts so a dead database is not hammered by every caller.
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        }
    }
}

/// The requests the writer has not written yet: those it took from its channel and held
/// back, first, then the channel's.
struct Queue {
    receiver: mpsc::Receiver<Request>,
    held: VecDeque<Request>,
    /// Shutting down: what is queued is still written, nothing is waited for.
    closing: bool,
}

impl Queue {
    /// The next batch, waiting for its first request; `None` once shut down and drained.
    async fn next(&mut self, shutdown: &CancellationToken) -> Option<Vec<Request>> {
        let first = match self.held.pop_front() {
            Some(request) => request,
            None => loop {
                if self.closing {
                    break self.receiver.try_recv().ok()?;
                }
                tokio::select! {
                    request = self.receiver.recv() => break request?,
                    () = shutdown.cancelled() => self.closing = true,
                }
            },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match self.waiting() {
                Some(request) => batch.push(request),
                None => break,
            }
        }
        Some(batch)
    }

    /// A batch of the requests waiting now that may be written while `open` commits
    /// ([`Open::may_overlap`]), in their order: it stops at the first that may not, which is
    /// held back with what follows it. `None` when the first may not, or nothing waits.
    fn independent_of(&mut self, open: &Open<'_>) -> Option<Vec<Request>> {
        let mut batch = Vec::new();
        while batch.len() < MAX_BATCH {
            let Some(request) = self.waiting() else { break };
            if !open.may_overlap(&request) {
                self.held.push_front(request);
                break;
            }
            batch.push(request);
        }
        (!batch.is_empty()).then_some(batch)
    }

    fn waiting(&mut self) -> Option<Request> {
        self.held
            .pop_front()
            .or_else(|| self.receiver.try_recv().ok())
    }
}

/// The writer's second connection. It holds no lock: what it writes commits only right after
/// a batch of the chain connection committed (see [`Writer::run`]), while that connection
/// holds the chain lock, and a failure on either drops both.
struct Spare {
    client: tokio_postgres::Client,
    statements: StatementCache,
}

impl Spare {
    async fn open(pg: &tokio_postgres::Config) -> Result<Spare, StoreError> {
        // Told apart from the chain connection in `pg_stat_activity`.
        let mut pg = pg.clone();
        let name = pg.get_application_name().unwrap_or("playbookd");
        pg.application_name(format!("{name} {SPARE_APPLICATION_SUFFIX}"));
        let client = connect_single(&pg).await?;
        let statements = StatementCache::for_writer(&client).await?;
        Ok(Spare { client, statements })
    }

    fn link(&self) -> Link<'_> {
        Link {
            client: &self.client,
            statements: &self.statements,
        }
    }
}

/// What the spare connection's application name ends with (after the configured one's).
pub const SPARE_APPLICATION_SUFFIX: &str = "audit spare";

/// Which of the writer's connections a batch is written on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Chain,
    Spare,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Chain => Side::Spare,
            Side::Spare => Side::Chain,
        }
    }
}

/// A connection a batch is written on, with its prepared statements.
#[derive(Clone, Copy)]
struct Link<'c> {
    client: &'c Client,
    statements: &'c StatementCache,
}

/// A batch whose effects ran and whose rows are chained, its transaction open on `side`: what
/// [`commit`] sends next.
struct Open<'n> {
    side: Side,
    chain: Chain<'n>,
    /// Jobs whose effects failed (the savepoint path), answered with their error.
    refused: Vec<(Box<dyn Job>, StoreError)>,
    /// What ends the last savepoint (the savepoint path): sent before the INSERT.
    close: Option<&'static str>,
    perf: BatchPerf,
    path: &'static str,
    /// The executions its requests may change; `global` when one may change anything.
    executions: HashSet<uuid::Uuid>,
    global: bool,
}

impl Open<'_> {
    /// Whether `request` may be written while this batch commits: neither is global and it
    /// changes none of this batch's executions (so it reads nothing this batch changed).
    fn may_overlap(&self, request: &Request) -> bool {
        if self.global {
            return false;
        }
        match request.scope {
            Scope::Event => true,
            Scope::Execution(id) => !self.executions.contains(&id),
            Scope::Global => false,
        }
    }

    /// Tells every caller that nothing of the batch was recorded.
    fn fail(self) {
        settle_failed(self.chain, self.refused);
    }
}

/// What [`prepare`] made of a batch.
enum Prepared<'n> {
    Open(Box<Open<'n>>),
    /// Nothing to commit: every caller was answered (`Err`: the connection failed).
    Done(Result<(), StoreError>),
}

/// A batch's commit: its outcome, and what [`settle`] answers.
struct Committed<'n> {
    outcome: Result<(), StoreError>,
    chain: Chain<'n>,
    refused: Vec<(Box<dyn Job>, StoreError)>,
}

/// Runs a batch's effects on `link` in a transaction left open, and chains its rows on `tip`:
/// first the pipelined way ([`prepare_pipelined`]), even for one request (what
/// a lightly loaded writer sees), its jobs' statements going out together and no savepoint
/// sent; if an effect fails there, that attempt is rolled back and the batch run again the
/// savepoint way ([`prepare_sequential`]), each effect in its own savepoint.
async fn prepare<'n>(
    link: Link<'_>,
    side: Side,
    tip: Tip<'n>,
    batch: Vec<Request>,
) -> Prepared<'n> {
    let perf = BatchPerf::new(&batch);
    let mut executions = HashSet::new();
    let mut global = false;
    for request in &batch {
        match request.scope {
            Scope::Event => {}
            Scope::Execution(id) => {
                executions.insert(id);
            }
            Scope::Global => global = true,
        }
    }
    let open = |chain, refused, close, perf, path| {
        Prepared::Open(Box::new(Open {
            side,
            chain,
            refused,
            close,
            perf,
            path,
            executions,
            global,
        }))
    };
    match prepare_pipelined(link, tip, batch, perf).await {
        Pipelined::Chained(chain, perf) => open(*chain, Vec::new(), None, perf, "pipelined"),
        Pipelined::Done(outcome) => Prepared::Done(outcome),
        // Logged under `perf` (path `pipelined_rolled_back`); not a metric of its own.
        Pipelined::Retry(batch, perf) => match prepare_sequential(link, tip, batch, perf).await {
            Ok(Sequential::Chained(chain, refused, close, perf)) => {
                open(*chain, refused, Some(close), perf, "sequential")
            }
            Ok(Sequential::Empty) => Prepared::Done(Ok(())),
            Err(error) => Prepared::Done(Err(error)),
        },
    }
}

/// Sends an open batch's INSERT and COMMIT on `link` ([`insert_and_commit`]).
async fn commit<'n>(link: Link<'_>, node_id: &str, open: Box<Open<'n>>) -> Committed<'n> {
    let Open {
        chain,
        refused,
        close,
        mut perf,
        path,
        ..
    } = *open;
    let tx = Tx::new(link.client, link.statements);
    let outcome = insert_and_commit(&tx, node_id, &chain.rows, close).await;
    perf.mark(2);
    if outcome.is_ok() {
        perf.mark(3);
    }
    perf.log(path);
    Committed {
        outcome,
        chain,
        refused,
    }
}

/// Where a batch's outcome goes: the chain connection's head, and what follows it.
struct Sink<'a> {
    connection: &'a mut ChainConnection,
    head: &'a watch::Sender<ChainHead>,
    tree: &'a Mutex<Option<Frontier>>,
}

/// What [`prepare_pipelined`] did with a batch.
enum Pipelined<'n> {
    /// Every effect ran: the rows, to be committed.
    Chained(Box<Chain<'n>>, BatchPerf),
    /// Nothing to commit: every caller was answered (`Err`: the connection failed).
    Done(Result<(), StoreError>),
    /// An effect failed and the attempt was rolled back: nothing of it stands, run the batch
    /// again (the requests in their order, their effects to be run again).
    Retry(Vec<Request>, BatchPerf),
}

/// Runs a batch's effects without savepoints, the effects of requests in different
/// [`Scope`]s side by side on the one connection: tokio-postgres sends the statements of
/// futures polled together in one flight, so a batch costs about one round trip per statement
/// depth instead of one per statement.
///
/// Serial equivalence: requests in one execution's scope run one after another in batch order
/// (a request's jobs side by side, their statements reaching the server in the request's
/// order: see [`run_request`]); requests of different executions touch disjoint rows and
/// read shared rows (halts) only, which only [`Scope::Global`] requests write, and a global
/// request runs alone, after everything before it in the batch and before everything after it.
/// So the outcome is the outcome of running the requests one by one in batch order, and the
/// rows are chained in batch order. The connection executes one statement at a time, so
/// "side by side" is an interleaving of statements, never two at once.
///
/// Any failed effect (an SQL error aborts the transaction for every effect in flight; a refusal
/// in Rust leaves partial writes without a savepoint to undo them, and the later jobs of its
/// request ran though they should not have), a request whose statements went out of order,
/// and any refusal by a SAFE-HALT (a halt read after another group's statement, in memory or
/// by a statement seeing a newer snapshot, would be chained before what it followed), means
/// ROLLBACK and [`Pipelined::Retry`], except for a batch of one job that failed: it ran alone,
/// as it would the savepoint way, and its refusal is answered at once. A failed BEGIN or
/// ROLLBACK fails the batch as on the sequential path.
async fn prepare_pipelined<'n>(
    link: Link<'_>,
    tip: Tip<'n>,
    batch: Vec<Request>,
    mut perf: BatchPerf,
) -> Pipelined<'n> {
    let segments = segments(batch);
    let transaction = link.client;
    let together = Together::default();
    let tx = Tx::side_by_side(transaction, link.statements, &together);
    let failed = AtomicBool::new(false);
    perf.mark(0);
    // BEGIN is polled first, so it is sent ahead of the first effect's first statement.
    let (begun, ran) = futures::join!(transaction.batch_execute("BEGIN"), async {
        let mut ran: Vec<Ran> = Vec::new();
        for segment in segments {
            if failed.load(Ordering::Relaxed) {
                ran.extend(segment.into_iter().flatten().map(Ran::not_attempted));
                continue;
            }
            let groups = segment
                .into_iter()
                .map(|group| run_group(&tx, group, &failed));
            ran.extend(
                futures::future::join_all(groups)
                    .await
                    .into_iter()
                    .flatten(),
            );
        }
        ran
    });
    perf.mark(1);
    let mut ran = ran;
    ran.sort_by_key(|r| r.index);
    if let Err(error) = begun {
        let jobs = ran.into_iter().flat_map(|r| r.jobs).map(|(job, _)| job);
        fail_all(jobs);
        perf.log("pipelined");
        return Pipelined::Done(Err(error.into()));
    }
    if failed.load(Ordering::Relaxed) {
        if let Err(error) = transaction.batch_execute("ROLLBACK").await {
            let jobs = ran.into_iter().flat_map(|r| r.jobs).map(|(job, _)| job);
            fail_all(jobs);
            perf.log("pipelined");
            return Pipelined::Done(Err(error.into()));
        }
        // A batch of one request whose first job failed (a replayed nonce, a refused
        // transition), its statements all sent before any later job's: it ran alone in its
        // transaction, as the savepoint way would run it, and nothing after it changed what it
        // saw. Its refusal is its answer, none of the later jobs is attempted, and nothing is
        // written (a replayed decision that carries its run's first records costs one attempt).
        if let [only] = ran.as_mut_slice()
            && !only.broken
            && matches!(only.jobs.first(), Some((_, Some(Err(_)))))
        {
            let mut jobs = std::mem::take(&mut only.jobs).into_iter();
            if let Some((job, Some(Err(error)))) = jobs.next() {
                job.finish(Err(AppendError::Effect(error)));
            }
            fail_all(jobs.map(|(job, _)| job));
            perf.log("pipelined_refused");
            return Pipelined::Done(Ok(()));
        }
        perf.log("pipelined_rolled_back");
        let batch = ran
            .into_iter()
            .map(|r| Request {
                jobs: r.jobs.into_iter().map(|(job, _)| job).collect(),
                queued_at: r.queued_at,
                scope: r.scope,
            })
            .collect();
        return Pipelined::Retry(batch, perf.retried());
    }
    let mut chain = Chain::new(tip, ran.len());
    for (job, applied) in ran.into_iter().flat_map(|r| r.jobs) {
        match applied {
            Some(Ok(records)) => chain.push(records, job),
            // Not reached: `failed` is set whenever an effect failed or was skipped.
            Some(Err(_)) | None => chain.not_attempted.push(job),
        }
    }
    Pipelined::Chained(Box::new(chain), perf)
}

/// One request's jobs after a pipelined attempt, with where the request was in the batch.
struct Ran {
    index: usize,
    queued_at: std::time::Instant,
    scope: Scope,
    jobs: Vec<(Box<dyn Job>, Attempt)>,
    /// A job's statement went out after a later job's (see [`RequestOrder`]).
    broken: bool,
}

/// A job's outcome in a pipelined attempt; `None` when it was not attempted.
type Attempt = Option<Result<Records, StoreError>>;

impl Ran {
    fn not_attempted((index, request): (usize, Request)) -> Ran {
        Ran {
            index,
            queued_at: request.queued_at,
            scope: request.scope,
            jobs: request.jobs.into_iter().map(|job| (job, None)).collect(),
            broken: false,
        }
    }
}

/// Runs one group's requests one after another, stopping at the first failure here or in any
/// other group (`failed`).
async fn run_group(tx: &Tx<'_>, group: Vec<(usize, Request)>, failed: &AtomicBool) -> Vec<Ran> {
    let mut ran = Vec::with_capacity(group.len());
    for (index, request) in group {
        let (jobs, broken) = run_request(tx, request.jobs, failed).await;
        ran.push(Ran {
            index,
            queued_at: request.queued_at,
            scope: request.scope,
            jobs,
            broken,
        });
    }
    ran
}

/// Runs one request's jobs side by side: their first statements go out in one flight, in the
/// request's order, so a request of several records (a step's end and the next start) costs
/// the round trips of its longest job, not their sum. Each job's effect is started before the
/// previous one's outcome is known; what makes that equal to running them one after another:
/// their statements reach the server in the request's order (checked per statement by
/// [`RequestOrder`]: a job that sends again after a later job did breaks it), and any failure
/// (a later job would not have been attempted) or a broken order sets `failed`, so the attempt
/// is rolled back and written the savepoint way. A job whose statement is not prepared yet on
/// this connection sends it only after the prepare's round trip, behind the later jobs' cached
/// ones: the first such request after a (re)connect is written the savepoint way.
async fn run_request(
    tx: &Tx<'_>,
    mut jobs: Vec<Box<dyn Job>>,
    failed: &AtomicBool,
) -> (Vec<(Box<dyn Job>, Attempt)>, bool) {
    if failed.load(Ordering::Relaxed) {
        return (jobs.into_iter().map(|job| (job, None)).collect(), false);
    }
    let order = Arc::new(RequestOrder::new(jobs.len()));
    let turns: Vec<Tx<'_>> = (0..jobs.len()).map(|job| tx.in_turn(&order, job)).collect();
    // `join_all` first polls its futures in order, so each job's first statement is sent
    // before the next job's (were it otherwise, `order` would see it).
    let applied = futures::future::join_all(
        jobs.iter_mut()
            .zip(&turns)
            .map(|(job, turn)| job.apply(turn)),
    )
    .await;
    // A halt refusal read after another group's statement may stand before it in the chain
    // though it was seen later: a step shown started after a refusal, with no clear between
    // them. Only one by one are the reads in chain order.
    let refused = applied.iter().any(|applied| {
        applied
            .as_ref()
            .map_or(true, |records| records.iter().any(|e| e.halt_refusal))
    });
    let broken = order.broken.load(Ordering::Relaxed);
    if refused || broken {
        failed.store(true, Ordering::Relaxed);
    }
    let jobs = jobs
        .into_iter()
        .zip(applied.into_iter().map(Some))
        .collect();
    (jobs, broken)
}

/// The batch cut for [`prepare_pipelined`]: segments run one after another; the groups of a
/// segment side by side; a group's requests one after another. A [`Scope::Global`] request is
/// a segment of its own; requests of one execution share a group; an event-only request is a
/// group of its own.
fn segments(batch: Vec<Request>) -> Vec<Vec<Vec<(usize, Request)>>> {
    let mut segments = Vec::new();
    let mut current: Vec<Vec<(usize, Request)>> = Vec::new();
    let mut by_execution: HashMap<uuid::Uuid, usize> = HashMap::new();
    for (index, request) in batch.into_iter().enumerate() {
        match request.scope {
            Scope::Global => {
                if !current.is_empty() {
                    segments.push(std::mem::take(&mut current));
                    by_execution.clear();
                }
                segments.push(vec![vec![(index, request)]]);
            }
            Scope::Event => current.push(vec![(index, request)]),
            Scope::Execution(id) => match by_execution.get(&id) {
                Some(&group) => current[group].push((index, request)),
                None => {
                    by_execution.insert(id, current.len());
                    current.push(vec![(index, request)]);
                }
            },
        }
    }
    if !current.is_empty() {
        segments.push(current);
    }
    segments
}

/// What [`prepare_sequential`] made of a batch.
enum Sequential<'n> {
    /// The rows, the failed jobs and what ends the last savepoint.
    Chained(
        Box<Chain<'n>>,
        Vec<(Box<dyn Job>, StoreError)>,
        &'static str,
        BatchPerf,
    ),
    /// No effect was attempted (cannot happen: a request has at least one job).
    Empty,
}

/// Runs a batch's effects in one transaction, each in its own savepoint: whatever one caller's
/// effect does wrong (refused by a constraint, or an error after it wrote) rolls back that
/// effect alone and fails only its caller; its neighbours commit. The transaction and
/// savepoint commands are not awaited on their own: BEGIN goes out in the same flight as the
/// first effect's first statement, each savepoint (with the previous effect's release or
/// rollback) with the next effect's first statement, and the last release with the batch's
/// single audit INSERT and the COMMIT ([`commit`]). A failed command means the connection or
/// transaction is broken: the whole batch fails, every caller told.
async fn prepare_sequential<'n>(
    link: Link<'_>,
    tip: Tip<'n>,
    batch: Vec<Request>,
    mut perf: BatchPerf,
) -> Result<Sequential<'n>, StoreError> {
    let jobs = batch.iter().map(|request| request.jobs.len()).sum();
    let mut chain = Chain::new(tip, jobs);
    let mut refused: Vec<(Box<dyn Job>, StoreError)> = Vec::new();
    let transaction = link.client;
    perf.mark(0);
    let tx = Tx::new(transaction, link.statements);
    // What goes ahead of the next effect's savepoint: BEGIN for the first, then what closes
    // the previous effect's savepoint.
    let mut close = "BEGIN; ";
    let mut begun = false;
    let mut jobs = batch.into_iter().map(|request| request.jobs);
    while let Some(request) = jobs.next() {
        let mut earlier_failed = false;
        let mut request = request.into_iter();
        while let Some(mut job) = request.next() {
            if earlier_failed {
                chain.not_attempted.push(job);
                continue;
            }
            let open = format!("{close}SAVEPOINT append");
            let (opened, applied) =
                futures::join!(transaction.batch_execute(&open), job.apply(&tx));
            if let Err(error) = opened {
                // Every caller told: those chained, refused, this one and those not reached.
                let unreached = request.chain(jobs.by_ref().flatten());
                fail_all(std::iter::once(job).chain(unreached));
                perf.log("sequential");
                settle_failed(chain, refused);
                return Err(error.into());
            }
            begun = true;
            match applied {
                Ok(records) => {
                    chain.push(records, job);
                    close = "RELEASE SAVEPOINT append; ";
                }
                Err(error) => {
                    refused.push((job, error));
                    earlier_failed = true;
                    close = "ROLLBACK TO SAVEPOINT append; RELEASE SAVEPOINT append; ";
                }
            }
        }
    }
    perf.mark(1);
    if !begun {
        return Ok(Sequential::Empty);
    }
    Ok(Sequential::Chained(Box::new(chain), refused, close, perf))
}

/// Requests a batch may hold to be written in one flight ([`write_in_one_flight`]): a lone
/// request, what the writer sees when it is not busy. Under load a batch holds many, and the
/// ordinary way overlaps one batch's COMMIT with the next one's effects instead.
const ONE_FLIGHT_REQUESTS: usize = 1;

/// What [`write_in_one_flight`] did with a batch.
enum OneFlight<'n> {
    /// Its statement was sent and answered: settle it. The outcome may be a failure: a
    /// connection lost before the answer fails the batch as a failed COMMIT does.
    Sent(Box<Committed<'n>>),
    /// Not sent (a job without foresight, the same change twice, a statement not prepared), or
    /// rolled back by the server (a check raised, a constraint refused it): nothing of it
    /// stands.
    Declined(Vec<Request>),
}

/// Writes a batch whose every job's outcome is foreseen ([`Body::foreseen`]) as one statement
/// ([`one_statement`]): the jobs' checked changes, in batch order, as the `WITH` list of the
/// INSERT of the foreseen records chained on `tip`, which inserts them only if every check
/// holds. Sent outside BEGIN … COMMIT, it is its own transaction, committed at its Sync: one
/// message flight, one Sync, one answer.
///
/// Why that commits only what the records say: PostgreSQL runs a statement whole or not at
/// all; a check that does not hold raises, and the statement's transaction rolls back. The
/// changes run on one snapshot, unlike statements one after the other; a change that would
/// have read another's row finds it unchanged or already changed by this statement, and its
/// check fails (each check asserts the change it foresaw), so what commits is what the
/// records say. When the server answered an error (a check, a constraint, a name clash),
/// nothing committed: the batch is declined and written the ordinary way, where the effects'
/// outcomes decide their records and refusals. A connection lost before the answer leaves it
/// unknown whether the statement committed; the batch fails as a failed COMMIT does, and the
/// writer reopens the chain from what the database holds. Saves the ordinary way's second
/// flight (a round trip, a wake-up of the writer and the server's wait between the two) and
/// the server's work on BEGIN, COMMIT and a Sync per statement.
async fn write_in_one_flight<'n>(
    link: Link<'_>,
    node_id: &'n str,
    tip: Tip<'n>,
    mut batch: Vec<Request>,
) -> OneFlight<'n> {
    let mut perf = BatchPerf::new(&batch);
    let jobs = batch.iter().map(|request| request.jobs.len()).sum();
    let mut chain = Chain::new(tip, jobs);
    let mut last_rows = Vec::with_capacity(jobs);
    let mut checked = Vec::new();
    for job in batch.iter_mut().flat_map(|request| request.jobs.iter_mut()) {
        let Some((records, statements)) = job.foresee() else {
            return OneFlight::Declined(batch);
        };
        last_rows.push(chain.push_foreseen(records));
        checked.extend(statements);
    }
    // Not as one statement (the same change twice, a part naming another's parameter).
    let Some(sql) = one_statement(&checked) else {
        return OneFlight::Declined(batch);
    };
    let statement = match Tx::new(link.client, link.statements).statement(&sql).await {
        Ok(statement) => statement,
        Err(error) => {
            tracing::warn!(error = %error_chain(&error), "a one-flight statement could not be prepared; written the ordinary way");
            return OneFlight::Declined(batch);
        }
    };
    let params: Vec<&(dyn ToSql + Sync)> = checked
        .iter()
        .flat_map(|checked| refs(&checked.params))
        .chain(chain.rows.insert_params(&node_id))
        .collect();
    perf.mark(0);
    let written = link.client.execute(&statement, &params).await;
    perf.mark(1);
    perf.mark(2);
    let outcome = match written {
        Ok(n) if n == chain.rows.seqs.len() as u64 => Ok(()),
        Ok(n) => Err(StoreError::Corrupt {
            what: "audit batch",
            detail: format!("{n} rows inserted for {} appends", chain.rows.seqs.len()),
        }),
        // The server refused it: its transaction rolled back whole.
        Err(error) if error.as_db_error().is_some() => {
            perf.log("one_flight_declined");
            return OneFlight::Declined(batch);
        }
        // The answer is lost: it may have committed.
        Err(error) => Err(StoreError::from(error)),
    };
    if outcome.is_ok() {
        perf.mark(3);
    }
    perf.log("one_flight");
    let jobs = batch.into_iter().flat_map(|request| request.jobs);
    for (row, job) in last_rows.into_iter().zip(jobs) {
        chain.answer(row, job);
    }
    OneFlight::Sent(Box::new(Committed {
        outcome,
        chain,
        refused: Vec::new(),
    }))
}

/// The one statement of a one-flight write: `checked`'s `WITH` lists in order, then the audit
/// INSERT ([`INSERT_ROWS`]), which inserts only `WHERE` every check's `playbook_expect` holds;
/// each part's parameters numbered after those of the parts before it, the INSERT's last.
/// The WHERE is evaluated: every job of the batch inserts at least one row ([`Records`] always
/// holds its last event), and PostgreSQL runs the data-modifying `WITH` queries to completion
/// whether or not the INSERT reads them.
/// `None` when one [`CheckedSql`] comes twice (its names would clash), or when a part names a
/// parameter beyond its own (it would read the next part's).
fn one_statement(checked: &[Checked]) -> Option<String> {
    for (at, part) in checked.iter().enumerate() {
        if checked[..at]
            .iter()
            .any(|before| before.sql.with == part.sql.with)
        {
            return None;
        }
    }
    // The `WITH` list and the INSERT's WHERE, built part by part with the same numbering.
    let (mut sql, mut checks) = (String::new(), String::new());
    let mut offset = 0;
    for (at, part) in checked.iter().enumerate() {
        sql.push_str(if at == 0 { "WITH " } else { ", " });
        checks.push_str(if at == 0 { " WHERE " } else { " AND " });
        checks.push_str("playbook_expect(");
        let named = push_renumbered(&mut sql, part.sql.with, offset).max(push_renumbered(
            &mut checks,
            part.sql.expect,
            offset,
        ));
        if named > part.params.len() {
            return None;
        }
        checks.push_str(", '");
        checks.push_str(&part.sql.what.replace('\'', "''"));
        checks.push_str("')");
        offset += part.params.len();
    }
    if !checked.is_empty() {
        sql.push(' ');
    }
    push_renumbered(&mut sql, INSERT_ROWS, offset);
    sql.push_str(&checks);
    Some(sql)
}

/// Appends `sql` to `out` with each parameter `$n` written `$(n + offset)`; returns the highest
/// `n` (0 for none).
fn push_renumbered(out: &mut String, sql: &str, offset: usize) -> usize {
    let mut highest = 0;
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<usize>() {
            Ok(n) => {
                highest = highest.max(n);
                out.push_str(&(n + offset).to_string());
            }
            // Not a parameter (`CheckedSql` allows none): left as it is.
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    highest
}

/// Sends `close` (what ends the last savepoint, if any), the INSERT of `rows` and COMMIT in one
/// flight, and checks that all of it succeeded: then the COMMIT committed.
async fn insert_and_commit(
    tx: &Tx<'_>,
    node_id: &str,
    rows: &AuditRows,
    close: Option<&str>,
) -> Result<(), StoreError> {
    let transaction = tx.transaction;
    // Prepared when the connection was opened: preparing it here could meet a transaction
    // still aborted by a refused effect (its rollback to the savepoint is not sent yet).
    let insert = tx.statement(INSERT_ROWS).await?;
    // Sent in this order in one flight (each is polled, hence sent, in turn): the close
    // first, since after a refused effect the transaction is usable again only once it has
    // rolled back to the savepoint; then the INSERT; then COMMIT, which PostgreSQL turns
    // into a ROLLBACK if anything before it failed.
    let (closed, inserted, committed) = futures::join!(
        async {
            match close {
                Some(close) => transaction.batch_execute(close).await,
                None => Ok(()),
            }
        },
        async {
            if rows.seqs.is_empty() {
                return Ok(0);
            }
            transaction
                .execute(&insert, &rows.insert_params(&node_id))
                .await
        },
        transaction.batch_execute("COMMIT"),
    );
    // Every statement of the transaction was awaited and any failure of one is seen here
    // (an effect that swallowed an error leaves the transaction aborted, and what follows it
    // fails): when all succeeded, the COMMIT behind them committed.
    closed?;
    let inserted = inserted?;
    committed?;
    if inserted != rows.seqs.len() as u64 {
        // Committed, but not what was sent: fail closed (the callers do not act; the
        // writer reconnects and reloads the head from the database).
        return Err(StoreError::Corrupt {
            what: "audit batch",
            detail: format!("{inserted} rows inserted for {} appends", rows.seqs.len()),
        });
    }
    Ok(())
}

/// Where a batch's rows are chained: on this node's chain, after `head`.
#[derive(Clone, Copy)]
struct Tip<'n> {
    node_id: &'n str,
    head: ChainHead,
}

/// The rows of a batch being chained, in the order their effects are treated as having run.
struct Chain<'a> {
    /// Moves on with each row chained.
    tip: Tip<'a>,
    rows: AuditRows,
    staged: Vec<Staged>,
    /// Jobs not attempted because an earlier one of their request failed.
    not_attempted: Vec<Box<dyn Job>>,
}

impl<'a> Chain<'a> {
    fn new(tip: Tip<'a>, capacity: usize) -> Chain<'a> {
        Chain {
            tip,
            rows: AuditRows::with_capacity(capacity),
            staged: Vec::with_capacity(capacity),
            not_attempted: Vec::new(),
        }
    }

    /// The last row chained (the head it started on when none was).
    fn tip(&self) -> Tip<'a> {
        self.tip
    }

    /// Chains `records` as the next rows, their job given later ([`Chain::answer`]): the place
    /// of the last row.
    fn push_foreseen(&mut self, records: Records) -> usize {
        for earlier in records.earlier {
            self.push_row(earlier, None);
        }
        self.push_row(records.last, None);
        self.staged.len() - 1
    }

    /// Makes `job` the one answered with the row at `row` ([`Chain::push_foreseen`]).
    fn answer(&mut self, row: usize, job: Box<dyn Job>) {
        match self.staged.get_mut(row) {
            Some(item) => item.job = Some(job),
            // Not reached: `row` came from `push_foreseen`. Answered, never dropped.
            None => self.not_attempted.push(job),
        }
    }

    /// Chains `records` as the next rows, for `job`.
    fn push(&mut self, records: Records, job: Box<dyn Job>) {
        for earlier in records.earlier {
            self.push_row(earlier, None);
        }
        self.push_row(records.last, Some(job));
    }

    fn push_row(&mut self, event: AuditEvent, job: Option<Box<dyn Job>>) {
        let event = event.into_storable();
        let Tip { node_id, head } = self.tip;
        let seq = head.seq + 1;
        let created_at = now_micros();
        let data = event.to_event_data();
        let canonical = canonical_bytes(node_id, seq, event.event_type, &data, created_at);
        let hash = chain_hash(&head.hash, &canonical);
        self.rows
            .push(seq, head.hash, hash, event.event_type, data, created_at);
        self.tip.head = ChainHead { seq, hash };
        self.staged.push(Staged {
            seq,
            hash,
            event,
            job,
        });
    }
}

/// Answers every caller of a batch once its outcome is known, and on `Ok` moves the head and
/// the Merkle frontier on (before the replies).
fn settle(
    sink: &mut Sink<'_>,
    outcome: Result<(), StoreError>,
    chain: Chain<'_>,
    refused: Vec<(Box<dyn Job>, StoreError)>,
) -> Result<bool, StoreError> {
    let Chain {
        tip,
        staged,
        not_attempted,
        ..
    } = chain;
    let Sink {
        connection,
        head,
        tree,
        ..
    } = sink;
    match outcome {
        Ok(()) => {
            connection.head = tip.head;
            {
                // O(1) amortized per row; before the head, so a checkpoint that sees the new
                // head also sees its tree.
                let mut tree = lock_frontier(tree);
                if let Some(frontier) = tree.as_mut() {
                    for item in &staged {
                        let index = u64::try_from(item.seq - 1).unwrap_or(u64::MAX);
                        if let Err(error) = frontier.push_at(index, &item.hash) {
                            tracing::error!(error = %error, "audit Merkle frontier out of step; checkpoints carry no tree head until the chain is reopened");
                            *tree = None;
                            break;
                        }
                    }
                }
            }
            // Before the replies: a caller that sees its append succeed also sees the new head.
            head.send_replace(connection.head);
            metrics::counter!("playbookd_audit_appends_total").increment(staged.len() as u64);
            let wants_checkpoint = staged
                .iter()
                .any(|item| CHECKPOINT_NOW_EVENTS.contains(&item.event.event_type));
            for item in staged {
                if let Some(job) = item.job {
                    let appended = Appended {
                        seq: item.seq,
                        hash: item.hash,
                        event: item.event,
                    };
                    job.finish(Ok(appended));
                }
            }
            for (job, error) in refused {
                job.finish(Err(AppendError::Effect(error)));
            }
            fail_all(not_attempted);
            Ok(wants_checkpoint)
        }
        Err(error) => {
            fail_staged(staged, refused, not_attempted);
            Err(error)
        }
    }
}

/// Tells every caller of a batch that did not commit that nothing of it was recorded.
fn settle_failed(chain: Chain<'_>, refused: Vec<(Box<dyn Job>, StoreError)>) {
    fail_staged(chain.staged, refused, chain.not_attempted);
}

fn fail_staged(
    staged: Vec<Staged>,
    refused: Vec<(Box<dyn Job>, StoreError)>,
    not_attempted: Vec<Box<dyn Job>>,
) {
    fail_all(staged.into_iter().filter_map(|item| item.job));
    fail_all(refused.into_iter().map(|(job, _)| job));
    fail_all(not_attempted);
}

/// Tells each job's caller that nothing of it was recorded.
fn fail_all(jobs: impl IntoIterator<Item = Box<dyn Job>>) {
    for job in jobs {
        job.finish(Err(AppendError::Unavailable(None)));
    }
}

/// The timings of one batch, logged under target `perf` (`PLAYBOOKD_LOG=info,perf=debug`).
struct BatchPerf {
    t0: std::time::Instant,
    queue_us: u128,
    requests: usize,
    jobs: usize,
    marks: [u128; 4],
    /// The rolled-back pipelined attempt's effects time, for a batch written again.
    retried_us: u128,
}

impl BatchPerf {
    fn new(batch: &[Request]) -> BatchPerf {
        let t0 = std::time::Instant::now();
        BatchPerf {
            t0,
            queue_us: batch
                .iter()
                .map(|r| t0.saturating_duration_since(r.queued_at).as_micros())
                .max()
                .unwrap_or(0),
            requests: batch.len(),
            jobs: batch.iter().map(|r| r.jobs.len()).sum(),
            marks: [0; 4],
            retried_us: 0,
        }
    }

    fn mark(&mut self, which: usize) {
        self.marks[which] = self.t0.elapsed().as_micros();
    }

    /// The timings for the batch's second attempt, measured from now.
    fn retried(mut self) -> BatchPerf {
        self.retried_us = self.t0.elapsed().as_micros();
        self.t0 = std::time::Instant::now();
        self.marks = [0; 4];
        self
    }

    fn log(&self, path: &'static str) {
        tracing::debug!(target: "perf", path, queue_us = self.queue_us, requests = self.requests, jobs = self.jobs,
            retried_us = self.retried_us, begin_us = self.marks[0], effects_us = self.marks[1],
            insert_us = self.marks[2], commit_us = self.marks[3], "batch");
    }
}

/// A batch's audit rows, column by column: one INSERT of `unnest`ed arrays.
struct AuditRows {
    seqs: Vec<i64>,
    prev_hashes: Vec<Vec<u8>>,
    hashes: Vec<Vec<u8>>,
    event_types: Vec<&'static str>,
    data: Vec<Value>,
    created_at: Vec<OffsetDateTime>,
}

impl AuditRows {
    fn with_capacity(n: usize) -> AuditRows {
        AuditRows {
            seqs: Vec::with_capacity(n),
            prev_hashes: Vec::with_capacity(n),
            hashes: Vec::with_capacity(n),
            event_types: Vec::with_capacity(n),
            data: Vec::with_capacity(n),
            created_at: Vec::with_capacity(n),
        }
    }

    fn push(
        &mut self,
        seq: i64,
        prev_hash: [u8; 32],
        hash: [u8; 32],
        event_type: &'static str,
        data: Value,
        created_at: OffsetDateTime,
    ) {
        self.seqs.push(seq);
        self.prev_hashes.push(prev_hash.to_vec());
        self.hashes.push(hash.to_vec());
        self.event_types.push(event_type);
        self.data.push(data);
        self.created_at.push(created_at);
    }
}

impl AuditRows {
    /// [`INSERT_ROWS`]'s parameters: these rows of node `node_id`.
    fn insert_params<'a>(&'a self, node_id: &'a &str) -> [&'a (dyn ToSql + Sync); 7] {
        [
            node_id,
            &self.seqs,
            &self.prev_hashes,
            &self.hashes,
            &self.event_types,
            &self.data,
            &self.created_at,
        ]
    }
}

const INSERT_ROWS: &str = "INSERT INTO playbook_audit_log \
        (node_id, seq, prev_hash, hash, event_type, event_data, created_at) \
     SELECT $1, * FROM unnest($2::int8[], $3::bytea[], $4::bytea[], $5::text[], $6::jsonb[], $7::timestamptz[])";

/// Formats an error with its whole source chain on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Appends queued before the writer pushes back on callers.
const QUEUE_DEPTH: usize = 4096;
/// Appends committed in one transaction at most.
const MAX_BATCH: usize = 256;
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);
/// Distinct statements the writer keeps prepared per connection.
const MAX_CACHED_STATEMENTS: usize = 512;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_six_fraction_digits_in_utc() {
        let at = time::macros::datetime!(2026-11-24 14:54:15.000123 +02:00);
        assert_eq!(format_timestamp(at), "2026-11-24T12:54:15.000123Z");
    }

    #[test]
    fn canonical_bytes_sort_keys_and_have_no_whitespace() {
        let at = time::macros::datetime!(2026-01-02 03:04:05.5 UTC);
        let data = serde_json::json!({"z": 1, "a": "x"});
        let bytes = canonical_bytes("host-1", 7, "daemon.start", &data, at);
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"created_at":"2026-01-02T03:04:05.500000Z","event_data":{"a":"x","z":1},"event_type":"daemon.start","node_id":"host-1","seq":7}"#
        );
    }

    #[test]
    fn chain_hash_depends_on_previous_hash() {
        let first = chain_hash(&GENESIS_HASH, b"row");
        let second = chain_hash(&first, b"row");
        assert_ne!(first, second);
        // `(head -c 32 /dev/zero; printf row) | sha256sum`
        assert_eq!(
            hex::encode(first),
            "0bfca6cc586a839fe8b58fb65df26a27a5b79de713ffa35ecf7ec733d5d422ce"
        );
    }

    #[test]
    fn lock_keys_differ_per_node() {
        assert_ne!(chain_lock_key("a"), chain_lock_key("b"));
        assert_eq!(chain_lock_key("a"), chain_lock_key("a"));
    }

    #[test]
    fn parameters_are_renumbered_after_an_offset() {
        let mut out = String::new();
        let highest = push_renumbered(&mut out, "a = $1 AND b = ANY($12) OR c = $3", 5);
        assert_eq!(
            (out.as_str(), highest),
            ("a = $6 AND b = ANY($17) OR c = $8", 12)
        );
        let mut out = String::new();
        assert_eq!(push_renumbered(&mut out, "no parameters", 5), 0);
        assert_eq!(out, "no parameters");
    }

    fn dummy_params(n: usize) -> Params {
        (0..n).map(|_| Box::new(0_i32) as _).collect()
    }

    /// The checked changes of the daemon, with the parameters their foresights give.
    fn daemon_checked() -> [(&'static CheckedSql, usize); 5] {
        use crate::store::{executions, steps};
        [
            (&executions::ADMIT_CHECKED, 16),
            (&executions::ADMIT_AND_START_CHECKED, 22),
            (&executions::RUN_STATE_CHANGE_CHECKED, 6),
            (&steps::RUN_AND_STEP_START_CHECKED, 12),
            (&steps::ATTEMPT_END_CHECKED, 8),
        ]
    }

    /// The names a `WITH` list gives: each `name AS (` outside parentheses.
    fn with_names(with: &str) -> Vec<String> {
        let mut names = Vec::new();
        let (mut depth, mut quoted, mut item) = (0, false, String::new());
        for c in with.chars() {
            match c {
                '\'' => quoted = !quoted,
                '(' if !quoted => {
                    if depth == 0 {
                        let name = item.trim().trim_end_matches("AS").trim().to_owned();
                        names.push(name.trim_start_matches(',').trim().to_owned());
                        item.clear();
                    }
                    depth += 1;
                }
                ')' if !quoted => depth -= 1,
                _ if depth == 0 => item.push(c),
                _ => {}
            }
        }
        names
    }

    #[test]
    fn the_daemons_checked_changes_fit_together_in_one_statement() {
        let all = daemon_checked();
        // Any two may go together but the two forms of the admission (one a request).
        for (at, (one, _)) in all.iter().enumerate() {
            for (other, _) in &all[at + 1..] {
                if one.what.starts_with("the admission") && other.what.starts_with("the admission")
                {
                    continue;
                }
                let names = with_names(one.with);
                let clash = with_names(other.with)
                    .into_iter()
                    .find(|n| names.contains(n));
                assert_eq!(clash, None, "{} and {}", one.what, other.what);
            }
        }
        let mut seen = HashSet::new();
        for (sql, params) in all {
            seen.extend(with_names(sql.with));
            let mut out = String::new();
            let highest = push_renumbered(&mut out, sql.with, 0)
                .max(push_renumbered(&mut out, sql.expect, 0));
            assert_eq!(highest, params, "{}", sql.what);
            for text in [sql.with, sql.expect] {
                assert!(
                    text.match_indices('$')
                        .all(|(at, _)| text[at + 1..].starts_with(|c: char| c.is_ascii_digit())),
                    "{text}"
                );
            }
        }
        assert_eq!(
            seen,
            [
                "used",
                "run",
                "step",
                "run_change",
                "moved_run",
                "started_step",
                "step_end"
            ]
            .map(String::from)
            .into()
        );
    }

    #[test]
    fn one_statement_chains_the_changes_then_inserts_where_every_check_holds() {
        use crate::store::{executions, steps};
        let checked = [
            Checked::new(&steps::ATTEMPT_END_CHECKED, dummy_params(8)),
            Checked::new(&steps::RUN_AND_STEP_START_CHECKED, dummy_params(12)),
        ];
        let sql = one_statement(&checked).expect("fits");
        // The first part as it is, then the second's `$1`, `$3` and `$12` after the first's
        // eight parameters.
        let first = format!("WITH {}, moved_run AS (", steps::ATTEMPT_END_CHECKED.with);
        assert!(sql.starts_with(&first), "{sql}");
        assert!(
            sql.contains(
                "SET state = $11, current_step = $12, updated_at = now() WHERE execution_id = $9 "
            ),
            "{sql}"
        );
        assert!(
            sql.contains("WHERE playbook_step_runs.state = ANY($20)"),
            "{sql}"
        );
        assert!(
            sql.contains(") INSERT INTO playbook_audit_log")
                && sql.contains("SELECT $21, * FROM unnest($22::int8[]"),
            "{sql}"
        );
        assert!(
            sql.ends_with(
                " WHERE playbook_expect(EXISTS (SELECT 1 FROM step_end), 'the step end') \
                 AND playbook_expect(EXISTS (SELECT 1 FROM moved_run) AND EXISTS (SELECT 1 FROM started_step), 'the step start')"
            ),
            "{sql}"
        );
        assert_eq!(one_statement(&[]).as_deref(), Some(INSERT_ROWS));
        let twice = [
            Checked::new(&executions::RUN_STATE_CHANGE_CHECKED, dummy_params(6)),
            Checked::new(&executions::RUN_STATE_CHANGE_CHECKED, dummy_params(6)),
        ];
        assert_eq!(one_statement(&twice), None, "the same names twice");
        let short = [Checked::new(&steps::ATTEMPT_END_CHECKED, dummy_params(7))];
        assert_eq!(one_statement(&short), None, "a parameter beyond its own");
    }

    #[test]
    fn event_data_carries_actor_and_execution() {
        let id = uuid::Uuid::nil();
        let data = AuditEvent::new("x", Actor::Uid(1000))
            .execution(id)
            .with("k", "v")
            .to_event_data();
        assert_eq!(data["actor"], "uid:1000");
        assert_eq!(data["execution_id"], id.to_string());
        assert_eq!(data["k"], "v");
    }
}
