//! fleetctl's commands. Rendering is kept in pure functions (`render_*`) so that output can be
//! tested byte for byte.
//!
//! Commands that change units (`submit`, `load`, `start`, `stop`, `unload`, `destroy`) first
//! plan what each argument asks of the API ([`Step`]), reading the cluster once for all of
//! them, then send the requests [`IN_FLIGHT`] at a time and print what each step did in
//! argument order, stopping at the first failure as fleet did ([`Ctl::carry_out`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleet_client::schema::{Drain, Event, Machine, Unit, UnitHistory, UnitState};
use fleet_client::{Client, ClientError, EventQuery};
use fleet_units::{unit_name_from_arg, Requirements, UnitFile, UnitName};
use futures_util::{stream, StreamExt};
use tokio::time::Instant;

use crate::batch::{Progress, IN_FLIGHT, MANY};
use crate::{table, Block, Listing, Output};

/// fleet's wait between two checks of a unit's state; `--block-attempts` counts these.
const ATTEMPT: Duration = Duration::from_millis(500);
/// The shortest wait between two checks of the units' states: much shorter than fleet's. A
/// check that took longer (a listing of many units) is followed by a wait as long as itself.
const POLL: Duration = Duration::from_millis(20);

pub struct Ctl {
    pub(crate) client: Client,
    /// `--replace`: the command (submit, load or start) whose rules say which desired states
    /// allow replacing a unit whose local file differs.
    replace: Option<&'static str>,
    /// Units replaced by this invocation, with the hash their machine must report before the
    /// wait is over.
    replaced: std::sync::Mutex<BTreeMap<String, String>>,
    /// How many pages (requests) the last listing of all units took; 0 before any: what
    /// reading the units again by a listing costs.
    listing_pages: AtomicUsize,
}

pub(crate) fn stderr(msg: impl std::fmt::Display) {
    eprintln!("{msg}");
}

/// A desired state a command sets, with fleet's words for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Target {
    state: &'static str,
    /// `Triggered global unit X <action>`, `Triggered unit X <action>`.
    action: &'static str,
    /// The start of the error line when setting it fails.
    failed: &'static str,
    /// What the progress bar counts while waiting.
    reached: &'static str,
}

const START: Target = Target {
    state: "launched",
    action: "start",
    failed: "Error starting units",
    reached: "started",
};
const LOAD: Target = Target {
    state: "loaded",
    action: "load",
    failed: "Error loading units",
    reached: "loaded",
};
const STOP: Target = Target {
    state: "loaded",
    action: "stop",
    failed: "Error stopping units",
    reached: "stopped",
};
const UNLOAD: Target = Target {
    state: "inactive",
    action: "unload",
    failed: "Error unloading units",
    reached: "unloaded",
};

/// One argument's part of a command that changes units, planned before any request is sent.
/// Its output is printed at its turn, in argument order, whenever its requests finish.
#[derive(Debug, Default)]
struct Step {
    /// fleet's warnings about the unit, on stderr.
    warnings: Vec<String>,
    /// What it asks of the API, one request after another.
    requests: Vec<Request>,
    /// Printed on stdout once its requests succeeded (`Triggered global unit X start`).
    done: Option<String>,
    /// The unit to wait for once its requests succeeded.
    wait: Option<String>,
    /// Refused before any request (fleet's message, on stderr): the command stops here, and
    /// nothing after it is sent.
    refused: Option<String>,
}

impl Step {
    fn refused(message: String) -> Step {
        Step {
            refused: Some(message),
            ..Step::default()
        }
    }

    /// Sets an existing unit's desired state.
    fn set_desired(unit: &Unit, target: Target) -> Step {
        let mut step = Step {
            requests: vec![Request::SetDesired {
                name: unit.name.clone(),
                state: target.state,
                failed: target.failed,
            }],
            ..Step::default()
        };
        step.triggered(&unit.name, is_global(unit), target);
        step
    }

    /// After a change of desired state, a global unit is announced as triggered, since fleet
    /// never waits for global units; any other is waited for.
    fn triggered(&mut self, name: &str, global: bool, target: Target) {
        if global {
            self.done = Some(format!("Triggered global unit {name} {}", target.action));
        } else {
            self.wait = Some(name.to_string());
        }
    }
}

/// A request of a [`Step`].
#[derive(Debug)]
enum Request {
    /// Creates or replaces a unit with its options, and its desired state if it has one
    /// (fleet's API takes both in one request); `failed` starts the error line.
    Put { unit: Unit, failed: String },
    /// Sets an existing unit's desired state.
    SetDesired {
        name: String,
        state: &'static str,
        failed: &'static str,
    },
    /// Destroys a unit (one already gone is not an error).
    Destroy { name: String },
}

impl Request {
    /// Sends the request; when it fails, fleet's line saying so.
    async fn send(&self, client: &Client) -> Result<(), String> {
        match self {
            Request::Put { unit, failed } => client
                .create_unit(unit)
                .await
                .map_err(|e| format!("{failed}: {e}")),
            Request::SetDesired {
                name,
                state,
                failed,
            } => client
                .set_desired_state(name, state)
                .await
                .map_err(|e| format!("{failed}: {e}")),
            Request::Destroy { name } => match client.destroy_unit(name).await {
                Ok(()) | Err(ClientError::Api { code: 404, .. }) => Ok(()),
                Err(e) => Err(format!("Error destroying units: {e}")),
            },
        }
    }
}

/// What the cluster holds of the units a command names, each as found (`None`: not there) or
/// why it could not be read.
struct Known {
    units: BTreeMap<String, Result<Option<Unit>, String>>,
    /// Read from a listing of all units: a unit missing from `units` is not in the cluster.
    listed: bool,
}

impl Known {
    fn get(&self, name: &str) -> Result<Option<Unit>, String> {
        match self.units.get(name) {
            Some(found) => found.clone(),
            None if self.listed => Ok(None),
            // Not asked for: never taken for absent, which would create the unit anew.
            None => Err(format!("unit {name} was not read")),
        }
    }
}

/// `--replace` for one unit.
enum Replacement {
    /// Nothing to replace: no local file, or the same content.
    Same,
    /// Not allowed in the unit's desired state: fleet's warning.
    NotAllowed(String),
    /// The local file to submit in its place.
    New(UnitFile),
}

impl Ctl {
    pub fn new(client: Client) -> Ctl {
        Ctl {
            client,
            replace: None,
            replaced: Default::default(),
            listing_pages: AtomicUsize::new(0),
        }
    }

    /// Replace units whose local file differs (`--replace`), with the rules of `command`.
    pub fn replacing(mut self, command: &'static str) -> Ctl {
        self.replace = Some(command);
        self
    }

    // ---- changing the desired state -------------------------------------------------------

    pub async fn submit(&self, args: &[String]) -> u8 {
        let progress = Progress::new(args.len(), "submitted");
        let steps = self.plan_units(args, None).await;
        match self.carry_out(steps, &progress).await {
            Some(_) => 0,
            None => 1,
        }
    }

    pub async fn load(&self, args: &[String], block: Block) -> u8 {
        self.create_and_set(args, LOAD, block).await
    }

    pub async fn start(&self, args: &[String], block: Block) -> u8 {
        self.create_and_set(args, START, block).await
    }

    async fn create_and_set(&self, args: &[String], target: Target, block: Block) -> u8 {
        let progress = Progress::new(args.len(), "submitted");
        let steps = self.plan_units(args, Some(target)).await;
        let Some(waiting) = self.carry_out(steps, &progress).await else {
            return 1;
        };
        self.wait_for(&waiting, target, block, &progress).await
    }

    pub async fn stop(&self, args: &[String], block: Block) -> u8 {
        let Some(units) = self.existing_units(args).await else {
            return 1;
        };
        let mut steps = Vec::new();
        for unit in &units {
            if !is_global(unit) {
                match unit.current_state.as_str() {
                    "inactive" => {
                        steps.push(Step::refused(format!(
                            "Unable to stop unit {} in state inactive",
                            unit.name
                        )));
                        break;
                    }
                    "loaded" if unit.desired_state == "loaded" => continue,
                    _ => {}
                }
            }
            steps.push(Step::set_desired(unit, STOP));
        }
        let progress = Progress::new(steps.len(), "triggered");
        let Some(waiting) = self.carry_out(steps, &progress).await else {
            return 1;
        };
        self.wait_for(&waiting, STOP, block, &progress).await
    }

    pub async fn unload(&self, args: &[String], block: Block) -> u8 {
        let Some(units) = self.existing_units(args).await else {
            return 1;
        };
        let steps: Vec<Step> = units
            .iter()
            .filter(|u| !(u.desired_state == "inactive" && u.current_state == "inactive"))
            .map(|u| Step::set_desired(u, UNLOAD))
            .collect();
        let progress = Progress::new(steps.len(), "triggered");
        let Some(waiting) = self.carry_out(steps, &progress).await else {
            return 1;
        };
        self.wait_for(&waiting, UNLOAD, block, &progress).await
    }

