//! The daemon's database role may read and append evidence and change state, and nothing more
//! (issue 21). A role that owns a playbookd table (or its schema, or the database), a
//! superuser, a role that may create roles, or a role that may UPDATE, DELETE, TRUNCATE or
//! put triggers on the evidence could erase or rewrite the audit chain it is supposed to keep:
//! the daemon refuses to start as one, before anything acts.
//!
//! Every role the connected role is a member of counts, whether it inherits the role's
//! privileges or only may `SET ROLE` to it: an attacker holding the connection can do either.

/// Why the connected role must not run the daemon.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "refusing to run as database role `{role}`: {problems}; connect as a runtime role that owns nothing \
         (`playbookd migrate --runtime-role ROLE` as the owner grants it exactly what it needs; see README \"Database roles\")",
        problems = problems.join("; ")
    )]
    Unsafe { role: String, problems: Vec<String> },
    #[error("failed to read the connected role's privileges")]
    Query(#[source] tokio_postgres::Error),
}

/// The tables whose rows are evidence: read and append only.
pub const EVIDENCE_TABLES: [&str; 3] = [
    "playbook_audit_log",
    "audit_checkpoints",
    "audit_cosignatures",
];

/// Checks the connected role (see the module docs); returns its name when it is safe.
pub async fn check_runtime_role(client: &tokio_postgres::Client) -> Result<String, PrivilegeError> {
    let role: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(PrivilegeError::Query)?
        .get(0);
    let rows = client
        .query(PROBLEMS_QUERY, &[&EVIDENCE_TABLES.as_slice()])
        .await
        .map_err(PrivilegeError::Query)?;
    let all: Vec<(bool, String)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    // A superuser may do everything; listing each consequence would bury the one fix.
    let superuser = all.iter().any(|(is_superuser, _)| *is_superuser);
    let problems: Vec<String> = all
        .into_iter()
        .filter(|(is_superuser, _)| *is_superuser || !superuser)
        .map(|(_, problem)| problem)
        .collect();
    if problems.is_empty() {
        Ok(role)
    } else {
        Err(PrivilegeError::Unsafe { role, problems })
    }
}

/// One row per problem: (is it superuser power, what). `mine` is every role the connected role is a member of (itself
/// included; `pg_has_role(…, 'MEMBER')` counts memberships it does not inherit, too).
const PROBLEMS_QUERY: &str = "
WITH mine AS (
    SELECT oid, rolname, rolsuper, rolcreaterole FROM pg_roles
    WHERE pg_has_role(current_user, oid, 'MEMBER')
),
playbookd_tables AS (
    SELECT c.oid, c.relname, c.relowner, c.relnamespace FROM pg_class c
    WHERE c.relkind IN ('r', 'p')
      AND (c.relname LIKE 'playbook\\_%' OR c.relname = ANY ($1::text[])
           OR c.relname = 'refinery_schema_history')
      AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'playbook_audit_log'::regclass)
),
evidence AS (
    SELECT oid, relname FROM playbookd_tables WHERE relname = ANY ($1::text[])
)
SELECT true, format('%s is a superuser', CASE WHEN m.rolname = current_user THEN 'it' ELSE 'its role ' || m.rolname END)
    FROM mine m WHERE m.rolsuper
UNION ALL
SELECT false, format('%s may create roles (CREATEROLE), so it can make itself a member of the owner',
              CASE WHEN m.rolname = current_user THEN 'it' ELSE 'its role ' || m.rolname END)
    FROM mine m WHERE m.rolcreaterole AND NOT m.rolsuper
UNION ALL
SELECT false, format('it owns %s %s%s', CASE WHEN count(*) = 1 THEN 'table' ELSE 'tables' END,
              string_agg(t.relname, ', ' ORDER BY t.relname),
              CASE WHEN m.rolname = current_user THEN '' ELSE ' (through role ' || m.rolname || ')' END)
    FROM playbookd_tables t JOIN mine m ON m.oid = t.relowner
    GROUP BY m.rolname
UNION ALL
SELECT false, format('it owns schema %s (through role %s), so it can drop the evidence tables',
              n.nspname, pg_get_userbyid(n.nspowner))
    FROM pg_namespace n
    WHERE n.oid = (SELECT relnamespace FROM pg_class WHERE oid = 'playbook_audit_log'::regclass)
      AND pg_has_role(current_user, n.nspowner, 'MEMBER')
UNION ALL
SELECT false, format('it owns database %s%s', d.datname,
              CASE WHEN m.rolname = current_user THEN '' ELSE ' (through role ' || m.rolname || ')' END)
    FROM pg_database d JOIN mine m ON m.oid = d.datdba
    WHERE d.datname = current_database()
UNION ALL
SELECT false, format('%s may %s on %s',
              CASE WHEN m.rolname = current_user THEN 'it' ELSE 'its role ' || m.rolname END,
              p.privilege, e.relname)
    FROM mine m CROSS JOIN evidence e
    CROSS JOIN (VALUES ('UPDATE'), ('DELETE'), ('TRUNCATE'), ('TRIGGER'), ('REFERENCES')) AS p (privilege)
    WHERE CASE WHEN p.privilege IN ('UPDATE', 'REFERENCES')
               THEN has_any_column_privilege(m.oid, e.oid, p.privilege)
               ELSE has_table_privilege(m.oid, e.oid, p.privilege) END
      AND NOT m.rolsuper
ORDER BY 2";
