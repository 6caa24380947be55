//! The jobs the agent queues in systemd and waits for: when a start or a stop is over, and
//! whether a start failed. Pure: no IO.
//!
//! A unit's published job state moves only when systemd has finished the job (`launched` once a
//! start job is over, `loaded` once a stop job is over), so a blocking `fleetctl start` returns
//! when the unit runs, not when its start was queued.

use std::time::{Duration, Instant};

use crate::systemd::ServiceRun;

/// How long a service must stay active after its start job finished, when that job finishes as
/// soon as the service's process is forked (`Type=simple`, `exec`, `idle`). systemd reports such
/// a start as done even if the process fails at once (a missing binary, `ExecStart=/bin/false`);
/// waiting this long tells those apart. Seen here: such a process fails 0.5 to 8 ms after its
/// start job finished, on a loaded 2-core machine.
pub const START_SETTLE: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Start,
    Stop,
}

/// A job the agent queued and waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub kind: JobKind,
    /// systemd's object path of the job.
    pub path: String,
    /// systemd's result (`done`, `failed`, `dependency`, ...), once its `JobRemoved` signal
    /// arrived.
    pub result: Option<String>,
    /// For a start job that finished: until when the unit must stay active ([`START_SETTLE`]).
    pub settle_until: Option<Instant>,
    /// When it was queued.
    pub queued: Instant,
}

/// How long the states a unit passes through while its job runs (`activating`, a service
/// active but settling, `deactivating`) are kept from etcd: a job that ends sooner publishes
/// its outcome only. A start usually takes milliseconds, and publishing each step took two
/// or three writes per unit where one tells what a user waits for (fleet polled systemd's
/// states once a second, so its users never relied on seeing those steps sooner).
pub const PUBLISH_HOLD: Duration = Duration::from_secs(1);

impl Job {
    pub fn new(kind: JobKind, path: String, queued: Instant) -> Job {
        Job {
            kind,
            path,
            result: None,
            settle_until: None,
            queued,
        }
    }

    /// Until when the states its unit passes through are held back ([`PUBLISH_HOLD`]).
    pub fn hold_until(&self) -> Instant {
        self.queued + PUBLISH_HOLD
    }

    /// Whether systemd is done with the job, given the job the unit has in a read of systemd's
    /// states: only that read says so, never the `JobRemoved` signal alone, which may arrive
    /// after a read made while the job still ran (and publishing that read with the job's end
    /// would publish a stale state). systemd sends `JobRemoved` before it answers a later
    /// call, so once a read shows the job gone its result has arrived, unless the signal was
    /// lost (then the state tells).
    pub fn finished(&self, current_job: Option<&str>) -> bool {
        current_job != Some(self.path.as_str())
    }

    /// Whether the job ended without doing what it was for. `None` (no signal seen) counts as
    /// done: the unit's state then tells.
    pub fn failed(&self) -> bool {
        self.result.as_deref().is_some_and(|r| r != "done")
    }
}

/// Whether a service of this `Type=` counts as started as soon as its process is forked, so
/// that only staying active for [`START_SETTLE`] tells that it really started.
pub fn settles(service_type: &str) -> bool {
    matches!(service_type, "simple" | "exec" | "idle")
}

/// Whether a unit in this active state runs (for a start that succeeded).
pub fn is_active(active: &str) -> bool {
    matches!(active, "active" | "reloading" | "refreshing")
}

