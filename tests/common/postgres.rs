//! Real PostgreSQL clusters for integration tests: each a private `initdb`
//! cluster in its own temp dir, served by its own `postgres` process on an
//! ephemeral loopback port, killed (SIGKILL, with every server process) when
//! its handle drops, also when a test panics. The machine's own server (on
//! 5432 or anywhere else) is never used or touched.
//!
//! There is no skipping: if PostgreSQL is not installed the helpers panic with
//! an install hint (`scripts/ensure-postgres.sh`).
//!
//! The binaries are found under `/usr/lib/postgresql/*/bin` (Debian keeps them
//! off PATH; the highest version wins), else on PATH.
//!
//! Clusters trust every local connection (user `tollgate`, no password) and
//! keep PostgreSQL's durability settings (`fsync`, `synchronous_commit`), so a
//! row whose commit returned survives [`Postgres::kill`]; only
//! `full_page_writes` is off (torn pages need an OS crash, not a process kill).
//!
//! PostgreSQL refuses to run as root: when the tests run as root, `initdb` and
//! `postgres` run as the `postgres` system user (or, where there is none, a
//! `tollgate-test` system user created once), which owns the temp dir. `psql`
//! runs as the current user: it connects over TCP and does not mind.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::process::{drain_output, free_port};

const INSTALL_HINT: &str = "run scripts/ensure-postgres.sh (or apt-get install postgresql)";
/// The superuser `initdb` creates; every connection uses it.
pub const USER: &str = "tollgate";
/// The system user the server runs as when the tests run as root, if there
/// is no `postgres` user.
const FALLBACK_SERVER_USER: &str = "tollgate-test";
/// How long `postgres` may take to log that it is ready (crash recovery
/// included).
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a fast shutdown may take (it writes a checkpoint).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long killed server processes may take to exit.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts with fresh ports when the one chosen was taken meanwhile.
const START_ATTEMPTS: usize = 5;
/// Lines of server output kept for panic messages.
const LOG_TAIL: usize = 200;
/// What the postmaster logs once it accepts connections, after a clean start
/// and after crash recovery alike (messages are forced to English).
const READY_LINE: &str = "database system is ready to accept connections";

/// One PostgreSQL cluster on `127.0.0.1:port`, superuser [`USER`], trust
/// authentication.
#[derive(Debug)]
pub struct Postgres {
    pub port: u16,
    /// Holds the data directory (`data/`) and the Unix socket; removed on
    /// drop.
    dir: TempDir,
    /// The postmaster, while running.
    child: Option<Child>,
    /// Reads the server's stderr (its log) into `tail`.
    drain: Option<JoinHandle<()>>,
    /// Disconnects when stderr closes: every server process has exited.
    closed: Option<mpsc::Receiver<()>>,
    /// The last lines the server logged, for panic messages.
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Postgres {
    /// A fresh cluster (`initdb`), started on an ephemeral loopback port and
    /// ready for connections, with only the default databases (`postgres`,
    /// `template0`, `template1`).
    ///
    /// # Panics
    /// If PostgreSQL is not installed, `initdb` fails, or the server is not
    /// ready within 20 s (with its output).
    pub fn start() -> Postgres {
        Self::start_with_tls(None)
    }

    /// [`Postgres::start`], serving TLS (`ssl = on`) with this certificate
    /// and key when given (clients may still connect without).
    pub fn start_with_tls(tls: Option<(&Path, &Path)>) -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-pg-")
            .tempdir()
            .expect("temp dir for postgres");
        let mut pg = Postgres {
            port: 0,
            dir,
            child: None,
            drain: None,
            closed: None,
            tail: Arc::default(),
        };
        if let Some(user) = server_user() {
            std::os::unix::fs::chown(pg.dir.path(), Some(user.uid), Some(user.gid)).unwrap_or_else(
                |e| {
                    panic!(
                        "cannot give {} to user {}: {e}",
                        pg.dir.path().display(),
                        user.name
                    )
                },
            );
        }
        pg.initdb();
        if let Some((cert, key)) = tls {
            pg.serve_tls(cert, key);
        }

        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            pg.port = free_port();
            match pg.spawn() {
                Ok(()) => return pg,
                // The port was taken between choosing and binding: try again
                // with a new one. Anything else will not get better.
                Err(output) if output.contains("Address already in use") => {
                    failures.push(format!("port {}:\n{output}", pg.port))
                }
                Err(output) => panic!("postgres did not start on port {}:\n{output}", pg.port),
            }
        }
        panic!(
            "postgres did not start in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    /// Copies the certificate and key into the data directory (the key
    /// private to the server user, as PostgreSQL demands) and turns SSL on.
    fn serve_tls(&self, cert: &Path, key: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let data = self.data_dir();
        for (from, name, mode) in [(cert, "server.crt", 0o644), (key, "server.key", 0o600)] {
            let to = data.join(name);
            std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).expect("chmod");
            if let Some(user) = server_user() {
                std::os::unix::fs::chown(&to, Some(user.uid), Some(user.gid)).expect("chown");
            }
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text).expect("write postgresql.conf");
    }

