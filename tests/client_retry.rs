//! The Rust client against a real tollgate: retries honour the server's
//! `retry_after`, back off exponentially, stop after `max_retries`, never
//! retry INVALID_ARGUMENT; a usage event keeps its id over retries and is
//! counted once; the rate-limit accessors reflect the latest answer.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::client::{RecordingSleeper, SwitchedServer};
use common::*;
use tollgate::client::{Client, ClientBuilder, Error, descriptor};
use tollgate::pb::tollgate::v1 as pb;
use tonic::Code;

/// One request per user per minute.
const LIMITS: &str = "
domain: r
descriptors:
  - key: user
    rate_limit: { unit: minute, requests_per_unit: 1 }
";

fn check_user(user: &str) -> pb::CheckRateLimitRequest {
    pb::CheckRateLimitRequest {
        domain: "r".into(),
        descriptors: vec![descriptor(&[("user", user)])],
        ..Default::default()
    }
}

fn builder(server: &SwitchedServer, sleeper: &Arc<RecordingSleeper>) -> ClientBuilder {
    Client::builder(server.url())
        .sleeper(sleeper.clone())
        .jitter(0.0)
        .min_retry_delay(Duration::from_millis(100))
        .retry_backoff_factor(2.0)
        .timeout(Duration::from_secs(10))
}

fn event(user: &str) -> pb::TrackUsageRequest {
    pb::TrackUsageRequest {
        user_id: user.into(),
        category: "ai".into(),
        success: true,
        ..Default::default()
    }
}

fn code_of(e: &Error) -> Code {
    e.status().map_or(Code::Ok, tonic::Status::code)
}

#[tokio::test]
async fn over_limit_waits_the_servers_retry_after_then_succeeds() {
    let dir = LimitsDir::with_file("r.yaml", LIMITS);
    let clock = minute_aligned_clock();
    // 20 s into the minute: the window has 40 s left.
    clock.advance(20_000_000);
    let server = SwitchedServer::start(&dir, Some(&clock)).await;
    // Each wait moves the server's clock on by the wait, as a real sleep would.
    let sleeper = RecordingSleeper::advancing(&clock);
    let client = builder(&server, &sleeper)
        .max_retry_delay(Duration::from_secs(120))
        .jitter(0.25)
        .build()
        .expect("client");

    let first = client
        .check_rate_limit(check_user("ann"))
        .await
        .expect("check");
    assert_eq!(code(&first), pb::Code::Ok);
    assert_eq!(client.rate_limit_total(), Some(1));
    assert_eq!(client.rate_limit_remaining(), Some(0));
    assert_eq!(client.rate_limit_reset(), Some(Duration::from_secs(40)));
    assert!(
        sleeper.waits().is_empty(),
        "an allowed answer is not retried"
    );

    let second = client
        .check_rate_limit(check_user("ann"))
        .await
        .expect("check");
    assert_eq!(code(&second), pb::Code::Ok, "allowed after waiting");
    let waits = sleeper.waits();
    assert_eq!(waits.len(), 1, "one retry: {waits:?}");
    assert!(
        waits[0] >= Duration::from_secs(40) && waits[0] <= Duration::from_secs(50),
        "waited at least retry_after (40 s), jitter at most 25 %: {waits:?}"
    );
    assert_eq!(server.switch.calls(), 3, "check, over-limit check, retry");
    assert_eq!(client.rate_limit_remaining(), Some(0));
    assert_eq!(client.rate_limit_total(), Some(1));
}

#[tokio::test]
async fn over_limit_stops_after_max_retries_and_returns_the_answer() {
    let dir = LimitsDir::with_file("r.yaml", LIMITS);
    let clock = minute_aligned_clock();
    let server = SwitchedServer::start(&dir, Some(&clock)).await;
    // This sleeper does not move the clock: every retry is still over.
    let sleeper = Arc::new(RecordingSleeper::default());
    let client = builder(&server, &sleeper)
        .max_retries(3)
        .max_retry_delay(Duration::from_secs(120))
        .build()
        .expect("client");
    client
        .check_rate_limit(check_user("bo"))
        .await
        .expect("check");
    let over = client
        .check_rate_limit(check_user("bo"))
        .await
        .expect("check");
    assert_eq!(code(&over), pb::Code::OverLimit);
    assert_eq!(
        sleeper.waits(),
        vec![Duration::from_secs(60); 3],
        "each wait is the server's retry_after (60 s > the backoff)"
    );
    assert_eq!(server.switch.calls(), 1 + 4);
    let info = client.rate_limit().expect("a limit applied");
    assert!(info.over_limit);
    assert_eq!((info.limit, info.remaining), (1, 0));
    assert_eq!(info.retry_after, Some(Duration::from_secs(60)));
}