    pub async fn destroy(&self, args: &[String]) -> u8 {
        let Some(units) = self.existing_units(args).await else {
            return 1;
        };
        let steps: Vec<Step> = units
            .into_iter()
            .map(|u| Step {
                done: Some(format!("Destroyed {}", u.name)),
                requests: vec![Request::Destroy { name: u.name }],
                ..Step::default()
            })
            .collect();
        let progress = Progress::new(steps.len(), "destroyed");
        match self.carry_out(steps, &progress).await {
            Some(_) => 0,
            None => 1,
        }
    }

    /// Carries out `steps`, at most [`IN_FLIGHT`] requests at once, printing what each did in
    /// argument order whatever order the answers come in. The first step refused or failed is
    /// the end, with fleet's message: `None` (requests of later steps already in flight may
    /// still be answered, and nothing more is said). Otherwise the units to wait for, in order.
    async fn carry_out(&self, mut steps: Vec<Step>, progress: &Progress) -> Option<Vec<String>> {
        if let Some(refused) = steps.iter().position(|s| s.refused.is_some()) {
            steps.truncate(refused + 1);
        }
        let client = &self.client;
        let mut outcomes = stream::iter(steps)
            .map(|step| async move {
                let mut outcome = Ok(());
                for request in &step.requests {
                    outcome = request.send(client).await;
                    if outcome.is_err() {
                        break;
                    }
                }
                (step, outcome)
            })
            .buffered(IN_FLIGHT);
        let mut waiting = Vec::new();
        while let Some((step, outcome)) = outcomes.next().await {
            for warning in &step.warnings {
                progress.err(warning);
            }
            if let Some(refusal) = step.refused {
                progress.err(refusal);
                return None;
            }
            if let Err(message) = outcome {
                progress.err(message);
                return None;
            }
            if let Some(done) = step.done {
                progress.out(done);
            }
            waiting.extend(step.wait);
            progress.inc();
        }
        Some(waiting)
    }

    /// Plans each argument's unit as fleet's `lazyCreateUnits` followed, with `target`, by
    /// setting its desired state. A unit not in the cluster is created from a local file, the
    /// template in the cluster, or a local template file, in that order, with its desired
    /// state in the same request. A unit in the cluster keeps its content (with a warning
    /// when the local file differs) unless `--replace` allows replacing it, and gets its
    /// desired state in one request if it has not. The cluster is read once for all the
    /// arguments ([`Ctl::lookup`]).
    async fn plan_units(&self, args: &[String], target: Option<Target>) -> Vec<Step> {
        let mut names = Vec::new();
        let mut bad_name = None;
        for arg in args {
            match parse_arg(arg) {
                Ok(name) => names.push(name),
                Err(e) => {
                    bad_name = Some(Step::refused(format!("Error creating units: {e}")));
                    break;
                }
            }
        }
        let mut known = self
            .lookup(names.iter().map(UnitName::as_str).collect())
            .await;
        // Instances in neither the cluster nor a file of their own are made from their
        // template: read the templates too (a listing has them already).
        let templates: Vec<UnitName> = args
            .iter()
            .zip(&names)
            .filter(|(arg, name)| {
                matches!(known.get(name.as_str()), Ok(None)) && !Path::new(arg).exists()
            })
            .filter_map(|(_, name)| name.template().filter(|_| name.is_instance()))
            .filter(|t| !known.listed && !known.units.contains_key(t.as_str()))
            .collect();
        if !templates.is_empty() {
            let found = self
                .get_each(templates.iter().map(UnitName::as_str).collect())
                .await;
            known.units.extend(found);
        }
        let plan = |upto: usize, target: Option<Target>| {
            // What earlier arguments will have made of the cluster, for a unit named twice and
            // for an instance whose template is also an argument.
            let mut planned: BTreeMap<String, Unit> = BTreeMap::new();
            let mut steps = Vec::new();
            for (arg, name) in args.iter().zip(&names).take(upto) {
                let existing = match planned.get(name.as_str()) {
                    Some(unit) => Ok(Some(unit.clone())),
                    None => known.get(name.as_str()),
                };
                let planning = match existing {
                    Err(e) => Err(format!("error retrieving Unit({name}) from Registry: {e}")),
                    Ok(Some(unit)) => self.plan_existing(arg, name, unit, target),
                    Ok(None) => self.plan_new(arg, name, &known, &planned, target),
                };
                match planning {
                    Ok((step, unit)) => {
                        steps.push(step);
                        planned.insert(unit.name.clone(), unit);
                    }
                    Err(e) => {
                        return (
                            steps,
                            Some(Step::refused(format!("Error creating units: {e}"))),
                        )
                    }
                }
            }
            (steps, None)
        };
        let (steps, refused) = plan(names.len(), target);
        let Some(refused) = refused.or(bad_name) else {
            return steps;
        };
        // fleet creates the units of every argument before it sets any desired state, so an
        // argument it cannot create leaves the units before it created and their desired
        // states as they were: those are planned again without a target.
        let (mut steps, _) = if target.is_some() {
            plan(steps.len(), None)
        } else {
            (steps, None)
        };
        steps.push(refused);
        steps
    }

    /// The step of a unit already in the cluster, and the unit as it will be.
    fn plan_existing(
        &self,
        arg: &str,
        name: &UnitName,
        mut unit: Unit,
        target: Option<Target>,
    ) -> Result<(Step, Unit), String> {
        let mut step = Step::default();
        let mut replacement = None;
        match self.replace {
            Some(command) => match self.replacement(command, arg, name, &unit)? {
                Replacement::Same => {}
                Replacement::NotAllowed(warning) => step.warnings.push(warning),
                Replacement::New(file) => {
                    if let Ok(mut replaced) = self.replaced.lock() {
                        replaced.insert(name.to_string(), file.hash().to_string());
                    }
                    unit.options = file.into_options();
                    replacement = Some(Unit {
                        name: name.to_string(),
                        options: unit.options.clone(),
                        ..Unit::default()
                    });
                }
            },
            None => step.warnings.extend(different_local_unit(arg, &unit)),
        }
        if let Some(target) = target {
            if unit.desired_state != target.state {
                match &mut replacement {
                    // One request for both, but for a template, which only its own request
                    // of a desired state may be refused for.
                    Some(put) if !name.is_template() => put.desired_state = target.state.into(),
                    _ => step.requests.push(Request::SetDesired {
                        name: name.to_string(),
                        state: target.state,
                        failed: target.failed,
                    }),
                }
                unit.desired_state = target.state.into();
                step.triggered(name.as_str(), is_global(&unit), target);
            } else if !is_global(&unit) {
                step.wait = Some(name.to_string());
            }
        }
        if let Some(put) = replacement {
            step.requests.insert(
                0,
                Request::Put {
                    unit: put,
                    failed: format!("Error creating units: failed replacing unit {name}"),
                },
            );
        }
        Ok((step, unit))
    }

    /// The step of a unit not in the cluster, made from a local file, the template in the
    /// cluster, or a local template file, in that order (as fleet does); and the unit as it
    /// will be.
    fn plan_new(
        &self,
        arg: &str,
        name: &UnitName,
        known: &Known,
        planned: &BTreeMap<String, Unit>,
        target: Option<Target>,
    ) -> Result<(Step, Unit), String> {
        let path = Path::new(arg);
        let file = if path.exists() {
            read_unit_file(path)
                .map_err(|e| format!("failed getting Unit({name}) from file: {e}"))?
        } else {
            let Some(template) = name.template().filter(|_| name.is_instance()) else {
                return Err(format!(
                    "unable to find Unit({name}) in Registry or on filesystem"
                ));
            };
            let in_cluster = match planned.get(template.as_str()) {
                Some(t) => Ok(Some(t.clone())),
                None => known.get(template.as_str()),
            };
            match in_cluster.map_err(|e| {
                format!("error retrieving template Unit({template}) from Registry: {e}")
            })? {
                Some(t) => UnitFile::from_options(t.options),
                None => {
                    let local = path
                        .parent()
                        .unwrap_or(Path::new(""))
                        .join(template.as_str());
                    if !local.exists() {
                        return Err(format!("unable to find Unit({name}) or template Unit({template}) in Registry or on filesystem"));
                    }
                    read_unit_file(&local).map_err(|e| {
                        format!("failed getting template Unit({template}) from file: {e}")
                    })?
                }
            }
        };
        let (_, warnings) = Requirements::from_unit(name, &file)
            .map_err(|e| format!("invalid [X-Fleet] section of {name}: {e}"))?;
        let mut step = Step {
            warnings: warnings
                .iter()
                .map(|w| format!("WARNING: {name}: {w}"))
                .collect(),
            ..Step::default()
        };
        let mut unit = Unit {
            name: name.to_string(),
            options: file.into_options(),
            ..Unit::default()
        };
        let failed = format!("Error creating units: failed creating unit {name}");
        match target {
            // Created, then its desired state asked for in a request of its own, which the
            // API refuses for a template with its own message.
            Some(target) if name.is_template() => {
                step.requests.push(Request::Put {
                    unit: unit.clone(),
                    failed,
                });
                step.requests.push(Request::SetDesired {
                    name: name.to_string(),
                    state: target.state,
                    failed: target.failed,
                });
            }
            Some(target) => {
                unit.desired_state = target.state.into();
                step.requests.push(Request::Put {
                    unit: unit.clone(),
                    failed,
                });
            }
            None => step.requests.push(Request::Put {
                unit: unit.clone(),
                failed,
            }),
        }
        match target {
            Some(target) => {
                unit.desired_state = target.state.into();
                step.triggered(name.as_str(), is_global(&unit), target);
            }
            None => unit.desired_state = "inactive".into(),
        }
        Ok((step, unit))
    }

