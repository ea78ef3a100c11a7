//! Rows of one kind that the side-by-side requests of a pipelined attempt write at the same
//! moment, written by one statement ([`Tx::query_set`]).
//!
//! The writer's backend executes every statement of every run one after another, and most of
//! what a statement costs it is paid once per statement, not per row: its set-up, its
//! executor's start and the CHECK expressions it prepares (`benches/sql/guard.sh`). When the
//! runs of a batch each end a step at once, one `UPDATE … FROM unnest(…)` of N rows does what N
//! statements did. A row alone is written by its kind's single-row statement, prepared once per
//! connection as before; rows together by the kind's set statement, sent unprepared and planned
//! for its arrays each time ([`SetRow::MANY`]).
//!
//! Why that is the outcome of sending them one by one: the requests whose rows meet in a
//! statement run side by side in [`prepare_pipelined`](super::prepare_pipelined), so they
//! belong to different executions and touch disjoint rows (two rows of one request never
//! meet: the second waits for the next round), and each row's guard is checked against the
//! row itself, as its own statement would. Each member's statement reaches the server when the
//! round's does, checked by the request's order guard like any other. When anything in the
//! round fails, every member sees the failure, the attempt is rolled back and the batch is
//! written again the savepoint way, where a [`Tx`] has no round: each row is then its own
//! statement, as before.

use std::any::{Any, TypeId};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Row, Statement};

use super::{Turn, Tx};
use crate::store::StoreError;

/// A statement's parameters.
pub type Params = Vec<Box<dyn ToSql + Sync + Send>>;

/// A statement's parameters with their types, for a statement sent unprepared.
pub type TypedParams = Vec<(Box<dyn ToSql + Sync + Send>, Type)>;

/// One array parameter of [`SetRow::MANY`]: `value` of each of `rows`, as PostgreSQL type `ty`.
pub fn column<R, T>(
    rows: &[R],
    ty: Type,
    value: impl Fn(&R) -> T,
) -> (Box<dyn ToSql + Sync + Send>, Type)
where
    T: ToSql + Sync + Send + 'static,
{
    (Box::new(rows.iter().map(value).collect::<Vec<T>>()), ty)
}

/// One row of a kind that several requests may write at the same moment, and the two
/// statements that write it: alone, and together with others of its kind.
pub trait SetRow: Send + Sync + 'static {
    /// The row alone: prepared once per connection, its plan a lookup by key. Each row it
    /// returns starts with the int8 1.
    const ONE: &'static str;

    /// [`ONE`](Self::ONE)'s parameters for this row.
    fn one(&self) -> Params;

    /// Several rows: each parameter that varies by row is an array of one element per row
    /// (`unnest($1::uuid[], …) WITH ORDINALITY AS v(…, i)`), and each row it returns starts with
    /// `v.i`, the 1-based place of the row it stems from, then what [`ONE`](Self::ONE) returns
    /// after its 1. Its guards must be per row (a row's outcome must not depend on the
    /// others'), and it must not restrict a table by a parameter that a partial index could
    /// serve: that index would be chosen by statistics that may be stale. It is sent unprepared
    /// and planned for its arrays every time: a kept plan of a join with an array would be
    /// the plan for the table's size when it was made (a new database's tables scanned whole
    /// by every statement once they grew).
    const MANY: &'static str;

    /// [`MANY`](Self::MANY)'s parameters for `rows`, in order, with their types.
    fn many(rows: &[Self]) -> TypedParams
    where
        Self: Sized;
}

