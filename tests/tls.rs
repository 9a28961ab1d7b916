//! TLS connections (`rediss://`) with a CA of our own and client
//! certificates, against a real `redis-server --tls-port` with a throwaway
//! PKI made by the test. Needs the `tls` cargo feature (on by default).
#![cfg(feature = "tls")]

mod support;

use std::time::Duration;

use redswarm::{
    Config, ConfigBuilder, Error, Redswarm, SwarmWorker, TaskOutcome, TaskState, WorkerOptions,
};
use serde_json::json;
use support::{RedisServer, TestPki, TlsFiles};

const SEC: Duration = Duration::from_secs(1);

fn tls_server(pki: &TestPki, auth_clients: bool) -> RedisServer {
    RedisServer::builder()
        .tls(TlsFiles {
            cert: pki.server_cert(),
            key: pki.server_key(),
            ca: pki.ca(),
            auth_clients,
        })
        .start()
}

fn builder(url: &str, ns: &str) -> ConfigBuilder {
    Config::builder()
        .url(url)
        .namespace(ns)
        .heartbeat_interval(Duration::from_millis(200))
        .command_timeout(Duration::from_millis(200))
        .node_ttl(2 * SEC)
        .peer_timeout(Duration::from_millis(50))
        .pool_size(16)
}

fn connect(b: ConfigBuilder) -> Result<Redswarm, Error> {
    Redswarm::connect(b.build()?)
}

/// Number of clients the server has accepted on its TLS port so far.
fn tls_connections(server: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query(&mut server.conn())
        .unwrap();
    // `total_connections_received` counts both ports; the plain port is
    // only used by the test itself, so compare before and after instead.
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("total_connections_received in INFO stats")
}

/// A lock (with a waiter woken over pub/sub) and a swarm task (BLPOP waits,
/// heartbeat, lease renewals) run over one TLS handle.
fn locks_and_a_swarm_task_work(swarm: &Redswarm, other: &Redswarm) {
    let g = swarm.try_lock("res", 5 * SEC).unwrap().expect("free lock");
    let first = g.fencing_token();
    let other = other.clone();
    let waiter = std::thread::spawn(move || {
        other
            .lock("res", 5 * SEC, 10 * SEC)
            .map(|g| g.fencing_token())
    });
    std::thread::sleep(Duration::from_millis(200));
    g.release().unwrap();
    let second = waiter
        .join()
        .unwrap()
        .expect("the waiter gets the lock after release");
    assert!(
        second > first,
        "fencing tokens increase: {first} then {second}"
    );

    let q = swarm.queue("jobs").unwrap();
    let w = SwarmWorker::start(&q, WorkerOptions::new().threads(2).lease(2 * SEC), |ctx| {
        Ok(json!({ "twice": ctx.data()["n"].as_u64().unwrap_or(0) * 2 }))
    })
    .unwrap();
    let id = q.push(&json!({ "n": 21 })).unwrap();
    let mut last = None;
    assert!(
        support::wait_until(10 * SEC, || {
            last = q.get(&id).unwrap();
            last.as_ref().is_some_and(|t| t.state.is_end())
        }),
        "task did not end over TLS: {last:?}"
    );
    let t = last.unwrap();
    assert_eq!(t.state, TaskState::End(TaskOutcome::Ok));
    assert_eq!(t.result, Some(json!({ "twice": 42 })));
    w.shutdown();
}

#[test]
fn locks_and_tasks_run_over_tls_with_our_own_ca() {
    let pki = TestPki::generate();
    let server = tls_server(&pki, false);
    let before = tls_connections(&server);
    let a = connect(builder(&server.tls_url(), "tls").tls_ca_file(pki.ca())).unwrap();
    let b = connect(builder(&server.tls_url(), "tls").tls_ca_pem(std::fs::read(pki.ca()).unwrap()))
        .unwrap();
    locks_and_a_swarm_task_work(&a, &b);
    assert!(
        tls_connections(&server) > before + 2,
        "the handles connected through the TLS port"
    );
}

#[test]
fn a_client_certificate_is_presented_to_a_server_that_requires_one() {
    let pki = TestPki::generate();
    let server = tls_server(&pki, true);
    let with_cert = |ns| {
        builder(&server.tls_url(), ns)
            .tls_ca_file(pki.ca())
            .tls_client_cert_files(pki.client_cert(), pki.client_key())
    };
    let a = connect(with_cert("mtls")).unwrap();
    let b = connect(with_cert("mtls")).unwrap();
    locks_and_a_swarm_task_work(&a, &b);
}

