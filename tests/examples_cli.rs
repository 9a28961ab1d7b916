//! The example binaries behave like tools: strict flags with conventional
//! exit codes, validation before Redis is touched, `worker --exec` running
//! tasks as process groups it controls, `push --wait` reporting what Redis
//! recorded, and a worker that counts what finished during its shutdown.
//!
//! The binaries are built by `cargo test` before the tests run; they are
//! found next to the test binary (`target/<profile>/examples/`), as in
//! `tests/chaos.rs`.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redswarm::{Config, EventKind, Queue, Redswarm, TaskInfo, TaskOptions, TaskOutcome, TaskState};
use serde_json::json;
use support::{wait_until, RedisServer};

/// Every example binary but loadgen (which keeps its own parser).
const BINARIES: [&str; 10] = [
    "worker",
    "monitor",
    "push",
    "lock",
    "fanout",
    "legacy_server",
    "paired",
    "master",
    "cluster_worker",
    "tracker",
];

/// Generous: the machine is shared and the binaries are debug builds.
const PATIENCE: Duration = Duration::from_secs(60);

/// A command for example `name` against `url` in namespace `ns`.
fn command(name: &str, url: &str, ns: &str) -> Command {
    let mut cmd = Command::new(support::example_binary(name));
    cmd.env("REDIS_URL", url)
        .env("REDSWARM_NAMESPACE", ns)
        .env("RUST_LOG", "warn")
        .env_remove("REDSWARM_PEER_LISTEN")
        .env_remove("REDSWARM_NODE_ID")
        .stdin(Stdio::null());
    cmd
}