    /// `--replace`: whether the local file differs from the unit in the cluster and the
    /// unit's desired state allows replacing it for this command (fleet's rules). The agent
    /// then stops the old content and starts the new one in its place.
    fn replacement(
        &self,
        command: &str,
        arg: &str,
        name: &UnitName,
        existing: &Unit,
    ) -> Result<Replacement, String> {
        let path = Path::new(arg);
        if !path.exists() {
            return Ok(Replacement::Same);
        }
        let local = read_unit_file(path)
            .map_err(|e| format!("failed getting Unit({name}) from file: {e}"))?;
        let registered = UnitFile::from_options(existing.options.clone());
        if local.hash() == registered.hash() {
            return Ok(Replacement::Same);
        }
        if !replace_allowed(command, &existing.desired_state) {
            return Ok(Replacement::NotAllowed(format!(
                "Warning: can not replace Unit({name}) in state '{}', use the appropriate command",
                existing.desired_state
            )));
        }
        Requirements::from_unit(name, &local)
            .map_err(|e| format!("invalid [X-Fleet] section of {name}: {e}"))?;
        Ok(Replacement::New(local))
    }

    /// Whether to read `units` units with a listing of all units rather than one request
    /// each: when the listing takes fewer requests (as many as it took the last time), or
    /// before any listing, for more than [`MANY`] units.
    fn list_rather_than_ask(&self, units: usize) -> bool {
        match self.listing_pages.load(Ordering::Relaxed) {
            0 => units > MANY,
            pages => units > pages,
        }
    }

    /// The named units as the cluster holds them: by one listing of all units or by one
    /// request each, [`IN_FLIGHT`] at a time, whichever takes fewer requests.
    async fn lookup(&self, names: Vec<&str>) -> Known {
        if !self.list_rather_than_ask(names.len()) {
            return Known {
                units: self.get_each(names).await,
                listed: false,
            };
        }
        match self.all_units().await {
            Ok(all) => Known {
                units: all
                    .into_iter()
                    .map(|u| (u.name.clone(), Ok(Some(u))))
                    .collect(),
                listed: true,
            },
            Err(e) => Known {
                units: names
                    .into_iter()
                    .map(|n| (n.to_string(), Err(e.to_string())))
                    .collect(),
                listed: false,
            },
        }
    }