    fn initdb(&self) {
        let output = self
            .server_command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", USER, "--auth=trust", "-E", "UTF8", "--locale=C"])
            // No fsync of the new files: a test cluster that loses them in an
            // OS crash is gone anyway. The server itself keeps fsync on.
            .arg("--no-sync")
            .stdin(Stdio::null())
            .output();
        let output = run_output("initdb", output);
        if !output.status.success() {
            let as_user = match server_user() {
                Some(user) => format!(
                    " (as user {}, who must be able to reach {}: is TMPDIR private to root?)",
                    user.name,
                    self.dir.path().display()
                ),
                None => String::new(),
            };
            panic!(
                "initdb failed{as_user}: {}\nstdout:\n{}stderr:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    /// Starts the postmaster on `self.port` and waits until it logs that it
    /// is ready. `Err` carries its output if it exited first.
    fn spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "postgres already running");
        let mut cmd = self.server_command("postgres");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            // The defaults, spelled out: durability tests rely on them.
            .args(["-c", "fsync=on", "-c", "synchronous_commit=on"])
            .args(["-c", "full_page_writes=off"])
            // The log goes to stderr, in English, where we wait for READY_LINE.
            .args([
                "-c",
                "logging_collector=off",
                "-c",
                "log_destination=stderr",
            ])
            .args(["-c", "lc_messages=C"]);
        let mut child = match cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("PostgreSQL not found: {INSTALL_HINT}")
            }
            Err(e) => panic!("cannot run postgres: {e}"),
        };
        let stderr = child.stderr.take().expect("piped stderr");
        self.tail.lock().unwrap().clear();
        let (lines, closed, drain) = drain_output(stderr, Arc::clone(&self.tail), LOG_TAIL);
        self.child = Some(child);
        self.drain = Some(drain);
        self.closed = Some(closed);