/// Why a finished start failed, or `None` when it succeeded.
///
/// `active`/`sub` are the unit's states now; `run` is the service's last run, read when the
/// unit is not active (`None` for a unit that is not a service, or that is active). A service
/// that ran and exited successfully (a oneshot) started fine.
pub fn start_failure(
    job: &Job,
    active: &str,
    sub: &str,
    run: Option<&ServiceRun>,
) -> Option<String> {
    let unit_failed = match run {
        Some(run) => run.result != "success",
        None => active == "failed",
    };
    if !job.failed() && !unit_failed {
        return None;
    }
    let mut parts = Vec::new();
    if job.failed() {
        parts.push(format!(
            "start job {}",
            job.result.as_deref().unwrap_or_default()
        ));
    }
    parts.push(format!("{active}/{sub}"));
    if let Some(run) = run {
        if run.result != "success" {
            parts.push(format!("result {}", run.result));
        }
        match run.code {
            1 => parts.push(format!("main process exited with status {}", run.status)),
            2 => parts.push(format!("main process killed by signal {}", run.status)),
            3 => parts.push(format!("main process dumped core (signal {})", run.status)),
            _ => {}
        }
    }
    Some(parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(result: Option<&str>) -> Job {
        Job {
            kind: JobKind::Start,
            path: "/org/freedesktop/systemd1/job/7".into(),
            result: result.map(str::to_string),
            settle_until: None,
            queued: Instant::now(),
        }
    }

    fn run(result: &str, code: i32, status: i32) -> ServiceRun {
        ServiceRun {
            result: result.into(),
            code,
            status,
        }
    }

    #[test]
    fn a_job_is_finished_when_a_read_shows_the_unit_no_longer_has_it() {
        let path = "/org/freedesktop/systemd1/job/7";
        assert!(!job(None).finished(Some(path)));
        // The signal came after a read that still showed the job: that read is stale.
        assert!(!job(Some("failed")).finished(Some(path)));
        assert!(job(None).finished(None));
        assert!(job(Some("done")).finished(None));
        assert!(job(None).finished(Some("/org/freedesktop/systemd1/job/8")));
    }

    #[test]
    fn only_services_started_at_fork_settle() {
        for t in ["simple", "exec", "idle"] {
            assert!(settles(t), "{t}");
        }
        for t in ["oneshot", "forking", "notify", "dbus", "notify-reload"] {
            assert!(!settles(t), "{t}");
        }
    }

    /// What, the job, the unit's active and sub states, the service's run, the failure.
    type Case = (
        &'static str,
        Job,
        &'static str,
        &'static str,
        Option<ServiceRun>,
        Option<&'static str>,
    );

    #[test]
    fn start_outcomes() {
        let cases: Vec<Case> = vec![
            (
                "running service",
                job(Some("done")),
                "active",
                "running",
                None,
                None,
            ),
            (
                "a timer or a socket",
                job(Some("done")),
                "active",
                "waiting",
                None,
                None,
            ),
            (
                "oneshot that ran and exited 0",
                job(Some("done")),
                "inactive",
                "dead",
                Some(run("success", 1, 0)),
                None,
            ),
            (
                "simple service whose binary is missing",
                job(Some("done")),
                "failed",
                "failed",
                Some(run("exit-code", 1, 203)),
                Some("failed/failed, result exit-code, main process exited with status 203"),
            ),
            (
                "oneshot /bin/false",
                job(Some("failed")),
                "failed",
                "failed",
                Some(run("exit-code", 1, 1)),
                Some("start job failed, failed/failed, result exit-code, main process exited with status 1"),
            ),
            (
                "restarting after a crash",
                job(Some("done")),
                "activating",
                "auto-restart",
                Some(run("core-dump", 3, 11)),
                Some("activating/auto-restart, result core-dump, main process dumped core (signal 11)"),
            ),
            (
                "a dependency failed",
                job(Some("dependency")),
                "inactive",
                "dead",
                Some(run("success", 0, 0)),
                Some("start job dependency, inactive/dead"),
            ),
            (
                "a mount that failed",
                job(Some("failed")),
                "failed",
                "failed",
                None,
                Some("start job failed, failed/failed"),
            ),
            (
                "signal missed, the state tells",
                job(None),
                "failed",
                "failed",
                None,
                Some("failed/failed"),
            ),
            (
                "killed",
                job(Some("done")),
                "failed",
                "failed",
                Some(run("signal", 2, 9)),
                Some("failed/failed, result signal, main process killed by signal 9"),
            ),
        ];
        for (what, j, active, sub, r, want) in cases {
            assert_eq!(
                start_failure(&j, active, sub, r.as_ref()).as_deref(),
                want,
                "{what}"
            );
        }
    }
}
