//! Progress of a long run (`worker --demo`, `push --wait`): a bar on a
//! terminal, plain lines (at most one a second) when the output is piped to
//! a file or another program, where a redrawn bar would be noise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a plain progress line is printed when there is no terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(1);

pub struct Progress {
    /// `Some` on a terminal.
    bar: Option<ProgressBar>,
    total: u64,
    started: Instant,
    last_line: Option<Instant>,
}

impl Progress {
    /// A display for `total` items. The bar is drawn on stderr, only when
    /// stderr is a terminal and `allow_bar` (a caller whose stdout is
    /// interleaved line output passes false when stdout is not a terminal).
    pub fn new(total: u64, allow_bar: bool) -> Progress {
        let bar = (allow_bar && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            // The template is a constant: if indicatif rejects it, fall
            // back to its default style rather than fail the run.
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:40} {pos}/{len} {msg} [{elapsed_precise}, eta {eta}]",
            ) {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            bar,
            total,
            started: Instant::now(),
            last_line: None,
        }
    }

    /// True when drawing a bar (so per-item lines on stdout are skipped).
    pub fn is_bar(&self) -> bool {
        self.bar.is_some()
    }

    /// `done` items of `total` have ended, `failed` of them failed.
    pub fn set(&mut self, done: u64, failed: u64) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(done);
                let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
                bar.set_message(format!("ended, {failed} failed, {rate:.0}/s"));
            }
            None => {
                if self.last_line.is_none_or(|t| t.elapsed() >= PLAIN_EVERY) {
                    self.last_line = Some(Instant::now());
                    eprintln!(
                        "progress: {done}/{} ended, {failed} failed, {:.1} s",
                        self.total,
                        self.started.elapsed().as_secs_f64()
                    );
                }
            }
        }
    }

    /// Removes the bar (so the summary that follows stands alone).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
