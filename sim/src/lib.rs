//! Hollow machines: many simulated fleet machines in one process, for tests and benchmarks at
//! sizes no real cluster here reaches (as Kubernetes' kubemark "hollow nodes").
//!
//! Each [`HollowMachine`] is a real machine as far as etcd and the rest of fleet can tell: a
//! real [`Presence`] (its own lease, machine record, member record and reading in the real
//! etcd) and the real agent loop ([`Agent`]), which writes its unit files and publishes unit
//! states as fleetd's does. Only systemd is replaced, by a [`SimulatedSystemd`]: nothing runs. The
//! engine, the API and etcd are the real ones, run beside the simulation (the simulation runs
//! no engine).
//!
//! What differs from a real machine: hollow machines have no peer endpoint, so no `Witness`:
//! each fences alone when its lease may expire, and counts for no majority (no majority
//! protocol among them). Nor do they follow the members: once all have registered, each
//! records one reading of all of them, for the engine to count over when one is lost (see
//! `Simulation::record_reading`). The first [`SimConfig::followers`] of them do follow the
//! members as a fleetd does, to measure what that costs: their witness reaches no peer, so
//! with two members or more they still fence alone. A fleetd's engine asks the members over
//! their peer endpoints before it declares one dead, so beside mostly hollow machines it moves
//! no lost machine's units: an engine run beside a simulation has no witness. Their addresses
//! are in 10.255.0.0/16, never used for traffic.
//! A simulation must never stand in for systemd in a test that claims a real cluster.
//!
//! Cheap per machine: all machines share one tokio runtime and the etcd clients given, with no
//! thread of their own; each has the presence's tasks, the agent's task and a timer task per
//! job in progress.

pub mod systemd;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_agent::{Agent, AgentConfig, AgentError};
use fleet_registry::{
    Machine, MachineId, Presence, PresenceOptions, PresenceStatus, Registry, Renewal, Witness,
};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tokio::sync::watch;
use tracing::Instrument;

pub use systemd::SimulatedSystemd;

/// How to run a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// How many hollow machines.
    pub machines: u32,
    /// The index of the first machine: two simulations sharing an etcd use disjoint ranges.
    pub id_offset: u32,
    /// A number of this run, in every machine id (see [`machine_id`]).
    pub run: u32,
    /// The lease TTL of every machine (fleetd's `agent_ttl`).
    pub ttl: Duration,
    /// How long a simulated start or stop job takes.
    pub state_delay: Duration,
    /// Every machine's metadata.
    pub metadata: BTreeMap<String, String>,
    /// Where each machine's agent writes its unit files (`<state_dir>/<machine id>/units`).
    pub state_dir: PathBuf,
    /// The agent's full resync period.
    pub resync_interval: Duration,
    /// How many machines register at once.
    pub registering: usize,
    /// How many of the machines (the first ones) follow the members and record their readings
    /// as a fleetd does (`Presence` with a witness), through a witness that reaches no peer.
    /// Each keeps every member in memory: the process holds `followers` × `machines` records.
    pub followers: u32,
}

