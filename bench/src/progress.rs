//! Progress of the main job (`nvkv-bench run`) through `indicatif`: one bar for the whole job, its steps
//! known from the plan (the host's CPU-path runs, then per boot: the boot itself and every measurement of
//! [`crate::plan::Plan::steps`]), with the elapsed and the estimated remaining time.
//!
//! On a terminal the bar redraws in place; when stderr is not a terminal (CI, a log file) each step prints
//! one plain line with the same figures instead.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// The whole job's progress. Cloning shares the bar (the VM's console callback holds a clone).
#[derive(Debug, Clone)]
pub struct JobProgress {
    bar: ProgressBar,
    plain: bool,
}

/// Where a boot's steps sit in the job: the steps before the first boot (`before`), then each boot as one
/// step for booting plus `per_boot` measurement steps.
#[derive(Debug, Clone, Copy)]
pub struct JobLayout {
    pub before: u64,
    pub boots: u64,
    pub per_boot: u64,
}

impl JobLayout {
    /// Steps of the whole job.
    pub fn total(&self) -> u64 {
        self.before + self.boots * (1 + self.per_boot)
    }
    /// Position when boot `boot` (from 0) starts booting.
    pub fn boot_start(&self, boot: u64) -> u64 {
        self.before + boot * (1 + self.per_boot)
    }
    /// Position when the guest announces its step `step` (from 1; announced as it starts, so `step - 1`
    /// steps of this boot are done), kept inside the boot's own range.
    pub fn guest_step(&self, boot: u64, step: u64) -> u64 {
        self.boot_start(boot) + 1 + step.saturating_sub(1).min(self.per_boot)
    }
    /// Position when boot `boot` is over.
    pub fn boot_end(&self, boot: u64) -> u64 {
        self.boot_start(boot + 1)
    }
}

/// 75 s → "1m15s", 3725 s → "1h02m05s", 9 s → "9s".
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec:02}s"),
        (h, m, sec) => format!("{h}h{m:02}m{sec:02}s"),
    }
}

/// One plain progress line (what a non-terminal gets per step).
pub fn plain_line(
    pos: u64,
    len: u64,
    elapsed: Duration,
    eta: Option<Duration>,
    what: &str,
) -> String {
    let left = match eta {
        Some(d) => format!("~{} left", short_duration(d)),
        None => "remaining time not known yet".into(),
    };
    format!(
        "nvkv-bench: [{pos}/{len}] {} elapsed, {left}: {what}",
        short_duration(elapsed)
    )
}

impl JobProgress {
    /// A bar of `total` steps on stderr, or plain lines when stderr is not a terminal.
    pub fn new(total: u64) -> JobProgress {
        JobProgress::with_mode(total, !std::io::stderr().is_terminal())
    }

    /// `plain`: print lines instead of drawing (the bar still keeps the time and the estimate).
    pub fn with_mode(total: u64, plain: bool) -> JobProgress {
        let bar = if plain {
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden())
        } else {
            let style = ProgressStyle::with_template(
                "[{elapsed_precise}] {bar:32.cyan/blue} {pos}/{len} steps, ~{eta_precise} left · {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("#>-");
            let bar = ProgressBar::new(total).with_style(style);
            bar.enable_steady_tick(Duration::from_secs(1));
            bar
        };
        JobProgress { bar, plain }
    }

    /// Moves to step `pos` of the job, doing `what`.
    pub fn at(&self, pos: u64, what: &str) {
        self.bar.set_position(pos);
        self.bar.set_message(what.to_string());
        if self.plain {
            let len = self.bar.length().unwrap_or(pos);
            let eta = (pos > 0).then(|| self.bar.eta());
            eprintln!("{}", plain_line(pos, len, self.bar.elapsed(), eta, what));
        }
    }

    /// Prints a line without tearing the bar.
    pub fn println(&self, line: &str) {
        if self.plain {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// The job's time so far.
    pub fn elapsed(&self) -> Duration {
        self.bar.elapsed()
    }

    /// Ends the bar and says how long the whole job took.
    pub fn finish(&self) {
        let len = self.bar.length().unwrap_or(0);
        self.bar.set_position(len);
        let line = format!(
            "nvkv-bench: the job took {} ({len} steps)",
            short_duration(self.bar.elapsed())
        );
        self.bar.finish_and_clear();
        eprintln!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_places_boots_and_guest_steps() {
        let l = JobLayout {
            before: 1,
            boots: 3,
            per_boot: 10,
        };
        assert_eq!(l.total(), 1 + 3 * 11);
        assert_eq!(l.boot_start(0), 1);
        assert_eq!(l.guest_step(0, 1), 2);
        assert_eq!(l.guest_step(1, 10), 12 + 1 + 9);
        // A guest that counts past its plan stays inside its boot.
        assert_eq!(l.guest_step(0, 99), l.boot_end(0));
        assert_eq!(l.boot_end(2), l.total());
    }

    #[test]
    fn plain_lines_say_elapsed_and_remaining() {
        let s = plain_line(
            3,
            34,
            Duration::from_secs(75),
            Some(Duration::from_secs(600)),
            "boot 0 round 0: nvkv randread 4K QD1",
        );
        assert_eq!(
            s,
            "nvkv-bench: [3/34] 1m15s elapsed, ~10m00s left: boot 0 round 0: nvkv randread 4K QD1"
        );
        assert_eq!(short_duration(Duration::from_secs(3725)), "1h02m05s");
        assert_eq!(short_duration(Duration::from_secs(9)), "9s");
        assert!(plain_line(0, 34, Duration::ZERO, None, "x").contains("not known yet"));
    }

    #[test]
    fn a_plain_job_keeps_position_and_time() {
        let p = JobProgress::with_mode(5, true);
        p.at(2, "step");
        assert_eq!(p.bar.position(), 2);
        p.finish();
        assert!(p.bar.is_finished());
    }
}