        // The server says when it accepts connections; wait for that line,
        // not a sleep or a poll.
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut output = String::new();
        let outcome = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.contains(READY_LINE);
                    output.push_str(&line);
                    output.push('\n');
                    if ready {
                        break Ok(());
                    }
                }
                // Stderr closed: the server exited (a taken port, a bad flag,
                // a data dir it refuses).
                Err(RecvTimeoutError::Disconnected) => break Err(()),
                Err(RecvTimeoutError::Timeout) => {
                    self.crash_quietly();
                    panic!(
                        "postgres on port {} not ready after {READY_TIMEOUT:?}; output:\n{output}",
                        self.port
                    );
                }
            }
        };
        // Dropping the receiver tells the drain thread to stop forwarding; it
        // keeps reading so the server never blocks on a full pipe.
        drop(lines);
        match outcome {
            Ok(()) => Ok(()),
            Err(()) => {
                let status = match self.wait_closed(KILL_TIMEOUT) {
                    Ok(status) => status,
                    Err(e) => {
                        self.crash_quietly();
                        e
                    }
                };
                Err(format!("{output}exit: {status}"))
            }
        }
    }

    /// `initdb` or `postgres` from the bin dir, as the server user, in the
    /// temp dir (the current one may be out of that user's reach), with a
    /// clean environment.
    fn server_command(&self, program: &str) -> Command {
        let mut cmd = pg_command(program);
        if let Some(user) = server_user() {
            // std also drops root's supplementary groups (setgroups(0)).
            cmd.uid(user.uid).gid(user.gid);
        }
        cmd.current_dir(self.dir.path());
        cmd
    }

    /// `postgres://tollgate@127.0.0.1:PORT/DB`
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The cluster's data directory (inside the temp dir).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `CREATE DATABASE "name"`.
    ///
    /// # Panics
    /// If it fails (it exists, the server is down), with psql's stderr.
    pub fn create_database(&self, name: &str) {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\"")),
        );
    }

    /// Runs `sql` in database `db` with `psql -At -q -c` (unaligned, tuples
    /// only: one row a line, columns separated by `|`; quiet: no command
    /// tags) and returns its stdout without the final newline: only the rows
    /// of queries and of `RETURNING`, `""` for other statements.
    ///
    /// # Panics
    /// If psql cannot connect or the SQL fails, with its stderr.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Postgres::psql`], but returns what went wrong instead of
    /// panicking: for checks that the server is down or that SQL is refused.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let output = pg_command("psql")
            // No ~/.psqlrc, never a password prompt, no command tags
            // (`INSERT 0 1`), stop at the first error.
            .args(["-X", "-w", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .args(["-d", db, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output();
        let output = run_output("psql", output);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stdout = stdout.strip_suffix('\n').unwrap_or(&stdout).to_string();
        if output.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "psql -p {} -d {db} -c {sql:?}: {}; stderr: {}{}",
                self.port,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                if stdout.is_empty() {
                    String::new()
                } else {
                    format!("; stdout: {}", stdout.trim())
                }
            ))
        }
    }

    /// The postmaster's process id.
    ///
    /// # Panics
    /// If the server was stopped or killed and not started again.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .unwrap_or_else(|| panic!("postgres on port {} is not running", self.port))
            .id()
    }

    /// Whether the postmaster is running (not stopped, killed or exited).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Fast shutdown (SIGINT: sessions are ended, a checkpoint is written)
    /// and waits until every server process has exited. Its port is free
    /// afterwards. Does nothing if it is not running.
    ///
    /// # Panics
    /// If the server has not exited after 30 s (it is killed first).
    pub fn stop(&mut self) {
        let Some(child) = &self.child else { return };
        signal("INT", &[child.id()]);
        if let Err(e) = self.wait_closed(STOP_TIMEOUT) {
            self.crash_quietly();
            panic!(
                "postgres on port {} did not shut down after {STOP_TIMEOUT:?} ({e}); log:\n{}",
                self.port,
                self.log_tail()
            );
        }
    }

    /// Kills the postmaster and all its processes with SIGKILL at once, as a
    /// crash would: no shutdown checkpoint, the next start runs crash
    /// recovery. Waits until every server process has exited; its port is
    /// free afterwards. Does nothing if it is not running.
    ///
    /// # Panics
    /// If a server process has not exited after 10 s.
    pub fn kill(&mut self) {
        if let Err(e) = self.crash() {
            panic!(
                "postgres on port {}: {e}; log:\n{}",
                self.port,
                self.log_tail()
            );
        }
    }

    /// Starts the server again on the same port and data dir after
    /// [`Postgres::stop`] or [`Postgres::kill`], and waits until it is ready
    /// (after crash recovery, if it was killed).
    ///
    /// # Panics
    /// If it is running, if the port was taken by another process meanwhile,
    /// or if it is not ready within 20 s.
    pub fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "postgres on port {} is still running: stop() or kill() it first",
            self.port
        );
        if let Err(output) = self.spawn() {
            panic!(
                "postgres did not start again on port {}:\n{output}",
                self.port
            );
        }
    }

    /// The last lines the server logged (since it was last started).
    pub fn log_tail(&self) -> String {
        let tail = self.tail.lock().unwrap();
        tail.iter().map(|l| format!("{l}\n")).collect()
    }

    /// SIGKILL to the postmaster and its children, then waits for them.
    fn crash(&mut self) -> Result<(), String> {
        let Some(child) = &mut self.child else {
            return Ok(());
        };
        let pid = child.id();
        // Freeze the postmaster so that it forks nothing new, then kill it
        // and every process it forked. Killing only the postmaster would let
        // its children run on for a moment, and a start on the same data dir
        // fails while one of them still holds the shared memory.
        signal("STOP", &[pid]);
        signal("KILL", &children_of(pid));
        let _ = child.kill();
        self.wait_closed(KILL_TIMEOUT).map(|_| ())
    }

    /// [`Postgres::crash`] that ignores a straggler: for Drop and for paths
    /// that are about to panic with a better message.
    fn crash_quietly(&mut self) {
        let _ = self.crash();
    }

    /// Waits until the server's stderr closes, which happens when the last
    /// process holding it (the postmaster or one of its children) has exited,
    /// then reaps the postmaster. `Err` if that takes longer than `timeout`;
    /// the server is left as it was.
    fn wait_closed(&mut self, timeout: Duration) -> Result<String, String> {
        if let Some(closed) = &self.closed {
            if let Err(RecvTimeoutError::Timeout) = closed.recv_timeout(timeout) {
                return Err(format!("server processes still running after {timeout:?}"));
            }
        }
        self.closed = None;
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
        let status = match self.child.take() {
            Some(mut child) => match child.wait() {
                Ok(status) => status.to_string(),
                Err(e) => format!("unknown ({e})"),
            },
            None => "not running".to_string(),
        };
        Ok(status)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Then `dir` drops: the cluster's files go with it.
        self.crash_quietly();
    }
}