#[tokio::test]
async fn a_retry_after_beyond_max_retry_delay_is_returned_at_once() {
    let dir = LimitsDir::with_file("r.yaml", LIMITS);
    let clock = minute_aligned_clock();
    let server = SwitchedServer::start(&dir, Some(&clock)).await;
    let sleeper = Arc::new(RecordingSleeper::default());
    let client = builder(&server, &sleeper)
        .max_retry_delay(Duration::from_secs(10))
        .build()
        .expect("client");
    client
        .check_rate_limit(check_user("cy"))
        .await
        .expect("check");
    let over = client
        .check_rate_limit(check_user("cy"))
        .await
        .expect("check");
    assert_eq!(code(&over), pb::Code::OverLimit);
    assert!(sleeper.waits().is_empty(), "{:?}", sleeper.waits());
    assert_eq!(server.switch.calls(), 2);

    // The no-wait variant never waits, whatever the delay settings.
    let client = builder(&server, &sleeper)
        .max_retry_delay(Duration::from_secs(120))
        .build()
        .expect("client");
    let over = client
        .check_rate_limit_no_wait(check_user("cy"))
        .await
        .expect("check");
    assert_eq!(code(&over), pb::Code::OverLimit);
    assert!(sleeper.waits().is_empty());
    assert_eq!(client.rate_limit_remaining(), Some(0));
}