    /// Each named unit (once however often named), one request each, [`IN_FLIGHT`] at a time.
    async fn get_each(&self, names: Vec<&str>) -> BTreeMap<String, Result<Option<Unit>, String>> {
        let distinct: BTreeSet<&str> = names.into_iter().collect();
        stream::iter(distinct)
            .map(|name| async move {
                let found = self.client.unit(name).await.map_err(|e| e.to_string());
                (name.to_string(), found)
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await
    }

    /// All units, remembering how many pages the listing took.
    async fn all_units(&self) -> Result<Vec<Unit>, ClientError> {
        let (units, pages) = self.client.units_counting_pages().await?;
        self.listing_pages.store(pages, Ordering::Relaxed);
        Ok(units)
    }

    /// [`Ctl::find_units`], saying why on stderr when the cluster cannot be asked.
    async fn existing_units(&self, args: &[String]) -> Option<Vec<Unit>> {
        match self.find_units(args).await {
            Ok(units) => Some(units),
            Err(e) => {
                stderr(e);
                None
            }
        }
    }

    /// The units named by the arguments that exist in the cluster.
    async fn find_units(&self, args: &[String]) -> Result<Vec<Unit>, String> {
        let mut wanted = Vec::new();
        for arg in args {
            wanted.push(parse_arg(arg)?);
        }
        let all = self.all_units().await.map_err(|e| e.to_string())?;
        let by_name: BTreeMap<&str, &Unit> = all.iter().map(|u| (u.name.as_str(), u)).collect();
        Ok(wanted
            .iter()
            .filter_map(|n| by_name.get(n.as_str()).map(|u| (*u).clone()))
            .collect())
    }

    /// Waits until each unit reports `target`'s state, printing fleet's `Unit X <state> on
    /// <machine>`: those that got there in one check, in the order of `names`. The agent
    /// reports `launched` once systemd's start job finished; a start that failed there is an
    /// error naming the unit, its machine and what systemd said. Each check reads all the
    /// units still waited for at once ([`Ctl::lookup`]).
    async fn wait_for(
        &self,
        names: &[String],
        target: Target,
        block: Block,
        progress: &Progress,
    ) -> u8 {
        let Target { state, action, .. } = target;
        if block.no_block {
            for name in names {
                progress.out(format_args!("Triggered unit {name} {action}"));
            }
            return 0;
        }
        progress.phase(target.reached, names.len());
        let deadline =
            (block.block_attempts > 0).then(|| Instant::now() + ATTEMPT * block.block_attempts);
        let mut pending: Vec<&String> = names.iter().collect();
        let mut machines: Option<BTreeMap<String, Machine>> = None;
        let mut last_error: Option<String> = None;
        let mut reasons: BTreeMap<&str, String> = BTreeMap::new();
        let mut exit = 0;
        while !pending.is_empty() {
            let began = Instant::now();
            let views = self
                .lookup(pending.iter().map(|n| n.as_str()).collect())
                .await;
            let unreplaced = self.not_yet_replaced(&pending, &views, state).await;
            let mut still = Vec::new();
            for name in pending {
                match views.get(name) {
                    Ok(Some(u)) if u.current_state == state && !unreplaced.contains(name) => {
                        if machines.is_none() && !u.machine_id.is_empty() {
                            machines = self
                                .client
                                .machines()
                                .await
                                .ok()
                                .map(|ms| ms.into_iter().map(|m| (m.id.clone(), m)).collect());
                        }
                        let machine = machines
                            .as_ref()
                            .and_then(|ms| ms.get(&u.machine_id))
                            .map(|m| machine_full_legend(m, false));
                        if state == "launched" && !u.start_failure.is_empty() {
                            let on = machine.unwrap_or_else(|| or_dash(&u.machine_id));
                            progress.err(format_args!(
                                "Error waiting for units: unit {name} failed to start on {on}: {}",
                                u.start_failure
                            ));
                            exit = 1;
                            continue;
                        }
                        let legend = machine.map(|m| format!(" on {m}")).unwrap_or_default();
                        progress.out(format_args!("Unit {name} {state}{legend}"));
                        progress.inc();
                    }
                    Ok(Some(u)) => {
                        if !u.reason.is_empty() {
                            reasons.insert(name.as_str(), u.reason);
                        }
                        still.push(name);
                    }
                    Ok(None) => still.push(name),
                    Err(e) => {
                        last_error = Some(e);
                        still.push(name);
                    }
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                for name in &pending {
                    let why = match (reasons.get(name.as_str()), &last_error) {
                        (Some(r), _) => format!(": it cannot be placed: {r}"),
                        (None, Some(e)) => format!(" (last error: {e})"),
                        (None, None) => String::new(),
                    };
                    progress.err(format_args!(
                        "Error waiting for units: timed out waiting for unit {name} to report state {state}{why}"
                    ));
                }
                return 1;
            }
            // Never busier than half the time, however long a check takes.
            tokio::time::sleep(POLL.max(began.elapsed())).await;
        }
        exit
    }

    /// Of the `pending` units that reached `state` in `views`, those this invocation replaced
    /// whose machine does not report the new content yet: one request for all of them.
    async fn not_yet_replaced(
        &self,
        pending: &[&String],
        views: &Known,
        state: &str,
    ) -> BTreeSet<String> {
        let expected: BTreeMap<String, String> = match self.replaced.lock() {
            Ok(replaced) if !replaced.is_empty() => pending
                .iter()
                .filter(|n| matches!(views.get(n), Ok(Some(u)) if u.current_state == state))
                .filter_map(|n| Some((n.to_string(), replaced.get(n.as_str())?.clone())))
                .collect(),
            _ => return BTreeSet::new(),
        };
        if expected.is_empty() {
            return BTreeSet::new();
        }
        let names: Vec<&str> = expected.keys().map(String::as_str).collect();
        let states = self
            .client
            .unit_states(&names, &[])
            .await
            .unwrap_or_default();
        expected
            .into_iter()
            .filter(|(name, hash)| !states.iter().any(|s| &s.name == name && &s.hash == hash))
            .map(|(name, _)| name)
            .collect()
    }

    /// Restarts each unit, one after another, waiting for each step unless `--no-block`, as
    /// fleet v1.0 did: a launched unit is stopped then started, a unit only loaded (say after
    /// `stop`) is started, one placed nowhere is refused on stderr and left (the others go on).
    /// The first step that fails ends the command. Arguments naming no unit in the cluster are
    /// submitted from their files first, as fleet did, but not restarted.
    pub async fn restart(&self, args: &[String], block: Block) -> u8 {
        let Some(units) = self.existing_units(args).await else {
            return 1;
        };
        let progress = Progress::hidden();
        let steps = self.plan_units(args, None).await;
        if self.carry_out(steps, &progress).await.is_none() {
            return 1;
        }
        for unit in units {
            let steps = match restart_steps(&unit) {
                Ok(steps) => steps,
                Err(refusal) => {
                    stderr(refusal);
                    continue;
                }
            };
            for &(state, action) in steps {
                let target = Target {
                    state,
                    action,
                    failed: "Error restarting units",
                    reached: action,
                };
                let step = Step::set_desired(&unit, target);
                let Some(waiting) = self.carry_out(vec![step], &progress).await else {
                    return 1;
                };
                if self.wait_for(&waiting, target, block, &progress).await != 0 {
                    return 1;
                }
            }
        }
        0
    }

    // ---- reading ----------------------------------------------------------------------------

    /// Checks that a unit exists and runs somewhere, with fleet's messages.
    async fn unit_to_inspect(&self, arg: &str, not_running: &str) -> Result<Unit, String> {
        let name = parse_arg(arg)?;
        match self.client.unit(name.as_str()).await {
            Ok(Some(u)) if !is_global(&u) && u.current_state == "inactive" => {
                Err(format!("Unit {name} does not appear to be {not_running}."))
            }
            Ok(Some(u)) => Ok(u),
            Ok(None) => Err(format!("Unit {name} does not exist.")),
            Err(e) => Err(format!("Error retrieving unit {name}: {e}")),
        }
    }

    /// Prints a unit's journal as it arrives.
    pub async fn journal(&self, arg: &str, lines: u32, follow: bool, machine: Option<&str>) -> u8 {
        use std::io::Write;
        let unit = match self.unit_to_inspect(arg, "running").await {
            Ok(u) => u,
            Err(e) => {
                stderr(e);
                return 1;
            }
        };
        let mut journal = match self
            .client
            .journal(&unit.name, lines, follow, machine)
            .await
        {
            Ok(j) => j,
            Err(e) => {
                stderr(format_args!(
                    "Error retrieving journal of unit {}: {e}",
                    unit.name
                ));
                return 1;
            }
        };
        let mut out = std::io::stdout().lock();
        loop {
            match journal.next_chunk().await {
                Ok(Some(chunk)) => {
                    if out.write_all(&chunk).and_then(|_| out.flush()).is_err() {
                        // The reader went away (e.g. `| head`).
                        return 0;
                    }
                }
                Ok(None) => return 0,
                Err(e) => {
                    stderr(format_args!(
                        "Error reading journal of unit {}: {e}",
                        unit.name
                    ));
                    return 1;
                }
            }
        }
    }

    /// Prints `systemctl status` of each unit; the exit code is systemctl's first non-zero one.
    pub async fn status(&self, args: &[String]) -> u8 {
        let mut units = Vec::new();
        for arg in args {
            match self.unit_to_inspect(arg, "loaded").await {
                Ok(u) => units.push(u),
                Err(e) => {
                    stderr(e);
                    return 1;
                }
            }
        }
        for (i, unit) in units.iter().enumerate() {
            // Between units, a blank line, as systemctl status separates them.
            if i != 0 {
                println!();
            }
            match self.client.status(&unit.name, None).await {
                Ok((code, text)) => {
                    use std::io::Write;
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&text).and_then(|_| out.flush());
                    if code != 0 {
                        return exit_code(code);
                    }
                }
                Err(e) => {
                    stderr(format_args!(
                        "Error retrieving status of unit {}: {e}",
                        unit.name
                    ));
                    return 1;
                }
            }
        }
        0
    }

    /// Runs the system `ssh` to a machine (by id or prefix) or to the machine of a unit.
    pub async fn ssh(
        &self,
        options: &SshOptions,
        machine: Option<&str>,
        unit: Option<&str>,
        args: &[String],
    ) -> u8 {
        let (address, rest) = match (machine, unit) {
            (Some(m), _) => (self.machine_address(m).await, args),
            (None, Some(u)) => (self.unit_address(u).await, args),
            (None, None) => match args.split_first() {
                None => (
                    Err("one machine or unit must be provided".to_string()),
                    args,
                ),
                Some((lookup, rest)) => {
                    let by_machine = self.machine_address(lookup).await;
                    let by_unit = self.unit_address(lookup).await;
                    let address = match (by_machine, by_unit) {
                        (Ok(_), Ok(_)) => Err(format!(
                            "ambiguous argument, both machine and unit found for `{lookup}`.\nPlease use flag `-m` or `-u` to refine the search"
                        )),
                        (Ok(a), _) | (_, Ok(a)) => Ok(a),
                        _ => Err("could not find matching unit or machine".to_string()),
                    };
                    (address, rest)
                }
            },
        };
        let address = match address {
            Ok(a) if !a.is_empty() => a,
            Ok(_) => {
                stderr("Could not determine address of machine.");
                return 1;
            }
            Err(e) => {
                stderr(format_args!("Unable to proceed: {e}"));
                return 1;
            }
        };
        if options.strict_host_key_checking {
            if let Err(code) = crate::known_hosts::verify(options, &address) {
                return code;
            }
        }
        let command = trim_to_dashes(rest);
        let argv = ssh_args(options, &address, command);
        use std::os::unix::process::CommandExt;
        let e = std::process::Command::new("ssh").args(&argv).exec();
        stderr(format_args!("Failed running ssh: {e}"));
        1
    }

    /// The public address of the one machine whose id starts with `lookup`.
    async fn machine_address(&self, lookup: &str) -> Result<String, String> {
        self.live_machine(lookup).await.map(|m| m.primary_ip)
    }

    /// The one live machine whose id starts with `lookup` (fleet's messages otherwise).
    async fn live_machine(&self, lookup: &str) -> Result<Machine, String> {
        let machines = self.client.machines().await.map_err(|e| e.to_string())?;
        let lookup = lookup.to_ascii_lowercase();
        let mut found = machines.into_iter().filter(|m| m.id.starts_with(&lookup));
        match (found.next(), found.next()) {
            (Some(m), None) => Ok(m),
            (Some(_), Some(_)) => Err("found more than one machine".to_string()),
            (None, _) => Err("machine does not exist".to_string()),
        }
    }

    /// `fleetctl drain MACHINE`: the machine takes no new units and its non-global units move
    /// elsewhere one at a time, each stopped there before it starts elsewhere. Waits (unless
    /// `--no-block`) until none is left, printing how many are, as they leave.
    pub async fn drain(&self, lookup: &str, block: Block) -> u8 {
        let machine = match self.machine_id(lookup).await {
            Ok(m) => m,
            Err(e) => {
                stderr(format_args!("Unable to drain {lookup}: {e}"));
                return 1;
            }
        };
        let short = machine_id_legend(&machine, false);
        let mut drain = match self.client.drain(&machine).await {
            Ok(d) => d,
            Err(e) => {
                stderr(format_args!("Unable to drain {short}: {e}"));
                return 1;
            }
        };
        println!("Draining machine {short}");
        if block.no_block {
            return 0;
        }
        let mut attempts = 0u32;
        let mut shown = None;
        loop {
            if drain.state == "drained" {
                println!("Machine {short} drained");
                return 0;
            }
            let left = (drain.units, drain.stopping);
            if shown != Some(left) {
                println!(
                    "{} units left on {short}, {} of them stopping",
                    drain.units + drain.stopping,
                    drain.stopping
                );
                shown = Some(left);
            }
            attempts += 1;
            if block.block_attempts > 0 && attempts >= block.block_attempts {
                stderr(format_args!(
                    "Machine {short} not drained yet; it goes on (fleetctl list-machines shows its state)"
                ));
                return 1;
            }
            tokio::time::sleep(POLL).await;
            drain = match self.client.drain_status(&machine).await {
                Ok(Some(d)) => d,
                Ok(None) => {
                    stderr(format_args!("Machine {short} is no longer being drained"));
                    return 1;
                }
                Err(e) => {
                    stderr(format_args!("Error retrieving the drain of {short}: {e}"));
                    return 1;
                }
            };
        }
    }

    /// `fleetctl undrain MACHINE`: the machine takes units again.
    pub async fn undrain(&self, lookup: &str) -> u8 {
        let machine = match self.machine_id(lookup).await {
            Ok(m) => m,
            Err(e) => {
                stderr(format_args!("Unable to undrain {lookup}: {e}"));
                return 1;
            }
        };
        let short = machine_id_legend(&machine, false);
        match self.client.undrain(&machine).await {
            Ok(()) => {
                println!("Machine {short} takes units again");
                0
            }
            Err(ClientError::Api { code: 404, .. }) => {
                stderr(format_args!("Machine {short} is not being drained."));
                1
            }
            Err(e) => {
                stderr(format_args!("Unable to undrain {short}: {e}"));
                1
            }
        }
    }

    /// `fleetctl remove-machine MACHINE`: removes a member whose lease is gone (named by its
    /// full id: a prefix names only live machines, which cannot be removed).
    pub async fn remove_machine(&self, id: &str) -> u8 {
        let Some(id) = full_machine_id(id) else {
            stderr(format_args!(
                "Unable to remove machine {id:?}: give its full id (32 hex digits); a lost \
                 machine's is shown by `fleetctl list-unit-files --full` and `fleetctl events`"
            ));
            return 1;
        };
        match self.client.remove_machine(&id).await {
            Ok(removal) => {
                println!(
                    "Removed machine {}: {} units released to be placed elsewhere",
                    removal.machine, removal.units
                );
                0
            }
            Err(e) => {
                stderr(format_args!("Unable to remove machine {id}: {e}"));
                1
            }
        }
    }

    /// The public address of the machine a (non-global) unit runs on.
    async fn unit_address(&self, arg: &str) -> Result<String, String> {
        let name = parse_arg(arg)?;
        let unit = match self.client.unit(name.as_str()).await {
            Ok(Some(u)) => u,
            Ok(None) => return Err("unit does not exist".to_string()),
            Err(e) => return Err(e.to_string()),
        };
        if is_global(&unit) {
            return Err("global units unsupported".to_string());
        }
        if unit.machine_id.is_empty() {
            return Err(format!("unit {name} does not run on any machine"));
        }
        let machines = self.client.machines().await.map_err(|e| e.to_string())?;
        machines
            .into_iter()
            .find(|m| m.id == unit.machine_id)
            .map(|m| m.primary_ip)
            .ok_or_else(|| format!("machine {} of unit {name} is gone", unit.machine_id))
    }

    pub async fn cat(&self, arg: &str) -> u8 {
        let name = match parse_arg(arg) {
            Ok(n) => n,
            Err(e) => {
                stderr(e);
                return 1;
            }
        };
        match self.client.unit(name.as_str()).await {
            Ok(Some(u)) => {
                print!(
                    "{}",
                    UnitFile::from_options(u.options).to_canonical_string()
                );
                0
            }
            Ok(None) => {
                stderr(format_args!("Unit {name} not found"));
                1
            }
            Err(e) => {
                stderr(format_args!("Error retrieving Unit {name}: {e}"));
                1
            }
        }
    }

    /// `fleetctl history UNIT`: the versions of the unit's content, the current one first.
    pub async fn history(&self, arg: &str, listing: &Listing) -> u8 {
        let name = match parse_arg(arg) {
            Ok(n) => n,
            Err(e) => {
                stderr(e);
                return 1;
            }
        };
        match self.client.unit_history(name.as_str()).await {
            Ok(history) if listing.output == Output::Json => print_json(&history.versions),
            Ok(history) => print_or_fail(render_history(&history, listing)),
            Err(ClientError::Api { code: 404, .. }) => {
                stderr(format_args!("Unit {name} does not exist."));
                1
            }
            Err(e) => {
                stderr(format_args!("Error retrieving history of unit {name}: {e}"));
                1
            }
        }
    }

    /// `fleetctl rollback UNIT [HASH]`: puts back the version whose hash starts with `hash`
    /// (by default the one before the current), keeping the unit's desired state, then waits,
    /// as `start --replace` does, until its machine runs that version in that state.
    pub async fn rollback(&self, arg: &str, hash: Option<&str>, block: Block) -> u8 {
        let name = match parse_arg(arg) {
            Ok(n) => n,
            Err(e) => {
                stderr(e);
                return 1;
            }
        };
        let done = match self.client.rollback_unit(name.as_str(), hash).await {
            Ok(done) => done,
            Err(ClientError::Api { message, .. }) if message == "unit does not exist" => {
                stderr(format_args!("Unit {name} does not exist."));
                return 1;
            }
            Err(ClientError::Api { message, .. }) => {
                stderr(format_args!("Error rolling back unit {name}: {message}"));
                return 1;
            }
            Err(e) => {
                stderr(format_args!("Error rolling back unit {name}: {e}"));
                return 1;
            }
        };
        if done.from == done.to {
            println!(
                "Unit {name} is already at version {}",
                short_hash(&done.to, false)
            );
            return 0;
        }
        println!(
            "Unit {name} rolled back from {} to {}",
            short_hash(&done.from, false),
            short_hash(&done.to, false)
        );
        let unit = match self.client.unit(name.as_str()).await {
            Ok(Some(unit)) => unit,
            // Destroyed meanwhile, or not readable: nothing to wait for.
            Ok(None) => return 0,
            Err(e) => {
                stderr(format_args!("Error retrieving unit {name}: {e}"));
                return 1;
            }
        };
        let target = match unit.desired_state.as_str() {
            "launched" => START,
            "loaded" => LOAD,
            _ => return 0,
        };
        if is_global(&unit) {
            println!("Triggered global unit {name} {}", target.action);
            return 0;
        }
        if let Ok(mut replaced) = self.replaced.lock() {
            replaced.insert(name.to_string(), done.to.clone());
        }
        self.wait_for(&[name.to_string()], target, block, &Progress::hidden())
            .await
    }

    /// `fleetctl events [UNIT] [--machine ID] [-f] [-n N]`: the events kept, a unit's or a
    /// machine's, oldest first (only the newest N with `--limit`); with `--follow`, the newest
    /// N (10) and then each one as it is recorded.
    pub async fn events(&self, query: &EventsQuery<'_>, listing: &Listing) -> u8 {
        // Checked before anything is asked of the API.
        if let Err(e) = render_events(&[], listing) {
            stderr(e);
            return 1;
        }
        let name = match query.unit.map(parse_arg).transpose() {
            Ok(name) => name,
            Err(e) => {
                stderr(e);
                return 1;
            }
        };
        let machine = match query.machine {
            Some(m) => match self.machine_id(m).await {
                Ok(id) => Some(id),
                Err(e) => {
                    stderr(format_args!("Error retrieving events: {e}"));
                    return 1;
                }
            },
            None => None,
        };
        let asked = EventQuery {
            unit: name.as_ref().map(UnitName::as_str),
            machine: machine.as_deref(),
            last: match query.follow {
                true => Some(query.limit.unwrap_or(FOLLOWED_EVENTS)),
                false => query.limit,
            },
        };
        if !query.follow {
            return match self.client.events(&asked).await {
                Ok(events) if listing.output == Output::Json => print_json(&events),
                Ok(events) => print_or_fail(render_events(&events, listing)),
                Err(e) => {
                    stderr(format_args!("Error retrieving events: {e}"));
                    1
                }
            };
        }
        let mut stream = match self.client.follow_events(&asked).await {
            Ok(stream) => stream,
            Err(e) => {
                stderr(format_args!("Error following events: {e}"));
                return 1;
            }
        };
        // Events that arrive together (the newest N at first) are printed as one table; the
        // legend, only above the first.
        let mut listing = listing.clone();
        loop {
            let batch = match next_events(&mut stream).await {
                Ok(Some(batch)) => batch,
                Ok(None) => {
                    stderr("Error following events: fleetd ended the stream");
                    return 1;
                }
                Err(e) => {
                    stderr(format_args!("Error following events: {e}"));
                    return 1;
                }
            };
            let text = match listing.output {
                Output::Json => batch
                    .iter()
                    .filter_map(|e| serde_json::to_string(e).ok())
                    .map(|line| line + "\n")
                    .collect(),
                Output::Table => match render_events(&batch, &listing) {
                    Ok(text) => text,
                    Err(e) => {
                        stderr(e);
                        return 1;
                    }
                },
            };
            if !write_out(&text) {
                // The reader went away (e.g. `| head`).
                return 0;
            }
            listing.no_legend = true;
        }
    }

    /// The full id of the machine `lookup` names: itself when it is one (a machine gone may
    /// still have events, or be drained), else the one live machine whose id starts with it.
    async fn machine_id(&self, lookup: &str) -> Result<String, String> {
        if let Some(id) = full_machine_id(lookup) {
            return Ok(id);
        }
        let lookup = lookup.trim().to_ascii_lowercase();
        self.live_machine(&lookup)
            .await
            .map(|m| m.id)
            .map_err(|e| format!("machine {lookup:?}: {e}"))
    }

    pub async fn list_units(&self, listing: &Listing) -> u8 {
        let result = async {
            let states = self.client.unit_states(&[], &[]).await?;
            let machines = self.client.machines().await?;
            Ok::<_, ClientError>((states, machines))
        }
        .await;
        match result {
            Ok((states, _)) if listing.output == Output::Json => print_json(&states),
            Ok((states, machines)) => print_or_fail(render_list_units(&states, &machines, listing)),
            Err(e) => {
                stderr(format_args!(
                    "Error retrieving list of units from repository: {e}"
                ));
                1
            }
        }
    }

    pub async fn list_unit_files(&self, listing: &Listing) -> u8 {
        let result = async {
            let units = self.client.units().await?;
            let machines = self.client.machines().await?;
            Ok::<_, ClientError>((units, machines))
        }
        .await;
        match result {
            Ok((units, _)) if listing.output == Output::Json => print_json(&units),
            Ok((units, machines)) => {
                print_or_fail(render_list_unit_files(&units, &machines, listing))
            }
            Err(e) => {
                stderr(format_args!(
                    "Error retrieving list of units from repository: {e}"
                ));
                1
            }
        }
    }

    pub async fn list_machines(&self, listing: &Listing) -> u8 {
        match self.client.machines().await {
            Ok(machines) if listing.output == Output::Json => print_json(&machines),
            Ok(machines) => {
                // A fleetd of before drains answers 404: nothing is drained there.
                let drains = match self.client.drains().await {
                    Ok(d) => d,
                    Err(ClientError::Api { code: 404, .. }) => Vec::new(),
                    Err(e) => {
                        stderr(format_args!("Error retrieving the drains of machines: {e}"));
                        return 1;
                    }
                };
                print_or_fail(render_list_machines(&machines, &drains, listing))
            }
            Err(e) => {
                stderr(format_args!(
                    "Error retrieving list of active machines: {e}"
                ));
                1
            }
        }
    }
}

/// How many events `fleetctl events --follow` shows before the new ones, by default.
const FOLLOWED_EVENTS: u32 = 10;

/// What `fleetctl events` asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventsQuery<'a> {
    pub unit: Option<&'a str>,
    pub machine: Option<&'a str>,
    pub follow: bool,
    pub limit: Option<u32>,
}

/// The next events of a followed stream: the next one, and those that arrive with it (within
/// a few milliseconds), so that a burst is printed as one table. `None` at the stream's end.
async fn next_events(
    stream: &mut fleet_client::EventStream,
) -> Result<Option<Vec<Event>>, ClientError> {
    let Some(first) = stream.next().await? else {
        return Ok(None);
    };
    let mut batch = vec![first];
    while let Ok(next) = tokio::time::timeout(Duration::from_millis(20), stream.next()).await {
        match next? {
            Some(event) => batch.push(event),
            None => break,
        }
    }
    Ok(Some(batch))
}

/// Writes `text` to stdout at once; `false` when the reader went away.
fn write_out(text: &str) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .is_ok()
}

