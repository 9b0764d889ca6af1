//! Test helpers: a real tollgate server on an ephemeral loopback port, called
//! through the generated client. Every server and process a helper starts is
//! stopped when its handle drops, also when a test fails.
#![allow(dead_code)]

#[cfg(feature = "client")]
pub mod client;
pub mod http_client;
pub mod postgres;
pub mod process;
pub mod redis;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;
use tollgate::algorithm::Outcome;
use tollgate::api::pb::tollgate::v1 as pb;
use tollgate::clock::{Clock, ManualClock, SystemClock};
use tollgate::config::load_limits_dir;
use tollgate::limiter::{FailureMode, RateLimiter};
use tollgate::server::{ServerOptions, run_with_http};
use tollgate::store::{CounterStore, CounterUpdate, MemoryStore, StoreError, StoreFuture};
use tonic::transport::Channel;

pub type Client = pb::rate_limiter_client::RateLimiterClient<Channel>;

/// A directory of limits files that lives as long as the value.
pub struct LimitsDir {
    pub dir: tempfile::TempDir,
}

impl LimitsDir {
    /// A directory holding one file, `name`, with `yaml`.
    pub fn with_file(name: &str, yaml: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(name), yaml).expect("write limits file");
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, name: &str, yaml: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        // Write then rename, as config management tools do, so the watcher
        // never reads a half-written file.
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).expect("write limits file");
        std::fs::rename(&tmp, &path).expect("rename limits file");
        path
    }
}

/// A tollgate server running in this process on 127.0.0.1:0.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The HTTP API's address, when started with [`ServerBuilder::with_http`].
    pub http_addr: Option<SocketAddr>,
    pub limiter: RateLimiter,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.url())
            .await
            .expect("connect to tollgate")
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("url")
            .connect()
            .await
            .expect("connect to tollgate")
    }

    /// Starts the graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts down and waits until `run` has returned.
    pub async fn stop(mut self) {
        self.begin_shutdown();
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(10), handle)
                .await
                .expect("server stops within 10 s")
                .expect("server task");
        }
    }

    /// Waits for a shutdown begun earlier to complete.
    pub async fn wait_stopped(mut self) {
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(10), handle)
                .await
                .expect("server stops within 10 s")
                .expect("server task");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.begin_shutdown();
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

/// Builder for [`TestServer`].
pub struct ServerBuilder {
    store: Arc<dyn CounterStore>,
    options: ServerOptions,
    failure_mode: FailureMode,
    http: bool,
}

impl ServerBuilder {
    /// A server on the memory store and the system clock.
    pub fn new() -> Self {
        Self::with_store(Arc::new(MemoryStore::new(100_000)))
    }

    /// A server on the memory store reading time from `clock`.
    pub fn with_clock(clock: &ManualClock) -> Self {
        Self::with_store(Arc::new(MemoryStore::with_clock(
            100_000,
            Arc::new(clock.clone()),
        )))
    }

    pub fn with_store(store: Arc<dyn CounterStore>) -> Self {
        Self {
            store,
            options: ServerOptions::default(),
            failure_mode: FailureMode::FailClosed,
            http: false,
        }
    }

    pub fn max_concurrent_requests(mut self, n: usize) -> Self {
        self.options.max_concurrent_requests = n;
        self
    }

    pub fn usage(mut self, usage: tollgate::usage::Usage) -> Self {
        self.options.usage = usage;
        self
    }

    /// Also serves the HTTP API on an ephemeral port.
    pub fn with_http(mut self) -> Self {
        self.http = true;
        self
    }

    /// Changes any server option (auth, TLS, the HTTP rate limit).
    pub fn configure(mut self, f: impl FnOnce(&mut ServerOptions)) -> Self {
        f(&mut self.options);
        self
    }

    pub fn failure_mode(mut self, mode: FailureMode) -> Self {
        self.failure_mode = mode;
        self
    }

