//! CPU time by process during a bench phase, read from `/proc`: the daemon, its database and
//! the bench share the machine's cores, so what each took says what bounds the daemon's rate.

use std::collections::HashMap;

/// The processes counted: the daemon, this process, and the PostgreSQL processes when the server
/// runs on this machine (`None` when it does not).
pub(super) struct Processes {
    daemon: u32,
    bench: u32,
    postgres: Option<Postgres>,
}

struct Postgres {
    /// The backend of the audit writer's chain connection (the one holding the chain lock).
    writer: u32,
    /// The backend of the audit writer's spare connection, if it has one.
    spare: Option<u32>,
    /// The bench database's other backends: the daemon's pool, the bench's own connections.
    backends: Vec<u32>,
    /// Processes of no database: WAL writer, checkpointer, background writer, launchers.
    background: Vec<u32>,
}

impl Processes {
    /// The daemon `daemon` and the backends of database `db_name` as they are now, found through
    /// `admin` (a connection to another database of the same server). The writer's backend
    /// holds the advisory lock of `node_id`'s chain.
    pub(super) async fn find(
        admin: &tokio_postgres::Client,
        db_name: &str,
        node_id: &str,
        daemon: u32,
    ) -> Result<Processes, tokio_postgres::Error> {
        let key = crate::store::audit::chain_lock_key(node_id);
        let writer: Option<i32> = admin
            .query_opt(
                "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
                 WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND d.datname = $1 \
                 AND ((l.classid::int8 << 32) | l.objid::int8) = $2",
                &[&db_name, &key],
            )
            .await?
            .map(|row| row.get(0));
        let rows = admin
            .query(
                "SELECT pid, datname IS NULL, application_name LIKE '% ' || $2 \
                 FROM pg_stat_activity WHERE datname = $1 OR datname IS NULL",
                &[&db_name, &crate::store::audit::SPARE_APPLICATION_SUFFIX],
            )
            .await?;
        let pid = |pid: i32| u32::try_from(pid).ok();
        let postgres = writer
            .and_then(pid)
            .filter(|&writer| is_postgres(writer))
            .map(|writer| {
                let mut spare = None;
                let mut backends = Vec::new();
                let mut background = Vec::new();
                for row in &rows {
                    let Some(found) = pid(row.get(0)) else {
                        continue;
                    };
                    match (row.get::<_, bool>(1), row.get::<_, bool>(2)) {
                        _ if found == writer => {}
                        (true, _) => background.push(found),
                        (false, true) => spare = Some(found),
                        (false, false) => backends.push(found),
                    }
                }
                Postgres {
                    writer,
                    spare,
                    backends,
                    background,
                }
            });
        Ok(Processes {
            daemon,
            bench: std::process::id(),
            postgres,
        })
    }

    fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        let postgres = self.postgres.iter().flat_map(|pg| {
            std::iter::once(pg.writer)
                .chain(pg.spare)
                .chain(pg.backends.iter().copied())
                .chain(pg.background.iter().copied())
        });
        [self.daemon, self.bench].into_iter().chain(postgres)
    }
}

/// Whether `pid` is a process of this machine named `postgres` (a server elsewhere has pids
/// that mean nothing here).
fn is_postgres(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "postgres")
}

/// Clock ticks spent so far: the machine's in all and busy, and each process's.
pub(super) struct Snapshot {
    total: u64,
    busy: u64,
    cores: usize,
    by_pid: HashMap<u32, u64>,
}

impl Snapshot {
    /// `None` where `/proc/stat` cannot be read (not Linux); a process that has exited is left
    /// out.
    pub(super) fn take(processes: &Processes) -> Option<Snapshot> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let mut lines = stat.lines();
        let ticks: Vec<u64> = lines
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .map(|field| field.parse().unwrap_or(0))
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user's).
        let total: u64 = ticks.iter().take(8).sum();
        let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
        let cores = lines.filter(|line| line.starts_with("cpu")).count();
        let by_pid = processes
            .pids()
            .filter_map(|pid| Some((pid, process_ticks(pid)?)))
            .collect();
        Some(Snapshot {
            total,
            busy: total.saturating_sub(idle),
            cores,
            by_pid,
        })
    }
}

/// utime + stime of `pid` (fields 14 and 15 of `/proc/PID/stat`, after the command in
/// parentheses, which may hold spaces).
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(field(14)? + field(15)?)
}

/// CPU used between two snapshots, in cores (CPU seconds per second).
pub(super) struct Shares {
    pub(super) cores: usize,
    pub(super) busy: f64,
    pub(super) daemon: f64,
    pub(super) bench: f64,
    pub(super) writer: Option<f64>,
    pub(super) spare: Option<f64>,
    pub(super) backends: Option<f64>,
    pub(super) background: Option<f64>,
}

impl Shares {
    pub(super) fn between(
        before: &Snapshot,
        after: &Snapshot,
        processes: &Processes,
    ) -> Option<Shares> {
        let elapsed = after.total.checked_sub(before.total).filter(|&t| t > 0)? as f64;
        let cores = after.cores.max(1);
        let share = |ticks: u64| ticks as f64 / elapsed * cores as f64;
        let used = |pids: &mut dyn Iterator<Item = u32>| {
            share(
                pids.map(|pid| {
                    let at = |snapshot: &Snapshot| snapshot.by_pid.get(&pid).copied();
                    at(after)
                        .unwrap_or(0)
                        .saturating_sub(at(before).unwrap_or(0))
                })
                .sum(),
            )
        };
        let postgres = processes.postgres.as_ref();
        Some(Shares {
            cores,
            busy: share(after.busy.saturating_sub(before.busy)),
            daemon: used(&mut std::iter::once(processes.daemon)),
            bench: used(&mut std::iter::once(processes.bench)),
            writer: postgres.map(|pg| used(&mut std::iter::once(pg.writer))),
            spare: postgres.map(|pg| used(&mut pg.spare.into_iter())),
            backends: postgres.map(|pg| used(&mut pg.backends.iter().copied())),
            background: postgres.map(|pg| used(&mut pg.background.iter().copied())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_counted_and_the_machine_is_at_least_as_busy() {
        let processes = Processes {
            daemon: std::process::id(),
            bench: std::process::id(),
            postgres: None,
        };
        let before = Snapshot::take(&processes).unwrap();
        let started = std::time::Instant::now();
        let mut spin = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(300) {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        let after = Snapshot::take(&processes).unwrap();
        let shares = Shares::between(&before, &after, &processes).unwrap();
        assert!(shares.bench > 0.1, "{}", shares.bench);
        assert!(
            shares.busy + 0.05 >= shares.bench,
            "{} {}",
            shares.busy,
            shares.bench
        );
        assert!(shares.busy <= shares.cores as f64 + 0.05, "{}", shares.busy);
        assert!(shares.writer.is_none());
    }
}