/// A statement ready to send for a slot: [`SetRow::ONE`]'s or [`SetRow::MANY`]'s.
enum Prepared {
    One(&'static str, Params),
    Many(&'static str, TypedParams),
}

/// A slot's statement with its parameters, as it goes out: [`SetRow::ONE`]'s prepared.
enum Ready {
    One(Statement, Params),
    Many(&'static str, TypedParams),
}

/// The statement for `rows` (a `Vec<R>`), or `None` if they are not of the kind `R`.
type ErasedStatement = fn(&(dyn Any + Send + Sync)) -> Option<Prepared>;

fn erased_statement<R: SetRow>(rows: &(dyn Any + Send + Sync)) -> Option<Prepared> {
    match rows.downcast_ref::<Vec<R>>()?.as_slice() {
        [one] => Some(Prepared::One(R::ONE, one.one())),
        rows => Some(Prepared::Many(R::MANY, R::many(rows))),
    }
}

/// What a round's statement answered: the rows it returned, or its error, shared by all its
/// members.
type Outcome = Result<Vec<Row>, Arc<tokio_postgres::Error>>;

/// The rows of one statement in a round.
struct Slot {
    kind: TypeId,
    /// A `Vec<R>` of the statement's kind.
    rows: Box<dyn Any + Send + Sync>,
    statement: ErasedStatement,
    members: Vec<Member>,
}

/// A request's row in a slot: the order guard of its request, and where its rows go.
struct Member {
    turn: Option<Turn>,
    answer: oneshot::Sender<Outcome>,
}

impl Slot {
    /// Whether a row of the request of `turn` is in this slot.
    fn holds_request_of(&self, turn: &Turn) -> bool {
        self.members
            .iter()
            .any(|member| member.turn.as_ref().is_some_and(|t| t.same_request(turn)))
    }
}

/// The rows waiting to be sent in the current round, by kind, in the order their slots opened.
#[derive(Default)]
pub(super) struct Together {
    round: Mutex<Round>,
}

#[derive(Default)]
struct Round {
    /// Counts the rounds taken, so that a member knows whether its own was.
    number: u64,
    slots: Vec<Slot>,
}

impl Together {
    /// Adds `row` to the current round; the round's number, and where its rows arrive.
    fn join<R: SetRow>(&self, row: R, turn: Option<Turn>) -> (u64, oneshot::Receiver<Outcome>) {
        let (answer, rows) = oneshot::channel();
        let kind = TypeId::of::<R>();
        let mut round = self.round.lock().unwrap_or_else(|e| e.into_inner());
        // Slots are sent in order: a row joins none before (or holding) a row of its own
        // request, which keeps a request's statements in its order and never writes two rows of
        // one request by one statement (the second may need to see the first's change).
        let after = turn.as_ref().map_or(0, |turn| {
            round
                .slots
                .iter()
                .rposition(|slot| slot.holds_request_of(turn))
                .map_or(0, |last| last + 1)
        });
        let member = Member { turn, answer };
        let open = round
            .slots
            .iter_mut()
            .skip(after)
            .find(|slot| slot.kind == kind);
        let rejected = match open {
            Some(slot) => match slot.rows.downcast_mut::<Vec<R>>() {
                Some(rows) => {
                    rows.push(row);
                    slot.members.push(member);
                    None
                }
                // Not reached: a slot's rows are of its kind.
                None => Some((row, member)),
            },
            None => Some((row, member)),
        };
        if let Some((row, member)) = rejected {
            round.slots.push(Slot {
                kind,
                rows: Box::new(vec![row]),
                statement: erased_statement::<R>,
                members: vec![member],
            });
        }
        (round.number, rows)
    }

    /// Round `number`'s slots, unless another member took them already.
    fn take(&self, number: u64) -> Option<Vec<Slot>> {
        let mut round = self.round.lock().unwrap_or_else(|e| e.into_inner());
        if round.number != number || round.slots.is_empty() {
            return None;
        }
        round.number += 1;
        Some(std::mem::take(&mut round.slots))
    }
}

impl Tx<'_> {
    /// Writes `row` by `R`'s statement and returns the rows it returned for it. In a pipelined
    /// attempt the row waits one turn of the writer's task, so that the rows of this kind that
    /// the other requests write at the same moment join it, and one statement writes them all;
    /// elsewhere (the savepoint way, a commit) it is a statement of its own.
    pub async fn query_set<R: SetRow>(&self, row: R) -> Result<Vec<Row>, StoreError> {
        let Some(together) = self.together else {
            let statement = self.statement(R::ONE).await?;
            let params = row.one();
            self.sending();
            return Ok(self.transaction.query(&statement, &refs(&params)).await?);
        };
        let (number, rows) = together.join(row, self.turn.clone());
        // Every request polled in this pass of the writer's task adds its rows first.
        tokio::task::yield_now().await;
        if let Some(slots) = together.take(number) {
            self.send_round(slots).await;
        }
        match rows.await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(error)) => Err(match Arc::try_unwrap(error) {
                Ok(error) => StoreError::Query(error),
                Err(shared) => StoreError::QueryTogether(shared),
            }),
            // Not reached: a taken round answers every member.
            Err(_) => Err(StoreError::Corrupt {
                what: "audit writer",
                detail: "a row written with others got no answer".into(),
            }),
        }
    }