/// `--output json`: the API's objects as one JSON document (an array).
pub(crate) fn print_json<T: serde::Serialize>(items: &[T]) -> u8 {
    match serde_json::to_string_pretty(items) {
        Ok(text) => {
            println!("{text}");
            0
        }
        Err(e) => {
            stderr(format_args!("cannot encode the list as JSON: {e}"));
            1
        }
    }
}

pub(crate) fn print_or_fail(rendered: Result<String, String>) -> u8 {
    match rendered {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e) => {
            stderr(e);
            1
        }
    }
}

fn parse_arg(arg: &str) -> Result<UnitName, String> {
    let mangled = unit_name_from_arg(arg);
    UnitName::parse(&mangled).map_err(|e| format!("invalid unit name {mangled:?}: {e}"))
}

pub(crate) fn read_unit_file(path: &Path) -> Result<UnitFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    UnitFile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// fleet's warning when the local file of a unit in the cluster differs from it.
fn different_local_unit(arg: &str, existing: &Unit) -> Option<String> {
    let path = Path::new(arg);
    if !path.exists() {
        return None;
    }
    let local = read_unit_file(path).ok()?;
    let registered = UnitFile::from_options(existing.options.clone());
    (local.hash() != registered.hash()).then(|| {
        format!(
            "WARNING: Unit {} in registry differs from local unit file {arg}",
            existing.name
        )
    })
}

