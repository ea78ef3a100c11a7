//! Applies `migrations/*.sql` (embedded at build time) with refinery, under a PostgreSQL
//! advisory lock so that two daemons starting together never race on the schema.

use crate::store::StoreError;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Advisory-lock key held while migrating ("pbd-mig" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x0070_6264_2d6d_6967;

/// Outcome of a migration run.
#[derive(Debug, PartialEq, Eq)]
pub struct MigrationReport {
    /// Names of the migrations applied by this run, oldest first; empty when up to date.
    pub applied: Vec<String>,
}

/// Brings the schema up to date on `client`. Idempotent: a second run applies nothing.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<MigrationReport, StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let outcome = embedded::migrations::runner()
        .set_abort_divergent(true)
        .set_abort_missing(true)
        .run_async(client)
        .await;
    // Released on every path; if the connection is gone, the server released it already.
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    let report = outcome.map_err(StoreError::Migrate)?;
    unlock?;
    Ok(MigrationReport {
        applied: report
            .applied_migrations()
            .iter()
            .map(|m| m.to_string())
            .collect(),
    })
}
