//! A watchdog for test processes that outlive every destructor: the shared
//! Redis Cluster or Sentinel set of a test binary lives in a `static` and is
//! never dropped, so something outside the test binary must clean up.
//!
//! [`Watchdog::spawn`] starts a `sh` that reads `pid N` and `dir PATH`
//! lines on its stdin. When that pipe reaches EOF — because the test binary
//! exited normally, by a panic, or was SIGKILLed (the kernel closes the
//! write end), or because the last [`Watchdog`] handle was dropped — it
//! SIGKILLs every pid it was told, waits up to 5 s for them to be gone, and
//! removes every directory. It ignores SIGINT/SIGTERM/SIGHUP, so a Ctrl-C
//! on the process group does not stop it before it has cleaned up.
//!
//! Tell it about a directory before creating it and about a process as
//! soon as it is spawned: whatever is created after the last line written
//! is not cleaned up.

use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;

use parking_lot::Mutex;

/// A handle on the watchdog `sh`; clones share it. When the last handle is
/// dropped the pipe is closed and the drop waits for the cleanup to end.
#[derive(Clone)]
pub struct Watchdog {
    inner: Arc<Inner>,
}

struct Inner {
    child: Mutex<Child>,
    stdin: Mutex<Option<ChildStdin>>,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog")
            .field("pid", &self.inner.child.lock().id())
            .finish()
    }
}

/// Collects the pids and directories, one a line, until EOF; then kills
/// the pids, waits up to 5 s for them to be gone and removes the
/// directories (kept in "$@", so their names may hold spaces).
const SCRIPT: &str = r#"trap '' INT TERM HUP
pids=
set --
while IFS= read -r line; do
  case $line in
    "pid "*) pids="$pids ${line#pid }" ;;
    "dir "*) set -- "$@" "${line#dir }" ;;
  esac
done
if [ -n "$pids" ]; then
  kill -9 $pids 2>/dev/null
  i=0
  while [ $i -lt 50 ]; do
    alive=
    for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ -z "$alive" ] && break
    sleep 0.1
    i=$((i+1))
  done
fi
[ $# -eq 0 ] || rm -rf -- "$@"
"#;

impl Watchdog {
    /// Starts the watchdog `sh`. Panics if it cannot be spawned.
    pub fn spawn() -> Watchdog {
        // std opens the pipe close-on-exec, so no other child (a Redis
        // process, a test's worker process) inherits the write end and
        // holds the EOF back.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn the test watchdog sh: {e}"));
        let stdin = child.stdin.take();
        Watchdog {
            inner: Arc::new(Inner {
                child: Mutex::new(child),
                stdin: Mutex::new(stdin),
            }),
        }
    }

    /// Kill process `pid` at the end.
    pub fn watch_pid(&self, pid: u32) {
        self.tell(&format!("pid {pid}\n"));
    }

    /// Remove `dir` (recursively) at the end, after the processes are gone.
    pub fn watch_dir(&self, dir: &Path) {
        let dir = dir.to_str().expect("a test directory path is UTF-8");
        assert!(!dir.contains('\n'), "{dir:?}: a newline in a test dir");
        self.tell(&format!("dir {dir}\n"));
    }

    /// The watchdog's own process id.
    pub fn pid(&self) -> u32 {
        self.inner.child.lock().id()
    }

    fn tell(&self, line: &str) {
        let mut stdin = self.inner.stdin.lock();
        let stdin = stdin.as_mut().expect("the watchdog's stdin is open");
        // One unbuffered write per line.
        stdin
            .write_all(line.as_bytes())
            .unwrap_or_else(|e| panic!("tell the test watchdog {line:?}: {e}"));
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // EOF: it kills what is left and removes the directories.
        drop(self.stdin.get_mut().take());
        let _ = self.child.get_mut().wait();
    }
}
