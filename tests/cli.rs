//! The `tollgate` binary as a user runs it: `validate`, and `serve` stopped
//! by SIGTERM while calls are in flight.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::*;
use tollgate::api::pb::tollgate::v1 as pb;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
const GOOD: &str = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: minute, requests_per_unit: 1000000 }\n";

#[test]
fn validate_accepts_a_good_directory() {
    let dir = LimitsDir::with_file("d.yaml", GOOD);
    let out = Command::new(BIN)
        .args(["validate", "--limits"])
        .arg(dir.path())
        .output()
        .expect("run tollgate validate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("ok: 1 domain(s) in 1 file(s): d"),
        "{stdout}"
    );
}

#[test]
fn validate_names_every_bad_file_and_line() {
    let dir = LimitsDir::with_file("good.yaml", GOOD);
    dir.write(
        "bad.yaml",
        "domain: bad\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: fortnight\n      requests_per_unit: 5\n",
    );
    dir.write("worse.yml", "domain: worse\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: -1 }\n");
    dir.write("notes.txt", "not a limits file, ignored");
    let out = Command::new(BIN)
        .args(["validate", "--limits"])
        .arg(dir.path())
        .output()
        .expect("run tollgate validate");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.yaml:5: invalid rate limit unit 'fortnight'"),
        "{stderr}"
    );
    assert!(
        stderr.contains("worse.yml:4: requests_per_unit must be between 0 and"),
        "{stderr}"
    );
}

#[test]
fn validate_checks_the_service_config_too() {
    let dir = LimitsDir::with_file("d.yaml", GOOD);
    let config = dir
        .path()
        .join("..")
        .join(format!("tollgate-{}.yaml", std::process::id()));
    std::fs::write(&config, "server:\n  grpc_addr: 127.0.0.1:1\nstorage: {}\n")
        .expect("write config");
    let out = Command::new(BIN)
        .args(["validate", "--limits"])
        .arg(dir.path())
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run tollgate validate");
    let _ = std::fs::remove_file(&config);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(":3: Unknown field `storage`"), "{stderr}");
}

#[test]
fn serve_refuses_to_start_on_invalid_limits() {
    let dir = LimitsDir::with_file(
        "d.yaml",
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: x, requests_per_unit: 1 }\n",
    );
    let out = Command::new(BIN)
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--limits"])
        .arg(dir.path())
        .output()
        .expect("run tollgate serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("d.yaml:4: invalid rate limit unit 'x'"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_calls_and_exits_zero() {
    let dir = LimitsDir::with_file("d.yaml", GOOD);
    let (mut guard, addr) = spawn_tollgate(&dir, &[]);
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");

    let completed = Arc::new(AtomicU32::new(0));
    let started = Arc::new(tokio::sync::Notify::new());
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let mut client = Client::new(channel.clone());
            let completed = completed.clone();
            let started = started.clone();
            tokio::spawn(async move {
                let mut ok = 0u32;
                loop {
                    let result = client
                        .check_rate_limit(check(
                            "d",
                            vec![descriptor(&[("k", &format!("task{t}"))])],
                        ))
                        .await;
                    match result {
                        Ok(r) => {
                            assert_eq!(code(&r.into_inner()), pb::Code::Ok);
                            ok += 1;
                            if completed.fetch_add(1, Ordering::SeqCst) == 200 {
                                started.notify_one();
                            }
                        }
                        // After the drain starts the server sends GOAWAY, refuses
                        // new streams and finally closes the connection: calls
                        // made around then fail at the connection level
                        // (refused, never sent, or reset when the process
                        // exits), which a client may retry elsewhere. A call the
                        // server accepted is never cut short with an error
                        // status of its own: that is checked deterministically
                        // by server_lifecycle.rs, which holds a call in flight.
                        Err(status) => {
                            let transport = std::error::Error::source(&status)
                                .is_some_and(|e| e.is::<tonic::transport::Error>());
                            assert!(
                                transport || status.code() == tonic::Code::Unavailable,
                                "a status from the server itself: {status:?}"
                            );
                            return ok;
                        }
                    }
                }
            })
        })
        .collect();

    tokio::time::timeout(Duration::from_secs(20), started.notified())
        .await
        .expect("load is running");
    let pid = guard.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(killed.success());

    let mut answered = 0;
    for t in tasks {
        answered += tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("calls end after shutdown")
            .expect("task");
    }
    assert!(answered > 200);

    let exit = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::task::spawn_blocking(move || {
            let status = guard.0.wait().expect("wait for tollgate");
            (status, guard)
        }),
    )
    .await
    .expect("tollgate exits within 15 s of SIGTERM")
    .expect("wait task");
    assert!(exit.0.success(), "tollgate exited with {:?}", exit.0);
}

#[test]
fn validate_checks_auth_and_tls_settings_naming_the_file_and_field() {
    let dir = LimitsDir::with_file("d.yaml", GOOD);
    let config_dir = tempfile::tempdir().expect("temp dir");
    let config = config_dir.path().join("tollgate.yaml");
    let cases = [
        (
            "auth:\n  api_keys:\n    - { name: billing, key: billing-key-0123456789, allow: [TrackUsag] }\n",
            "auth.api_keys[0] (billing): unknown call 'TrackUsag'",
        ),
        (
            "auth:\n  api_keys:\n    - { name: ci, key_env: TOLLGATE_TEST_UNSET_KEY_VAR, allow: ['*'] }\n",
            "auth.api_keys[0] (ci): $TOLLGATE_TEST_UNSET_KEY_VAR is not set",
        ),
        (
            "auth:\n  jwt:\n    hs256_secret: short\n",
            "auth.jwt.hs256_secret must be at least 32 bytes",
        ),
        (
            "auth:\n  jwt:\n    public_keys: [{ algorithm: RS256, file: missing.pem }]\n",
            "auth.jwt.public_keys[0]: cannot read",
        ),
        (
            "server:\n  tls: { cert_file: nope.pem, key_file: nope.key }\n",
            "server.tls.cert_file: cannot read",
        ),
        (
            "http:\n  request_per_minute: 5\n",
            "tollgate.yaml:2: Unknown field `request_per_minute`",
        ),
    ];
    for (yaml, expected) in cases {
        std::fs::write(&config, yaml).expect("write config");
        let out = Command::new(BIN)
            .args(["validate", "--limits"])
            .arg(dir.path())
            .arg("--config")
            .arg(&config)
            .env_remove("TOLLGATE_JWT_HS256_SECRET")
            .output()
            .expect("run tollgate validate");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{yaml} should be refused");
        assert!(stderr.contains("tollgate.yaml"), "{stderr}");
        assert!(stderr.contains(expected), "{yaml}: {stderr}");
    }
}