fn run(mut cmd: Command) -> Output {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run example binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn connect(server: &RedisServer, ns: &str) -> Redswarm {
    Redswarm::connect(
        Config::builder()
            .url(server.url())
            .namespace(ns)
            .build()
            .expect("config"),
    )
    .expect("connect")
}

/// A worker process whose stdout lines are collected as they come.
struct Worker {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    stderr: PathBuf,
    dir: PathBuf,
}

impl Worker {
    fn start(server: &RedisServer, ns: &str, dir: &Path, args: &[&str]) -> Worker {
        let stderr = dir.join(format!("worker-{ns}.err"));
        let mut cmd = command("worker", &server.url(), ns);
        // The exec tests' commands write their pids here.
        let pids_dir = dir.join("pids");
        std::fs::create_dir_all(&pids_dir).expect("pids dir");
        cmd.env("PIDS_DIR", &pids_dir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"));
        let mut child = cmd.spawn().expect("spawn worker");
        let stdout = child.stdout.take().expect("worker stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().push(line);
            }
        });
        Worker {
            child,
            lines,
            reader: Some(reader),
            stderr,
            dir: dir.to_path_buf(),
        }
    }

    fn interrupt(&self) {
        // SAFETY: kill(2) on our own child, which we have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
    }

    /// Waits for the exit; returns its code, stderr and its stdout's
    /// `done` lines.
    fn wait(mut self) -> (Option<i32>, String, Vec<String>) {
        let exited = wait_until(PATIENCE, || matches!(self.child.try_wait(), Ok(Some(_))));
        if !exited {
            let _ = self.child.kill();
        }
        let status = self.child.wait().expect("worker status");
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        assert!(exited, "worker did not exit; stderr:\n{err}");
        // The reader ends at the pipe's end of file, after the exit.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let done = self
            .lines
            .lock()
            .iter()
            .filter(|l| l.starts_with("done "))
            .cloned()
            .collect();
        (status.code(), err, done)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // A failed exec test may leave commands running (their own
            // process groups outlive a SIGKILLed worker): end them.
            for entry in std::fs::read_dir(self.dir.join("pids"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let pids = std::fs::read_to_string(entry.path()).unwrap_or_default();
                for pid in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    // SAFETY: kill(2) has no memory effects.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "redswarm-examples-cli-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Waits until task `id` has ended; returns its record.
fn ended(queue: &Queue, id: &str) -> TaskInfo {
    let mut last = None;
    let ok = wait_until(PATIENCE, || {
        last = queue.get(id).expect("get task");
        last.as_ref().is_some_and(|t| t.state.is_end())
    });
    assert!(ok, "task {id} did not end: {last:?}");
    last.expect("task record")
}

/// True while a process with `pid` exists and is not a zombie (a killed
/// grandchild may wait for a reaper that this container's init is not).
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The pids a test command wrote to `file` (`$$` and `$!`), once both are there.
fn pids(file: &Path) -> Vec<i32> {
    let mut found = Vec::new();
    let ok = wait_until(PATIENCE, || {
        found = std::fs::read_to_string(file)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        found.len() == 2
    });
    assert!(
        ok,
        "the command did not write its pids to {}",
        file.display()
    );
    found
}

#[test]
fn every_binary_answers_help_with_exit_0() {
    for name in BINARIES {
        for flag in ["--help", "-h"] {
            let mut cmd = command(name, "redis://127.0.0.1:1/", "help");
            cmd.arg(flag);
            let out_flag = run(cmd);
            assert_eq!(
                out_flag.status.code(),
                Some(0),
                "{name} {flag}: {}",
                text(&out_flag.stderr)
            );
            assert!(
                text(&out_flag.stdout).contains(&format!("Usage: {name}")),
                "{name} {flag} printed no usage:\n{}",
                text(&out_flag.stdout)
            );
        }
    }
}

#[test]
fn unknown_flag_is_a_usage_error_with_exit_2() {
    for name in BINARIES {
        let mut cmd = command(name, "redis://127.0.0.1:1/", "bogus");
        cmd.args(["--bogus", "1"]);
        let out = run(cmd);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name} --bogus 1: {err}");
        assert!(
            err.contains("--bogus") && err.contains(&format!("Usage: {name}")),
            "{name} --bogus 1 did not name the flag and show the usage:\n{err}"
        );
    }
}

#[test]
fn runtime_error_is_one_line_with_exit_1() {
    // Nothing listens on port 1: connecting fails, the flags were fine.
    let mut cmd = command("push", "redis://127.0.0.1:1/", "runtime");
    cmd.args(["--count", "1"]);
    let out = run(cmd);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line:\n{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(
        !err.contains("Usage"),
        "a runtime error is not a usage error:\n{err}"
    );
}

#[test]
fn worker_rejects_a_short_lease_before_pushing_anything() {
    let server = RedisServer::start();
    let mut cmd = command("worker", &server.url(), "short-lease");
    cmd.args(["--lease-ms", "10", "--demo", "2"]);
    let out = run(cmd);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--lease-ms"), "{err}");
    let keys: u64 = redis::cmd("DBSIZE")
        .query(&mut server.conn())
        .expect("DBSIZE");
    assert_eq!(keys, 0, "the rejected worker wrote to Redis");
    let swarm = connect(&server, "short-lease");
    let counts = swarm.queue("demo").unwrap().counts().unwrap();
    assert_eq!(counts.pending() + counts.ended + counts.failed, 0);
    swarm.shutdown();
}

#[test]
fn monitor_rejects_a_zero_interval_before_connecting() {
    let server = RedisServer::start();
    let mut cmd = command("monitor", &server.url(), "zero-interval");
    cmd.args(["--interval-ms", "0"]);
    let out = run(cmd);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--interval-ms"), "{err}");
    let keys: u64 = redis::cmd("DBSIZE")
        .query(&mut server.conn())
        .expect("DBSIZE");
    assert_eq!(keys, 0, "the rejected monitor joined Redis");
}

/// The command of the exec tests: what it does depends on the payload's
/// `do` (read from stdin; REDSWARM_TASK must hold the same payload).
const EXEC_SCRIPT: &str = r#"
payload=$(cat)
[ "$payload" = "$REDSWARM_TASK" ] || { echo "stdin and REDSWARM_TASK differ" >&2; exit 9; }
case "$payload" in
  *'"echo"'*) printf '%s' "$payload" ;;
  *'"text"'*) echo "plain text, attempt $REDSWARM_ATTEMPT, token $REDSWARM_FENCING_TOKEN" ;;
  *'"progress"'*) echo '@progress {"pct":50}'; echo '{"result":1}' ;;
  *'"fail"'*) echo "a long story" >&2; echo "the end of stderr" >&2; exit 4 ;;
  *'"hang"'*)
    trap '' TERM     # ignores SIGTERM, so does its sleep: only SIGKILL ends them
    sleep 600 &
    echo "$$ $!" > "$PIDS_DIR/$REDSWARM_TASK_ID"
    wait ;;
  *'"slow"'*)
    sleep 600 &
    echo "$$ $!" > "$PIDS_DIR/$REDSWARM_TASK_ID"
    wait ;;
