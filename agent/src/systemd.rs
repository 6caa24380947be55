//! The local systemd, over D-Bus. The only module of the project that talks to systemd.
//!
//! [`UnitManager`] is what the agent needs of systemd; [`Systemd`] is the real one. The other
//! implementation is `fleet-sim`'s simulated systemd (hollow machines), which is never used
//! outside the simulation.

use std::collections::BTreeMap;
use std::future::Future;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use zbus::message::Type as MessageType;
use zbus::zvariant::OwnedObjectPath;
use zbus::{Connection, MatchRule, MessageStream};

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn link_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<(String, String, String)>)>;
    fn disable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;
    fn reload(&self) -> zbus::Result<()>;
    fn subscribe(&self) -> zbus::Result<()>;
    #[allow(clippy::type_complexity)]
    fn list_units_by_names(
        &self,
        names: &[&str],
    ) -> zbus::Result<
        Vec<(
            String,
            String,
            String,
            String,
            String,
            String,
            OwnedObjectPath,
            u32,
            String,
            OwnedObjectPath,
        )>,
    >;
}

/// The parts of systemd's `org.freedesktop.systemd1.Service` interface the agent reads to tell
/// how a start ended.
#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
trait Service {
    #[zbus(property, name = "Type")]
    fn service_type(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn result(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn exec_main_code(&self) -> zbus::Result<i32>;
    #[zbus(property)]
    fn exec_main_status(&self) -> zbus::Result<i32>;
}

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("cannot reach systemd over D-Bus: {0}")]
    Connect(#[source] zbus::Error),
    #[error("systemd refused to {action} {unit}: {source}")]
    Call {
        action: &'static str,
        unit: String,
        #[source]
        source: zbus::Error,
    },
    /// A refusal of `fleet-sim`'s simulated systemd (never the real one's).
    #[error("the simulated systemd refused to {action} {unit}: {reason}")]
    Simulated {
        action: &'static str,
        unit: String,
        reason: &'static str,
    },
}

/// What the agent asks of systemd: jobs, unit files, states and signals. Implemented by
/// [`Systemd`] (D-Bus), and by `fleet-sim`'s simulated systemd for hollow machines, which
/// must behave the same towards the agent: a job's object path from `start`/`stop`, its
/// [`Signal::JobRemoved`] sent before the state that shows it gone can be read, and a
/// [`Signal::Changed`] with the unit's [`unit_object_path`] when a unit's state changes.
pub trait UnitManager: Send + Sync + 'static {
    /// Queues a start job; returns the job's object path.
    fn start(&self, unit: &str) -> impl Future<Output = Result<String, SystemdError>> + Send;
    /// Queues a stop job; returns the job's object path.
    fn stop(&self, unit: &str) -> impl Future<Output = Result<String, SystemdError>> + Send;
    /// A service's `Type=` as systemd applies it.
    fn service_type(&self, unit: &str)
        -> impl Future<Output = Result<String, SystemdError>> + Send;
    /// How a service's last run went.
    fn service_run(
        &self,
        unit: &str,
    ) -> impl Future<Output = Result<ServiceRun, SystemdError>> + Send;
    /// Links the unit files at `paths` into systemd's runtime search path, in one call.
    fn link(&self, paths: &[&str]) -> impl Future<Output = Result<(), SystemdError>> + Send;
    /// Enables the unit files at `paths` at runtime, in one call.
    fn enable(&self, paths: &[&str]) -> impl Future<Output = Result<(), SystemdError>> + Send;
    /// Removes the runtime links and enablement of units, in one call.
    fn unlink(&self, units: &[&str]) -> impl Future<Output = Result<(), SystemdError>> + Send;
    fn daemon_reload(&self) -> impl Future<Output = Result<(), SystemdError>> + Send;
    /// The states of many units in one call.
    fn states(
        &self,
        units: &[&str],
    ) -> impl Future<Output = Result<BTreeMap<String, SystemdState>, SystemdError>> + Send;
    /// A stream of the signals about units and jobs.
    fn changes(
        &self,
    ) -> impl Future<Output = Result<BoxStream<'static, Signal>, SystemdError>> + Send;
}

/// systemd's view of one unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemdState {
    pub load: String,
    pub active: String,
    pub sub: String,
    /// The object path of the unit's queued or running job, if it has one.
    pub job: Option<String>,
}

/// A signal from systemd, as far as the agent cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// Something about the object at this path changed (a unit's properties, for a unit's path).
    Changed(String),
    /// A job finished: `result` is systemd's (`done`, `failed`, `canceled`, `timeout`,
    /// `dependency`, `skipped`, ...).
    JobRemoved {
        job: String,
        unit: String,
        result: String,
    },
}

