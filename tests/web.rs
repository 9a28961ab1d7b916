//! The status server against a real redis-server and a real swarm: the
//! JSON API and `/metrics` report what Redis holds after tasks were pushed
//! and run; a read-only server refuses actions; a token keeps strangers
//! out; and the page, loaded in headless Chromium, shows the same counts.
#![cfg(feature = "web")]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use redswarm::web::{WebOptions, WebServer};
use redswarm::{Config, Queue, Redswarm, SwarmWorker, TaskOptions, WorkerOptions};
use serde_json::{json, Value};
use support::{wait_until, RedisServer};

const WAIT: Duration = Duration::from_secs(20);

fn connect(server: &RedisServer, ns: &str) -> Redswarm {
    Redswarm::connect(
        Config::builder()
            .url(server.url())
            .namespace(ns)
            .build()
            .unwrap(),
    )
    .unwrap()
}

/// One HTTP/1.1 exchange over a fresh connection: (status, head, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, _, body) = http(addr, "GET", path, &[]);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Pushes `ok` tasks that complete and `bad` tasks that fail at once (one
/// attempt, error "boom <n>"), runs them with a worker and waits until
/// Redis shows them all ended.
fn run_tasks(queue: &Queue, ok: u64, bad: u64) {
    for i in 0..ok {
        queue.push(&json!({ "ok": true, "n": i })).unwrap();
    }
    for i in 0..bad {
        queue
            .push_with(
                &json!({ "ok": false, "n": i }),
                &TaskOptions::new().max_attempts(1),
            )
            .unwrap();
    }
    let worker = SwarmWorker::start(queue, WorkerOptions::new().threads(2), |ctx| {
        if ctx.data()["ok"] == json!(true) {
            Ok(json!("done"))
        } else {
            Err(format!("boom {}", ctx.data()["n"]))
        }
    })
    .unwrap();
    assert!(
        wait_until(WAIT, || {
            let c = queue.counts().unwrap();
            c.ended == ok && c.failed == bad
        }),
        "tasks did not end: {:?}",
        queue.counts()
    );
    worker.shutdown();
}

fn start(swarm: &Redswarm, opts: WebOptions) -> WebServer {
    WebServer::start(swarm, opts.listen("127.0.0.1:0")).unwrap()
}

/// The value of the sample line `series` (name and labels, exactly) in a
/// metrics text.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

