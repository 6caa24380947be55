//! A simulated systemd: an in-memory unit state machine that the real agent drives through
//! [`UnitManager`], as it drives the real systemd over D-Bus. Nothing runs: a "started" unit
//! is a line in a map.
//!
//! It answers the agent the way systemd does, so that the agent's loop runs its real course:
//! `start` and `stop` return a job's object path at once and the job ends `state_delay` later;
//! the job's [`Signal::JobRemoved`] and the unit's [`Signal::Changed`] are sent before the
//! state that shows the job gone can be read (systemd sends `JobRemoved` before it answers a
//! later call). States: linked → `loaded`/`inactive`/`dead`; start → `activating`/`start`,
//! then `active`/`running`; stop → `deactivating`/`stop`, then `inactive`/`dead`; unlinked →
//! `not-found` (once stopped). A unit file with `LinkFails=true` in an `[X-Simulation]` section
//! cannot be linked. A unit file with `StartFails=true` in an `[X-Simulation]`
//! section fails every start (`failed`/`failed`, job result `failed`, main process exited with
//! status 1), so that failure paths can be exercised; [`SimulatedSystemd::exit`] ends a
//! running unit's main process as a crash would.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_agent::systemd::{unit_object_path, ServiceRun};
use fleet_agent::{Signal, SystemdError, SystemdState, UnitManager};
use fleet_registry::MachineId;
use fleet_units::UnitFile;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::Running;

/// The section and key that make a unit fail to start in the simulation.
pub const FAIL_SECTION: &str = "X-Simulation";
pub const FAIL_KEY: &str = "StartFails";
/// The key (in [`FAIL_SECTION`]) that makes linking a unit file fail in the simulation, as a
/// file systemd cannot take: linked with others in one call, it fails the whole call.
pub const LINK_FAIL_KEY: &str = "LinkFails";

/// One hollow machine's simulated systemd. Cheap to clone (shared state); no thread or task of
/// its own, only a timer task per job in progress.
#[derive(Clone)]
pub struct SimulatedSystemd {
    inner: Arc<Inner>,
}

struct Inner {
    delay: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    units: BTreeMap<String, SimUnit>,
    next_job: u64,
    subscribers: Vec<mpsc::UnboundedSender<Signal>>,
    /// Told what starts and stops running here, until the machine is powered off.
    tally: Option<(MachineId, Running)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobKind {
    Start,
    Stop,
}

struct SimUnit {
    /// Whether its file is linked; an unlinked unit is forgotten once it no longer runs.
    linked: bool,
    active: &'static str,
    sub: &'static str,
    job: Option<(u64, JobKind)>,
    service_type: String,
    start_fails: bool,
    last_run: ServiceRun,
}

impl SimUnit {
    fn runs(&self) -> bool {
        matches!(self.active, "activating" | "active" | "deactivating")
    }
}

fn job_path(id: u64) -> String {
    format!("/org/freedesktop/systemd1/job/{id}")
}

fn refused(action: &'static str, unit: &str, reason: &'static str) -> SystemdError {
    SystemdError::Simulated {
        action,
        unit: unit.to_string(),
        reason,
    }
}

impl State {
    fn send(&mut self, signal: Signal) {
        self.subscribers.retain(|s| s.send(signal.clone()).is_ok());
    }

    fn changed(&mut self, unit: &str) {
        self.send(Signal::Changed(unit_object_path(unit)));
    }

    /// Tells the tally whether `unit` started or stopped running.
    fn tally(&self, unit: &str, ran: bool, runs: bool) {
        match (&self.tally, ran, runs) {
            (Some((machine, running)), false, true) => running.started(machine, unit),
            (Some((machine, running)), true, false) => running.stopped(machine, unit),
            _ => {}
        }
    }

