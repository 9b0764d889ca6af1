//! Real `redis-server` processes for integration tests: single servers and
//! Redis Clusters on ephemeral loopback ports, each in its own temp dir, each
//! killed (SIGKILL) when its handle drops, also when a test panics.
//!
//! There is no skipping: if `redis-server` is not installed the helpers panic
//! with an install hint (`scripts/ensure-redis.sh`).
//!
//! Servers are started with `--enable-debug-command local`, so a test can make
//! one hang with `DEBUG SLEEP`, and without persistence (`--save ""`,
//! `--appendonly no`), so `restart` gives a fresh, empty server on the same
//! port, like a replaced shard.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::process::{drain_output, free_port};

const INSTALL_HINT: &str =
    "run scripts/ensure-redis.sh (or apt-get install redis-server redis-tools)";
/// How long one `redis-server` may take to log that it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts with fresh ports when the one chosen was taken meanwhile.
const START_ATTEMPTS: usize = 5;
/// Deadline for a cluster to converge (after create, after a failover).
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long Redis gives a manual failover before dropping it, silently.
const MANUAL_FAILOVER_TIMEOUT: Duration = Duration::from_secs(5);
/// Interval of the bounded polls on cluster state.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Lines of server output kept for panic messages.
const LOG_TAIL: usize = 200;

/// One `redis-server` on `127.0.0.1:port`.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    /// Cluster bus port, for cluster nodes (chosen like `port`; the default
    /// `port + 10000` could be past 65535 or taken).
    cluster_port: Option<u16>,
    /// Extra `redis-server` arguments, kept for `restart`.
    extra_args: Vec<String>,
    dir: TempDir,
    child: Option<Child>,
    drain: Option<JoinHandle<()>>,
    /// The last lines the server printed, for panic messages.
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl RedisServer {
    /// A standalone server on an ephemeral loopback port.
    pub fn start() -> RedisServer {
        Self::start_with_args(&[])
    }

    /// A standalone server with extra `redis-server` arguments, such as
    /// `["--requirepass", "secret"]` or `["--maxmemory", "1mb"]`.
    pub fn start_with_args(args: &[&str]) -> RedisServer {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Self::start_on_fresh_ports(args, false)
    }

    /// A cluster-enabled node, not yet part of a cluster.
    fn start_cluster_node() -> RedisServer {
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
            // Replicas sync at once instead of after the default 5 s wait for
            // more replicas to join the diskless transfer.
            "--repl-diskless-sync-delay",
            "0",
        ];
        Self::start_on_fresh_ports(args.iter().map(|a| a.to_string()).collect(), true)
    }

    fn start_on_fresh_ports(extra_args: Vec<String>, cluster: bool) -> RedisServer {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let mut server = RedisServer {
                port: free_port(),
                cluster_port: cluster.then(free_port),
                extra_args: extra_args.clone(),
                dir: tempfile::tempdir().expect("temp dir for redis-server"),
                child: None,
                drain: None,
                tail: Arc::default(),
            };
            match server.spawn() {
                Ok(()) => return server,
                // Most likely the port was taken between choosing and binding:
                // try again with new ones.
                Err(output) => failures.push(format!("port {}:\n{output}", server.port)),
            }
        }
        panic!(
            "redis-server did not start in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    /// Starts the process on `self.port` in `self.dir` and waits until it
    /// logs that it is ready. `Err` carries its output if it exited first.
    fn spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "redis-server already running");
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--logfile", ""])
            .args(["--enable-debug-command", "local"]);
        if let Some(cluster_port) = self.cluster_port {
            cmd.args(["--cluster-port", &cluster_port.to_string()]);
        }
        cmd.args(&self.extra_args);
        // Config errors go to stderr; keep them in the temp dir for messages.
        let stderr_path = self.dir.path().join("stderr.log");
        let stderr = File::create(&stderr_path).expect("create redis-server stderr file");
        let mut child = match cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-server not found: {INSTALL_HINT}")
            }
            Err(e) => panic!("cannot run redis-server: {e}"),
        };
        let stdout = child.stdout.take().expect("piped stdout");
        self.tail.lock().unwrap().clear();
        let (lines, _closed, drain) = drain_output(stdout, Arc::clone(&self.tail), LOG_TAIL);

        // The server says when it listens; wait for that line, not a sleep.
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut output = String::new();
        let outcome = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.contains("Ready to accept connections");
                    output.push_str(&line);
                    output.push('\n');
                    if ready {
                        break Ok(());
                    }
                }
                // Stdout closed: the process exited (a taken port, a bad flag).
                Err(RecvTimeoutError::Disconnected) => break Err(()),
                Err(RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = drain.join();
                    panic!(
                        "redis-server on port {} not ready after {READY_TIMEOUT:?}; output:\n{output}{}",
                        self.port,
                        read_stderr(&stderr_path)
                    );
                }
            }
        };
        // Dropping the receiver tells the drain thread to stop forwarding; it
        // keeps reading so the server never blocks on a full pipe.
        drop(lines);
        match outcome {
            Ok(()) => {
                self.child = Some(child);
                self.drain = Some(drain);
                Ok(())
            }
            Err(()) => {
                let _ = child.kill();
                let status = child.wait();
                let _ = drain.join();
                Err(format!(
                    "{output}{}exit: {status:?}",
                    read_stderr(&stderr_path)
                ))
            }
        }
    }

    /// `redis://127.0.0.1:PORT/0`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The process id, for tests that signal it themselves (`kill -STOP`).
    ///
    /// # Panics
    /// If the server was killed and not restarted.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .unwrap_or_else(|| panic!("redis-server on port {} is not running", self.port))
            .id()
    }

    /// Whether the process is running (it was not killed and has not exited).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the server with SIGKILL, as a crash would, and waits for it to
    /// exit. Its port is free afterwards. Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
    }

    /// Kills the server (if running) and starts a new one on the same port
    /// with an empty data directory: a replaced shard that lost its data. A
    /// cluster node comes back as a fresh node that is in no cluster.
    ///
    /// # Panics
    /// If the port was taken by another process in between.
    pub fn restart(&mut self) {
        self.kill();
        self.dir = tempfile::tempdir().expect("temp dir for redis-server");
        if let Err(output) = self.spawn() {
            panic!(
                "redis-server did not restart on port {}:\n{output}",
                self.port
            );
        }
    }

    /// `redis-cli` against this server; see [`command`].
    pub fn command(&self, args: &[&str]) -> String {
        command(self.port, args)
    }

    /// The last lines the server printed.
    pub fn log_tail(&self) -> String {
        let tail = self.tail.lock().unwrap();
        tail.iter().map(|l| format!("{l}\n")).collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_stderr(path: &std::path::Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.is_empty() => format!("stderr:\n{s}"),
        _ => String::new(),
    }
}

