//! The latest progress of running tasks, as the status page shows it.
//!
//! Handlers publish progress as events ([`TaskContext::progress`]); it is
//! not stored with the task. So the server listens to every queue's event
//! channel (one pattern subscription) and keeps the latest progress of
//! each task until it ends, is handed back or starts a new attempt. Events
//! are lossy (pub/sub), so the page also prunes what it knows against the
//! running set it reads from Redis ([`ProgressBoard::retain`]), and the
//! board holds at most [`MAX_TRACKED`] tasks.
//!
//! [`TaskContext::progress`]: crate::TaskContext::progress

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{select, Receiver, Sender};
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::handle::Redswarm;
use crate::subscriber::{SubEvent, Subscription};
use crate::swarm::{EventKind, TaskEvent};

/// Most tasks whose progress is kept; past it the oldest report goes.
pub(crate) const MAX_TRACKED: usize = 10_000;

/// One task's latest progress report.
#[derive(Clone, Debug)]
pub(crate) struct Report {
    /// What the handler passed to `progress`.
    pub(crate) data: serde_json::Value,
    /// When this server received it (host's monotonic clock: it only
    /// says how old the report is).
    pub(crate) received: Instant,
}

type Board = HashMap<(String, String), Report>;

/// Latest progress per (queue, task), fed by a listener thread.
pub(crate) struct ProgressBoard {
    board: Arc<Mutex<Board>>,
    stop: Sender<()>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ProgressBoard {
    /// Subscribes to every queue's events of the namespace and starts the
    /// listener thread.
    pub(crate) fn start(swarm: &Redswarm) -> Result<ProgressBoard> {
        let sub = swarm.psubscribe(&swarm.keys().queue_events_pattern())?;
        let board = Arc::new(Mutex::new(Board::new()));
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let keys = swarm.keys().clone();
        let feed = board.clone();
        let thread = std::thread::Builder::new()
            .name("redswarm-web-progress".into())
            .spawn(move || listen(&sub, &stopped, &feed, &keys))
            .map_err(|e| Error::config("web threads", format!("cannot spawn a thread: {e}")))?;
        Ok(ProgressBoard {
            board,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The latest report for `task` of `queue`, if any.
    pub(crate) fn get(&self, queue: &str, task: &str) -> Option<Report> {
        self.board
            .lock()
            .get(&(queue.to_string(), task.to_string()))
            .cloned()
    }

    /// Forgets the reports of `queue`'s tasks that are not in `running`
    /// (the complete running set just read from Redis): their end event
    /// was lost.
    pub(crate) fn retain(&self, queue: &str, running: &[&str]) {
        self.board
            .lock()
            .retain(|(q, t), _| q != queue || running.contains(&t.as_str()));
    }

    /// Stops the listener. Idempotent.
    pub(crate) fn stop(&self) {
        let _ = self.stop.try_send(());
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for ProgressBoard {
    fn drop(&mut self) {
        self.stop();
    }
}

fn listen(
    sub: &Subscription,
    stopped: &Receiver<()>,
    board: &Mutex<Board>,
    keys: &crate::keys::Keys,
) {
    loop {
        select! {
            recv(stopped) -> _ => return,
            recv(sub.receiver()) -> event => match event {
                Ok(SubEvent::Message(m)) => {
                    let Some(queue) = keys.queue_of_events_channel(&m.channel) else {
                        continue;
                    };
                    // One message carries every event of one script call.
                    match crate::swarm::decode_events(&m.payload) {
                        Ok(events) => {
                            let mut board = board.lock();
                            for e in events {
                                record(&mut board, queue.clone(), e);
                            }
                        }
                        Err(e) => log::debug!("status server: malformed event on {}: {e}", m.channel),
                    }
                }
                // Events may have been missed; the next page load prunes.
                Ok(SubEvent::Reconnected) => {}
                // The subscriber is gone: the handle was shut down.
                Err(_) => return,
            },
        }
    }
}

/// Applies one event to the board.
fn record(board: &mut Board, queue: String, e: TaskEvent) {
    let key = (queue, e.task);
    match e.kind {
        EventKind::Progress => {
            let Some(data) = e.data else { return };
            if board.len() >= MAX_TRACKED && !board.contains_key(&key) {
                let oldest = board
                    .iter()
                    .min_by_key(|(_, r)| r.received)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    board.remove(&oldest);
                }
            }
            board.insert(
                key,
                Report {
                    data,
                    received: Instant::now(),
                },
            );
        }
        // A new attempt starts from nothing; an ended or handed-back task
        // has no progress to show.
        EventKind::Started
        | EventKind::Completed
        | EventKind::Failed
        | EventKind::Retrying
        | EventKind::Cancelled
        | EventKind::Requeued => {
            board.remove(&key);
        }
        EventKind::Queued | EventKind::Unknown => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(task: &str, kind: EventKind, data: Option<serde_json::Value>) -> TaskEvent {
        TaskEvent {
            task: task.into(),
            kind,
            attempt: None,
            node: None,
            error: None,
            data,
        }
    }

    #[test]
    fn progress_is_kept_until_the_task_ends() {
        let mut b = Board::new();
        record(
            &mut b,
            "q".into(),
            event("t", EventKind::Progress, Some(50.into())),
        );
        record(
            &mut b,
            "q".into(),
            event("t", EventKind::Progress, Some(70.into())),
        );
        let k = ("q".to_string(), "t".to_string());
        assert_eq!(b[&k].data, serde_json::json!(70));
        record(
            &mut b,
            "other".into(),
            event("t", EventKind::Completed, None),
        );
        assert!(b.contains_key(&k), "another queue's task of the same id");
        record(&mut b, "q".into(), event("t", EventKind::Completed, None));
        assert!(b.is_empty());
    }

    #[test]
    fn board_is_bounded() {
        let mut b = Board::new();
        for i in 0..MAX_TRACKED + 10 {
            record(
                &mut b,
                "q".into(),
                event(&i.to_string(), EventKind::Progress, Some(1.into())),
            );
        }
        assert_eq!(b.len(), MAX_TRACKED);
        assert!(b.contains_key(&("q".to_string(), (MAX_TRACKED + 9).to_string())));
    }
}
