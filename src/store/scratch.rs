//! A throwaway database laid out as an install lays it out: the database and its schema belong
//! to an owner role, the daemon connects as a runtime role that owns nothing (README
//! "Database roles"). `playbookd bench` and the integration tests create one per run (per test),
//! so the two cannot drift from each other or from what the migrations grant.

/// Whether the owner role may log in. The tests migrate as the owner (and show that the daemon
/// refuses to run as it); the bench migrates as the admin on the owner's behalf, so its owner
/// needs no login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerLogin {
    Login,
    NoLogin,
}

impl OwnerLogin {
    fn keyword(self) -> &'static str {
        match self {
            OwnerLogin::Login => "LOGIN",
            OwnerLogin::NoLogin => "NOLOGIN",
        }
    }
}

/// The names of a scratch database and of its two roles, `<name>_owner` and `<name>_rt`.
/// Roles are cluster-wide: naming them after the database keeps parallel runs apart and lets
/// a later run find what a dead one left.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct ScratchDb {
    pub name: String,
    pub owner: String,
    pub runtime: String,
}

impl ScratchDb {
    /// Names a scratch database. `name` goes into SQL unquoted: lowercase ASCII letters, digits
    /// and `_`, starting with a letter (the callers build it from a prefix, a pid and a uuid).
    ///
    /// # Panics
    /// On any other name: a programming error, never input.
    pub fn named(name: String) -> ScratchDb {
        let plain = name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        assert!(
            plain,
            "scratch database name `{name}` is not a plain identifier"
        );
        ScratchDb {
            owner: format!("{name}_owner"),
            runtime: format!("{name}_rt"),
            name,
        }
    }

    /// Creates the two roles, then the database owned by the owner (not migrated).
    pub async fn create(
        &self,
        admin: &tokio_postgres::Client,
        owner_login: OwnerLogin,
    ) -> Result<(), tokio_postgres::Error> {
        let ScratchDb {
            name,
            owner,
            runtime,
        } = self;
        admin
            .batch_execute(&format!(
                "CREATE ROLE {owner} {}; CREATE ROLE {runtime} LOGIN",
                owner_login.keyword()
            ))
            .await?;
        // A call of its own: CREATE DATABASE cannot run in the implicit transaction of a batch.
        admin
            .batch_execute(&format!("CREATE DATABASE {name} OWNER {owner}"))
            .await
    }

    /// Drops the database, then its roles (a role cannot go while it owns a database or holds
    /// privileges in one). Whatever is already gone is skipped.
    pub async fn drop_all(
        &self,
        admin: &tokio_postgres::Client,
    ) -> Result<(), tokio_postgres::Error> {
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await?;
        for role in [&self.owner, &self.runtime] {
            admin
                .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::ScratchDb;

    #[test]
    fn roles_are_named_after_the_database() {
        let db = ScratchDb::named("pbd_bench_42".into());
        assert_eq!(db.owner, "pbd_bench_42_owner");
        assert_eq!(db.runtime, "pbd_bench_42_rt");
    }

    #[test]
    #[should_panic(expected = "not a plain identifier")]
    fn a_name_that_would_need_quoting_is_refused() {
        let _ = ScratchDb::named("pbd; DROP ROLE postgres".into());
    }
}
