//! Commands on many units: how many requests are in flight at once, when a listing of the
//! cluster replaces asking for each unit, and the progress bar on a terminal.

use std::fmt::Display;
use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Requests in flight at once: enough to hide the round trips of a few thousand units, few
/// enough that one fleetctl takes a small share of fleetd's connections (256 per address).
pub const IN_FLIGHT: usize = 32;

/// Beyond this many units, a command reads the cluster's units with one listing rather than
/// one request each, and draws a progress bar on a terminal.
pub const MANY: usize = 20;

/// A progress bar on stderr, drawn only for more than [`MANY`] units and only when stderr is
/// a terminal: nothing at all on a pipe or in a file. Lines printed while it is drawn go
/// through [`Progress::out`] and [`Progress::err`], which lift the bar out of their way.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar for `units` units, counting what is done in its first phase, `what` (say
    /// "submitted").
    pub fn new(units: usize, what: &'static str) -> Progress {
        if units <= MANY || !std::io::stderr().is_terminal() {
            return Progress::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(units as u64), ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("{msg:>9} {pos}/{len} [{wide_bar}] {elapsed}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what);
        Progress { bar: Some(bar) }
    }

    /// No bar: lines are printed as they come.
    pub fn hidden() -> Progress {
        Progress { bar: None }
    }

    /// Starts counting another phase (say "started") over `units` units.
    pub fn phase(&self, what: &'static str, units: usize) {
        if let Some(bar) = &self.bar {
            bar.set_length(units as u64);
            bar.set_position(0);
            bar.set_message(what);
        }
    }

    /// One more unit done in this phase.
    pub fn inc(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    /// Prints a line on stdout.
    pub fn out(&self, line: impl Display) {
        self.suspended(|| println!("{line}"));
    }

    /// Prints a line on stderr.
    pub fn err(&self, line: impl Display) {
        self.suspended(|| eprintln!("{line}"));
    }

    fn suspended(&self, print: impl FnOnce()) {
        match &self.bar {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_bar_for_few_units() {
        assert!(Progress::new(MANY, "submitted").bar.is_none());
        assert!(Progress::hidden().bar.is_none());
    }
}
