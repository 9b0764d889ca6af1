//! Helpers for the client tests: a real tollgate service behind a switch that
//! fails calls on demand, a sleeper that records the waits it is asked for,
//! and a memory usage store.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;
use tollgate::api::grpc::TollgateService;
use tollgate::client::Sleeper;
use tollgate::clock::ManualClock;
use tollgate::config::load_limits_dir;
use tollgate::limiter::{FailureMode, RateLimiter};
use tollgate::store::MemoryStore;
use tollgate::usage::{MemoryUsageStore, Pricing, Usage, UsagePolicy};
use tonic::body::Body;

use super::LimitsDir;

/// Usage metering in memory, as `tollgate serve` has by default.
pub fn memory_usage() -> Usage {
    let policy = UsagePolicy::default();
    Usage::new(
        Arc::new(MemoryUsageStore::new(policy.retention_days)),
        policy,
        Pricing::default(),
    )
}

/// Records every wait instead of sleeping; with a clock, also moves the
/// server's time on by the wait, as a real sleep would.
#[derive(Debug, Default)]
pub struct RecordingSleeper {
    pub waits: Mutex<Vec<Duration>>,
    pub clock: Option<ManualClock>,
}

impl RecordingSleeper {
    pub fn advancing(clock: &ManualClock) -> Arc<Self> {
        Arc::new(Self {
            waits: Mutex::default(),
            clock: Some(clock.clone()),
        })
    }

    pub fn waits(&self) -> Vec<Duration> {
        self.waits.lock().expect("waits").clone()
    }
}

impl Sleeper for RecordingSleeper {
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.waits.lock().expect("waits").push(d);
        if let Some(clock) = &self.clock {
            clock.advance(u64::try_from(d.as_micros()).expect("wait fits"));
        }
        Box::pin(async {})
    }
}

/// What the switch in front of the service does and saw.
#[derive(Debug)]
pub struct Switch {
    /// Calls still to fail *after* the service has handled them (the work is
    /// done, the answer lost): what a retry must not count twice.
    fail_after: AtomicU32,
    /// While set, calls fail without reaching the service (it is "down").
    down: AtomicBool,
    /// Every call that arrived.
    pub calls: AtomicU32,
    /// One permit per call answered UNAVAILABLE, so tests can wait for them.
    pub failures: Semaphore,
    /// One permit per call the service answered successfully.
    pub answered: Semaphore,
    /// The `authorization` header of each call.
    pub auth: Mutex<Vec<Option<String>>>,
}

impl Switch {
    /// The next `n` calls reach the service, then fail with UNAVAILABLE.
    pub fn fail_after_handling(&self, n: u32) {
        self.fail_after.store(n, Ordering::SeqCst);
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Waits until `n` more calls have been answered by the service.
    pub async fn wait_answered(&self, n: u32) {
        tokio::time::timeout(Duration::from_secs(10), self.answered.acquire_many(n))
            .await
            .expect("calls answered within 10 s")
            .expect("semaphore open")
            .forget();
    }

    /// Waits until `n` more calls have been failed by the switch.
    pub async fn wait_failures(&self, n: u32) {
        tokio::time::timeout(Duration::from_secs(10), self.failures.acquire_many(n))
            .await
            .expect("calls fail within 10 s")
            .expect("semaphore open")
            .forget();
    }
}

#[derive(Clone)]
struct SwitchLayer(Arc<Switch>);

impl<S> tower::Layer<S> for SwitchLayer {
    type Service = SwitchService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SwitchService {
            inner,
            switch: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct SwitchService<S> {
    inner: S,
    switch: Arc<Switch>,
}

impl<S> tower::Service<http::Request<Body>> for SwitchService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let switch = self.switch.clone();
        Box::pin(async move {
            switch.calls.fetch_add(1, Ordering::SeqCst);
            let auth = request
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap_or("<not ascii>").to_owned());
            switch.auth.lock().expect("auth").push(auth);
            let unavailable = || {
                switch.failures.add_permits(1);
                tonic::Status::unavailable("switched off").into_http::<Body>()
            };
            if switch.down.load(Ordering::SeqCst) {
                return Ok(unavailable());
            }
            let response = inner.call(request).await?;
            let fail = switch
                .fail_after
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if fail {
                return Ok(unavailable());
            }
            switch.answered.add_permits(1);
            Ok(response)
        })
    }
}

/// The real tollgate gRPC service (memory counters, memory usage) on
/// 127.0.0.1:0 behind a [`Switch`]. Stopped when dropped.
pub struct SwitchedServer {
    pub addr: SocketAddr,
    pub switch: Arc<Switch>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<()>,
}

impl SwitchedServer {
    pub async fn start(limits: &LimitsDir, clock: Option<&ManualClock>) -> Self {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start_on(limits, clock, any_port).await
    }

    /// As [`Self::start`], on `addr`.
    pub async fn start_on(
        limits: &LimitsDir,
        clock: Option<&ManualClock>,
        addr: SocketAddr,
    ) -> Self {
        let parsed =
            load_limits_dir(limits.path()).unwrap_or_else(|e| panic!("test limits invalid:\n{e}"));
        let store = match clock {
            Some(c) => MemoryStore::with_clock(100_000, Arc::new(c.clone())),
            None => MemoryStore::new(100_000),
        };
        let limiter = RateLimiter::new(parsed, Arc::new(store), FailureMode::FailClosed);
        let service = TollgateService::new(limiter, memory_usage()).into_server();
        let switch = Arc::new(Switch {
            fail_after: AtomicU32::new(0),
            down: AtomicBool::new(false),
            calls: AtomicU32::new(0),
            failures: Semaphore::new(0),
            answered: Semaphore::new(0),
            auth: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let layer = SwitchLayer(switch.clone());
        let handle = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .layer(layer)
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = rx.await;
                    },
                )
                .await
                .expect("switched server runs");
        });
        Self {
            addr,
            switch,
            shutdown: Some(tx),
            handle,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SwitchedServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.abort();
    }
}