impl SimConfig {
    /// A simulation of `machines` machines under `state_dir`, with fleetd's defaults.
    pub fn new(machines: u32, state_dir: PathBuf) -> SimConfig {
        SimConfig {
            machines,
            id_offset: 0,
            run: 0,
            ttl: Duration::from_secs(10),
            state_delay: Duration::from_millis(50),
            metadata: BTreeMap::new(),
            state_dir,
            resync_interval: Duration::from_secs(60),
            registering: 64,
            followers: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot register simulated machine {machine}: {source}")]
    Register {
        machine: MachineId,
        #[source]
        source: fleet_registry::Error,
    },
    #[error("cannot start the agent of simulated machine {machine}: {source}")]
    Agent {
        machine: MachineId,
        #[source]
        source: AgentError,
    },
    #[error("cannot record the simulated machines' reading of the members: {0}")]
    Reading(#[source] fleet_registry::Error),
    #[error("no etcd client to run simulated machines with")]
    NoRegistry,
}

/// The id of hollow machine `index` of run `run`: the index first (fleetctl shows the first 8
/// characters), then zeros, then the run. Deterministic, so that a run can be found in etcd
/// and two simulations on one etcd differ by their index ranges or runs.
pub fn machine_id(run: u32, index: u32) -> MachineId {
    let id = format!("{index:08x}{:016x}{run:08x}", 0);
    MachineId::parse(&id).unwrap_or_else(|_| unreachable!("32 hex digits: {id}"))
}

/// The address hollow machine `index` claims: in 10.255.0.0/16, reserved here for simulated
/// machines and never used for traffic (repeats past 65,536 machines).
pub fn public_ip(index: u32) -> String {
    format!("10.255.{}.{}", (index >> 8) & 0xff, index & 0xff)
}

/// One simulated machine: a real presence and agent, a simulated systemd. Dropping it is
/// powering the machine off: its agent stops, its lease is no longer renewed, and its units
/// no longer run.
pub struct HollowMachine {
    id: MachineId,
    systemd: SimulatedSystemd,
    presence: Presence,
    agent: tokio::task::JoinHandle<()>,
    /// Whether it follows the members (and records its own readings of them).
    follows: bool,
}

impl Drop for HollowMachine {
    fn drop(&mut self) {
        // Before the presence goes (its status channel closing would wake the agent in a loop).
        self.agent.abort();
    }
}

impl HollowMachine {
    /// Registers hollow machine `index` and starts its agent; its simulated systemd tells
    /// `running` what starts and stops running on it.
    pub async fn start(
        registry: Registry,
        index: u32,
        config: &SimConfig,
        running: &Running,
    ) -> Result<HollowMachine, SimError> {
        let id = machine_id(config.run, index);
        let machine = Machine {
            id: id.clone(),
            public_ip: public_ip(index),
            metadata: config.metadata.clone(),
            version: format!("{}-simulated", env!("CARGO_PKG_VERSION")),
            // No peer endpoint: no witness, so this machine fences alone.
            peer_address: None,
        };
        let follows = index.saturating_sub(config.id_offset) < config.followers;
        let options = PresenceOptions {
            witness: follows.then(|| Arc::new(NoPeers) as Arc<dyn Witness>),
            ..PresenceOptions::default()
        };
        let presence = Presence::start_with(registry.clone(), machine, config.ttl, options)
            .await
            .map_err(|source| SimError::Register {
                machine: id.clone(),
                source,
            })?;
        let systemd = SimulatedSystemd::new(config.state_delay).tallied(id.clone(), running);
        let agent_config = AgentConfig {
            units_directory: config.state_dir.join(id.as_str()).join("units"),
            resync_interval: config.resync_interval,
        };
        let agent = Agent::with_manager(registry, id.clone(), agent_config, systemd.clone())
            .await
            .map_err(|source| SimError::Agent {
                machine: id.clone(),
                source,
            })?;
        let span = tracing::info_span!("simulated_machine", machine = %id);
        let agent = tokio::spawn(agent.run(presence.subscribe()).instrument(span));
        Ok(HollowMachine {
            id,
            systemd,
            presence,
            agent,
            follows,
        })
    }

    pub fn id(&self) -> &MachineId {
        &self.id
    }

    pub fn systemd(&self) -> &SimulatedSystemd {
        &self.systemd
    }

    /// The machine's presence status, as its agent sees it (an engine beside the simulation
    /// can campaign on this machine's lease).
    pub fn presence(&self) -> watch::Receiver<PresenceStatus> {
        self.presence.subscribe()
    }
}

/// The witness of a hollow machine that follows the members: it has no peer endpoint to ask
/// through, so no member answers it.
struct NoPeers;

impl Witness for NoPeers {
    fn since_renewal(
        &self,
        _members: Vec<Machine>,
        _timeout: Duration,
    ) -> BoxFuture<'static, Vec<Duration>> {
        Box::pin(async { Vec::new() })
    }

    fn renew_now(
        &self,
        _members: Vec<Machine>,
        _timeout: Duration,
    ) -> BoxFuture<'static, Vec<Renewal>> {
        Box::pin(async { Vec::new() })
    }
}

/// Which machines run each unit, kept by every simulated systemd as its units start and stop,
/// and every unit ever found running on more than one machine at once: a double-run checker
/// that sees every transition (a sampler could miss a short overlap) and costs nothing between
/// them. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Running {
    tally: Arc<Mutex<Tally>>,
}

