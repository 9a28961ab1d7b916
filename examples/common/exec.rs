//! `worker --exec CMD`: runs each task as a child process.
//!
//! The contract (also in the README):
//!
//! - The command string runs under `sh -c`, so it may use pipes,
//!   redirections and `$VARIABLES`; quote it as one argument.
//! - The task's payload goes to the child's stdin as one line of JSON (then
//!   stdin is closed), and is also in the environment: `REDSWARM_TASK` (the
//!   payload as JSON, when under [`MAX_ENV_PAYLOAD`] bytes: the kernel
//!   refuses larger environment strings), `REDSWARM_TASK_ID`,
//!   `REDSWARM_ATTEMPT`, `REDSWARM_FENCING_TOKEN`, `REDSWARM_QUEUE`.
//! - Exit status 0 completes the task with the child's stdout as its result:
//!   JSON if the whole of it parses as JSON, else the text as a JSON string
//!   (empty output gives `null`).
//! - A non-zero exit (or death by a signal) fails the attempt with the last
//!   [`STDERR_TAIL`] bytes of stderr in the error.
//! - A stdout line `@progress <json>` (or `@progress <text>`) becomes a
//!   `progress` event of the task and is not part of the result.
//! - The child runs in its own process group. When the task is told to stop
//!   (cancel, timeout, lost lease, partition, the end of the shutdown
//!   grace) the whole group gets SIGTERM, then SIGKILL after
//!   [`ExecOptions::kill_grace`]. When the child exits on its own, whatever
//!   it left running in its group is killed too: the task is over, and a
//!   leftover must not outlive the lease that covered it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, unbounded, Receiver, Sender};
use redswarm::{StopReason, TaskContext};

/// Payloads up to this size also go in `REDSWARM_TASK`; Linux refuses a
/// single environment string over 128 KiB (`MAX_ARG_STRLEN`).
pub const MAX_ENV_PAYLOAD: usize = 64 * 1024;
/// How much of stderr's end a failure's error keeps.
pub const STDERR_TAIL: usize = 2048;
/// The most stdout a task may print as its result (the queue keeps results
/// in Redis; a runaway command must not fill it).
pub const MAX_STDOUT: usize = 4 << 20;
/// The stdout line prefix that marks a progress report.
pub const PROGRESS_PREFIX: &str = "@progress";
/// After the child exits, how long its output pipes may stay open (held by
/// something that escaped its process group) before the result is taken
/// from what was read so far.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// How to run the command.
#[derive(Clone, Debug)]
pub struct ExecOptions {
    /// The command line, run with `sh -c`.
    pub command: String,
    /// Between SIGTERM and SIGKILL when a task is stopped.
    pub kill_grace: Duration,
}

/// Process groups of the children running now, so that a forced exit of
/// the worker (a second Ctrl-C) can take them down with it: they are in
/// their own groups, so the terminal's SIGINT does not reach them.
fn live_groups() -> &'static Mutex<HashMap<i32, Arc<Group>>> {
    static GROUPS: OnceLock<Mutex<HashMap<i32, Arc<Group>>>> = OnceLock::new();
    GROUPS.get_or_init(Default::default)
}

/// SIGKILLs the process group of every child still running (for a forced
/// exit of the worker).
pub fn kill_all_groups() {
    let groups = live_groups().lock().unwrap_or_else(|p| p.into_inner());
    for group in groups.values() {
        group.signal(libc::SIGKILL);
    }
}

/// The child's process group. It is signalled only while its leader is
/// unreaped: until then no other process or group can get its id, so a
/// late signal cannot hit a stranger.
struct Group {
    pgid: i32,
    reaped: Mutex<bool>,
}

impl Group {
    fn signal(&self, sig: i32) {
        let reaped = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
        if !*reaped {
            // SAFETY: kill(2) has no memory effects; a negative pid names
            // the process group, whose leader (our child) is not reaped.
            unsafe { libc::kill(-self.pgid, sig) };
        }
    }

    /// Kills the group and reaps the leader by pid: for when the thread
    /// that would wait for it could not be started.
    fn kill_and_reap(&self) {
        let mut reaped = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
        if !*reaped {
            // SAFETY: as in signal(); waitpid writes only into `status`.
            unsafe {
                libc::kill(-self.pgid, libc::SIGKILL);
                let mut status = 0;
                libc::waitpid(self.pgid, &mut status, 0);
            }
            *reaped = true;
        }
    }
}

/// Starts a named helper thread.
fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), String> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map(drop)
        .map_err(|e| format!("cannot start a {name} thread: {e}"))
}

/// What the helper threads report to the task's thread.
enum Event {
    Progress(serde_json::Value),
    Stdout(Result<Vec<u8>, String>),
    StderrTail(Vec<u8>),
    Exited(std::io::Result<ExitStatus>),
}

