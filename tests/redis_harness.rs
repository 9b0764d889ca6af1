//! Checks the Redis test helpers themselves (tests/common/redis.rs): real
//! servers on distinct loopback ports, kill and restart, clean-up on panic, a
//! Redis Cluster with replicas, and a manual failover.

#[path = "common/process.rs"]
mod process;
#[path = "common/redis.rs"]
mod redis;

use std::collections::HashSet;
use std::thread;

use redis::{RedisCluster, RedisServer, command, info_field, try_command};

#[test]
fn servers_start_at_once_on_distinct_ports() {
    let servers: Vec<RedisServer> = (0..3)
        .map(|_| thread::spawn(RedisServer::start))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().expect("start redis-server"))
        .collect();

    let ports: HashSet<u16> = servers.iter().map(|s| s.port).collect();
    assert_eq!(ports.len(), 3, "ports not distinct: {ports:?}");
    for server in &servers {
        assert_eq!(server.command(&["PING"]).trim(), "PONG");
        assert_eq!(server.url(), format!("redis://127.0.0.1:{}/0", server.port));
        // Each server is its own: a key written to one is not in another.
        server.command(&["SET", "owner", &server.port.to_string()]);
    }
    for server in &servers {
        assert_eq!(
            server.command(&["GET", "owner"]).trim(),
            server.port.to_string()
        );
    }
}

#[test]
fn kill_then_restart_on_the_same_port_with_no_data() {
    let mut server = RedisServer::start();
    let port = server.port;
    let first_pid = server.pid();
    server.command(&["SET", "k", "v"]);
    assert_eq!(server.command(&["GET", "k"]).trim(), "v");

    server.kill();
    assert!(!server.is_running());
    let err = try_command(port, &["PING"]).expect_err("PING a killed server");
    assert!(err.contains("Connection refused"), "{err}");

    server.restart();
    assert_eq!(server.port, port);
    assert_ne!(server.pid(), first_pid);
    assert_eq!(server.command(&["PING"]).trim(), "PONG");
    assert_eq!(
        server.command(&["EXISTS", "k"]).trim(),
        "0",
        "data survived"
    );
}

#[test]
fn server_is_killed_when_a_test_panics() {
    let port = std::panic::catch_unwind(|| {
        let server = RedisServer::start();
        std::panic::panic_any(server.port);
    })
    .expect_err("the closure panics")
    .downcast::<u16>()
    .expect("panic payload is the port");
    assert!(
        try_command(*port, &["PING"]).is_err(),
        "redis-server on port {port} outlived the panic"
    );
}

#[test]
fn command_reports_error_replies() {
    let server = RedisServer::start();
    let err = try_command(server.port, &["NOSUCHCOMMAND"]).expect_err("an error reply");
    assert!(err.contains("unknown command"), "{err}");
    server.command(&["PING"]);
    let stats = server.command(&["INFO", "commandstats"]);
    let ping = info_field(&stats, "cmdstat_ping").expect("PING in commandstats");
    assert!(ping.starts_with("calls=1,"), "{ping}");
}

#[test]
fn cluster_with_replicas_forms_and_routes() {
    let cluster = RedisCluster::start(3, 1);
    assert_eq!(cluster.nodes.len(), 6);
    assert_eq!(cluster.masters().len(), 3);
    assert_eq!(cluster.replicas().len(), 3);
    assert_eq!(cluster.urls().len(), 3);
    for node in &cluster.nodes {
        let info = node.command(&["CLUSTER", "INFO"]);
        assert_eq!(info_field(&info, "cluster_state").as_deref(), Some("ok"));
        assert_eq!(
            info_field(&info, "cluster_slots_ok").as_deref(),
            Some("16384")
        );
    }
    // `-c` follows MOVED redirects, so any node accepts any key.
    let first = cluster.nodes[0].port;
    let last = cluster.nodes[5].port;
    for key in ["k", "another-key", "{user:42}:window"] {
        assert_eq!(command(first, &["-c", "SET", key, "v"]).trim(), "OK");
        assert_eq!(command(last, &["-c", "GET", key]).trim(), "v");
    }
}

#[test]
fn failover_promotes_a_replica() {
    let cluster = RedisCluster::start(3, 1);
    let masters_before: HashSet<u16> = cluster.masters().iter().map(|n| n.port).collect();
    command(cluster.nodes[0].port, &["-c", "SET", "k", "v"]);

    let promoted = cluster.failover();

    assert!(!masters_before.contains(&promoted));
    let info = command(promoted, &["INFO", "replication"]);
    assert_eq!(info_field(&info, "role").as_deref(), Some("master"));
    let masters_after: HashSet<u16> = cluster.masters().iter().map(|n| n.port).collect();
    assert_eq!(masters_after.len(), 3);
    assert!(masters_after.contains(&promoted));
    assert!(
        cluster
            .urls()
            .contains(&format!("redis://127.0.0.1:{promoted}/0"))
    );
    // A coordinated failover loses no writes.
    assert_eq!(command(promoted, &["-c", "GET", "k"]).trim(), "v");
}