/// How a service's last run went, from its `Service` interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRun {
    /// systemd's `Result`: `success`, `exit-code`, `signal`, `core-dump`, `timeout`, ...
    pub result: String,
    /// `ExecMainCode`: how the main process ended (`CLD_EXITED` 1, `CLD_KILLED` 2,
    /// `CLD_DUMPED` 3; 0 while it runs or never ran).
    pub code: i32,
    /// `ExecMainStatus`: its exit status, or the signal that ended it.
    pub status: i32,
}

impl SystemdState {
    /// Whether the unit runs or is on its way to run.
    pub fn is_running(&self) -> bool {
        matches!(
            self.active.as_str(),
            "active" | "activating" | "reloading" | "refreshing"
        )
    }
}

/// A connection to the system's systemd.
#[derive(Clone)]
pub struct Systemd {
    connection: Connection,
    manager: ManagerProxy<'static>,
}

impl Systemd {
    pub async fn connect() -> Result<Systemd, SystemdError> {
        let connection = Connection::system().await.map_err(SystemdError::Connect)?;
        let manager = ManagerProxy::new(&connection)
            .await
            .map_err(SystemdError::Connect)?;
        // Without a subscriber systemd does not emit unit signals.
        manager.subscribe().await.map_err(SystemdError::Connect)?;
        Ok(Systemd {
            connection,
            manager,
        })
    }

    fn call_error(action: &'static str, unit: &str) -> impl FnOnce(zbus::Error) -> SystemdError {
        let unit = unit.to_string();
        move |source| SystemdError::Call {
            action,
            unit,
            source,
        }
    }

    /// Queues a start job; returns the job's object path. The job finishes later
    /// ([`Signal::JobRemoved`]).
    pub async fn start(&self, unit: &str) -> Result<String, SystemdError> {
        let job = self
            .manager
            .start_unit(unit, "replace")
            .await
            .map_err(Self::call_error("start", unit))?;
        Ok(job.as_str().to_string())
    }

    /// Queues a stop job; returns the job's object path.
    pub async fn stop(&self, unit: &str) -> Result<String, SystemdError> {
        let job = self
            .manager
            .stop_unit(unit, "replace")
            .await
            .map_err(Self::call_error("stop", unit))?;
        Ok(job.as_str().to_string())
    }

    async fn service(&self, unit: &str) -> Result<ServiceProxy<'static>, SystemdError> {
        ServiceProxy::builder(&self.connection)
            .path(unit_object_path(unit))
            .map_err(Self::call_error("inspect", unit))?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(Self::call_error("inspect", unit))
    }

    /// A service's `Type=` as systemd applies it (`simple`, `exec`, `forking`, `oneshot`,
    /// `dbus`, `notify`, `idle`).
    pub async fn service_type(&self, unit: &str) -> Result<String, SystemdError> {
        self.service(unit)
            .await?
            .service_type()
            .await
            .map_err(Self::call_error("inspect", unit))
    }

    /// How a service's last run went.
    pub async fn service_run(&self, unit: &str) -> Result<ServiceRun, SystemdError> {
        let service = self.service(unit).await?;
        let (result, code, status) = tokio::try_join!(
            service.result(),
            service.exec_main_code(),
            service.exec_main_status()
        )
        .map_err(Self::call_error("inspect", unit))?;
        Ok(ServiceRun {
            result,
            code,
            status,
        })
    }

    /// Links unit files into systemd's runtime search path. One call for many files: each
    /// call of systemd's unit file operations costs milliseconds whatever it carries.
    pub async fn link(&self, paths: &[&str]) -> Result<(), SystemdError> {
        self.manager
            .link_unit_files(paths, true, true)
            .await
            .map_err(Self::call_error("link", &Self::named(paths)))?;
        Ok(())
    }

    /// Enables units at runtime (for unit files with an `[Install]` section).
    pub async fn enable(&self, paths: &[&str]) -> Result<(), SystemdError> {
        self.manager
            .enable_unit_files(paths, true, true)
            .await
            .map_err(Self::call_error("enable", &Self::named(paths)))?;
        Ok(())
    }

    /// Removes the runtime links and enablement of units. One call for many: disabling costs
    /// systemd tens of milliseconds per call.
    pub async fn unlink(&self, units: &[&str]) -> Result<(), SystemdError> {
        self.manager
            .disable_unit_files(units, true)
            .await
            .map_err(Self::call_error("unlink", &Self::named(units)))?;
        Ok(())
    }

    /// The one unit a call was about, or how many.
    fn named(units: &[&str]) -> String {
        match units {
            [one] => one.to_string(),
            many => format!("{} units", many.len()),
        }
    }

    pub async fn daemon_reload(&self) -> Result<(), SystemdError> {
        self.manager
            .reload()
            .await
            .map_err(Self::call_error("reload", "the daemon"))
    }

    /// The states of many units in one call.
    pub async fn states(
        &self,
        units: &[&str],
    ) -> Result<BTreeMap<String, SystemdState>, SystemdError> {
        if units.is_empty() {
            return Ok(BTreeMap::new());
        }
        let listed = self
            .manager
            .list_units_by_names(units)
            .await
            .map_err(Self::call_error("list", "units"))?;
        Ok(listed
            .into_iter()
            .map(
                |(name, _desc, load, active, sub, _following, _path, job_id, _type, job_path)| {
                    let job = (job_id != 0).then(|| job_path.as_str().to_string());
                    (
                        name,
                        SystemdState {
                            load,
                            active,
                            sub,
                            job,
                        },
                    )
                },
            )
            .collect())
    }

    /// A stream of systemd's signals: [`Signal::JobRemoved`] when a job finishes, else the
    /// object path the signal is about (a unit's path when its properties change).
    pub async fn changes(
        &self,
    ) -> Result<impl futures_util::Stream<Item = Signal> + Unpin + Send + 'static, SystemdError>
    {
        let rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender("org.freedesktop.systemd1")
            .map_err(SystemdError::Connect)?
            .build();
        let stream = MessageStream::for_match_rule(rule, &self.connection, Some(4096))
            .await
            .map_err(SystemdError::Connect)?;
        Ok(stream.filter_map(|m| std::future::ready(m.ok().and_then(|m| signal(&m)))))
    }
}