/// Runs one task (the worker's handler with `--exec`).
pub fn run_task(
    opts: &ExecOptions,
    queue: &str,
    ctx: &TaskContext,
) -> Result<serde_json::Value, String> {
    if let Some(why) = ctx.stop_reason() {
        return Err(format!("stopped before the command started: {why:?}"));
    }
    let payload = serde_json::to_string(ctx.data()).map_err(|e| format!("payload: {e}"))?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(&opts.command)
        .env("REDSWARM_TASK_ID", ctx.id())
        .env("REDSWARM_ATTEMPT", ctx.attempt().to_string())
        .env("REDSWARM_FENCING_TOKEN", ctx.fencing_token().to_string())
        .env("REDSWARM_QUEUE", queue)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: one signal reaches everything it starts
        // (a pipeline, a script's children), and the terminal's Ctrl-C goes
        // to the worker only, which decides when the task must stop.
        .process_group(0);
    if payload.len() <= MAX_ENV_PAYLOAD {
        cmd.env("REDSWARM_TASK", &payload);
    } else {
        cmd.env_remove("REDSWARM_TASK");
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start `sh -c {:?}`: {e}", opts.command))?;
    // The pid is the group id (process_group(0)); a child pid always fits.
    let pgid = i32::try_from(child.id()).map_err(|_| "child pid out of range".to_string())?;
    let group = Arc::new(Group {
        pgid,
        reaped: Mutex::new(false),
    });
    live_groups()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(pgid, group.clone());
    let (tx, rx) = unbounded();
    let started = start_helpers(&mut child, payload, &tx).and_then(|()| {
        // The waiter owns the child from here on.
        let (group, tx) = (group.clone(), tx.clone());
        spawn("exec-wait", move || wait_and_reap(child, &group, &tx))
    });
    drop(tx);
    let outcome = match started {
        Ok(()) => supervise(opts, ctx, &group, &rx),
        Err(e) => {
            group.kill_and_reap();
            Err(e)
        }
    };
    live_groups()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&pgid);
    outcome
}

/// Feeds stdin and reads stdout and stderr on their own threads: a child
/// that fills one pipe while we block on another would deadlock with us.
fn start_helpers(child: &mut Child, payload: String, tx: &Sender<Event>) -> Result<(), String> {
    if let Some(mut stdin) = child.stdin.take() {
        spawn("exec-stdin", move || {
            // A child that does not read its stdin closes it: EPIPE is fine.
            let _ = stdin.write_all(payload.as_bytes());
            let _ = stdin.write_all(b"\n");
            // Dropping stdin closes it: the child sees end of input.
        })?;
    }
    if let Some(stdout) = child.stdout.take() {
        let tx = tx.clone();
        spawn("exec-stdout", move || {
            let out = read_stdout(stdout, &tx);
            let _ = tx.send(Event::Stdout(out));
        })?;
    }
    if let Some(stderr) = child.stderr.take() {
        let tx = tx.clone();
        spawn("exec-stderr", move || {
            let _ = tx.send(Event::StderrTail(read_tail(stderr)));
        })?;
    }
    Ok(())
}

/// Stdout minus the progress lines, which go out as events as they come.
fn read_stdout(stdout: impl Read, tx: &Sender<Event>) -> Result<Vec<u8>, String> {
    let mut reader = BufReader::new(stdout);
    let mut out = Vec::new();
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        line.clear();
        // Bytes, not String: a command may print anything; only the result
        // is decoded (lossily) at the end.
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(format!("reading stdout: {e}")),
        }
        if let Some(rest) = line.strip_prefix(PROGRESS_PREFIX.as_bytes()) {
            if rest.first().is_none_or(|b| b.is_ascii_whitespace()) {
                let text = String::from_utf8_lossy(rest);
                let _ = tx.send(Event::Progress(parse_json_or_string(text.trim())));
                continue;
            }
        }
        if out.len() + line.len() > MAX_STDOUT {
            too_long = true; // keep reading so the child is not blocked
            continue;
        }
        out.extend_from_slice(&line);
    }
    if too_long {
        return Err(format!("stdout exceeded {MAX_STDOUT} bytes"));
    }
    Ok(out)
}

/// The last [`STDERR_TAIL`] bytes of stderr.
fn read_tail(mut stderr: impl Read) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stderr.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 2 * STDERR_TAIL {
                    tail.drain(..tail.len() - STDERR_TAIL);
                }
            }
        }
    }
    if tail.len() > STDERR_TAIL {
        tail.drain(..tail.len() - STDERR_TAIL);
    }
    tail
}

