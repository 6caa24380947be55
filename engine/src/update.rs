//! Rolling updates: the decision of one step, pure, from an update's record and what the
//! cluster says of its units now ([`step`]); the engine loop reads, decides, records, then acts.
//!
//! A unit is **down because of the update** from when it is given new content until it is
//! healthy on it (`updating`), while it has failed, and from when it is given its old content
//! back until it runs again (`reverting`): at most `max_parallel` at any time. A unit is
//! healthy once it has run its new content without a break (active, the same content) for
//! `min_healthy`; it fails when systemd says it failed on it, or when `healthy_deadline` passes
//! first. Then, with `auto_revert`, every unit the update touched goes back to its content
//! before the update, the failed and updating ones at once (they are down already), the healthy
//! ones as the bound allows, each waiting to run again; without it the update stops there.
//! Units whose desired state is not `launched` do not run: written, they are done. A unit whose
//! new content declares a `HealthCheck` must also have its machine report the check passing
//! for it to count as running (reverted units need only run). A template whose new content
//! declares `MaxUnavailable` bounds its instances as drains do, counting both: an instance is
//! not taken down by the update while as many of that template are down, in this update or
//! stopping for a move (a drain's), as it allows.
//!
//! A global unit is updated **machine by machine**: one entry per machine that ran it when the
//! update was asked for, each given the new content as that machine's version (see
//! `fleet_registry`'s `update.rs`) and judged on what that machine reports, within the same
//! bound; reverting one removes its version. Once every machine of every unit of the update
//! is healthy (so that nothing can fail any more), a last entry per unit writes its own content
//! (restarting nothing: the machines run it already), and the update is done; its versions,
//! moot once the unit is written, are removed before it is recorded done.

use std::collections::BTreeMap;

use fleet_registry::{JobState, MachineId, Phase, Update, UpdateState, UpdateUnit};
use fleet_units::{UnitHash, UnitName};

/// One entry of an update as observed: a unit, or one machine's copy of a global unit.
pub type Target = (UnitName, Option<MachineId>);

/// The target an entry of an update is.
pub fn target(unit: &UpdateUnit) -> Target {
    (unit.name.clone(), unit.machine.clone())
}

/// What the cluster says of one entry of an update now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The unit's content now, for one machine's copy of a global unit the content that
    /// machine is to run (`None`: the unit is gone, or that machine is).
    pub content: Option<UnitHash>,
    pub desired: JobState,
    /// What its machine last published: the content it runs and systemd's active state.
    pub running: Option<(UnitHash, String)>,
    /// What its health check said last, as its machine published it.
    pub health: Option<String>,
}

/// A write the update needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Give the unit the update's content: its own, or with a machine, that machine's version.
    Write(Target),
    /// Give the unit back its content before (the hash names it), or with a machine, remove
    /// that machine's version.
    Revert(Target, UnitHash),
    /// Remove the versions these machines have of a global unit whose own content is now the
    /// update's.
    Forget(UnitName, Vec<MachineId>),
}

