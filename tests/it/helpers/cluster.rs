//! Throwaway PostgreSQL clusters a test starts itself: a primary, a streaming standby made with
//! `pg_basebackup -R`, and promotion with `pg_ctl promote` (what an HA manager does). Each
//! cluster lives in a directory of its own and is stopped and deleted on drop, also when the
//! test panics. As root, the server binaries run as `nobody` (initdb refuses root), like
//! `pg_as_owner` in scripts/lib/postgres.sh.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use playbookd::store::scratch::{OwnerLogin, ScratchDb};
use tokio_postgres::NoTls;

/// The database and roles a cluster gets from [`Cluster::create_playbookd_database`].
pub const DATABASE: &str = "playbookd";
pub const OWNER: &str = "playbookd_owner";
pub const RUNTIME: &str = "playbookd_rt";

/// The newest `/usr/lib/postgresql/*/bin` holding `initdb` and `pg_ctl`.
fn bindir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (scripts/test installs them)")
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
        .collect();
    found.sort_by_key(|bin| {
        bin.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found
        .pop()
        .expect("no initdb/pg_ctl under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A command running `program` as the cluster's owner: `nobody` when the test runs as root.
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "nobody", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(mut command: Command, what: &str) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A port nothing listens on right now (the kernel's pick).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// One PostgreSQL server in a temporary directory, on 127.0.0.1:`port`.
pub struct Cluster {
    pub port: u16,
    bin: PathBuf,
    root: tempfile::TempDir,
}

impl Cluster {
    /// A new primary (initdb, trust auth, replication allowed from loopback by initdb's default
    /// pg_hba.conf), started, with `settings` added to postgresql.conf.
    pub fn primary(settings: &[(&str, &str)]) -> Cluster {
        let cluster = Cluster::directory();
        let mut initdb = as_owner(&cluster.bin.join("initdb"));
        initdb.arg("-D").arg(cluster.data()).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(initdb, "initdb");
        cluster.configure(settings);
        cluster.start();
        cluster
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`), started, with `settings` added
    /// after the primary's (so they win).
    pub fn standby_of(primary: &Cluster, settings: &[(&str, &str)]) -> Cluster {
        let cluster = Cluster::directory();
        let mut backup = as_owner(&cluster.bin.join("pg_basebackup"));
        backup
            .arg("-D")
            .arg(cluster.data())
            .args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
            .args([
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ]);
        run(backup, "pg_basebackup -R");
        cluster.configure(settings);
        cluster.start();
        cluster
    }

    fn directory() -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("pbd-cluster-")
            .tempdir()
            .expect("tempdir");
        if is_root() {
            let mut chown = Command::new("chown");
            chown.arg("nobody").arg(root.path());
            run(chown, "chown nobody");
        }
        Cluster {
            port: free_port(),
            bin: bindir(),
            root,
        }
    }

    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.root.path().join("server.log")
    }

    /// Appends this server's own settings to postgresql.conf (a later line wins over an
    /// earlier one, also over the lines a standby copied from its primary).
    fn configure(&self, settings: &[(&str, &str)]) {
        let mut text = format!(
            "\n# the test's\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nwal_level = replica\nmax_wal_senders = 4\nmax_replication_slots = 4\n",
            self.port,
            self.root.path().display()
        );
        for (key, value) in settings {
            text.push_str(&format!("{key} = {value}\n"));
        }
        let path = self.data().join("postgresql.conf");
        let mut conf = std::fs::read_to_string(&path).expect("read postgresql.conf");
        conf.push_str(&text);
        std::fs::write(&path, conf).expect("write postgresql.conf");
    }

    fn pg_ctl(&self, args: &[&str], what: &str) {
        let mut command = as_owner(&self.bin.join("pg_ctl"));
        command.arg("-D").arg(self.data()).args(args);
        run(command, what);
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) {
        let log = self.log().display().to_string();
        self.pg_ctl(&["-l", &log, "-w", "-t", "60", "start"], "pg_ctl start");
    }

    /// Stops the server cleanly (`-m fast`).
    pub fn stop(&self) {
        self.pg_ctl(
            &["-m", "fast", "-w", "-t", "60", "stop"],
            "pg_ctl stop -m fast",
        );
    }

    /// Kills the server as a crash would (`-m immediate`: no shutdown checkpoint, clients cut).
    pub fn kill(&self) {
        self.pg_ctl(
            &["-m", "immediate", "-w", "-t", "60", "stop"],
            "pg_ctl stop -m immediate",
        );
    }

    /// Promotes a standby and waits until it accepts writes.
    pub fn promote(&self) {
        self.pg_ctl(&["-w", "-t", "60", "promote"], "pg_ctl promote");
    }

    /// The server's log, for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// A superuser connection config for `dbname` on this server.
    pub fn admin_config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname(dbname)
            .connect_timeout(Duration::from_secs(5));
        config
    }

    /// A superuser client on `dbname`.
    pub async fn client(&self, dbname: &str) -> tokio_postgres::Client {
        let (client, connection) = self
            .admin_config(dbname)
            .connect(NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "connect to 127.0.0.1:{}: {e}\n{}",
                    self.port,
                    self.log_text()
                )
            });
        tokio::spawn(connection);
        client
    }

    /// The two roles of an install and their database, migrated by the production migrator
    /// as the owner, with the runtime role granted its privileges (what the test harness's
    /// `TestDb::new` and `playbookd migrate --runtime-role` do).
    pub async fn create_playbookd_database(&self) {
        let scratch = ScratchDb::named(DATABASE.into());
        debug_assert_eq!(
            (scratch.owner.as_str(), scratch.runtime.as_str()),
            (OWNER, RUNTIME)
        );
        scratch
            .create(&self.client("postgres").await, OwnerLogin::Login)
            .await
            .expect("create the database and its roles");
        let mut owner = self.admin_config(DATABASE);
        owner.user(OWNER);
        let (client, connection) = owner.connect(NoTls).await.expect("connect as the owner");
        tokio::spawn(connection);
        super::migrate_as_owner(client, RUNTIME).await;
    }

    /// `ALTER SYSTEM SET key = 'value'` and a reload: for settings that must come after the
    /// standby is made (a synchronous standby name before there is a standby blocks every commit).
    pub async fn set(&self, key: &str, value: &str) {
        let admin = self.client("postgres").await;
        admin
            .batch_execute(&format!("ALTER SYSTEM SET {key} = '{value}'"))
            .await
            .expect("ALTER SYSTEM");
        admin
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .expect("pg_reload_conf");
    }

    /// Waits until `query` (one row, one boolean column) is true on `dbname`, or panics.
    pub async fn wait_until(&self, dbname: &str, query: &str, limit: Duration) {
        let client = self.client(dbname).await;
        let start = Instant::now();
        loop {
            let done: bool = client.query_one(query, &[]).await.expect(query).get(0);
            if done {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "`{query}` still false after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The runtime role's URL naming every server, read-write only: after a failover the
/// daemon's next connection lands on whichever one was promoted.
pub fn multi_host_url(servers: &[&Cluster]) -> String {
    let hosts = vec!["127.0.0.1"; servers.len()].join(",");
    let ports = servers
        .iter()
        .map(|s| s.port.to_string())
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "host={hosts} port={ports} user={RUNTIME} dbname={DATABASE} target_session_attrs=read-write"
    )
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let mut command = as_owner(&self.bin.join("pg_ctl"));
            command
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = command.status();
        }
        // The directory goes with `root` (a TempDir).
    }
}