/// fleet's rules for `--replace`: the desired states in which each command may replace a unit.
fn replace_allowed(command: &str, desired_state: &str) -> bool {
    let allowed: &[&str] = match command {
        "submit" => &["inactive"],
        "load" => &["inactive", "loaded"],
        "start" => &["inactive", "loaded", "launched"],
        _ => &[],
    };
    allowed.contains(&desired_state)
}

/// The desired states `restart` sets on a unit, in order, each with the action it names
/// (fleet v1.0's `restart`): a global unit and a launched one are stopped then started, a unit
/// only loaded is started; one placed nowhere (current state `inactive`) is refused with
/// fleet's message.
fn restart_steps(unit: &Unit) -> Result<&'static [(&'static str, &'static str)], String> {
    const STOP_START: &[(&str, &str)] = &[("loaded", "stop"), ("launched", "start")];
    const START: &[(&str, &str)] = &[("launched", "start")];
    if is_global(unit) {
        return Ok(STOP_START);
    }
    match unit.current_state.as_str() {
        "inactive" => Err(format!(
            "Unable to restart unit {} in state inactive",
            unit.name
        )),
        "loaded" => Ok(START),
        _ => Ok(STOP_START),
    }
}

fn is_global(unit: &Unit) -> bool {
    fleet_units::is_global(&UnitFile::from_options(unit.options.clone()))
}

/// A process exit code from systemctl's (which may be outside 0..=255 only in theory).
fn exit_code(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(1).max(u8::from(code != 0))
}

// ---- ssh ----------------------------------------------------------------------------------------

/// How `fleetctl ssh` connects: the global flags `--ssh-username`,
/// `--strict-host-key-checking`, `--known-hosts-file`, `--tunnel`, `--ssh-timeout`, and
/// `ssh --forward-agent`.
#[derive(Debug, Clone, PartialEq)]
pub struct SshOptions {
    pub username: String,
    pub strict_host_key_checking: bool,
    pub known_hosts_file: String,
    pub tunnel: Option<String>,
    pub forward_agent: bool,
    /// Seconds.
    pub timeout: f64,
}

/// What follows a `--` if there is one, else everything (fleet's `TrimToDashes`).
pub(crate) fn trim_to_dashes(args: &[String]) -> &[String] {
    match args.iter().position(|a| a == "--") {
        Some(i) => &args[i + 1..],
        None => args,
    }
}

/// The jump host as `ssh -J` takes it: `--ssh-username` unless the tunnel names a user.
pub(crate) fn tunnel_with_user(options: &SshOptions, tunnel: &str) -> String {
    if tunnel.contains('@') {
        tunnel.to_string()
    } else {
        format!("{}@{tunnel}", options.username)
    }
}

/// The arguments of the system `ssh` to reach `address` (and run `command` there, if any).
/// Host keys: checked against the known-hosts file (a new one was asked about and added
/// beforehand, as fleet did), or not checked at all. A tunnel is a jump host (`-J`).
pub fn ssh_args(options: &SshOptions, address: &str, command: &[String]) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    let mut option = |o: String| {
        args.push("-o".to_string());
        args.push(o);
    };
    if options.strict_host_key_checking {
        // The key was checked, and a new one asked about, by `known_hosts::verify`.
        option("StrictHostKeyChecking=yes".to_string());
        option(format!("UserKnownHostsFile={}", options.known_hosts_file));
    } else {
        option("StrictHostKeyChecking=no".to_string());
        option("UserKnownHostsFile=/dev/null".to_string());
    }
    if options.timeout.is_finite() && options.timeout > 0.0 {
        option(format!("ConnectTimeout={}", options.timeout.ceil() as u64));
    }
    if options.forward_agent {
        args.push("-A".to_string());
    }
    if let Some(tunnel) = &options.tunnel {
        args.push("-J".to_string());
        args.push(tunnel_with_user(options, tunnel));
    }
    args.push("-l".to_string());
    args.push(options.username.clone());
    args.push("--".to_string());
    args.push(address.to_string());
    args.extend(command.iter().cloned());
    args
}

// ---- rendering ----------------------------------------------------------------------------------

/// The first `n` characters of `s`, or `None` when it has no more than `n`. By character, not
/// byte: what the server sends may be short or not ASCII, and must not make fleetctl panic.
fn first_chars(s: &str, n: usize) -> Option<&str> {
    s.char_indices().nth(n).map(|(end, _)| &s[..end])
}

