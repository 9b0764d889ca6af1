//! Checks the PostgreSQL test helpers themselves (tests/common/postgres.rs):
//! private clusters on distinct loopback ports, committed rows surviving a
//! crash (SIGKILL) and restart, fast shutdown and restart, clean-up on panic.

#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/process.rs"]
mod process;

use std::net::TcpStream;
use std::path::PathBuf;
use std::thread;

use postgres::Postgres;

#[test]
fn two_clusters_start_at_once_on_distinct_ports() {
    let clusters: Vec<Postgres> = (0..2)
        .map(|_| thread::spawn(Postgres::start))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().expect("start postgres"))
        .collect();

    assert_ne!(clusters[0].port, clusters[1].port);
    assert_ne!(clusters[0].data_dir(), clusters[1].data_dir());
    for pg in &clusters {
        assert_ne!(pg.port, 5432, "the machine's own server's port");
        assert_eq!(pg.psql("postgres", "SELECT 1"), "1");
        assert_eq!(
            pg.url("usage"),
            format!("postgres://tollgate@127.0.0.1:{}/usage", pg.port)
        );
        assert_eq!(pg.psql("postgres", "SHOW port"), pg.port.to_string());
        assert_eq!(
            pg.psql(
                "postgres",
                "SELECT current_user, current_setting('server_encoding')"
            ),
            "tollgate|UTF8"
        );
        // Real commits: the product's durability tests rely on these.
        assert_eq!(pg.psql("postgres", "SHOW fsync"), "on");
        assert_eq!(pg.psql("postgres", "SHOW synchronous_commit"), "on");
        // Each cluster is its own: a database made in one is not in another.
        pg.create_database(&format!("only_{}", pg.port));
    }
    for pg in &clusters {
        let databases = pg.psql(
            "postgres",
            "SELECT datname FROM pg_database WHERE datname LIKE 'only_%'",
        );
        assert_eq!(databases, format!("only_{}", pg.port));
    }
}

#[test]
fn server_never_runs_as_root() {
    let pg = Postgres::start();
    let status = std::fs::read_to_string(format!("/proc/{}/status", pg.pid()))
        .expect("postmaster's /proc status");
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .expect("Uid line");
    assert_ne!(uid, "0", "postgres runs as root");
}

#[test]
fn committed_row_survives_kill_and_start_again() {
    let mut pg = Postgres::start();
    let port = pg.port;
    pg.create_database("usage");
    pg.psql(
        "usage",
        "CREATE TABLE events (id bigint PRIMARY KEY, units bigint NOT NULL)",
    );
    assert_eq!(
        pg.psql("usage", "INSERT INTO events VALUES (1, 42) RETURNING units"),
        "42"
    );
    let first_pid = pg.pid();

    pg.kill();
    assert!(!pg.is_running());
    let err = pg
        .try_psql("usage", "SELECT 1")
        .expect_err("psql against a killed server");
    assert!(err.contains("Connection refused"), "{err}");

    pg.start_again();
    assert_eq!(pg.port, port);
    assert_ne!(pg.pid(), first_pid);
    let log = pg.log_tail();
    assert!(
        log.contains("automatic recovery in progress"),
        "no crash recovery after kill; log:\n{log}"
    );
    assert_eq!(pg.psql("usage", "SELECT id, units FROM events"), "1|42");
    // And it takes writes again.
    pg.psql("usage", "INSERT INTO events VALUES (2, 7)");
    assert_eq!(pg.psql("usage", "SELECT sum(units) FROM events"), "49");
}

#[test]
fn stop_then_start_again() {
    let mut pg = Postgres::start();
    let port = pg.port;
    pg.create_database("usage");
    pg.psql("usage", "CREATE TABLE t AS SELECT 'kept' AS v");

    pg.stop();
    assert!(!pg.is_running());
    let log = pg.log_tail();
    assert!(
        log.contains("database system is shut down"),
        "no clean shutdown; log:\n{log}"
    );
    let err = pg
        .try_psql("usage", "SELECT 1")
        .expect_err("psql against a stopped server");
    assert!(err.contains("Connection refused"), "{err}");
    // Stopping twice is harmless.
    pg.stop();

    pg.start_again();
    assert_eq!(pg.port, port);
    assert!(pg.is_running());
    let log = pg.log_tail();
    assert!(
        !log.contains("automatic recovery"),
        "recovery after a clean stop; log:\n{log}"
    );
    assert_eq!(pg.psql("usage", "SELECT v FROM t"), "kept");
}

#[test]
fn psql_reports_errors() {
    let pg = Postgres::start();
    let err = pg
        .try_psql("postgres", "SELEC 1")
        .expect_err("a syntax error");
    assert!(err.contains("syntax error"), "{err}");
    let err = pg
        .try_psql("no_such_db", "SELECT 1")
        .expect_err("a missing database");
    assert!(err.contains("does not exist"), "{err}");
    // Several rows, several columns.
    assert_eq!(
        pg.psql("postgres", "SELECT g, g * 2 FROM generate_series(1, 3) g"),
        "1|2\n2|4\n3|6"
    );
}

#[test]
fn server_is_killed_and_removed_when_a_test_panics() {
    let (port, data_dir) = std::panic::catch_unwind(|| {
        let pg = Postgres::start();
        std::panic::panic_any((pg.port, pg.data_dir()));
    })
    .expect_err("the closure panics")
    .downcast::<(u16, PathBuf)>()
    .map(|b| *b)
    .expect("panic payload is the port and data dir");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "postgres on port {port} outlived the panic"
    );
    assert!(!data_dir.exists(), "{} was not removed", data_dir.display());
}