#[test]
fn json_api_and_metrics_report_what_redis_holds() {
    let redis = RedisServer::start();
    let swarm = connect(&redis, "webapi");
    let jobs = swarm.queue("jobs").unwrap();
    run_tasks(&jobs, 3, 2);
    let mail = swarm.queue("mail").unwrap();
    mail.push(&json!("waiting")).unwrap();
    mail.push_with(
        &json!("later"),
        &TaskOptions::new().delay(Duration::from_secs(600)),
    )
    .unwrap();
    let lock = swarm
        .try_lock("orders", Duration::from_secs(60))
        .unwrap()
        .unwrap();

    let server = start(&swarm, WebOptions::new());
    let addr = server.addr();

    let q = get_json(addr, "/api/queues/jobs");
    assert_eq!(q["name"], "jobs");
    assert_eq!(q["counts"]["ended"], 3);
    assert_eq!(q["counts"]["failed"], 2);
    assert_eq!(q["counts"]["ready"], 0);
    assert_eq!(q["ended_last_minute"], 3);
    assert_eq!(q["failed_last_minute"], 2);

    let queues = get_json(addr, "/api/queues");
    let names: Vec<&str> = queues
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["jobs", "mail"]);

    let failed = get_json(addr, "/api/queues/jobs/failed");
    let mut errors: Vec<&str> = failed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["task"]["error"].as_str().unwrap())
        .collect();
    errors.sort();
    assert_eq!(errors, ["boom 0", "boom 1"]);
    assert_eq!(
        get_json(addr, "/api/queues/jobs/failed?limit=1")
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let o = get_json(addr, "/api/overview");
    assert_eq!(o["namespace"], "webapi");
    assert_eq!(o["actions_allowed"], false);
    assert_eq!(o["totals"]["ready"], 1);
    assert_eq!(o["totals"]["delayed"], 1);
    assert_eq!(o["totals"]["ended"], 3);
    assert_eq!(o["totals"]["failed"], 2);
    assert_eq!(o["failed"].as_array().unwrap().len(), 2);
    assert!(o["failed"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["queue"] == "jobs"));
    assert!(o["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["id"] == swarm.node_id()));
    let locks = o["locks"].as_array().unwrap();
    assert_eq!(locks.len(), 1);
    assert_eq!(locks[0]["name"], "orders");
    assert_eq!(locks[0]["holder_node"], swarm.node_id());
    assert_eq!(locks[0]["fencing_token"], lock.fencing_token());

    let (status, head, metrics) = http(addr, "GET", "/metrics", &[]);
    assert_eq!(status, 200);
    assert!(head.contains("application/openmetrics-text"), "{head}");
    for (series, value) in [
        (r#"redswarm_queue_tasks{queue="jobs",state="ended"}"#, 3.0),
        (r#"redswarm_queue_tasks{queue="jobs",state="failed"}"#, 2.0),
        (r#"redswarm_queue_tasks{queue="jobs",state="ready"}"#, 0.0),
        (r#"redswarm_queue_tasks{queue="mail",state="ready"}"#, 1.0),
        (r#"redswarm_queue_tasks{queue="mail",state="delayed"}"#, 1.0),
        (r#"redswarm_queue_ended_last_minute{queue="jobs"}"#, 3.0),
        (r#"redswarm_queue_failed_last_minute{queue="jobs"}"#, 2.0),
        (r#"redswarm_nodes{state="live"}"#, 1.0),
        ("redswarm_locks_held", 1.0),
    ] {
        assert_eq!(
            sample(&metrics, series),
            Some(value),
            "{series} in\n{metrics}"
        );
    }
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");

    assert_eq!(http(addr, "GET", "/api/nope", &[]).0, 404);
    assert_eq!(
        http(addr, "GET", "/api/queues/jobs/failed?limit=0", &[]).0,
        400
    );
    assert_eq!(
        http(addr, "GET", "/api/queues/a%7Bb/failed", &[]).0,
        400,
        "a name with a brace"
    );
    assert_eq!(http(addr, "DELETE", "/api/queues/jobs", &[]).0, 405);
    drop(lock);
}

#[test]
fn read_only_server_refuses_actions_with_403() {
    let redis = RedisServer::start();
    let swarm = connect(&redis, "webro");
    let jobs = swarm.queue("jobs").unwrap();
    run_tasks(&jobs, 0, 1);
    let id = jobs.list(redswarm::TaskSet::Failed, 10).unwrap().remove(0);
    let server = start(&swarm, WebOptions::new());

    let path = format!("/api/queues/jobs/failed/{id}/retry");
    let (status, _, body) = http(
        server.addr(),
        "POST",
        &path,
        &[("X-Redswarm-Action", "retry")],
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("read-only"), "{body}");
    assert_eq!(jobs.counts().unwrap().failed, 1, "the task stays failed");
    assert_eq!(
        get_json(server.addr(), "/api/overview")["actions_allowed"],
        false
    );
}

#[test]
fn allowed_retry_requeues_the_failed_task_and_needs_the_action_header() {
    let redis = RedisServer::start();
    let swarm = connect(&redis, "webrw");
    let jobs = swarm.queue("jobs").unwrap();
    run_tasks(&jobs, 0, 2);
    let ids = jobs.list(redswarm::TaskSet::Failed, 10).unwrap();
    let server = start(&swarm, WebOptions::new().allow_actions(true));
    let addr = server.addr();
    let path = format!("/api/queues/jobs/failed/{}/retry", ids[0]);

    // A cross-site form cannot add the header: refused, nothing changed.
    let (status, _, body) = http(addr, "POST", &path, &[]);
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = http(
        addr,
        "POST",
        &path,
        &[
            ("X-Redswarm-Action", "retry"),
            ("Origin", "http://evil.example"),
        ],
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(jobs.counts().unwrap().failed, 2);

    let (status, _, body) = http(addr, "POST", &path, &[("X-Redswarm-Action", "retry")]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("requeued"), "{body}");
    let c = jobs.counts().unwrap();
    assert_eq!(
        (c.failed, c.ready + c.delayed),
        (1, 1),
        "exactly the one task is back: {c:?}"
    );
    assert_eq!(
        jobs.get(&ids[0]).unwrap().unwrap().state,
        redswarm::TaskState::Queued
    );

    let action = [("X-Redswarm-Action", "retry")];
    let (status, _, body) = http(addr, "POST", &path, &action);
    assert_eq!(
        status, 409,
        "retrying it again: it is not failed any more: {body}"
    );
    let (status, _, body) = http(
        addr,
        "POST",
        "/api/queues/jobs/failed/no-such-task/retry",
        &action,
    );
    assert_eq!(status, 404, "{body}");
    assert_eq!(jobs.counts().unwrap().failed, 1);
}

#[test]
fn token_keeps_out_requests_without_it() {
    let redis = RedisServer::start();
    let swarm = connect(&redis, "webauth");
    let server = start(&swarm, WebOptions::new().token(Some("s3cret".into())));
    let addr = server.addr();
    for path in ["/", "/api/overview", "/metrics"] {
        let (status, head, _) = http(addr, "GET", path, &[]);
        assert_eq!(status, 401, "{path}");
        assert!(head.contains("WWW-Authenticate: Basic"), "{head}");
        assert_eq!(
            http(addr, "GET", path, &[("Authorization", "Bearer wrong")]).0,
            401,
            "{path}"
        );
        assert_eq!(
            http(addr, "GET", path, &[("Authorization", "Bearer s3cret")]).0,
            200,
            "{path}"
        );
        // "admin:s3cret", as a browser sends it after the prompt.
        assert_eq!(
            http(
                addr,
                "GET",
                path,
                &[("Authorization", "Basic YWRtaW46czNjcmV0")]
            )
            .0,
            200,
            "{path}"
        );
    }
    // Without the token even a refused action is not revealed as such.
    assert_eq!(
        http(
            addr,
            "POST",
            "/api/queues/q/failed/x/retry",
            &[("X-Redswarm-Action", "1")]
        )
        .0,
        401
    );

    assert!(WebServer::start(
        &swarm,
        WebOptions::new()
            .listen("127.0.0.1:0")
            .token(Some(String::new()))
    )
    .is_err());
    assert!(WebServer::start(
        &swarm,
        WebOptions::new()
            .listen("127.0.0.1:0")
            .token(Some("a b".into()))
    )
    .is_err());
}

#[test]
fn running_task_shows_its_latest_progress() {
    let redis = RedisServer::start();
    let swarm = connect(&redis, "webprog");
    let jobs = swarm.queue("jobs").unwrap();
    let server = start(&swarm, WebOptions::new());
    let id = jobs.push(&json!("slow")).unwrap();
    let worker = SwarmWorker::start(&jobs, WorkerOptions::new().threads(1), |ctx| {
        // Keeps reporting until told to stop, so a report published
        // before the server's subscription took effect is followed by
        // more.
        let mut pct = 0;
        while ctx.sleep(Duration::from_millis(50)) {
            pct = (pct + 1).min(42);
            ctx.progress(json!({ "pct": pct, "step": "resizing" }));
        }
        Ok(Value::Null)
    })
    .unwrap();
    let mut last = Value::Null;
    let seen = wait_until(WAIT, || {
        last = get_json(server.addr(), "/api/overview");
        last["running"]
            .as_array()
            .and_then(|r| r.first())
            .is_some_and(|r| r["id"] == id.as_str() && r["progress"]["pct"] == 42)
    });
    assert!(seen, "progress never showed: {last}");
    let running = get_json(server.addr(), "/api/queues/jobs/running");
    assert_eq!(running[0]["progress"]["step"], "resizing");
    assert_eq!(running[0]["task"]["worker"], swarm.node_id());
    jobs.cancel(&id).unwrap();
    assert!(
        wait_until(WAIT, || get_json(server.addr(), "/api/overview")["running"]
            == json!([])),
        "the cancelled task is still listed as running"
    );
    worker.shutdown();
}

/// Chromium's binary, if installed.
fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// The page's DOM after its script ran (headless Chromium, virtual time).
fn dump_dom(browser: &str, url: &str) -> String {
    let profile = tempfile_dir();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "redswarm-web-chromium-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The text of the element whose opening tag contains `attrs` (the first
/// one), up to its closing tag `</tag>`.
fn element<'d>(dom: &'d str, tag: &str, attrs: &str) -> Option<&'d str> {
    let open = format!("<{tag} ");
    let mut from = 0;
    while let Some(i) = dom[from..].find(&open) {
        let start = from + i;
        let head_end = start + dom[start..].find('>')?;
        if dom[start..head_end].contains(attrs) {
            let close = format!("</{tag}>");
            let end = head_end + dom[head_end..].find(&close)?;
            return Some(&dom[head_end + 1..end]);
        }
        from = head_end;
    }
    None
}

#[test]
fn status_page_in_chromium_shows_the_counts_in_redis() {
    let Some(browser) = chromium() else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "chromium is not installed, and CI must run the browser test (.ci/run installs it)"
            );
        }
        eprintln!("SKIPPED status_page_in_chromium_shows_the_counts_in_redis: chromium is not installed (apt-get install chromium)");
        return;
    };
    let mut redis = RedisServer::start();
    let swarm = connect(&redis, "webpage");
    let jobs = swarm.queue("jobs").unwrap();
    run_tasks(&jobs, 4, 2);
    jobs.push(&json!("waiting")).unwrap();
    let _lock = swarm
        .try_lock("orders", Duration::from_secs(60))
        .unwrap()
        .unwrap();
    let server = start(&swarm, WebOptions::new());

    let dom = dump_dom(browser, &server.url());
    let c = jobs.counts().unwrap();
    let row = element(&dom, "tr", r#"data-queue="jobs""#)
        .unwrap_or_else(|| panic!("no row for queue jobs in the page:\n{dom}"));
    for (field, n) in [
        ("ready", c.ready),
        ("running", c.running),
        ("ended", c.ended),
        ("failed", c.failed),
        ("ended_last_minute", 4),
        ("failed_last_minute", 2),
    ] {
        let cell = element(row, "td", &format!(r#"data-field="{field}""#))
            .unwrap_or_else(|| panic!("no {field} cell in {row}"));
        assert_eq!(cell, n.to_string(), "{field} in {row}");
    }
    assert_eq!(element(&dom, "div", r#"data-total="failed""#), Some("2"));
    assert_eq!(element(&dom, "div", r#"data-total="ready""#), Some("1"));
    // Both failures listed with their errors, and a disabled retry button
    // (the server is read-only).
    for id in jobs.list(redswarm::TaskSet::Failed, 10).unwrap() {
        let failure = element(&dom, "tr", &format!(r#"data-id="{id}""#))
            .unwrap_or_else(|| panic!("failed task {id} not listed:\n{dom}"));
        assert!(failure.contains("boom "), "{failure}");
        assert!(failure.contains("disabled"), "{failure}");
    }
    let lock_row = element(&dom, "tr", r#"data-lock="orders""#).expect("the lock is listed");
    assert!(lock_row.contains(swarm.node_id()), "{lock_row}");
    assert_eq!(
        element(&dom, "p", r#"id="error""#),
        Some(""),
        "the page reported an error"
    );

    // With Redis gone the page says it cannot read the status.
    redis.kill();
    let dom = dump_dom(browser, &server.url());
    let banner = element(&dom, "p", r#"id="error""#).unwrap_or_default();
    assert!(
        banner.starts_with("cannot read the status: "),
        "banner {banner:?} in\n{dom}"
    );
}

/// A handle with a readable node id, as the screenshot shows it.
fn node(redis: &RedisServer, ns: &str, id: &str) -> Redswarm {
    Redswarm::connect(
        Config::builder()
            .url(redis.url())
            .namespace(ns)
            .node_id(id)
            .build()
            .unwrap(),
    )
    .unwrap()
}

/// Builds a busy swarm (queues with running, failed, ready and delayed
/// tasks, a lock, a semaphore, a job cluster, a chunk tracker), serves it
/// and takes a screenshot of the page: the whole page renders in a browser
/// with every panel filled. With `REDSWARM_WRITE_SCREENSHOT=1` the picture
/// goes to `docs/status-page.png` (the README's); otherwise to a temp dir:
/// `REDSWARM_WRITE_SCREENSHOT=1 cargo test --features web --test web screenshot`.
#[test]
fn screenshot_of_a_busy_swarm() {
    let Some(browser) = chromium() else {
        if std::env::var_os("CI").is_some() {
            panic!("chromium is not installed, and CI must run the browser tests (.ci/run installs it)");
        }
        eprintln!("SKIPPED screenshot_of_a_busy_swarm: chromium is not installed (apt-get install chromium)");
        return;
    };
    let redis = RedisServer::start();
    let ns = "shop";
    let a = node(&redis, ns, "worker-a");
    let b = node(&redis, ns, "worker-b");
    let web = node(&redis, ns, "ops-console");

    let emails = b.queue("emails").unwrap();
    for i in 0..40 {
        emails
            .push(&json!({ "to": format!("user{i}@example.com") }))
            .unwrap();
    }
    let w = SwarmWorker::start(&emails, WorkerOptions::new().threads(2), |_| {
        Ok(json!("sent"))
    })
    .unwrap();
    assert!(wait_until(WAIT, || emails.counts().unwrap().ended == 40));
    w.shutdown();
    for i in 0..6 {
        emails
            .push(&json!({ "to": format!("late{i}@example.com") }))
            .unwrap();
    }
    for _ in 0..3 {
        emails
            .push_with(
                &json!("digest"),
                &TaskOptions::new().delay(Duration::from_secs(3600)),
            )
            .unwrap();
    }

    let thumbs = a.queue("thumbnails").unwrap();
    for i in 0..5 {
        thumbs
            .push(&json!({ "image": format!("cat{i}.png") }))
            .unwrap();
    }
    for why in [
        "image decode error: truncated JPEG at byte 48211",
        "S3 PutObject: 503 Slow Down",
    ] {
        thumbs
            .push_with(&json!({ "fail": why }), &TaskOptions::new().max_attempts(1))
            .unwrap();
    }
    let worker = SwarmWorker::start(
        &thumbs,
        WorkerOptions::new()
            .threads(2)
            .grace(Duration::from_millis(200)),
        |ctx| {
            if let Some(why) = ctx.data()["fail"].as_str() {
                return Err(why.to_string());
            }
            if let Some(stop_at) = ctx.data()["slow"].as_u64() {
                let mut pct = 0;
                while ctx.sleep(Duration::from_millis(100)) {
                    pct = (pct + 5).min(stop_at);
                    ctx.progress(json!({ "pct": pct, "step": "resize 2048px" }));
                }
                return Ok(Value::Null);
            }
            Ok(json!("ok"))
        },
    )
    .unwrap();
    assert!(wait_until(WAIT, || {
        let c = thumbs.counts().unwrap();
        c.ended == 5 && c.failed == 2
    }));
    for stop_at in [35, 80] {
        thumbs.push(&json!({ "slow": stop_at })).unwrap();
    }
    assert!(wait_until(WAIT, || thumbs.counts().unwrap().running == 2));
    for i in 0..12 {
        thumbs
            .push(&json!({ "image": format!("dog{i}.png") }))
            .unwrap();
    }

    let _lock = b
        .try_lock("billing:nightly", Duration::from_secs(300))
        .unwrap()
        .unwrap();
    let quota = a.semaphore("partner-api", 5).unwrap();
    let _p1 = quota.try_acquire().unwrap().unwrap();
    let _p2 = b
        .semaphore("partner-api", 5)
        .unwrap()
        .try_acquire()
        .unwrap()
        .unwrap();
    let master = redswarm::Master::new(&web, "streams").unwrap();
    let cw1 = redswarm::ClusterWorker::join(
        &a,
        "streams",
        redswarm::ClusterWorkerOptions::new().capacity(10),
    )
    .unwrap();
    let cw2 = redswarm::ClusterWorker::join(
        &b,
        "streams",
        redswarm::ClusterWorkerOptions::new().capacity(10),
    )
    .unwrap();
    for feed in ["orders", "refunds", "stock", "prices", "reviews"] {
        master
            .add_job_with_id(feed, &json!({ "follow": feed }))
            .unwrap();
    }
    let tracker = a.tracker("uploads").unwrap();
    let _chunk = tracker.lock("video-17", "chunk-3").unwrap();

    let server = WebServer::start(
        &web,
        WebOptions::new().listen("127.0.0.1:0").allow_actions(true),
    )
    .unwrap();
    // Let progress arrive and the cluster assign its jobs.
    std::thread::sleep(Duration::from_secs(2));
    let shots = tempfile_dir();
    let out = if std::env::var_os("REDSWARM_WRITE_SCREENSHOT").is_some() {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/status-page.png")
    } else {
        shots.join("status-page.png")
    };
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let profile = tempfile_dir();
    let status = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", out.display()))
        .arg(format!(
            "--window-size={}",
            std::env::var("SHOT_SIZE").unwrap_or_else(|_| "1280,900".into())
        ))
        .arg(server.url())
        .status()
        .unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    assert!(status.success());
    assert!(std::fs::metadata(&out).unwrap().len() > 10_000);
    let _ = std::fs::remove_dir_all(&shots);
    drop((cw1, cw2));
    worker.shutdown();
}

/// `redswarm web` serves until interrupted, then exits 0.
#[cfg(feature = "cli")]
#[test]
fn redswarm_web_command_serves_until_interrupted() {
    use std::io::BufRead;
    let redis = RedisServer::start();
    let swarm = connect(&redis, "webcli");
    run_tasks(&swarm.queue("jobs").unwrap(), 2, 1);
    let mut child = Command::new(env!("CARGO_BIN_EXE_redswarm"))
        .args(["web", "--listen", "127.0.0.1:0", "--token", "t0ken"])
        .env("REDIS_URL", redis.url())
        .env("REDSWARM_NAMESPACE", "webcli")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("read-only, token required"), "{line}");
    let addr: SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    assert_eq!(http(addr, "GET", "/api/queues/jobs", &[]).0, 401);
    let (status, _, body) = http(
        addr,
        "GET",
        "/api/queues/jobs",
        &[("Authorization", "Bearer t0ken")],
    );
    assert_eq!(status, 200, "{body}");
    let q: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            q["counts"]["ended"].as_u64(),
            q["counts"]["failed"].as_u64()
        ),
        (Some(2), Some(1))
    );

    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut status = None;
    assert!(
        wait_until(WAIT, || {
            status = child.try_wait().unwrap();
            status.is_some()
        }),
        "redswarm web did not stop on SIGINT"
    );
    assert_eq!(status.unwrap().code(), Some(0));
}

#[test]
fn redis_down_answers_503_and_the_server_recovers() {
    let mut redis = RedisServer::start();
    let swarm = connect(&redis, "webdown");
    swarm.queue("jobs").unwrap().push(&json!(1)).unwrap();
    let server = start(&swarm, WebOptions::new());
    let addr = server.addr();
    assert_eq!(get_json(addr, "/api/queues/jobs")["counts"]["ready"], 1);

    redis.kill();
    for path in ["/api/overview", "/metrics"] {
        let (status, _, body) = http(addr, "GET", path, &[]);
        assert_eq!(status, 503, "{path}: {body}");
        let e: Value = serde_json::from_str(&body).unwrap();
        assert!(!e["error"].as_str().unwrap().is_empty(), "{body}");
    }
    // The page itself is static: it still loads, and says what is wrong.
    assert_eq!(http(addr, "GET", "/", &[]).0, 200);

    redis.restart();
    assert!(
        wait_until(WAIT, || http(addr, "GET", "/api/overview", &[]).0 == 200),
        "the server did not recover after Redis came back"
    );
}

#[test]
fn shutdown_closes_the_port() {
    let redis = RedisServer::start();
    let swarm = connect(&redis, "webstop");
    let server = start(&swarm, WebOptions::new());
    let addr = server.addr();
    assert_eq!(http(addr, "GET", "/", &[]).0, 200);
    server.shutdown();
    assert!(
        wait_until(WAIT, || TcpStream::connect(addr).is_err()),
        "{addr} still accepts connections after shutdown"
    );
    server.shutdown(); // idempotent
}