/// The system user the server runs as when the tests run as root.
#[derive(Debug)]
struct ServerUser {
    name: String,
    uid: u32,
    gid: u32,
}

/// `None` when not root (the server runs as the current user), else the
/// `postgres` user or `tollgate-test`, created here if need be.
fn server_user() -> Option<&'static ServerUser> {
    static USER: OnceLock<Option<ServerUser>> = OnceLock::new();
    USER.get_or_init(|| {
        let uid = id(&["-u"]).expect("`id -u` prints the current uid");
        if uid != 0 {
            return None;
        }
        if let Some(user) = lookup_user("postgres") {
            return Some(user);
        }
        Some(create_user(FALLBACK_SERVER_USER))
    })
    .as_ref()
}

fn lookup_user(name: &str) -> Option<ServerUser> {
    Some(ServerUser {
        name: name.to_string(),
        uid: id(&["-u", name])?,
        gid: id(&["-g", name])?,
    })
}

/// `id ARGS` as a number, `None` if there is no such user.
fn id(args: &[&str]) -> Option<u32> {
    let output = Command::new("id")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run id: {e}"));
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

/// Creates a system user without a home or login shell. Another test process
/// may be creating it at the same time: what counts is that it exists after.
fn create_user(name: &str) -> ServerUser {
    let mut outputs = String::new();
    for _ in 0..3 {
        let output = Command::new("useradd")
            .args(["--system", "--no-create-home", "--user-group"])
            .args(["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"])
            .arg(name)
            .stdin(Stdio::null())
            .output();
        match output {
            Ok(output) => outputs.push_str(&format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )),
            Err(e) => outputs.push_str(&format!("cannot run useradd: {e}\n")),
        }
        if let Some(user) = lookup_user(name) {
            return user;
        }
        // Most likely /etc/passwd was locked by a concurrent useradd.
        thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "PostgreSQL refuses to run as root and there is no `postgres` user; \
         creating the system user {name} failed:\n{outputs}"
    );
}

/// The directory with `initdb`, `postgres` and `psql`: the highest version
/// under `/usr/lib/postgresql/*/bin` (Debian), else the first on PATH.
fn bin_dir() -> &'static Path {
    static BIN_DIR: OnceLock<PathBuf> = OnceLock::new();
    BIN_DIR.get_or_init(|| {
        let complete = |dir: &Path| {
            ["initdb", "postgres", "psql"]
                .iter()
                .all(|p| dir.join(p).is_file())
        };
        let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let version: Vec<u32> = name
                    .split('.')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .ok()?;
                let bin = entry.path().join("bin");
                complete(&bin).then_some((version, bin))
            })
            .collect();
        versions.sort();
        if let Some((_, bin)) = versions.pop() {
            return bin;
        }
        std::env::var_os("PATH")
            .and_then(|path| std::env::split_paths(&path).find(|dir| complete(dir)))
            .unwrap_or_else(|| {
                panic!(
                    "PostgreSQL not found: {INSTALL_HINT} \
                     (looked for initdb, postgres and psql in /usr/lib/postgresql/*/bin and on PATH)"
                )
            })
    })
}

/// A PostgreSQL program with no `PG*` variables from the caller's
/// environment (PGHOST, PGOPTIONS, PGDATA… would change what it does) and
/// messages in English.
fn pg_command(program: &str) -> Command {
    let mut cmd = Command::new(bin_dir().join(program));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("LC_ALL", "C").env_remove("LANGUAGE");
    cmd
}

fn run_output(program: &str, output: std::io::Result<Output>) -> Output {
    match output {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("PostgreSQL not found ({program}): {INSTALL_HINT}")
        }
        Err(e) => panic!("cannot run {program}: {e}"),
    }
}

/// Sends `SIG` to `pids` with the shell's `kill` (no libc here: unsafe code
/// is forbidden). Errors (a process already gone) are ignored.
fn signal(sig: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("sh")
        .args(["-c", r#"kill -s "$0" "$@" 2>/dev/null"#, sig])
        .args(pids.iter().map(u32::to_string))
        .stdin(Stdio::null())
        .status();
}

/// The live processes whose parent is `pid`, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
            let mut fields = stat.get(stat.rfind(')')? + 2..)?.split(' ');
            let state = fields.next()?;
            let ppid: u32 = fields.next()?.parse().ok()?;
            (ppid == pid && state != "Z").then_some(child)
        })
        .collect()
}