/// The real systemd: [`Systemd`]'s own methods.
impl UnitManager for Systemd {
    fn start(&self, unit: &str) -> impl Future<Output = Result<String, SystemdError>> + Send {
        Systemd::start(self, unit)
    }

    fn stop(&self, unit: &str) -> impl Future<Output = Result<String, SystemdError>> + Send {
        Systemd::stop(self, unit)
    }

    fn service_type(
        &self,
        unit: &str,
    ) -> impl Future<Output = Result<String, SystemdError>> + Send {
        Systemd::service_type(self, unit)
    }

    fn service_run(
        &self,
        unit: &str,
    ) -> impl Future<Output = Result<ServiceRun, SystemdError>> + Send {
        Systemd::service_run(self, unit)
    }

    fn link(&self, paths: &[&str]) -> impl Future<Output = Result<(), SystemdError>> + Send {
        Systemd::link(self, paths)
    }

    fn enable(&self, paths: &[&str]) -> impl Future<Output = Result<(), SystemdError>> + Send {
        Systemd::enable(self, paths)
    }

    fn unlink(&self, units: &[&str]) -> impl Future<Output = Result<(), SystemdError>> + Send {
        Systemd::unlink(self, units)
    }

    fn daemon_reload(&self) -> impl Future<Output = Result<(), SystemdError>> + Send {
        Systemd::daemon_reload(self)
    }

    fn states(
        &self,
        units: &[&str],
    ) -> impl Future<Output = Result<BTreeMap<String, SystemdState>, SystemdError>> + Send {
        Systemd::states(self, units)
    }

    async fn changes(&self) -> Result<BoxStream<'static, Signal>, SystemdError> {
        Ok(Systemd::changes(self).await?.boxed())
    }
}

fn signal(message: &zbus::Message) -> Option<Signal> {
    let header = message.header();
    if header.member().is_some_and(|m| m.as_str() == "JobRemoved") {
        let (_id, job, unit, result): (u32, OwnedObjectPath, String, String) =
            message.body().deserialize().ok()?;
        return Some(Signal::JobRemoved {
            job: job.as_str().to_string(),
            unit,
            result,
        });
    }
    header
        .path()
        .map(|p| Signal::Changed(p.as_str().to_string()))
}

/// systemd's object path of a unit (`sd_bus_path_encode`), used to tell our units' signals apart.
pub fn unit_object_path(unit: &str) -> String {
    let mut out = String::from("/org/freedesktop/systemd1/unit/");
    for (i, b) in unit.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (b.is_ascii_digit() && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_paths_escape_like_systemd() {
        assert_eq!(
            unit_object_path("hello.service"),
            "/org/freedesktop/systemd1/unit/hello_2eservice"
        );
        assert_eq!(
            unit_object_path("foo@1-x.service"),
            "/org/freedesktop/systemd1/unit/foo_401_2dx_2eservice"
        );
        assert_eq!(
            unit_object_path("1a.service"),
            "/org/freedesktop/systemd1/unit/_31a_2eservice"
        );
    }
}
