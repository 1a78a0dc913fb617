//! How `job wait` and `submit --wait` show a job's progress on stderr: a progress bar when
//! stderr is a terminal (indicatif), plain lines otherwise (a log or a pipe gets one line when
//! something changed, at most every two seconds, and the last one).

use std::time::{Duration, Instant};

use flotilla_proto::api::JobDetail;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub enum Progress {
    Quiet,
    Bar(ProgressBar),
    Lines { last_line: String, last_print: Option<Instant> },
}

impl Progress {
    /// `quiet`: nothing at all. Otherwise a bar on a terminal, lines elsewhere.
    pub fn new(quiet: bool, terminal: bool) -> Self {
        if quiet {
            return Progress::Quiet;
        }
        if !terminal {
            return Progress::Lines { last_line: String::new(), last_print: None };
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress::Bar(bar)
    }

    /// Shows the job as it is now.
    pub fn show(&mut self, j: &JobDetail) {
        let t = &j.tasks;
        let done = t.succeeded + t.failed + t.cancelled;
        let finished = j.state.is_terminal();
        let mut detail = format!("{} running, {} failed", t.running + t.assigned, t.failed);
        if let Some(u) = &j.unschedulable {
            detail.push_str(&format!("; cannot run: {u}"));
        }
        match self {
            Progress::Quiet => {}
            Progress::Bar(bar) => {
                bar.set_length(t.total);
                bar.set_position(done);
                bar.set_prefix(format!("job {} {}", j.id, j.state));
                bar.set_message(detail);
                if finished {
                    bar.finish();
                }
            }
            Progress::Lines { last_line, last_print } => {
                let line = format!("job {}: {} — {done}/{} done ({detail})", j.id, j.state, t.total);
                let due = last_print.is_none_or(|at| at.elapsed() >= Duration::from_secs(2));
                if finished || (line != *last_line && due) {
                    eprintln!("{line}");
                    *last_line = line;
                    *last_print = Some(Instant::now());
                }
            }
        }
    }
}