    /// Sends each slot's statement, in the order the slots opened and in one flight, and
    /// answers its members with their rows.
    async fn send_round(&self, slots: Vec<Slot>) {
        // Prepared first: a prepare's round trip must not let a later slot's statement out
        // before an earlier one's. `None`: rows not of the slot's kind (not reached), answered
        // by no one.
        let mut ready = Vec::with_capacity(slots.len());
        for slot in &slots {
            ready.push(match (slot.statement)(&*slot.rows) {
                Some(Prepared::One(sql, params)) => Some(
                    self.statement(sql)
                        .await
                        .map(|statement| Ready::One(statement, params))
                        .map_err(Arc::new),
                ),
                Some(Prepared::Many(sql, params)) => Some(Ok(Ready::Many(sql, params))),
                None => None,
            });
        }
        let queries = slots.iter().zip(&ready).map(|(slot, ready)| async move {
            let ready = match ready.as_ref()? {
                Ok(ready) => ready,
                Err(error) => return Some(Err(Arc::clone(error))),
            };
            for member in &slot.members {
                if let Some(turn) = &member.turn {
                    turn.sending();
                }
            }
            let rows = match ready {
                Ready::One(statement, params) => {
                    self.transaction.query(statement, &refs(params)).await
                }
                Ready::Many(sql, params) => {
                    let params: Vec<(&(dyn ToSql + Sync), Type)> = params
                        .iter()
                        .map(|(param, ty)| (&**param as &(dyn ToSql + Sync), ty.clone()))
                        .collect();
                    self.transaction.query_typed(sql, &params).await
                }
            };
            Some(rows.map_err(Arc::new))
        });
        // `join_all` polls in order: the statements go out in the slots' order.
        let outcomes = futures::future::join_all(queries).await;
        for (slot, outcome) in slots.into_iter().zip(outcomes) {
            if let Some(outcome) = outcome {
                answer(slot.members, outcome);
            }
        }
    }
}

/// Answers each member with the rows whose first column is its place (from 1), or with the
/// statement's error. A row that names no member's place leaves every member unanswered: their
/// rows cannot be told apart, and each fails (`Corrupt`), which rolls the attempt back.
fn answer(members: Vec<Member>, outcome: Outcome) {
    let rows = match outcome {
        Ok(rows) => rows,
        Err(error) => {
            for member in members {
                let _ = member.answer.send(Err(Arc::clone(&error)));
            }
            return;
        }
    };
    let mut by_member: Vec<Vec<Row>> = members.iter().map(|_| Vec::new()).collect();
    for row in rows {
        let place = row
            .try_get::<_, i64>(0)
            .ok()
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| i.checked_sub(1));
        match place.and_then(|i| by_member.get_mut(i)) {
            Some(rows) => rows.push(row),
            None => return,
        }
    }
    for (member, rows) in members.into_iter().zip(by_member) {
        let _ = member.answer.send(Ok(rows));
    }
}

/// `params` as the client takes them.
pub fn refs(params: &Params) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|param| &**param as &(dyn ToSql + Sync))
        .collect()
}