/// `arg` as a full machine id (32 hex digits, any case, surrounding spaces ignored), in
/// lower case; none when it is not one.
fn full_machine_id(arg: &str) -> Option<String> {
    let id = arg.trim().to_ascii_lowercase();
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

fn machine_id_legend(id: &str, full: bool) -> String {
    match first_chars(id, 8) {
        Some(short) if !full => format!("{short}..."),
        _ => id.to_string(),
    }
}

fn machine_full_legend(m: &Machine, full: bool) -> String {
    let legend = machine_id_legend(&m.id, full);
    if m.primary_ip.is_empty() {
        legend
    } else {
        format!("{legend}/{}", m.primary_ip)
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

pub(crate) fn short_hash(hash: &str, full: bool) -> String {
    match first_chars(hash, 7) {
        Some(short) if !full => short.to_string(),
        _ => hash.to_string(),
    }
}

/// Parses `--fields` against the known columns.
pub(crate) fn fields<'a>(
    listing: &Listing,
    known: &[&'a str],
    default: &[&'a str],
) -> Result<Vec<&'a str>, String> {
    let Some(spec) = &listing.fields else {
        return Ok(default.to_vec());
    };
    let mut out = Vec::new();
    for f in spec.split(',') {
        let f = f.trim();
        match known.iter().find(|k| **k == f) {
            Some(k) => out.push(*k),
            None => return Err(format!("Error: invalid fields: {f}")),
        }
    }
    if out.is_empty() {
        return Err("Error: no fields given".to_string());
    }
    Ok(out)
}

pub(crate) fn render(listing: &Listing, columns: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut lines = Vec::new();
    if !listing.no_legend {
        lines.push(columns.iter().map(|c| c.to_ascii_uppercase()).collect());
    }
    lines.extend(rows);
    table::render(&lines)
}

pub fn render_list_units(
    states: &[UnitState],
    machines: &[Machine],
    listing: &Listing,
) -> Result<String, String> {
    let columns = fields(
        listing,
        &["unit", "load", "active", "sub", "machine", "hash"],
        &["unit", "machine", "active", "sub"],
    )?;
    let by_id: BTreeMap<&str, &Machine> = machines.iter().map(|m| (m.id.as_str(), m)).collect();
    let mut states: Vec<&UnitState> = states.iter().collect();
    states.sort_by(|a, b| (&a.name, &a.machine_id).cmp(&(&b.name, &b.machine_id)));
    let rows = states
        .into_iter()
        .map(|s| {
            columns
                .iter()
                .map(|c| match *c {
                    "unit" => s.name.clone(),
                    "load" => or_dash(&s.systemd_load_state),
                    "active" => or_dash(&s.systemd_active_state),
                    "sub" => or_dash(&s.systemd_sub_state),
                    "machine" => match by_id.get(s.machine_id.as_str()) {
                        Some(m) => machine_full_legend(m, listing.full),
                        None => or_dash(&machine_id_legend(&s.machine_id, listing.full)),
                    },
                    "hash" => short_hash(&s.hash, listing.full),
                    _ => "-".to_string(),
                })
                .collect()
        })
        .collect();
    Ok(render(listing, &columns, rows))
}

pub fn render_list_unit_files(
    units: &[Unit],
    machines: &[Machine],
    listing: &Listing,
) -> Result<String, String> {
    let columns = fields(
        listing,
        &[
            "unit", "global", "dstate", "state", "target", "hash", "desc", "reason",
        ],
        &["unit", "hash", "dstate", "state", "target"],
    )?;
    let by_id: BTreeMap<&str, &Machine> = machines.iter().map(|m| (m.id.as_str(), m)).collect();
    let mut units: Vec<&Unit> = units.iter().collect();
    units.sort_by(|a, b| a.name.cmp(&b.name));
    let rows = units
        .into_iter()
        .map(|u| {
            let file = UnitFile::from_options(u.options.clone());
            let global = is_global(u);
            columns
                .iter()
                .map(|c| match *c {
                    "unit" => u.name.clone(),
                    "global" => global.to_string(),
                    "dstate" => or_dash(&u.desired_state),
                    "state" if global => "-".to_string(),
                    "state" => or_dash(&u.current_state),
                    "target" if global => "global".to_string(),
                    "target" => match by_id.get(u.machine_id.as_str()) {
                        Some(m) => machine_full_legend(m, listing.full),
                        None => or_dash(&machine_id_legend(&u.machine_id, listing.full)),
                    },
                    "hash" => short_hash(&file.hash().to_string(), listing.full),
                    "desc" => or_dash(file.description().unwrap_or("")),
                    "reason" => or_dash(&u.reason),
                    _ => "-".to_string(),
                })
                .collect()
        })
        .collect();
    Ok(render(listing, &columns, rows))
}

/// `fleetctl list-machines`: fleet's columns, and `STATE` (`active`, `draining`, `drained`)
/// when a machine is being drained or `--fields` asks for it.
pub fn render_list_machines(
    machines: &[Machine],
    drains: &[Drain],
    listing: &Listing,
) -> Result<String, String> {
    let defaults: &[&str] = if drains.is_empty() {
        &["machine", "ip", "metadata"]
    } else {
        &["machine", "ip", "metadata", "state"]
    };
    let columns = fields(listing, &["machine", "ip", "metadata", "state"], defaults)?;
    let state = |id: &str| {
        drains
            .iter()
            .find(|d| d.machine == id)
            .map_or("active", |d| d.state.as_str())
            .to_string()
    };
    let mut machines: Vec<&Machine> = machines.iter().collect();
    machines.sort_by(|a, b| a.id.cmp(&b.id));
    let rows = machines
        .into_iter()
        .map(|m| {
            columns
                .iter()
                .map(|c| match *c {
                    "machine" => machine_id_legend(&m.id, listing.full),
                    "ip" => or_dash(&m.primary_ip),
                    "state" => state(&m.id),
                    "metadata" => or_dash(
                        &m.metadata
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                    _ => "-".to_string(),
                })
                .collect()
        })
        .collect();
    Ok(render(listing, &columns, rows))
}

/// `fleetctl history`: one row per version, the current one first (`CURRENT` is `true`);
/// fields hash, since, until, current.
pub fn render_history(history: &UnitHistory, listing: &Listing) -> Result<String, String> {
    let columns = fields(
        listing,
        &["hash", "since", "until", "current"],
        &["hash", "since", "current"],
    )?;
    let rows = history
        .versions
        .iter()
        .map(|v| {
            columns
                .iter()
                .map(|c| match *c {
                    "hash" => short_hash(&v.hash, listing.full),
                    "since" => or_dash(&v.since),
                    "until" => or_dash(&v.until),
                    "current" => v.current.to_string(),
                    _ => "-".to_string(),
                })
                .collect()
        })
        .collect();
    Ok(render(listing, &columns, rows))
}

/// `fleetctl events`: one row per event, oldest first; fields time, kind, unit, machine,
/// message, source. Times to the second (to the millisecond with `--full`).
pub fn render_events(events: &[Event], listing: &Listing) -> Result<String, String> {
    let columns = fields(
        listing,
        &["time", "kind", "unit", "machine", "message", "source"],
        &["time", "kind", "unit", "machine", "message"],
    )?;
    let rows = events
        .iter()
        .map(|e| {
            columns
                .iter()
                .map(|c| match *c {
                    "time" => match e.time.split_once('.') {
                        Some((seconds, _)) if !listing.full => format!("{seconds}Z"),
                        _ => or_dash(&e.time),
                    },
                    "kind" => or_dash(&e.kind),
                    "unit" => or_dash(&e.unit),
                    "machine" => or_dash(&machine_id_legend(&e.machine, listing.full)),
                    "message" => or_dash(&e.message),
                    "source" => or_dash(&machine_id_legend(&e.source, listing.full)),
                    _ => "-".to_string(),
                })
                .collect()
        })
        .collect();
    Ok(render(listing, &columns, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing() -> Listing {
        Listing {
            fields: None,
            full: false,
            no_legend: false,
            output: Output::Table,
        }
    }

    fn machine(n: u8) -> Machine {
        Machine {
            id: format!("f1ee70{n:02}{}", "0".repeat(24)),
            primary_ip: format!("10.233.0.{}", 10 + n),
            metadata: [("hostname".to_string(), format!("node{n}"))].into(),
        }
    }

    fn state(name: &str, n: u8, active: &str, sub: &str) -> UnitState {
        UnitState {
            name: name.into(),
            hash: "0123456789abcdef0123456789abcdef01234567".into(),
            machine_id: machine(n).id,
            systemd_load_state: "loaded".into(),
            systemd_active_state: active.into(),
            systemd_sub_state: sub.into(),
        }
    }

    #[test]
    fn restart_starts_a_stopped_unit_and_refuses_an_unplaced_one() {
        let unit = |current: &str, global: bool| Unit {
            name: "web.service".into(),
            options: global
                .then(|| fleet_units::UnitOption {
                    section: "X-Fleet".into(),
                    name: "Global".into(),
                    value: "true".into(),
                })
                .into_iter()
                .collect(),
            current_state: current.into(),
            ..Default::default()
        };
        let stop_start = [("loaded", "stop"), ("launched", "start")];
        assert_eq!(restart_steps(&unit("launched", false)), Ok(&stop_start[..]));
        // fleet v1.0 starts a unit that is only loaded (after `stop`), rather than skip it.
        assert_eq!(
            restart_steps(&unit("loaded", false)),
            Ok(&[("launched", "start")][..])
        );
        assert_eq!(
            restart_steps(&unit("inactive", false)),
            Err("Unable to restart unit web.service in state inactive".to_string())
        );
        // A global unit has no current state of its own: stopped and started everywhere.
        assert_eq!(restart_steps(&unit("", true)), Ok(&stop_start[..]));
    }

    #[test]
    fn history_golden() {
        let version = |hash: &str, since: &str, until: &str, current: bool| {
            fleet_client::schema::UnitVersion {
                hash: hash.repeat(40),
                since: since.into(),
                until: until.into(),
                current,
                options: Vec::new(),
            }
        };
        let history = UnitHistory {
            name: "web.service".into(),
            versions: vec![
                version("b", "2016-05-04T10:02:11Z", "", true),
                version("a", "", "2016-05-04T10:02:11Z", false),
            ],
        };
        assert_eq!(
            render_history(&history, &listing()).unwrap(),
            "HASH\tSINCE\t\t\tCURRENT\n\
             bbbbbbb\t2016-05-04T10:02:11Z\ttrue\n\
             aaaaaaa\t-\t\t\tfalse\n"
        );
        let wide = Listing {
            fields: Some("hash,until".into()),
            full: true,
            no_legend: true,
            ..listing()
        };
        assert_eq!(
            render_history(&history, &wide).unwrap(),
            format!(
                "{}\t-\n{}\t2016-05-04T10:02:11Z\n",
                "b".repeat(40),
                "a".repeat(40)
            )
        );
    }

    #[test]
    fn events_golden() {
        let source = machine(1).id;
        let event = |time: &str, kind: &str, unit: &str, on: &str, message: &str| Event {
            time: time.into(),
            kind: kind.into(),
            unit: unit.into(),
            machine: on.into(),
            message: message.into(),
            source: source.clone(),
        };
        let events = [
            event(
                "2016-05-04T10:02:11.042Z",
                "placed",
                "web.service",
                &machine(2).id,
                "least loaded of 3 machines (load 0)",
            ),
            event(
                "2016-05-04T10:02:12.500Z",
                "declared-dead",
                "",
                &machine(3).id,
                "its lease is gone",
            ),
        ];
        assert_eq!(
            render_events(&events, &listing()).unwrap(),
            "TIME\t\t\tKIND\t\tUNIT\t\tMACHINE\t\tMESSAGE\n\
             2016-05-04T10:02:11Z\tplaced\t\tweb.service\tf1ee7002...\tleast loaded of 3 machines (load 0)\n\
             2016-05-04T10:02:12Z\tdeclared-dead\t-\t\tf1ee7003...\tits lease is gone\n"
        );
        let wide = Listing {
            fields: Some("time,source,kind".into()),
            full: true,
            no_legend: true,
            ..listing()
        };
        assert_eq!(
            render_events(&events[..1], &wide).unwrap(),
            format!("2016-05-04T10:02:11.042Z\t{}\tplaced\n", machine(1).id)
        );
        let bad = Listing {
            fields: Some("time,hash".into()),
            ..listing()
        };
        assert!(render_events(&events, &bad).is_err());
    }

    #[test]
    fn list_machines_golden() {
        let out = render_list_machines(&[machine(2), machine(1)], &[], &listing()).unwrap();
        assert_eq!(
            out,
            "MACHINE\t\tIP\t\tMETADATA\n\
             f1ee7001...\t10.233.0.11\thostname=node1\n\
             f1ee7002...\t10.233.0.12\thostname=node2\n"
        );
    }

    #[test]
    fn list_machines_shows_states_while_a_machine_is_drained() {
        let drain = Drain {
            machine: machine(2).id,
            since: "2026-12-01T17:00:00Z".into(),
            state: "draining".into(),
            units: 2,
            stopping: 1,
        };
        let out = render_list_machines(&[machine(2), machine(1)], &[drain], &listing()).unwrap();
        assert_eq!(
            out,
            "MACHINE\t\tIP\t\tMETADATA\tSTATE\n\
             f1ee7001...\t10.233.0.11\thostname=node1\tactive\n\
             f1ee7002...\t10.233.0.12\thostname=node2\tdraining\n"
        );
        let mut fields = listing();
        fields.fields = Some("machine,state".into());
        let out = render_list_machines(&[machine(1)], &[], &fields).unwrap();
        assert_eq!(out, "MACHINE\t\tSTATE\nf1ee7001...\tactive\n");
    }

    #[test]
    fn list_units_golden() {
        let states = [
            state("web.service", 2, "active", "running"),
            state("hello.service", 1, "inactive", "dead"),
        ];
        let out = render_list_units(&states, &[machine(1), machine(2)], &listing()).unwrap();
        assert_eq!(
            out,
            "UNIT\t\tMACHINE\t\t\tACTIVE\t\tSUB\n\
             hello.service\tf1ee7001.../10.233.0.11\tinactive\tdead\n\
             web.service\tf1ee7002.../10.233.0.12\tactive\t\trunning\n"
        );
        let quiet = Listing {
            no_legend: true,
            fields: Some("unit,hash".into()),
            full: false,
            output: Output::Table,
        };
        assert_eq!(
            render_list_units(&states[..1], &[], &quiet).unwrap(),
            "web.service\t0123456\n"
        );
    }

    #[test]
    fn list_unit_files_golden() {
        let unit = Unit {
            name: "hello.service".into(),
            options: vec![fleet_units::UnitOption::new(
                "Service",
                "ExecStart",
                "/bin/true",
            )],
            desired_state: "launched".into(),
            current_state: "launched".into(),
            machine_id: machine(1).id,
            ..Default::default()
        };
        let hash = UnitFile::from_options(unit.options.clone()).hash().short();
        let out = render_list_unit_files(&[unit], &[machine(1)], &listing()).unwrap();
        assert_eq!(
            out,
            format!(
                "UNIT\t\tHASH\tDSTATE\t\tSTATE\t\tTARGET\n\
                 hello.service\t{hash}\tlaunched\tlaunched\tf1ee7001.../10.233.0.11\n"
            )
        );
    }

    #[test]
    fn short_or_non_ascii_answers_are_shown_not_a_panic() {
        // Byte slicing once panicked on these (a multi-byte character across byte 8 or 7).
        let odd = [
            "",
            "f1ee",
            "f1ee7001",
            "é",
            "aéééééééé",
            "f1ee700é1234",
            "ab€cdefghi",
        ];
        let machines: Vec<Machine> = odd
            .iter()
            .map(|id| Machine {
                id: id.to_string(),
                primary_ip: String::new(),
                metadata: Default::default(),
            })
            .collect();
        let states: Vec<UnitState> = odd
            .iter()
            .map(|id| UnitState {
                hash: id.to_string(),
                machine_id: id.to_string(),
                ..state("x.service", 1, "active", "running")
            })
            .collect();
        let all = Listing {
            fields: Some("unit,machine,hash".into()),
            ..listing()
        };
        render_list_machines(&machines, &[], &listing()).unwrap();
        let out = render_list_units(&states, &[], &all).unwrap();
        assert!(out.contains("\taééééééé...\taéééééé\n"), "{out}");
        assert!(out.contains("\tf1ee\t"), "{out}");
        assert!(out.contains("ab€cdef\n"), "{out}");
        render_list_units(&states, &machines, &all).unwrap();
        assert_eq!(machine_id_legend("aéééééééé", true), "aéééééééé");
        assert_eq!(short_hash("ab€cdefghi", true), "ab€cdefghi");
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ssh_arguments() {
        let base = SshOptions {
            username: "core".into(),
            strict_host_key_checking: true,
            known_hosts_file: "/home/u/.fleetctl/known_hosts".into(),
            tunnel: None,
            forward_agent: false,
            timeout: 10.0,
        };
        let cases: Vec<(SshOptions, Vec<&str>, Vec<&str>)> = vec![
            (
                base.clone(),
                vec![],
                vec![
                    "-o",
                    "StrictHostKeyChecking=yes",
                    "-o",
                    "UserKnownHostsFile=/home/u/.fleetctl/known_hosts",
                    "-o",
                    "ConnectTimeout=10",
                    "-l",
                    "core",
                    "--",
                    "10.233.0.12",
                ],
            ),
            (
                SshOptions {
                    username: "admin".into(),
                    strict_host_key_checking: false,
                    tunnel: Some("bastion.example.com:2222".into()),
                    forward_agent: true,
                    timeout: 2.5,
                    ..base.clone()
                },
                vec!["systemctl", "status", "-l", "x.service"],
                vec![
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "-o",
                    "ConnectTimeout=3",
                    "-A",
                    "-J",
                    "admin@bastion.example.com:2222",
                    "-l",
                    "admin",
                    "--",
                    "10.233.0.12",
                    "systemctl",
                    "status",
                    "-l",
                    "x.service",
                ],
            ),
            (
                SshOptions {
                    tunnel: Some("jump@10.0.0.1".into()),
                    timeout: 0.0,
                    ..base.clone()
                },
                vec!["-oProxyCommand=evil"],
                vec![
                    "-o",
                    "StrictHostKeyChecking=yes",
                    "-o",
                    "UserKnownHostsFile=/home/u/.fleetctl/known_hosts",
                    "-J",
                    "jump@10.0.0.1",
                    "-l",
                    "core",
                    "--",
                    "10.233.0.12",
                    "-oProxyCommand=evil",
                ],
            ),
        ];
        for (options, command, want) in cases {
            assert_eq!(
                ssh_args(&options, "10.233.0.12", &strings(&command)),
                strings(&want),
                "{options:?} {command:?}"
            );
        }
    }

    #[test]
    fn dashes_are_trimmed() {
        assert_eq!(
            trim_to_dashes(&strings(&["ls", "-l"])),
            strings(&["ls", "-l"])
        );
        assert_eq!(
            trim_to_dashes(&strings(&["--", "ls", "--", "x"])),
            strings(&["ls", "--", "x"])
        );
        assert!(trim_to_dashes(&strings(&["--"])).is_empty());
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(0), 0);
        assert_eq!(exit_code(3), 3);
        assert_eq!(exit_code(-1), 1);
        assert_eq!(exit_code(256), 1);
    }

    #[test]
    fn replace_follows_fleets_state_rules() {
        let cases = [
            ("submit", "inactive", true),
            ("submit", "loaded", false),
            ("submit", "launched", false),
            ("load", "inactive", true),
            ("load", "loaded", true),
            ("load", "launched", false),
            ("start", "inactive", true),
            ("start", "loaded", true),
            ("start", "launched", true),
            ("stop", "launched", false),
        ];
        for (command, state, want) in cases {
            assert_eq!(
                replace_allowed(command, state),
                want,
                "{command} in {state}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let bad = Listing {
            fields: Some("unit,bogus".into()),
            full: false,
            no_legend: false,
            output: Output::Table,
        };
        assert!(render_list_machines(&[], &[], &bad).is_err());
    }
}