/// Runs `redis-cli -h 127.0.0.1 -p PORT -e ARGS…` and returns its stdout
/// (raw replies, as `redis-cli` prints them when not on a terminal).
///
/// # Panics
/// If `redis-cli` cannot connect or the reply is an error, with its stderr.
pub fn command(port: u16, args: &[&str]) -> String {
    try_command(port, args).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`command`], but returns what went wrong instead of panicking: for
/// checks that a server is down or that a command is refused.
pub fn try_command(port: u16, args: &[&str]) -> Result<String, String> {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-e"])
        .args(args)
        .stdin(Stdio::null())
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("redis-cli not found: {INSTALL_HINT}")
        }
        Err(e) => panic!("cannot run redis-cli: {e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "redis-cli -p {port} {}: {}; stderr: {}{}",
            args.join(" "),
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

/// The value of `field` in `INFO`-style `field:value` lines.
pub fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let (name, value) = line.trim_end_matches('\r').split_once(':')?;
        (name == field).then(|| value.to_string())
    })
}

/// A Redis Cluster of real servers on loopback.
#[derive(Debug)]
pub struct RedisCluster {
    /// Every node, masters first as created; roles change on failover (ask
    /// [`RedisCluster::masters`]).
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// `masters` masters with `replicas_per_master` replicas each, all 16384
    /// slots assigned, every node agreeing that the cluster is ok and every
    /// replica in sync with its master.
    ///
    /// # Panics
    /// If the cluster does not form within 30 s (with each node's view).
    pub fn start(masters: usize, replicas_per_master: usize) -> RedisCluster {
        assert!(masters >= 3, "Redis Cluster needs at least 3 masters");
        let count = masters * (1 + replicas_per_master);
        let nodes: Vec<RedisServer> = (0..count)
            .map(|_| RedisServer::start_cluster_node())
            .collect();
        let cluster = RedisCluster { nodes };

        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas_per_master.to_string()])
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}): {INSTALL_HINT}"));
        // Besides the exit status, insist on redis-cli's own success line.
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("All 16384 slots covered"),
            "redis-cli --cluster create failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );

        cluster.wait_until("the cluster to form", |c| c.converged_problem());
        cluster
    }

    /// The nodes that are masters now (live nodes only; a restarted node
    /// is a master of nothing, outside the cluster, and counts too).
    pub fn masters(&self) -> Vec<&RedisServer> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some() && role(n.port).as_deref() == Some("master"))
            .collect()
    }

    /// The nodes that are replicas now (live nodes only).
    pub fn replicas(&self) -> Vec<&RedisServer> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some() && role(n.port).as_deref() == Some("slave"))
            .collect()
    }

    /// URLs of the current masters, as seeds for a cluster client.
    pub fn urls(&self) -> Vec<String> {
        self.masters().iter().map(|n| n.url()).collect()
    }

    /// Promotes a replica with `CLUSTER FAILOVER` (coordinated with its
    /// master, no writes lost) and waits until it is master, every node sees
    /// it as master and the cluster is ok. Returns the new master's port.
    ///
    /// # Panics
    /// If there is no replica, or the failover does not finish within 30 s.
    pub fn failover(&self) -> u16 {
        // A manual failover needs the replica in sync and, silently, a master
        // that already knows it as its replica (else it ignores the request):
        // wait until every node's view of the cluster agrees.
        self.wait_until("the cluster to settle before failover", |c| {
            c.converged_problem()
        });
        let replica = *self
            .replicas()
            .first()
            .expect("failover needs a cluster with replicas");
        let port = replica.port;
        command(port, &["CLUSTER", "FAILOVER"]);
        let mut requested = Instant::now();
        self.wait_until("the failover to finish", |c| {
            if role(port).as_deref() != Some("master") {
                // Redis drops a manual failover that has not finished in 5 s
                // (CLUSTER_MF_TIMEOUT) without telling anyone; ask again.
                if requested.elapsed() > MANUAL_FAILOVER_TIMEOUT {
                    let _ = try_command(port, &["CLUSTER", "FAILOVER"]);
                    requested = Instant::now();
                }
                return Some(format!("node {port} is not master yet"));
            }
            c.converged_problem()
        });
        port
    }

    /// Bounded poll until `problem` returns `None`. Cluster state changes
    /// (gossip, elections, replication) have no push signal a test can wait
    /// on, so a short-interval poll with a deadline is the right tool here.
    fn wait_until(&self, what: &str, mut problem: impl FnMut(&Self) -> Option<String>) {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        loop {
            let Some(last) = problem(self) else { return };
            if Instant::now() >= deadline {
                let views: String = self
                    .nodes
                    .iter()
                    .map(|n| {
                        let nodes =
                            try_command(n.port, &["CLUSTER", "NODES"]).unwrap_or_else(|e| e);
                        let log = n.log_tail();
                        let log: Vec<&str> = log.lines().rev().take(20).collect();
                        let log: Vec<&str> = log.into_iter().rev().collect();
                        format!(
                            "--- node {} CLUSTER NODES:\n{nodes}--- its last log lines:\n{}\n",
                            n.port,
                            log.join("\n")
                        )
                    })
                    .collect();
                panic!("timed out after {CLUSTER_TIMEOUT:?} waiting for {what}: {last}\n{views}");
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// `None` once every live node reports `cluster_state:ok`, all slots ok
    /// and knows every node, every replica's link to its master is up, and
    /// all live nodes agree on every node's role, master and slots (as in
    /// Redis's own test suite: gossip makes these converge one node at a
    /// time). Otherwise what is not there yet.
    fn converged_problem(&self) -> Option<String> {
        let mut first_view: Option<(u16, Vec<String>)> = None;
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let port = node.port;
            let info = match try_command(port, &["CLUSTER", "INFO"]) {
                Ok(info) => info,
                Err(e) => return Some(e),
            };
            for (field, want) in [
                ("cluster_state", "ok".to_string()),
                ("cluster_slots_ok", "16384".to_string()),
                ("cluster_known_nodes", self.nodes.len().to_string()),
            ] {
                let got = info_field(&info, field);
                if got.as_deref() != Some(want.as_str()) {
                    return Some(format!("node {port}: {field} is {got:?}, want {want}"));
                }
            }
            let replication = match try_command(port, &["INFO", "replication"]) {
                Ok(info) => info,
                Err(e) => return Some(e),
            };
            if info_field(&replication, "role").as_deref() == Some("slave") {
                let link = info_field(&replication, "master_link_status");
                if link.as_deref() != Some("up") {
                    return Some(format!("replica {port}: master_link_status is {link:?}"));
                }
            }
            let view = match try_command(port, &["CLUSTER", "NODES"]) {
                Ok(nodes) => topology(&nodes),
                Err(e) => return Some(e),
            };
            match &first_view {
                None => first_view = Some((port, view)),
                Some((first_port, first)) if *first != view => {
                    return Some(format!(
                        "nodes {first_port} and {port} disagree: {first:?} vs {view:?}"
                    ));
                }
                Some(_) => {}
            }
        }
        None
    }
}

/// Each node's id, role, master and slots from `CLUSTER NODES`, sorted: what
/// all nodes of a settled cluster agree on (unlike link state or pings).
fn topology(cluster_nodes: &str) -> Vec<String> {
    let mut view: Vec<String> = cluster_nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (id, flags, master) = (fields.first()?, fields.get(2)?, fields.get(3)?);
            let role = if flags.split(',').any(|f| f == "master") {
                "master"
            } else {
                "replica"
            };
            let slots = fields.get(8..).unwrap_or_default().join(" ");
            Some(format!("{id} {role} {master} {slots}"))
        })
        .collect();
    view.sort();
    view
}

/// `master` or `slave` as the node reports it, `None` if it does not answer.
fn role(port: u16) -> Option<String> {
    let info = try_command(port, &["INFO", "replication"]).ok()?;
    info_field(&info, "role")
}