    pub async fn start(self, limits: &LimitsDir) -> TestServer {
        let parsed =
            load_limits_dir(limits.path()).unwrap_or_else(|e| panic!("test limits invalid:\n{e}"));
        let limiter = RateLimiter::new(parsed, self.store, self.failure_mode);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let http = if self.http {
            Some(
                tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind HTTP"),
            )
        } else {
            None
        };
        let http_addr = http.as_ref().map(|l| l.local_addr().expect("HTTP addr"));
        let (tx, rx) = oneshot::channel();
        let server_limiter = limiter.clone();
        let options = self.options;
        let handle = tokio::spawn(async move {
            run_with_http(listener, http, server_limiter, options, async {
                let _ = rx.await;
            })
            .await
            .expect("server runs");
        });
        TestServer {
            addr,
            http_addr,
            limiter,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }
}

/// A start time on a minute boundary, so windows of any unit up to a minute
/// start at 0 and tests never straddle an edge by accident.
pub fn minute_aligned_clock() -> ManualClock {
    ManualClock::new(1_800_000_000 * 1_000_000)
}

pub fn descriptor(pairs: &[(&str, &str)]) -> pb::Descriptor {
    pb::Descriptor {
        entries: pairs
            .iter()
            .map(|(k, v)| pb::Entry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
    }
}

pub fn check(domain: &str, descriptors: Vec<pb::Descriptor>) -> pb::CheckRateLimitRequest {
    pb::CheckRateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits: 0,
        dry_run: false,
    }
}

pub fn code(r: &pb::CheckRateLimitResponse) -> pb::Code {
    pb::Code::try_from(r.overall_code).unwrap_or(pb::Code::Unspecified)
}

pub fn status_code(s: &pb::DescriptorStatus) -> pb::Code {
    pb::Code::try_from(s.code).unwrap_or(pb::Code::Unspecified)
}

pub fn seconds(d: &Option<prost_types::Duration>) -> f64 {
    d.as_ref()
        .map_or(-1.0, |d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
}

/// A memory store whose calls wait at a gate the test opens, so a test can
/// hold requests in flight deterministically. `entered` gets one permit per
/// call that reached the store.
#[derive(Debug)]
pub struct GatedStore {
    inner: MemoryStore,
    pub entered: Arc<Semaphore>,
    pub gate: Arc<Semaphore>,
}

impl GatedStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: MemoryStore::new(1_000),
            entered: Arc::new(Semaphore::new(0)),
            gate: Arc::new(Semaphore::new(0)),
        })
    }

    /// Waits until `n` calls have reached the store.
    pub async fn wait_entered(&self, n: u32) {
        let permits = tokio::time::timeout(Duration::from_secs(10), self.entered.acquire_many(n))
            .await
            .expect("calls reach the store")
            .expect("semaphore open");
        permits.forget();
    }

    pub fn open(&self, calls: usize) {
        self.gate.add_permits(calls);
    }
}

impl CounterStore for GatedStore {
    fn apply<'a>(
        &'a self,
        updates: &'a [CounterUpdate],
    ) -> StoreFuture<'a, Result<Vec<Outcome>, StoreError>> {
        Box::pin(async move {
            self.entered.add_permits(1);
            let permit = self
                .gate
                .acquire()
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            permit.forget();
            self.inner.apply(updates).await
        })
    }

    fn name(&self) -> &'static str {
        "gated-memory"
    }
}

pub fn system_now_micros() -> u64 {
    SystemClock.now_micros()
}

/// Kills the child when dropped, so a failing test leaves no process behind.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the real `tollgate serve` binary on 127.0.0.1:0 with the limits in
/// `limits` and `extra` flags, and returns it with the gRPC address read from
/// its "listening" log line.
pub fn spawn_tollgate(limits: &LimitsDir, extra: &[&std::ffi::OsStr]) -> (ChildGuard, SocketAddr) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    // The HTTP API is on by default (127.0.0.1:8080); tests that do not
    // ask for it get an ephemeral port, so parallel servers never collide.
    let http_default: &[&str] = if extra.iter().any(|a| *a == "--http-addr") {
        &[]
    } else {
        &["--http-addr", "127.0.0.1:0"]
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--limits"])
        .arg(limits.path())
        .args(http_default)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tollgate serve");
    let stderr = child.stderr.take().expect("stderr");
    let guard = ChildGuard(child);
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("tollgate exited before listening")
            .expect("read stderr");
        if let Some(rest) = line.split("grpc_addr=").nth(1) {
            let addr = rest.split_whitespace().next().unwrap_or_default();
            break addr
                .parse::<SocketAddr>()
                .expect("address in the listening line");
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (guard, addr)
}