/// The next record of `update` and the writes to make, given what is `observed` of its units
/// (those updating or reverting; a unit missing from `observed` is taken as unknown: not
/// judged) and how many instances of each template are `stopping` for moves, at `now_ms` by the
/// leadership `leader` (its revision). The writes are
/// level-triggered: a unit whose content is not yet what its phase wants is written again at
/// every step. A unit that does not run again after its revert ends the update, failed: the
/// old content fails too, and going on would take one unit after another down.
pub fn step(
    update: &Update,
    observed: &BTreeMap<Target, Observed>,
    stopping: &BTreeMap<UnitName, usize>,
    now_ms: u64,
    leader: i64,
) -> (Update, Vec<Action>) {
    let mut next = update.clone();
    let mut actions = Vec::new();
    if next.state.is_final() {
        return (next, actions);
    }
    if next.stamped_by != leader {
        // Times written by another machine's clock: waits start again on this one's.
        for unit in &mut next.units {
            if matches!(unit.phase, Phase::Updating | Phase::Reverting) {
                unit.since_ms = Some(now_ms);
                unit.up_since_ms = None;
            }
        }
        next.stamped_by = leader;
    }
    let mut revert_failed = None;
    let new = update.hash();
    let (min_healthy, deadline) = (update.min_healthy_ms, update.healthy_deadline_ms);
    let new_file = fleet_units::UnitFile::from_options(update.options.clone());
    let checked = |name: &UnitName| {
        fleet_units::Requirements::from_unit(name, &new_file)
            .is_ok_and(|(req, _)| req.health_check.is_some())
    };
    // Judge the units in flight.
    for unit in &mut next.units {
        let Some(seen) = observed.get(&target(unit)) else {
            continue;
        };
        match unit.phase {
            Phase::Updating => match judge(
                unit,
                seen,
                (new, checked(&unit.name)),
                (min_healthy, deadline),
                now_ms,
            ) {
                Judged::Up => set_phase(unit, Phase::Healthy, now_ms),
                Judged::Down(Some(failure)) => {
                    unit.failure = Some(failure);
                    set_phase(unit, Phase::Failed, now_ms);
                }
                Judged::Down(None) => {
                    if seen.content.is_some_and(|c| c != new) {
                        actions.push(Action::Write(target(unit)));
                    }
                }
            },
            Phase::Reverting => match judge(
                unit,
                seen,
                (unit.from, false),
                (min_healthy, deadline),
                now_ms,
            ) {
                Judged::Up => set_phase(unit, Phase::Reverted, now_ms),
                Judged::Down(Some(failure)) => {
                    unit.failure = Some(format!("after reverting: {failure}"));
                    set_phase(unit, Phase::Failed, now_ms);
                    revert_failed
                        .get_or_insert(format!("{} did not run again: {failure}", unit.name));
                }
                Judged::Down(None) => {
                    if seen.content.is_some_and(|c| c != unit.from) {
                        actions.push(Action::Revert(target(unit), unit.from));
                    }
                }
            },
            _ => {}
        }
    }
    if let Some(reason) = revert_failed {
        next.state = UpdateState::Failed;
        next.reason = Some(reason);
        next.ended_ms = Some(now_ms);
        return (next, actions);
    }
    // A failure reverts or stops the update.
    if matches!(next.state, UpdateState::Running | UpdateState::Paused) {
        if let Some(failed) = next.units.iter().find(|u| u.phase == Phase::Failed) {
            let reason = format!(
                "{} did not become healthy: {}",
                failed.name,
                failed.failure.as_deref().unwrap_or("unknown")
            );
            next.reason = Some(reason);
            if next.auto_revert {
                next.state = UpdateState::Reverting;
            } else {
                next.state = UpdateState::Failed;
                next.ended_ms = Some(now_ms);
                return (next, actions);
            }
        }
    }
    let limit = next.max_parallel.max(1) as usize;
    let down = |units: &[UpdateUnit]| units.iter().filter(|u| is_down(u)).count();
    match next.state {
        UpdateState::Running => {
            let mut in_flight = down(&next.units);
            // The global units' own content once every machine of every unit of the update is
            // healthy: writing it cannot fail, so it never has to be written back.
            let machines_healthy = next
                .units
                .iter()
                .filter(|u| !u.is_global_content())
                .all(|u| u.phase == Phase::Healthy);
            // Instances down per template, by this update and by moves, for MaxUnavailable.
            let mut template_down: BTreeMap<UnitName, usize> = stopping.clone();
            for unit in &next.units {
                if let (Some(t), true) = (unit.name.template(), is_down(unit)) {
                    *template_down.entry(t).or_default() += 1;
                }
            }
            let max_unavailable = |name: &UnitName| {
                fleet_units::Requirements::from_unit(name, &new_file)
                    .ok()
                    .and_then(|(req, _)| req.max_unavailable)
            };
            for unit in &mut next.units {
                if unit.phase != Phase::Pending {
                    continue;
                }
                if unit.is_global_content() {
                    if machines_healthy {
                        set_phase(unit, Phase::Updating, now_ms);
                        actions.push(Action::Write(target(unit)));
                    }
                    continue;
                }
                if in_flight >= limit {
                    break;
                }
                if let (Some(t), Some(most)) = (unit.name.template(), max_unavailable(&unit.name)) {
                    let down = template_down.entry(t).or_default();
                    if *down >= most as usize {
                        continue;
                    }
                    *down += 1;
                }
                set_phase(unit, Phase::Updating, now_ms);
                actions.push(Action::Write(target(unit)));
                in_flight += 1;
            }
            if next.units.iter().all(|u| u.phase == Phase::Healthy) {
                next.state = UpdateState::Done;
                next.ended_ms = Some(now_ms);
                // The versions are moot now that the units' own content is the new one.
                let mut versions: BTreeMap<&UnitName, Vec<MachineId>> = BTreeMap::new();
                for unit in &next.units {
                    if let Some(machine) = &unit.machine {
                        versions
                            .entry(&unit.name)
                            .or_default()
                            .push(machine.clone());
                    }
                }
                actions.extend(
                    versions
                        .into_iter()
                        .map(|(name, machines)| Action::Forget(name.clone(), machines)),
                );
            }
        }
        UpdateState::Reverting => {
            // The failed and updating ones at once: they are down already (and a global unit's
            // own content, which takes nothing down).
            for unit in &mut next.units {
                let own_written = unit.is_global_content() && unit.phase == Phase::Healthy;
                if own_written || matches!(unit.phase, Phase::Failed | Phase::Updating) {
                    set_phase(unit, Phase::Reverting, now_ms);
                    actions.push(Action::Revert(target(unit), unit.from));
                }
            }
            let mut in_flight = down(&next.units);
            for unit in &mut next.units {
                if in_flight >= limit {
                    break;
                }
                if unit.phase == Phase::Healthy {
                    set_phase(unit, Phase::Reverting, now_ms);
                    actions.push(Action::Revert(target(unit), unit.from));
                    in_flight += 1;
                }
            }
            if next
                .units
                .iter()
                .all(|u| matches!(u.phase, Phase::Pending | Phase::Reverted))
            {
                next.state = UpdateState::Reverted;
                next.ended_ms = Some(now_ms);
            }
        }
        _ => {}
    }
    (next, actions)
}