    /// Queues a job on `unit`, replacing (cancelling) the one it has, as systemd's "replace"
    /// mode does.
    fn queue(&mut self, unit: &str, kind: JobKind) -> Option<u64> {
        self.next_job += 1;
        let id = self.next_job;
        let u = self.units.get_mut(unit)?;
        let previous = u.job.replace((id, kind));
        let ran = u.runs();
        match kind {
            JobKind::Start if !ran => (u.active, u.sub) = ("activating", "start"),
            JobKind::Stop if ran => (u.active, u.sub) = ("deactivating", "stop"),
            _ => {}
        }
        let runs = u.runs();
        self.tally(unit, ran, runs);
        if let Some((old, _)) = previous {
            self.send(Signal::JobRemoved {
                job: job_path(old),
                unit: unit.to_string(),
                result: "canceled".into(),
            });
        }
        self.changed(unit);
        Some(id)
    }

    /// Ends job `id` of `unit`, unless another job replaced it meanwhile.
    fn finish(&mut self, unit: &str, id: u64) {
        let Some(u) = self.units.get_mut(unit) else {
            return;
        };
        let Some((current, kind)) = u.job else {
            return;
        };
        if current != id {
            return;
        }
        u.job = None;
        let ran = u.runs();
        let result = match kind {
            JobKind::Start if u.start_fails => {
                (u.active, u.sub) = ("failed", "failed");
                u.last_run = ServiceRun {
                    result: "exit-code".into(),
                    code: 1,
                    status: 1,
                };
                "failed"
            }
            JobKind::Start => {
                (u.active, u.sub) = ("active", "running");
                u.last_run = ServiceRun {
                    result: "success".into(),
                    code: 0,
                    status: 0,
                };
                "done"
            }
            JobKind::Stop => {
                if u.active != "failed" {
                    (u.active, u.sub) = ("inactive", "dead");
                }
                "done"
            }
        };
        let runs = u.runs();
        if !u.linked && !runs {
            self.units.remove(unit);
        }
        self.tally(unit, ran, runs);
        // Before the lock is released: no read can show the job gone before its signal is sent.
        self.send(Signal::JobRemoved {
            job: job_path(id),
            unit: unit.to_string(),
            result: result.into(),
        });
        self.changed(unit);
    }
}

impl SimulatedSystemd {
    /// A simulated systemd whose jobs take `delay`.
    pub fn new(delay: Duration) -> SimulatedSystemd {
        SimulatedSystemd {
            inner: Arc::new(Inner {
                delay,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// This simulated systemd, on `machine`, telling `running` what starts and stops running.
    pub fn tallied(self, machine: MachineId, running: &Running) -> SimulatedSystemd {
        self.lock().tally = Some((machine, running.clone()));
        self
    }

    /// The machine is powered off: nothing runs here any more, for the tally, and nothing this
    /// systemd does afterwards is told to it.
    pub fn power_off(&self) {
        let mut state = self.lock();
        if let Some((machine, running)) = state.tally.take() {
            for (name, _) in state.units.iter().filter(|(_, u)| u.runs()) {
                running.stopped(&machine, name);
            }
        }
    }

    /// The main process of `unit` exits by itself with `status`, as a crash (not 0) or a
    /// service that ends (0) does: a running unit without a job becomes `failed`/`failed` or
    /// `inactive`/`dead`, with one change signal, as systemd sends. Whether it was running.
    pub fn exit(&self, unit: &str, status: i32) -> bool {
        let mut state = self.lock();
        let Some(u) = state.units.get_mut(unit) else {
            return false;
        };
        if u.job.is_some() || u.active != "active" {
            return false;
        }
        (u.active, u.sub) = if status == 0 {
            ("inactive", "dead")
        } else {
            ("failed", "failed")
        };
        u.last_run = ServiceRun {
            result: if status == 0 { "success" } else { "exit-code" }.into(),
            code: 1,
            status,
        };
        state.tally(unit, true, false);
        state.changed(unit);
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a job and its end; the job's path, or `None` if the unit is not loaded.
    fn queue_job(&self, unit: &str, kind: JobKind) -> Option<String> {
        let id = {
            let mut state = self.lock();
            let loaded = state.units.get(unit).is_some_and(|u| u.linked || u.runs());
            if !loaded {
                return None;
            }
            state.queue(unit, kind)?
        };
        let this = self.clone();
        let unit_name = unit.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(this.inner.delay).await;
            this.lock().finish(&unit_name, id);
        });
        Some(job_path(id))
    }

    /// Reads and loads the unit file at `path`; why not, if it cannot.
    fn link_file(&self, path: &str) -> Result<(), &'static str> {
        let name = std::path::Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or("no unit name in the path")?;
        let text = std::fs::read_to_string(path).map_err(|_| "cannot read the unit file")?;
        let file = UnitFile::parse(&text).map_err(|_| "invalid unit file")?;
        let yes = |key: &str| {
            file.values(FAIL_SECTION, key).last().is_some_and(|v| {
                matches!(v.to_ascii_lowercase().as_str(), "1" | "yes" | "true" | "on")
            })
        };
        if yes(LINK_FAIL_KEY) {
            return Err("the simulation refuses to link this unit file (LinkFails=true)");
        }
        let service_type = file
            .values("Service", "Type")
            .last()
            .unwrap_or("simple")
            .to_string();
        let start_fails = yes(FAIL_KEY);
        let mut state = self.lock();
        let unit = state.units.entry(name.to_string()).or_insert(SimUnit {
            linked: true,
            active: "inactive",
            sub: "dead",
            job: None,
            service_type: String::new(),
            start_fails: false,
            last_run: ServiceRun {
                result: "success".into(),
                code: 0,
                status: 0,
            },
        });
        unit.linked = true;
        unit.service_type = service_type;
        unit.start_fails = start_fails;
        state.changed(name);
        Ok(())
    }

    fn unlink_unit(&self, unit: &str) {
        let mut state = self.lock();
        let Some(u) = state.units.get_mut(unit) else {
            return;
        };
        u.linked = false;
        if !u.runs() && u.job.is_none() {
            state.units.remove(unit);
        }
        state.changed(unit);
    }

    fn read_states(&self, units: &[&str]) -> BTreeMap<String, SystemdState> {
        let state = self.lock();
        units
            .iter()
            .map(|name| {
                let s = match state.units.get(*name) {
                    Some(u) => SystemdState {
                        load: "loaded".into(),
                        active: u.active.into(),
                        sub: u.sub.into(),
                        job: u.job.map(|(id, _)| job_path(id)),
                    },
                    None => SystemdState {
                        load: "not-found".into(),
                        active: "inactive".into(),
                        sub: "dead".into(),
                        job: None,
                    },
                };
                (name.to_string(), s)
            })
            .collect()
    }

    fn unit_info<T>(&self, unit: &str, read: impl FnOnce(&SimUnit) -> T) -> Option<T> {
        self.lock().units.get(unit).map(read)
    }
}

impl UnitManager for SimulatedSystemd {
    fn start(&self, unit: &str) -> impl Future<Output = Result<String, SystemdError>> + Send {
        let job = self.queue_job(unit, JobKind::Start);
        std::future::ready(job.ok_or_else(|| refused("start", unit, "unit not loaded")))
    }

    fn stop(&self, unit: &str) -> impl Future<Output = Result<String, SystemdError>> + Send {
        let job = self.queue_job(unit, JobKind::Stop);
        std::future::ready(job.ok_or_else(|| refused("stop", unit, "unit not loaded")))
    }

    fn service_type(
        &self,
        unit: &str,
    ) -> impl Future<Output = Result<String, SystemdError>> + Send {
        let found = self.unit_info(unit, |u| u.service_type.clone());
        std::future::ready(found.ok_or_else(|| refused("inspect", unit, "unit not loaded")))
    }

    fn service_run(
        &self,
        unit: &str,
    ) -> impl Future<Output = Result<ServiceRun, SystemdError>> + Send {
        let found = self.unit_info(unit, |u| u.last_run.clone());
        std::future::ready(found.ok_or_else(|| refused("inspect", unit, "unit not loaded")))
    }

    fn link(&self, paths: &[&str]) -> impl Future<Output = Result<(), SystemdError>> + Send {
        // As systemd: one file that cannot be linked fails the whole call.
        let failed = paths
            .iter()
            .find_map(|path| self.link_file(path).err().map(|reason| (*path, reason)));
        std::future::ready(match failed {
            Some((path, reason)) => Err(refused("link", path, reason)),
            None => Ok(()),
        })
    }

    fn enable(&self, _paths: &[&str]) -> impl Future<Output = Result<(), SystemdError>> + Send {
        std::future::ready(Ok(()))
    }

    fn unlink(&self, units: &[&str]) -> impl Future<Output = Result<(), SystemdError>> + Send {
        for unit in units {
            self.unlink_unit(unit);
        }
        std::future::ready(Ok(()))
    }

    fn daemon_reload(&self) -> impl Future<Output = Result<(), SystemdError>> + Send {
        // Files are read when linked.
        std::future::ready(Ok(()))
    }

    fn states(
        &self,
        units: &[&str],
    ) -> impl Future<Output = Result<BTreeMap<String, SystemdState>, SystemdError>> + Send {
        std::future::ready(Ok(self.read_states(units)))
    }

    fn changes(
        &self,
    ) -> impl Future<Output = Result<BoxStream<'static, Signal>, SystemdError>> + Send {
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.lock().subscribers.push(tx);
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed();
        std::future::ready(Ok(stream))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn unit_file(dir: &std::path::Path, name: &str, text: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write unit file");
        path.to_string_lossy().into_owned()
    }

    fn state(systemd: &SimulatedSystemd, unit: &str) -> (String, String, String, bool) {
        let s = systemd.read_states(&[unit]).remove(unit).expect("a state");
        (s.load, s.active, s.sub, s.job.is_some())
    }

    fn strs(s: (&str, &str, &str, bool)) -> (String, String, String, bool) {
        (s.0.into(), s.1.into(), s.2.into(), s.3)
    }

    async fn next_job_removed(signals: &mut BoxStream<'static, Signal>) -> (String, String) {
        loop {
            match signals.next().await.expect("signals go on") {
                Signal::JobRemoved { job, result, .. } => return (job, result),
                Signal::Changed(_) => {}
            }
        }
    }

    #[tokio::test]
    async fn a_unit_goes_through_load_start_stop_and_unload() {
        let dir = std::env::temp_dir().join(format!("fleet-sim-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let machine = MachineId::parse("f1ee7000000000000000000000000001").expect("machine id");
        let running = crate::Running::default();
        let systemd =
            SimulatedSystemd::new(Duration::from_millis(20)).tallied(machine.clone(), &running);
        let mut signals = systemd.changes().await.expect("signals");
        let name = "hello.service";
        assert_eq!(
            state(&systemd, name),
            strs(("not-found", "inactive", "dead", false))
        );
        assert!(
            systemd.start(name).await.is_err(),
            "an unknown unit cannot start"
        );

        let path = unit_file(&dir, name, "[Service]\nExecStart=/bin/true\n");
        systemd.link(&[path.as_str()]).await.expect("link");
        assert_eq!(
            state(&systemd, name),
            strs(("loaded", "inactive", "dead", false))
        );
        assert_eq!(systemd.service_type(name).await.expect("type"), "simple");

        let job = systemd.start(name).await.expect("start");
        assert_eq!(
            state(&systemd, name),
            strs(("loaded", "activating", "start", true))
        );
        assert_eq!(
            running.units(),
            BTreeMap::from([(name.to_string(), vec![machine.clone()])])
        );
        assert_eq!(next_job_removed(&mut signals).await, (job, "done".into()));
        assert_eq!(
            state(&systemd, name),
            strs(("loaded", "active", "running", false))
        );

        let job = systemd.stop(name).await.expect("stop");
        assert_eq!(
            state(&systemd, name),
            strs(("loaded", "deactivating", "stop", true))
        );
        assert_eq!(next_job_removed(&mut signals).await, (job, "done".into()));
        assert_eq!(
            state(&systemd, name),
            strs(("loaded", "inactive", "dead", false))
        );
        assert!(running.units().is_empty());

        systemd.unlink(&[name]).await.expect("unlink");
        assert_eq!(
            state(&systemd, name),
            strs(("not-found", "inactive", "dead", false))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_unit_marked_to_fail_fails_its_start_and_a_stop_cancels_a_start() {
        let dir = std::env::temp_dir().join(format!("fleet-sim-fail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let systemd = SimulatedSystemd::new(Duration::from_millis(20));
        let mut signals = systemd.changes().await.expect("signals");
        let failing = unit_file(
            &dir,
            "bad.service",
            "[Service]\nExecStart=/bin/true\n\n[X-Simulation]\nStartFails=true\n",
        );
        systemd.link(&[failing.as_str()]).await.expect("link");
        let job = systemd.start("bad.service").await.expect("start");
        assert_eq!(next_job_removed(&mut signals).await, (job, "failed".into()));
        assert_eq!(
            state(&systemd, "bad.service"),
            strs(("loaded", "failed", "failed", false))
        );
        let run = systemd.service_run("bad.service").await.expect("run");
        assert_eq!(
            (run.result.as_str(), run.code, run.status),
            ("exit-code", 1, 1)
        );

        let good = unit_file(&dir, "good.service", "[Service]\nExecStart=/bin/true\n");
        systemd.link(&[good.as_str()]).await.expect("link");
        let start = systemd.start("good.service").await.expect("start");
        let stop = systemd.stop("good.service").await.expect("stop");
        assert_eq!(
            next_job_removed(&mut signals).await,
            (start, "canceled".into())
        );
        assert_eq!(next_job_removed(&mut signals).await, (stop, "done".into()));
        assert_eq!(
            state(&systemd, "good.service"),
            strs(("loaded", "inactive", "dead", false))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn the_tally_sees_every_overlap_and_forgets_a_machine_powered_off() {
        let dir = std::env::temp_dir().join(format!("fleet-sim-tally-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let running = Running::default();
        let (a, b) = (crate::machine_id(0, 1), crate::machine_id(0, 2));
        let on_a = SimulatedSystemd::new(Duration::from_millis(20)).tallied(a.clone(), &running);
        let on_b = SimulatedSystemd::new(Duration::from_millis(20)).tallied(b.clone(), &running);
        let path = unit_file(&dir, "x.service", "[Service]\nExecStart=/bin/true\n");
        for systemd in [&on_a, &on_b] {
            systemd.link(&[path.as_str()]).await.expect("link");
        }
        let mut signals_a = on_a.changes().await.expect("signals");
        let mut signals_b = on_b.changes().await.expect("signals");

        // Runs on a, then stops there, then runs on b: never two at once.
        on_a.start("x.service").await.expect("start");
        assert_eq!(
            running.units(),
            BTreeMap::from([("x.service".into(), vec![a.clone()])])
        );
        next_job_removed(&mut signals_a).await;
        on_a.stop("x.service").await.expect("stop");
        // Still deactivating: it runs until its stop job ends.
        assert_eq!(running.units().len(), 1);
        next_job_removed(&mut signals_a).await;
        assert!(running.units().is_empty());
        on_b.start("x.service").await.expect("start");
        next_job_removed(&mut signals_b).await;
        assert!(running.double_runs().is_empty());

        // Started on a while it runs on b: seen at once, and kept once a stops again.
        on_a.start("x.service").await.expect("start");
        on_a.stop("x.service").await.expect("stop");
        next_job_removed(&mut signals_a).await;
        next_job_removed(&mut signals_a).await;
        assert_eq!(
            running.double_runs(),
            BTreeMap::from([("x.service".into(), BTreeSet::from([a.clone(), b.clone()]))])
        );
        assert_eq!(
            running.units(),
            BTreeMap::from([("x.service".into(), vec![b.clone()])])
        );

        // Powered off: nothing runs on b any more, and what b's systemd does next is not told.
        on_b.power_off();
        assert!(running.units().is_empty());
        let seen = running.transitions();
        on_b.stop("x.service").await.expect("stop");
        next_job_removed(&mut signals_b).await;
        assert_eq!(running.transitions(), seen);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