esac
"#;

fn exec_worker(server: &RedisServer, ns: &str, dir: &Path) -> Worker {
    Worker::start(
        server,
        ns,
        dir,
        &[
            "--queue",
            "exec",
            "--threads",
            "4",
            "--exec",
            EXEC_SCRIPT,
            "--kill-grace-ms",
            "500",
        ],
    )
}

#[test]
fn exec_completes_with_stdout_and_fails_with_stderr_tail() {
    let server = RedisServer::start();
    let dir = scratch_dir("exec-results");
    let worker = exec_worker(&server, "exec-results", &dir);
    let swarm = connect(&server, "exec-results");
    let queue = swarm.queue("exec").unwrap();
    let events = queue.events().unwrap();
    let echo = queue.push(&json!({ "do": "echo", "n": 7 })).unwrap();
    let plain = queue.push(&json!({ "do": "text" })).unwrap();
    let progress = queue.push(&json!({ "do": "progress" })).unwrap();
    let fail = queue
        .push_with(
            &json!({ "do": "fail" }),
            &TaskOptions::new().max_attempts(1),
        )
        .unwrap();

    let t = ended(&queue, &echo);
    assert_eq!(t.state, TaskState::End(TaskOutcome::Ok), "{t:?}");
    assert_eq!(
        t.result,
        Some(json!({ "do": "echo", "n": 7 })),
        "JSON stdout is the result"
    );

    let t = ended(&queue, &plain);
    assert_eq!(t.state, TaskState::End(TaskOutcome::Ok), "{t:?}");
    assert_eq!(
        t.result,
        Some(json!(format!(
            "plain text, attempt 1, token {}",
            t.fencing_token
        ))),
        "other stdout is the result as a string"
    );

    let t = ended(&queue, &progress);
    assert_eq!(
        t.result,
        Some(json!({ "result": 1 })),
        "the progress line is not the result"
    );
    let mut saw_progress = false;
    wait_until(PATIENCE, || {
        while let Some(e) = events.next_event(Duration::from_millis(100)) {
            if e.task == progress && e.kind == EventKind::Progress {
                assert_eq!(e.data, Some(json!({ "pct": 50 })));
                saw_progress = true;
            }
        }
        saw_progress
    });
    assert!(saw_progress, "no progress event from the @progress line");

    let t = ended(&queue, &fail);
    assert_eq!(t.state, TaskState::End(TaskOutcome::Failed), "{t:?}");
    let error = t.error.unwrap_or_default();
    assert!(
        error.contains("exit status 4") && error.contains("the end of stderr"),
        "error: {error}"
    );

    worker.interrupt();
    let (code, err, _) = worker.wait();
    assert_eq!(code, Some(0), "{err}");
    swarm.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn exec_kills_the_process_group_on_cancel_and_on_timeout() {
    let server = RedisServer::start();
    let dir = scratch_dir("exec-kill");
    let worker = exec_worker(&server, "exec-kill", &dir);
    let swarm = connect(&server, "exec-kill");
    let queue = swarm.queue("exec").unwrap();

    // Cancel: a command that ignores SIGTERM needs the SIGKILL.
    let hang = queue.push(&json!({ "do": "hang" })).unwrap();
    let group = pids(&dir.join("pids").join(&hang));
    assert!(group.iter().all(|&p| alive(p)), "the command runs");
    queue.cancel(&hang).unwrap();
    let t = ended(&queue, &hang);
    assert_eq!(t.state, TaskState::End(TaskOutcome::Cancelled), "{t:?}");
    assert!(
        wait_until(PATIENCE, || group.iter().all(|&p| !alive(p))),
        "processes {group:?} of the cancelled task's group are still running"
    );

    // Timeout: SIGTERM is enough here.
    let slow = queue
        .push_with(
            &json!({ "do": "slow" }),
            &TaskOptions::new()
                .timeout(Duration::from_secs(1))
                .max_attempts(1),
        )
        .unwrap();
    let group = pids(&dir.join("pids").join(&slow));
    let t = ended(&queue, &slow);
    assert_eq!(t.state, TaskState::End(TaskOutcome::Failed), "{t:?}");
    assert!(
        t.error
            .as_deref()
            .unwrap_or_default()
            .to_lowercase()
            .contains("timed out"),
        "{t:?}"
    );
    assert!(
        wait_until(PATIENCE, || group.iter().all(|&p| !alive(p))),
        "processes {group:?} of the timed-out task's group are still running"
    );

    worker.interrupt();
    let (code, err, _) = worker.wait();
    assert_eq!(code, Some(0), "{err}");
    swarm.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn push_wait_reports_the_count_redis_has() {
    let server = RedisServer::start();
    let dir = scratch_dir("push-wait");
    let worker = Worker::start(
        &server,
        "push-wait",
        &dir,
        &["--queue", "bulk", "--threads", "8"],
    );
    let mut cmd = command("push", &server.url(), "push-wait");
    cmd.args(["--queue", "bulk", "--count", "2000", "--ms", "0", "--wait"]);
    let out = run(cmd);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let swarm = connect(&server, "push-wait");
    let counts = swarm.queue("bulk").unwrap().counts().unwrap();
    assert_eq!(counts.ended, 2000, "{counts:?}");
    assert!(
        stdout.contains("all 2000 ended: 2000 ok or cancelled, 0 failed"),
        "push reported something else than Redis's {counts:?}:\n{stdout}"
    );
    worker.interrupt();
    let _ = worker.wait();
    swarm.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn worker_counts_tasks_that_finish_during_the_shutdown_grace() {
    let server = RedisServer::start();
    let dir = scratch_dir("grace");
    let worker = Worker::start(
        &server,
        "grace",
        &dir,
        &["--queue", "grace", "--threads", "2", "--grace-ms", "30000"],
    );
    let swarm = connect(&server, "grace");
    let queue = swarm.queue("grace").unwrap();
    let ids = queue
        .push_many(&[json!({ "ms": 2000 }), json!({ "ms": 2000 })])
        .unwrap();
    assert!(
        wait_until(PATIENCE, || queue.counts().unwrap().running == 2),
        "the worker did not start both tasks"
    );
    worker.interrupt(); // both are still sleeping: they finish in the grace
    let (code, err, printed) = worker.wait();
    assert_eq!(code, Some(0), "{err}");
    for id in &ids {
        let t = ended(&queue, id);
        assert_eq!(t.state, TaskState::End(TaskOutcome::Ok), "{t:?}");
    }
    assert_eq!(printed.len(), 2, "done lines: {printed:?}\nstderr:\n{err}");
    for id in &ids {
        assert!(
            printed.iter().any(|l| l.split(' ').nth(1) == Some(id)),
            "{id} not printed"
        );
    }
    assert!(err.contains("stopped after 2 tasks done"), "{err}");
    swarm.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn second_interrupt_exits_at_once_and_takes_exec_children_down() {
    let server = RedisServer::start();
    let dir = scratch_dir("second-interrupt");
    let worker = Worker::start(
        &server,
        "second-interrupt",
        &dir,
        &[
            "--queue",
            "exec",
            "--grace-ms",
            "600000",
            "--exec",
            EXEC_SCRIPT,
        ],
    );
    let swarm = connect(&server, "second-interrupt");
    let queue = swarm.queue("exec").unwrap();
    let slow = queue.push(&json!({ "do": "slow" })).unwrap();
    let group = pids(&dir.join("pids").join(&slow));
    worker.interrupt();
    // The first interrupt starts the (ten-minute) grace; the second one
    // must not wait for it.
    let stderr = worker.stderr.clone();
    assert!(
        wait_until(PATIENCE, || std::fs::read_to_string(&stderr)
            .unwrap_or_default()
            .contains("stopping")),
        "the worker did not start its shutdown"
    );
    worker.interrupt();
    let (code, err, _) = worker.wait();
    assert_eq!(code, Some(130), "{err}");
    assert!(
        wait_until(PATIENCE, || group.iter().all(|&p| !alive(p))),
        "processes {group:?} of the running command outlived the worker"
    );
    // Left under its lease: still running in Redis, for a reaper to re-queue.
    let t = queue.get(&slow).unwrap().expect("task record");
    assert_eq!(t.state, TaskState::Running, "{t:?}");
    swarm.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