#[derive(Default)]
struct Tally {
    /// The machines each unit runs on now (activating, active or deactivating).
    now: HashMap<String, Vec<MachineId>>,
    /// Every unit ever seen on more than one machine, with every machine it was seen on then.
    doubles: BTreeMap<String, BTreeSet<MachineId>>,
    /// How many times a unit started or stopped running on a machine.
    transitions: u64,
}

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `unit` began to run on `machine`.
    pub(crate) fn started(&self, machine: &MachineId, unit: &str) {
        let mut tally = self.lock();
        let Tally {
            now,
            doubles,
            transitions,
        } = &mut *tally;
        *transitions += 1;
        let on = now.entry(unit.to_string()).or_default();
        if !on.contains(machine) {
            on.push(machine.clone());
        }
        if on.len() > 1 {
            doubles
                .entry(unit.to_string())
                .or_default()
                .extend(on.iter().cloned());
        }
    }

    /// `unit` no longer runs on `machine`.
    pub(crate) fn stopped(&self, machine: &MachineId, unit: &str) {
        let mut tally = self.lock();
        tally.transitions += 1;
        if let Some(on) = tally.now.get_mut(unit) {
            on.retain(|m| m != machine);
            if on.is_empty() {
                tally.now.remove(unit);
            }
        }
    }

    /// Every unit that runs on some machine now, with the machines it runs on.
    pub fn units(&self) -> BTreeMap<String, Vec<MachineId>> {
        self.lock()
            .now
            .iter()
            .map(|(unit, on)| (unit.clone(), on.clone()))
            .collect()
    }

    /// Every unit that ever ran on more than one machine at once, with those machines.
    pub fn double_runs(&self) -> BTreeMap<String, BTreeSet<MachineId>> {
        self.lock().doubles.clone()
    }

    /// How many times, so far, a unit started or stopped running on a machine: how much the
    /// checker has seen.
    pub fn transitions(&self) -> u64 {
        self.lock().transitions
    }
}

/// Many hollow machines in one process.
pub struct Simulation {
    machines: BTreeMap<MachineId, HollowMachine>,
    running: Running,
}

impl Simulation {
    /// Registers `config.machines` hollow machines, `config.registering` at a time, using the
    /// etcd clients in `registries` in turn, and starts their agents.
    pub async fn start(
        registries: &[Registry],
        config: &SimConfig,
    ) -> Result<Simulation, SimError> {
        if registries.is_empty() {
            return Err(SimError::NoRegistry);
        }
        let first = config.id_offset;
        let last = first.saturating_add(config.machines);
        let running = Running::default();
        let started: Vec<Result<HollowMachine, SimError>> = futures_util::stream::iter(first..last)
            .map(|index| {
                let registry = registries[index as usize % registries.len()].clone();
                HollowMachine::start(registry, index, config, &running)
            })
            .buffer_unordered(config.registering.max(1))
            .collect()
            .await;
        let mut simulation = Simulation {
            machines: BTreeMap::new(),
            running,
        };
        for machine in started {
            let machine = machine?;
            simulation.machines.insert(machine.id.clone(), machine);
        }
        simulation
            .record_reading(&registries[0], config.registering)
            .await?;
        Ok(simulation)
    }

    /// Records as the reading (`readings/<id>`) of every machine that does not follow the
    /// members one reading of all of them, made now.
    ///
    /// Those machines do not follow the members (a machine does that only with a witness),
    /// so each would keep the reading made when it registered, in which the
    /// first machines saw few members or none: the engine, which counts a majority of the
    /// members a lost machine last read, would never find one for them. Safety is unchanged:
    /// without a witness a machine fences when its lease may expire, whatever the others see,
    /// so it has stopped its units before the engine's wait is over. A machine that follows
    /// the members records its own readings, of the members it counts over: a reading written
    /// here could name more members than it counts.
    async fn record_reading(&self, registry: &Registry, at_once: usize) -> Result<(), SimError> {
        let (revision, entries) = registry
            .cluster_members()
            .await
            .map_err(SimError::Reading)?;
        let seen_members = entries.len();
        let ours: Vec<fleet_registry::Member> = entries
            .into_iter()
            .filter(|e| {
                self.machines
                    .get(&e.member.machine.id)
                    .is_some_and(|m| !m.follows)
            })
            .map(|e| fleet_registry::Member {
                seen_revision: revision,
                seen_members,
                ..e.member
            })
            .collect();
        let recorded: Vec<_> = futures_util::stream::iter(&ours)
            .map(|member| registry.record_reading(member))
            .buffer_unordered(at_once.max(1))
            .collect()
            .await;
        for result in recorded {
            result.map_err(SimError::Reading)?;
        }
        Ok(())
    }

    /// The machines powered on, by id.
    pub fn machines(&self) -> impl Iterator<Item = &HollowMachine> {
        self.machines.values()
    }

    pub fn machine(&self, id: &MachineId) -> Option<&HollowMachine> {
        self.machines.get(id)
    }

    pub fn len(&self) -> usize {
        self.machines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.machines.is_empty()
    }

    /// Powers a machine off: its units stop running at once, its agent stops, and its lease
    /// expires within the TTL. Whether it was on.
    pub fn kill(&mut self, id: &MachineId) -> bool {
        match self.machines.remove(id) {
            Some(machine) => {
                machine.systemd.power_off();
                true
            }
            None => false,
        }
    }

    /// What runs where, and what ever ran twice at once.
    pub fn running(&self) -> Running {
        self.running.clone()
    }
}