#[tokio::test]
async fn invalid_argument_is_never_retried() {
    let dir = LimitsDir::with_file("r.yaml", LIMITS);
    let server = SwitchedServer::start(&dir, None).await;
    let sleeper = Arc::new(RecordingSleeper::default());
    let client = builder(&server, &sleeper)
        .max_retries(5)
        .build()
        .expect("client");
    let mut bad = check_user("dee");
    bad.domain.clear();
    let err = client
        .check_rate_limit(bad)
        .await
        .expect_err("empty domain");
    assert_eq!(code_of(&err), Code::InvalidArgument);
    assert!(matches!(err, Error::Rpc { attempts: 1, .. }), "{err:?}");
    assert!(!err.is_transient());
    let err = client
        .track_usage(pb::TrackUsageRequest::default())
        .await
        .expect_err("no user");
    assert_eq!(code_of(&err), Code::InvalidArgument);
    assert_eq!(server.switch.calls(), 2, "one call each");
    assert!(sleeper.waits().is_empty());

    // Nor can it be configured to be.
    let built = Client::builder(server.url())
        .retry_codes([Code::Unavailable, Code::InvalidArgument])
        .build();
    match built {
        Err(Error::Config(msg)) => assert!(msg.contains("InvalidArgument"), "{msg}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[tokio::test]
async fn unavailable_backs_off_and_a_retried_event_keeps_its_id_and_counts_once() {
    let dir = LimitsDir::with_file("r.yaml", LIMITS);
    let server = SwitchedServer::start(&dir, None).await;
    let sleeper = Arc::new(RecordingSleeper::default());
    let client = builder(&server, &sleeper)
        .max_retries(3)
        .build()
        .expect("client");
    // The first two attempts are recorded by the server but their answers lost.
    server.switch.fail_after_handling(2);
    let answer = client.track_usage(event("eve")).await.expect("track");
    assert_eq!(server.switch.calls(), 3);
    assert_eq!(
        sleeper.waits(),
        [Duration::from_millis(100), Duration::from_millis(200)],
        "exponential backoff from min_retry_delay by the factor"
    );
    let id = uuid::Uuid::parse_str(&answer.usage_id).expect("a UUID");
    assert_eq!(id.get_version_num(), 4);
    assert!(
        answer.duplicate,
        "the server had the id from the first attempt: every retry sent the same one"
    );
    let summary = client.get_usage_summary("eve", 1).await.expect("summary");
    assert_eq!(summary.requests.map(|r| r.total), Some(1), "counted once");

    // A caller's own id is kept, too.
    server.switch.fail_after_handling(1);
    let mine = pb::TrackUsageRequest {
        usage_id: "eve-2".into(),
        ..event("eve")
    };
    let answer = client.track_usage(mine).await.expect("track");
    assert_eq!(
        (answer.usage_id.as_str(), answer.duplicate),
        ("eve-2", true)
    );
    let summary = client.get_usage_summary("eve", 1).await.expect("summary");
    assert_eq!(summary.requests.map(|r| r.total), Some(2));
}

#[tokio::test]
async fn retries_stop_after_max_retries() {
    let dir = LimitsDir::with_file("r.yaml", LIMITS);
    let server = SwitchedServer::start(&dir, None).await;
    let sleeper = Arc::new(RecordingSleeper::default());
    let client = builder(&server, &sleeper)
        .max_retries(2)
        .build()
        .expect("client");
    server.switch.set_down(true);
    let err = client
        .check_rate_limit(check_user("fay"))
        .await
        .expect_err("down");
    assert_eq!(code_of(&err), Code::Unavailable);
    assert!(matches!(err, Error::Rpc { attempts: 3, .. }), "{err:?}");
    assert!(err.is_transient());
    assert_eq!(server.switch.calls(), 3);
    assert_eq!(sleeper.waits().len(), 2);

    // auto_retry off: one attempt.
    let client = builder(&server, &sleeper)
        .auto_retry(false)
        .build()
        .expect("client");
    let err = client.track_usage(event("fay")).await.expect_err("down");
    assert!(matches!(err, Error::Rpc { attempts: 1, .. }), "{err:?}");
    assert_eq!(server.switch.calls(), 4);
}

#[tokio::test]
async fn a_server_that_is_not_up_yet_is_retried_until_it_is() {
    let dir = LimitsDir::with_file("r.yaml", LIMITS);
    // Reserve a port, release it, and bring the server up on it only after the
    // client's first attempt has failed.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    #[derive(Debug)]
    struct StartOnSleep(tokio::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>);
    impl tollgate::client::Sleeper for StartOnSleep {
        fn sleep(&self, _: Duration) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
            let tx = self.0.try_lock().ok().and_then(|mut g| g.take());
            if let Some(tx) = tx {
                let _ = tx.send(());
            }
            Box::pin(tokio::time::sleep(Duration::from_millis(50)))
        }
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let client = Client::builder(format!("http://{addr}"))
        .sleeper(Arc::new(StartOnSleep(tokio::sync::Mutex::new(Some(tx)))))
        .max_retries(50)
        .build()
        .expect("client builds while the server is down");
    let call = tokio::spawn(async move { client.check_rate_limit(check_user("gus")).await });
    rx.await
        .expect("the first attempt failed and the client waits");
    let _server = SwitchedServer::start_on(&dir, None, addr).await;
    let answer = call
        .await
        .expect("task")
        .expect("answered once the server is up");
    assert_eq!(code(&answer), pb::Code::Ok);
}

#[tokio::test]
async fn the_api_key_is_sent_as_a_bearer_token_and_never_shown() {
    let dir = LimitsDir::with_file("r.yaml", LIMITS);
    let server = SwitchedServer::start(&dir, None).await;
    let client = Client::builder(server.url())
        .api_key("tg-secret-123")
        .build()
        .expect("client");
    client
        .check_rate_limit(check_user("hal"))
        .await
        .expect("check");
    client.track_usage(event("hal")).await.expect("track");
    assert_eq!(
        *server.switch.auth.lock().expect("auth"),
        vec![Some("Bearer tg-secret-123".to_owned()); 2]
    );
    assert!(!format!("{client:?}").contains("secret"), "{client:?}");
    let bad = Client::builder(server.url()).api_key("line\nbreak").build();
    assert!(matches!(bad, Err(Error::Config(_))), "{bad:?}");
    let bad = Client::builder("not a uri").build();
    assert!(matches!(bad, Err(Error::Config(_))), "{bad:?}");
}

#[tokio::test]
async fn a_call_that_outlives_the_timeout_is_deadline_exceeded() {
    let dir = LimitsDir::with_file("r.yaml", LIMITS);
    // Store calls wait at a gate that never opens.
    let store = GatedStore::new();
    let server = ServerBuilder::with_store(store.clone()).start(&dir).await;
    let client = Client::builder(server.url())
        .timeout(Duration::from_millis(200))
        .build()
        .expect("client");
    let err = client
        .check_rate_limit(check_user("ida"))
        .await
        .expect_err("times out");
    assert_eq!(code_of(&err), Code::DeadlineExceeded, "{err}");
    assert!(
        matches!(err, Error::Rpc { attempts: 1, .. }),
        "not a retry code: {err:?}"
    );
    store.open(100);
}
