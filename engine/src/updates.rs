//! The engine's side of rolling updates: each step of each update that is not over, read from
//! the cluster, decided by [`crate::update::step`], recorded (fenced on the leadership, and
//! conditioned on the record read), then carried out. The writes are level-triggered, so a
//! step interrupted after its record is carried out by the next one, under any leader.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_registry::{
    Error, Event, EventKind, JobState, Leadership, MachineId, Phase, Recorder, Registry,
    StoredUpdate, UpdateState, FINISHED_UPDATES_KEPT,
};
use fleet_units::UnitName;

use crate::update::{step, target, Action, Observed};

/// How often the units of a running update are looked at.
pub const TICK: Duration = Duration::from_millis(250);

/// Steps every update that is not over, given the units machines are `stopping` for moves;
/// removes the oldest finished ones beyond [`FINISHED_UPDATES_KEPT`]. Whether one is still
/// going (to look again in [`TICK`]).
pub async fn drive_all(
    registry: &Registry,
    leadership: Leadership,
    updates: &BTreeMap<String, StoredUpdate>,
    stopping: &BTreeSet<(MachineId, UnitName)>,
    events: &Recorder,
) -> Result<bool, Error> {
    let running: Vec<&StoredUpdate> = updates
        .values()
        .filter(|s| !s.update.state.is_final())
        .collect();
    // Instances of each template stopping, for MaxUnavailable: counted only while an update
    // runs (this is called on every pass of the engine).
    let mut stopping_by_template: BTreeMap<UnitName, usize> = BTreeMap::new();
    if !running.is_empty() {
        for (_, name) in stopping {
            if let Some(t) = name.template() {
                *stopping_by_template.entry(t).or_default() += 1;
            }
        }
    }
    let stopping = &stopping_by_template;
    let going = !running.is_empty();
    for stored in running {
        // One update's trouble (a unit too large to write, say) holds up no other.
        match drive(registry, leadership, stored, stopping, events).await {
            Err(Error::NotLeader) => return Err(Error::NotLeader),
            Err(e) => {
                tracing::warn!(update = %stored.update.id, error = %e, "update step not taken")
            }
            Ok(()) => {}
        }
    }
    let mut finished: Vec<&StoredUpdate> = updates
        .values()
        .filter(|s| s.update.state.is_final())
        .collect();
    if finished.len() > FINISHED_UPDATES_KEPT {
        finished.sort_by_key(|s| (s.update.ended_ms, s.update.created_ms));
        for old in &finished[..finished.len() - FINISHED_UPDATES_KEPT] {
            registry
                .delete_update(&old.update.id, old.revision, leadership)
                .await?;
        }
    }
    Ok(going)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

async fn drive(
    registry: &Registry,
    leadership: Leadership,
    stored: &StoredUpdate,
    stopping: &BTreeMap<UnitName, usize>,
    events: &Recorder,
) -> Result<(), Error> {
    let update = &stored.update;
    let mut observed = BTreeMap::new();
    let gone = Observed {
        content: None,
        desired: JobState::Inactive,
        running: None,
        health: None,
    };
    for unit in update
        .units
        .iter()
        .filter(|u| matches!(u.phase, Phase::Updating | Phase::Reverting))
    {
        let seen = match &unit.machine {
            Some(machine) => match registry.global_unit_on(&unit.name, machine).await? {
                None => gone.clone(),
                Some(on) => Observed {
                    content: on.content,
                    desired: on.unit.desired_state,
                    health: on.state.as_ref().and_then(|s| s.health.clone()),
                    running: on.state.map(|s| (s.hash, s.systemd_active_state)),
                },
            },
            None => match registry.unit_view(&unit.name).await? {
                None => gone.clone(),
                Some(view) => Observed {
                    content: Some(view.unit.hash()),
                    desired: view.unit.desired_state,
                    health: view.state.as_ref().and_then(|s| s.health.clone()),
                    running: view.state.map(|s| (s.hash, s.systemd_active_state)),
                },
            },
        };
        observed.insert(target(unit), seen);
    }
    let (next, actions) = step(update, &observed, stopping, now_ms(), leadership.revision);
    // Versions made moot go before the update is recorded done, so that a step cut short
    // removes them again (the next step decides done again): the record's last word.
    let (forget, actions): (Vec<Action>, Vec<Action>) = actions
        .into_iter()
        .partition(|a| matches!(a, Action::Forget(..)));
    for action in forget {
        if let Action::Forget(name, machines) = action {
            let versions: Vec<_> = machines.into_iter().map(|m| (m, name.clone())).collect();
            registry.clear_versions(&versions, leadership).await?;
        }
    }
    if next != *update {
        if !registry
            .write_update(&next, stored.layout, stored.revision, Some(leadership))
            .await?
        {
            // Changed meanwhile (paused, say): the next step starts from the new record.
            return Ok(());
        }
        for (before, after) in update.units.iter().zip(&next.units) {
            if before.phase != after.phase {
                let failure = after
                    .failure
                    .as_deref()
                    .map(|f| format!(": {f}"))
                    .unwrap_or_default();
                let mut event = Event::new(
                    EventKind::UpdateStep,
                    format!("update {}: {}{failure}", next.id, after.phase.as_str()),
                )
                .unit(&after.name);
                if let Some(machine) = &after.machine {
                    event = event.machine(machine);
                }
                events.record(event);
            }
        }
        if next.state != update.state {
            let reason = next
                .reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            let message = format!("update {} {}{reason}", next.id, next.state.as_str());
            let kind = match next.state {
                UpdateState::Reverting | UpdateState::Reverted => EventKind::Reverted,
                _ => EventKind::UpdateStep,
            };
            events.record(Event::new(kind, message));
        }
    }
    for action in actions {
        match action {
            Action::Write((name, Some(machine))) => {
                registry
                    .set_version(&machine, &name, &next.id, &next.options, leadership)
                    .await?;
            }
            Action::Write((name, None)) => {
                registry
                    .set_unit_options(&name, &next.options, Some(leadership))
                    .await?;
            }
            Action::Revert((name, Some(machine)), _) => {
                registry
                    .clear_versions(&[(machine, name)], leadership)
                    .await?;
            }
            // Taken before the record was written.
            Action::Forget(..) => {}
            Action::Revert((name, None), from) => {
                let Some(previous) = next.previous.iter().find(|p| p.hash == from) else {
                    tracing::warn!(update = %next.id, unit = %name, "no previous content to revert to");
                    continue;
                };
                registry
                    .set_unit_options(&name, &previous.options, Some(leadership))
                    .await?;
            }
        }
    }
    Ok(())
}