/// Waits for the group leader to exit without reaping it (`WNOWAIT`), kills
/// what it left in its group while the group id is still ours, then reaps.
fn wait_and_reap(mut child: Child, group: &Group, tx: &Sender<Event>) {
    // SAFETY: waitid writes only into `info`, which lives on this stack.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        loop {
            let r = libc::waitid(
                libc::P_PID,
                child.id(),
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            );
            if r == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                break;
            }
        }
    }
    let status = {
        let mut reaped = group.reaped.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: kill(2) has no memory effects; the leader is a zombie,
        // not reaped, so the group id is still this child's.
        unsafe { libc::kill(-group.pgid, libc::SIGKILL) };
        let status = child.wait();
        *reaped = true;
        status
    };
    let _ = tx.send(Event::Exited(status));
}

/// What the helpers reported so far.
#[derive(Default)]
struct Collected {
    stdout: Option<Result<Vec<u8>, String>>,
    stderr: Option<Vec<u8>>,
    status: Option<std::io::Result<ExitStatus>>,
}

impl Collected {
    fn take(&mut self, event: Event, ctx: &TaskContext) {
        match event {
            Event::Progress(v) => ctx.progress(v),
            Event::Stdout(o) => self.stdout = Some(o),
            Event::StderrTail(t) => self.stderr = Some(t),
            Event::Exited(s) => self.status = Some(s),
        }
    }
}

/// The task's thread: forwards progress, watches for the stop signal, and
/// turns the exit status and output into the task's outcome.
fn supervise(
    opts: &ExecOptions,
    ctx: &TaskContext,
    group: &Group,
    rx: &Receiver<Event>,
) -> Result<serde_json::Value, String> {
    let stop = ctx.stop_receiver();
    let mut got = Collected::default();
    // Until the child exits, or the task is told to stop.
    let mut stopped = None;
    while got.status.is_none() {
        select! {
            recv(rx) -> event => match event {
                Ok(event) => got.take(event, ctx),
                Err(_) => break, // every helper is gone (cannot happen before Exited)
            },
            recv(stop) -> why => {
                if let Some(why) = why.ok().or(ctx.stop_reason()) {
                    stopped = Some(why);
                    break;
                }
            }
            // The stop message is a wake-up; the reason is the record
            // (a message taken by someone else must not go unnoticed).
            default(Duration::from_millis(250)) => {
                if let Some(why) = ctx.stop_reason() {
                    stopped = Some(why);
                    break;
                }
            }
        }
    }
    if let Some(why) = stopped {
        return Err(stop_group(opts, group, rx, why));
    }
    // Exited: collect the rest of the output. The waiter killed the group,
    // so the pipes close unless something escaped it (setsid); then take
    // what was read by the deadline.
    let deadline = Instant::now() + DRAIN_WAIT;
    while got.stdout.is_none() || got.stderr.is_none() {
        match rx.recv_deadline(deadline) {
            Ok(event) => got.take(event, ctx),
            Err(_) => break,
        }
    }
    outcome(got)
}

/// Stops the child's process group: SIGTERM, and SIGKILL if it is still
/// there after the grace. Returns the task's error.
fn stop_group(opts: &ExecOptions, group: &Group, rx: &Receiver<Event>, why: StopReason) -> String {
    // Politely first (the command may clean up), then for sure.
    group.signal(libc::SIGTERM);
    let deadline = Instant::now() + opts.kill_grace;
    let mut killed = false;
    loop {
        let wait = if killed {
            DRAIN_WAIT
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        match rx.recv_timeout(wait) {
            Ok(Event::Exited(_)) => break,
            Ok(_) => {} // output after the stop is not the task's result
            Err(_) if !killed => {
                group.signal(libc::SIGKILL);
                killed = true;
            }
            Err(_) => break, // SIGKILL sent; the waiter reaps it when it can
        }
    }
    format!(
        "stopped ({why:?}); the command's process group was {}",
        if killed {
            "killed (SIGKILL after SIGTERM)"
        } else {
            "terminated (SIGTERM)"
        }
    )
}

/// The task's result from a child that exited on its own.
fn outcome(got: Collected) -> Result<serde_json::Value, String> {
    let tail = String::from_utf8_lossy(got.stderr.as_deref().unwrap_or_default())
        .trim()
        .to_string();
    let status = match got.status {
        Some(Ok(s)) => s,
        Some(Err(e)) => return Err(format!("waiting for the command: {e}")),
        None => return Err("the command's exit status was lost".into()),
    };
    if !status.success() {
        let how = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => status.to_string(),
        };
        return Err(if tail.is_empty() {
            how
        } else {
            format!("{how}: {tail}")
        });
    }
    match got.stdout {
        Some(Ok(out)) => Ok(parse_json_or_string(String::from_utf8_lossy(&out).trim())),
        Some(Err(e)) => Err(e),
        None => Err(format!(
            "stdout stayed open {DRAIN_WAIT:?} after the command exited (something it started left its process group)"
        )),
    }
}

/// JSON if `text` parses, `null` if empty, else the text as a JSON string.
fn parse_json_or_string(text: &str) -> serde_json::Value {
    if text.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
}