/// Whether `unit` is down because of its update. A global unit's own content takes nothing
/// down: its machines run it already.
pub fn is_down(unit: &UpdateUnit) -> bool {
    !unit.is_global_content()
        && matches!(
            unit.phase,
            Phase::Updating | Phase::Failed | Phase::Reverting
        )
}

enum Judged {
    /// Healthy on the content it should run.
    Up,
    /// Not (yet): with why, when it has failed.
    Down(Option<String>),
}

/// Whether `unit`, in its phase since `since_ms`, runs `want` healthily now (with its health
/// check passing when `checked`), updating when it has been seen running it without a break.
fn judge(
    unit: &mut UpdateUnit,
    seen: &Observed,
    (want, checked): (UnitHash, bool),
    (min_healthy_ms, healthy_deadline_ms): (u64, u64),
    now_ms: u64,
) -> Judged {
    let Some(content) = seen.content else {
        // Destroyed meanwhile, or the machine is gone: nothing to wait for.
        return Judged::Up;
    };
    if unit.is_global_content() {
        // Written is done: its machines run it already.
        return if content == want {
            Judged::Up
        } else {
            Judged::Down(None)
        };
    }
    let since = unit.since_ms.unwrap_or(now_ms);
    if content == want && seen.desired != JobState::Launched {
        return Judged::Up;
    }
    match &seen.running {
        Some((hash, active))
            if *hash == want
                && active == "active"
                && content == want
                && (!checked || seen.health.as_deref() == Some("ok")) =>
        {
            let up = *unit.up_since_ms.get_or_insert(now_ms);
            if now_ms.saturating_sub(up) >= min_healthy_ms {
                return Judged::Up;
            }
            Judged::Down(None)
        }
        Some((hash, active)) if *hash == want && active == "failed" && content == want => {
            unit.up_since_ms = None;
            Judged::Down(Some("systemd reports it failed".to_string()))
        }
        other => {
            // A break (a restart, a stop) starts the wait again.
            unit.up_since_ms = None;
            if now_ms.saturating_sub(since) >= healthy_deadline_ms {
                let what = match (other, &seen.health) {
                    (Some((_, active)), Some(health)) if checked && health != "ok" => {
                        format!("{active}, health check {health}")
                    }
                    (Some((_, active)), _) => active.to_string(),
                    (None, _) => "no state reported".to_string(),
                };
                return Judged::Down(Some(format!(
                    "not healthy within {} s ({what})",
                    healthy_deadline_ms / 1000
                )));
            }
            Judged::Down(None)
        }
    }
}

fn set_phase(unit: &mut UpdateUnit, phase: Phase, now_ms: u64) {
    unit.phase = phase;
    unit.since_ms = Some(now_ms);
    unit.up_since_ms = None;
}

#[cfg(test)]
mod tests;
