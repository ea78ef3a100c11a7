//! Applies `migrations/*.sql` (embedded at build time) with refinery, under a PostgreSQL
//! advisory lock so that two migrators never race on the schema; grants the runtime role its
//! privileges; and tells the daemon whether the schema it connects to is the one it was built for.
//!
//! Two roles (issue 21): the migrator runs as the owner of the schema, the daemon as a runtime
//! role that owns nothing. `serve` never migrates: it only reads the schema version
//! ([`check_schema`]) and refuses to start on any other.

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

/// Who the migrator acts as and whom it grants the daemon's privileges to.
#[derive(Debug, Default, Clone)]
pub struct Roles<'a> {
    /// `SET ROLE` to this role before migrating, so that what the migrations create belongs to
    /// it (for an installer that connects as a superuser through peer authentication).
    /// `None`: the connected role is the owner.
    pub owner: Option<&'a str>,
    /// Grant exactly the daemon's privileges to this role after migrating (and revoke whatever
    /// else it held on the schema). `None`: grant nothing.
    pub runtime: Option<&'a str>,
}

/// Migrates as `roles.owner` (or the connected role) and grants the runtime privileges to
/// `roles.runtime`: what `playbookd migrate` does.
pub async fn migrate_with_roles(
    client: &mut tokio_postgres::Client,
    roles: &Roles<'_>,
) -> Result<MigrationReport, StoreError> {
    if let Some(owner) = roles.owner {
        // set_config('role', …) is SET ROLE with the name as a value, so no quoting is needed.
        client
            .query_one("SELECT set_config('role', $1, false)", &[&owner])
            .await
            .map_err(|source| StoreError::SetRole {
                role: owner.to_owned(),
                source,
            })?;
    }
    let report = migrate(client).await?;
    if let Some(runtime) = roles.runtime {
        grant_runtime(client, runtime).await?;
    }
    Ok(report)
}

/// Grants `role` exactly what the daemon needs on the current schema (the list is
/// `playbookd_grant_runtime` in migrations/V6__runtime_role.sql and its successors).
pub async fn grant_runtime(client: &tokio_postgres::Client, role: &str) -> Result<(), StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regrole($1) IS NOT NULL", &[&role])
        .await?
        .get(0);
    if !exists {
        return Err(StoreError::NoSuchRole {
            role: role.to_owned(),
        });
    }
    client
        .execute("SELECT playbookd_grant_runtime(to_regrole($1))", &[&role])
        .await
        .map_err(|source| StoreError::Grant {
            role: role.to_owned(),
            source,
        })?;
    Ok(())
}

/// Why the daemon will not run on the schema it found.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "the database has no playbookd schema; run `playbookd migrate --runtime-role ROLE` as its owner first"
    )]
    NotMigrated,
    #[error(
        "role `{role}` may not read the schema version (refinery_schema_history); run `playbookd migrate --runtime-role {role}` as the owner"
    )]
    NotGranted { role: String },
    #[error(
        "the schema is at V{found}, this playbookd needs V{needed}; run `playbookd migrate --runtime-role ROLE` as the owner (the daemon never migrates)"
    )]
    Behind { found: i64, needed: i64 },
    #[error(
        "the schema is at V{found}, newer than this playbookd knows (V{known}); install the playbookd that migrated it"
    )]
    Ahead { found: i64, known: i64 },
    #[error("failed to read the schema version")]
    Query(#[source] tokio_postgres::Error),
}

impl SchemaError {
    /// True when an operator must act (migrate, grant, install the right binary); false when
    /// the database failed and a retry may help.
    pub fn is_config(&self) -> bool {
        match self {
            SchemaError::NotMigrated
            | SchemaError::NotGranted { .. }
            | SchemaError::Behind { .. }
            | SchemaError::Ahead { .. } => true,
            SchemaError::Query(_) => false,
        }
    }
}

/// Checks that the schema is exactly the newest migration embedded in this binary. The daemon
/// runs as a role that cannot migrate, so an old schema is an operator's job, named here.
pub async fn check_schema(client: &tokio_postgres::Client) -> Result<i64, SchemaError> {
    let needed = NEWEST_MIGRATION;
    let row = client
        .query_one(
            "SELECT max(version)::bigint FROM refinery_schema_history",
            &[],
        )
        .await;
    let found: Option<i64> = match row {
        Ok(row) => row.get(0),
        Err(error) => {
            return Err(match error.code() {
                Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => SchemaError::NotMigrated,
                Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
                    let role = client
                        .query_one("SELECT current_user::text", &[])
                        .await
                        .map_err(SchemaError::Query)?
                        .get(0);
                    SchemaError::NotGranted { role }
                }
                _ => SchemaError::Query(error),
            });
        }
    };
    match found {
        None => Err(SchemaError::NotMigrated),
        Some(found) if found < needed => Err(SchemaError::Behind { found, needed }),
        Some(found) if found > needed => Err(SchemaError::Ahead {
            found,
            known: needed,
        }),
        Some(found) => Ok(found),
    }
}

/// The version of the newest migration this binary carries: what `serve` checks the schema
/// against. A constant, not refinery's runner: building the runner compiles a regex for the
/// migrations' names that stays allocated for the life of the process (about 0.4 MiB of the
/// idle daemon's heap) and `serve` never migrates. A test keeps it equal to the newest file in
/// `migrations/`.
pub const NEWEST_MIGRATION: i64 = 13;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_migration_constant_is_the_newest_embedded_migration() {
        let newest = embedded::migrations::runner()
            .get_migrations()
            .iter()
            .map(|m| i64::from(m.version()))
            .max();
        assert_eq!(
            newest,
            Some(NEWEST_MIGRATION),
            "set store::migrate::NEWEST_MIGRATION to the newest migration's version"
        );
    }
}