#[test]
fn without_a_client_certificate_a_server_requiring_one_gives_a_clear_error() {
    let pki = TestPki::generate();
    let server = tls_server(&pki, true);
    let err = connect(builder(&server.tls_url(), "nocert").tls_ca_file(pki.ca()))
        .expect_err("connecting without a client certificate must fail");
    let text = err.to_string();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    // rustls reports the server's TLS 1.3 alert `certificate_required`.
    assert!(
        text.contains("CertificateRequired"),
        "error does not name the cause: {text}"
    );
}

#[test]
fn a_ca_that_did_not_sign_the_server_certificate_is_refused_by_name() {
    let pki = TestPki::generate();
    let server = tls_server(&pki, false);
    let err = connect(builder(&server.tls_url(), "wrongca").tls_ca_file(pki.other_ca()))
        .expect_err("a server certificate from another CA must be refused");
    let text = err.to_string();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(
        text.contains("UnknownIssuer"),
        "error does not name the cause: {text}"
    );
}

#[test]
fn a_host_the_certificate_does_not_name_is_refused_unless_the_check_is_skipped() {
    let pki = TestPki::generate();
    let server = tls_server(&pki, false);
    // The certificate names `localhost` only.
    let by_ip = format!("rediss://127.0.0.1:{}/", server.tls_port());
    let err = connect(builder(&by_ip, "wronghost").tls_ca_file(pki.ca()))
        .expect_err("a certificate for another name must be refused");
    let text = err.to_string();
    assert!(
        text.contains("certificate not valid for name \"127.0.0.1\""),
        "error does not name the cause: {text}"
    );

    // Skipping the name check still checks the chain.
    let skip = connect(
        builder(&by_ip, "wronghost")
            .tls_ca_file(pki.ca())
            .tls_skip_hostname_check(true),
    )
    .unwrap();
    assert!(skip.try_lock("x", SEC).unwrap().is_some());
    let err = connect(
        builder(&by_ip, "wronghost")
            .tls_ca_file(pki.other_ca())
            .tls_skip_hostname_check(true),
    )
    .expect_err("skipping the name check must not accept another CA's certificate");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}

#[test]
fn tls_settings_come_from_the_environment() {
    let pki = TestPki::generate();
    let server = tls_server(&pki, true);
    // Only this test in this binary reads the environment.
    std::env::set_var("REDIS_URL", server.tls_url());
    std::env::set_var("REDSWARM_TLS_CA", pki.ca());
    std::env::set_var("REDSWARM_TLS_CERT", pki.client_cert());
    std::env::set_var("REDSWARM_TLS_KEY", pki.client_key());
    let built = Config::builder_from_env().map(|b| {
        b.namespace("env")
            .heartbeat_interval(Duration::from_millis(200))
            .command_timeout(Duration::from_millis(200))
            .node_ttl(2 * SEC)
            .peer_timeout(Duration::from_millis(50))
            .build()
    });
    std::env::remove_var("REDSWARM_TLS_KEY");
    let half = Config::builder_from_env().expect_err("a certificate without its key is refused");
    for v in ["REDIS_URL", "REDSWARM_TLS_CA", "REDSWARM_TLS_CERT"] {
        std::env::remove_var(v);
    }
    assert!(half.to_string().contains("REDSWARM_TLS_KEY"), "{half}");
    let swarm = Redswarm::connect(built.unwrap().unwrap()).unwrap();
    assert!(swarm.try_lock("env", SEC).unwrap().is_some());
}

#[test]
fn broken_tls_settings_are_refused_when_the_config_is_built() {
    let pki = TestPki::generate();
    let url = "rediss://localhost:6380/";
    let field = |b: ConfigBuilder| match b.build() {
        Err(Error::InvalidConfig { field, reason }) => (field, reason),
        other => panic!("expected InvalidConfig, got {other:?}"),
    };
    let (f, why) = field(builder(url, "x").tls_ca_file(pki.dir().join("missing.pem")));
    assert_eq!(f, "tls_ca");
    assert!(why.contains("missing.pem"), "{why}");
    // A key where the certificate should be, and the other way round.
    let (f, _) = field(builder(url, "x").tls_client_cert_files(pki.client_key(), pki.client_key()));
    assert_eq!(f, "tls_client_cert");
    let (f, _) =
        field(builder(url, "x").tls_client_cert_files(pki.client_cert(), pki.client_cert()));
    assert_eq!(f, "tls_client_key");
    // TLS settings with a plain URL would silently not be used.
    let (f, why) = field(builder("redis://localhost/", "x").tls_ca_file(pki.ca()));
    assert_eq!(f, "tls_ca");
    assert!(why.contains("rediss://"), "{why}");
}
