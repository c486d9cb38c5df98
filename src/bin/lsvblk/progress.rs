//! Progress of a long operation (compaction, key rotation): a bar on a
//! terminal, otherwise a log line at most every few seconds.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Least time between two log lines when stderr is not a terminal.
const LOG_INTERVAL: Duration = Duration::from_secs(2);

/// The bar: label, bar, bytes done of total, rate, time left.
const BAR_TEMPLATE: &str =
    "{msg} [{bar:40}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}";

/// A bar for the JSON progress values of compaction and re-encryption
/// (`bytes_moved` of `bytes_total`), drawn on the first value; silent when
/// the output is JSON.
pub struct BytesProgress {
    label: &'static str,
    quiet: bool,
    bar: Option<Progress>,
}

impl BytesProgress {
    /// A bar labelled `label`; none at all if `quiet`.
    pub fn new(label: &'static str, quiet: bool) -> Self {
        Self {
            label,
            quiet,
            bar: None,
        }
    }

    /// Shows one progress value.
    pub fn update(&mut self, value: &serde_json::Value) {
        if self.quiet {
            return;
        }
        let total = value["bytes_total"].as_u64().unwrap_or(0);
        let done = value["bytes_moved"].as_u64().unwrap_or(0);
        let label = self.label;
        self.bar
            .get_or_insert_with(|| Progress::new(label, total))
            .set(done);
    }

    /// Finishes the bar, if one was drawn.
    pub fn finish(self, message: &str) {
        if let Some(bar) = self.bar {
            bar.finish(message);
        }
    }
}

/// Reports how many of an operation's bytes are done.
pub struct Progress {
    label: String,
    total_bytes: u64,
    /// The bar, when stderr is a terminal.
    bar: Option<ProgressBar>,
    last_log: Option<Instant>,
}

impl Progress {
    /// Starts reporting `label`, an operation over `total_bytes` bytes.
    pub fn new(label: impl Into<String>, total_bytes: u64) -> Self {
        let label = label.into();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(BAR_TEMPLATE)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(label.clone());
            bar
        });
        Self {
            label,
            total_bytes,
            bar,
            last_log: None,
        }
    }

    /// Records that `done_bytes` of the total are done.
    pub fn set(&mut self, done_bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done_bytes);
            return;
        }
        if self.last_log.is_none_or(|at| at.elapsed() >= LOG_INTERVAL) {
            self.last_log = Some(Instant::now());
            tracing::info!(
                label = %self.label,
                done_bytes,
                total_bytes = self.total_bytes,
                percent = percent(done_bytes, self.total_bytes),
                "progress"
            );
        }
    }

    /// Ends the report with `message` (the bar stays on screen, completed).
    pub fn finish(self, message: &str) {
        match &self.bar {
            Some(bar) => bar.finish_with_message(format!("{}: {message}", self.label)),
            None => tracing::info!(label = %self.label, "{message}"),
        }
    }
}

/// `done` as a percentage of `total` (100 for an empty operation).
fn percent(done: u64, total: u64) -> u64 {
    if total == 0 {
        return 100;
    }
    u64::try_from(u128::from(done.min(total)) * 100 / u128::from(total)).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_is_clamped_and_total_zero_is_done() {
        assert_eq!(percent(0, 0), 100);
        assert_eq!(percent(1, 4), 25);
        assert_eq!(percent(9, 4), 100);
        assert_eq!(percent(u64::MAX - 1, u64::MAX), 99);
    }

    #[test]
    fn the_bar_template_parses() {
        ProgressStyle::with_template(BAR_TEMPLATE).unwrap();
    }

    #[test]
    fn reporting_without_a_terminal_does_not_panic() {
        let mut progress = Progress::new("compact", 10);
        for done in 0..=10 {
            progress.set(done);
        }
        progress.finish("done");
    }
}
