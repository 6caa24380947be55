//! Rolling updates (issue 11; not in fleet's API, which stays as it was): `POST /updates`
//! asks for one (201 with the update), `GET /updates` lists those kept, `GET /updates/{id}`
//! reads one, and `POST /updates/{id}/pause|resume|abort` steer it. The engine leader does the
//! work (`fleet_engine::update`). Bodies and names are validated before the registry is asked
//! anything, and a refused request changes nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::Json;
use fleet_client::schema;
use fleet_registry::{
    CreateUpdateError, Event, EventKind, PreviousContent, StoredUpdate, Update, UpdateState,
    UpdateUnit, MAX_UPDATE_MACHINES,
};
use fleet_units::{Requirements, UnitFile, UnitName};

use crate::events::record;
use crate::server::{json_body, parse_name, Api, ApiError, NameParam};

/// The most units one update takes: its units are claimed in the transaction that creates it
/// and released in the one that ends it, each within etcd's 128 operations.
pub const MAX_UPDATE_UNITS: usize = 127;
const DEFAULT_MIN_HEALTHY_MS: u64 = 10_000;
const DEFAULT_DEADLINE_MS: u64 = 300_000;
const MAX_MIN_HEALTHY_MS: u64 = 3_600_000;
const MAX_DEADLINE_MS: u64 = 86_400_000;

fn json(update: Update) -> Json<serde_json::Value> {
    Json(serde_json::to_value(update).unwrap_or_default())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// What a valid request asks for, before any unit is read.
struct Asked {
    units: Vec<UnitName>,
    file: UnitFile,
    max_parallel: u32,
    min_healthy_ms: u64,
    healthy_deadline_ms: u64,
    auto_revert: bool,
}

fn validate(body: &[u8]) -> Result<Asked, ApiError> {
    let bad = |m: String| ApiError::bad_request(m);
    let request: schema::UpdateRequest =
        serde_json::from_slice(body).map_err(|e| bad(format!("unable to decode body: {e}")))?;
    if request.units.is_empty() {
        return Err(bad("an update needs at least one unit".into()));
    }
    if request.units.len() > MAX_UPDATE_UNITS {
        return Err(bad(format!(
            "an update takes at most {MAX_UPDATE_UNITS} units, not {}",
            request.units.len()
        )));
    }
    let mut units = Vec::with_capacity(request.units.len());
    for name in &request.units {
        let name = parse_name(name)?;
        if name.is_template() {
            return Err(bad(format!(
                "unit {name} is a template: update its instances"
            )));
        }
        if units.contains(&name) {
            return Err(bad(format!("unit {name} is named twice")));
        }
        units.push(name);
    }
    if request.options.is_empty() {
        return Err(bad("an update needs the units' new options".into()));
    }
    let file = UnitFile::from_options(request.options)
        .normalized()
        .map_err(|e| bad(format!("invalid unit options: {e}")))?;
    let mut max_parallel = request.max_parallel.unwrap_or(1);
    if max_parallel == 0 {
        return Err(bad("maxParallel must be at least 1".into()));
    }
    for name in &units {
        let (req, _) =
            Requirements::from_unit(name, &file).map_err(|e| bad(format!("{name}: {e}")))?;
        // A template's MaxUnavailable bounds its instances' updates as it bounds drains.
        if let (Some(limit), true) = (req.max_unavailable, name.is_instance()) {
            max_parallel = max_parallel.min(limit);
        }
    }
    let min_healthy_ms = request.min_healthy_ms.unwrap_or(DEFAULT_MIN_HEALTHY_MS);
    if min_healthy_ms > MAX_MIN_HEALTHY_MS {
        return Err(bad(format!(
            "minHealthyMs must be at most {MAX_MIN_HEALTHY_MS}"
        )));
    }
    let healthy_deadline_ms = request
        .healthy_deadline_ms
        .unwrap_or(DEFAULT_DEADLINE_MS.max(min_healthy_ms + 10_000));
    if healthy_deadline_ms <= min_healthy_ms || healthy_deadline_ms > MAX_DEADLINE_MS {
        return Err(bad(format!(
            "healthyDeadlineMs must be more than minHealthyMs and at most {MAX_DEADLINE_MS}"
        )));
    }
    Ok(Asked {
        units,
        file,
        max_parallel,
        min_healthy_ms,
        healthy_deadline_ms,
        auto_revert: request.auto_revert,
    })
}

pub(crate) async fn create_update(
    State(api): State<Api>,
    request: Request<Body>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let body = json_body(request).await?;
    let request = validate(&body)?;
    let global = fleet_units::is_global(&request.file);
    let mut units = Vec::with_capacity(request.units.len());
    let mut previous: Vec<PreviousContent> = Vec::new();
    for name in &request.units {
        let Some(unit) = api.registry.unit(name).await? else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("unit {name} does not exist"),
            ));
        };
        if unit.is_global() != global {
            let (was, is) = if global {
                ("not global", "is")
            } else {
                ("global", "is not")
            };
            return Err(ApiError::bad_request(format!(
                "unit {name} is {was} and the new content {is}: an update cannot change that \
                 (destroy the unit and start it again)"
            )));
        }
        let from = unit.hash();
        if !previous.iter().any(|p| p.hash == from) {
            previous.push(PreviousContent {
                hash: from,
                options: unit.options.clone(),
            });
        }
        if global {
            // Machine by machine, those that run it now, then its own content.
            let mut machines: Vec<_> = api
                .registry
                .unit_machines(name)
                .await?
                .map(|m| m.machines.into_iter().map(|m| m.id).collect())
                .unwrap_or_default();
            machines.sort();
            for machine in machines {
                let mut entry = UpdateUnit::pending(name.clone(), from);
                entry.machine = Some(machine);
                entry.global = true;
                units.push(entry);
            }
            let mut own = UpdateUnit::pending(name.clone(), from);
            own.global = true;
            units.push(own);
        } else {
            units.push(UpdateUnit::pending(name.clone(), from));
        }
        let machines = units.iter().filter(|u| u.machine.is_some()).count();
        if machines > MAX_UPDATE_MACHINES {
            return Err(ApiError::bad_request(format!(
                "an update takes at most {MAX_UPDATE_MACHINES} machines of global units: \
                 update fewer units at once"
            )));
        }
    }
    let created_ms = now_ms();
    let mut update = Update {
        id: format!("{created_ms:x}"),
        created_ms,
        options: request.file.into_options(),
        max_parallel: request.max_parallel,
        min_healthy_ms: request.min_healthy_ms,
        healthy_deadline_ms: request.healthy_deadline_ms,
        auto_revert: request.auto_revert,
        state: UpdateState::Running,
        reason: None,
        ended_ms: None,
        units,
        previous,
        stamped_by: 0,
    };
    for attempt in 1..=5 {
        match api.registry.create_update(&update).await {
            Ok(()) => {
                record(
                    &api,
                    Event::new(
                        EventKind::UpdateStep,
                        format!(
                            "update {} asked for: {}, {} at a time",
                            update.id,
                            what(&update),
                            update.max_parallel
                        ),
                    ),
                )
                .await;
                return Ok((StatusCode::CREATED, json(update)));
            }
            // Two asked for in the same millisecond.
            Err(CreateUpdateError::Exists(_)) => {
                update.id = format!("{created_ms:x}-{attempt}");
            }
            Err(e @ CreateUpdateError::Busy { .. }) => {
                return Err(ApiError::new(StatusCode::CONFLICT, e.to_string()))
            }
            Err(e @ CreateUpdateError::TooLarge(_)) => {
                return Err(ApiError::bad_request(e.to_string()))
            }
            Err(CreateUpdateError::Registry(e)) => return Err(e.into()),
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "could not find a free update id",
    ))
}

pub(crate) async fn list_updates(
    State(api): State<Api>,
) -> Result<Json<serde_json::Value>, ApiError> {
    // The machines of global units counted, not listed: a list of updates stays small
    // however many machines they take.
    let updates: Vec<serde_json::Value> = api
        .registry
        .updates()
        .await?
        .into_iter()
        .map(|s| {
            let mut update = json(s.update).0;
            if let (Some(fields), false) = (update.as_object_mut(), s.omitted.is_empty()) {
                fields.insert(
                    "machines".into(),
                    serde_json::to_value(&s.omitted).unwrap_or_default(),
                );
            }
            update
        })
        .collect();
    Ok(Json(serde_json::json!({ "updates": updates })))
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 40 || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(ApiError::bad_request(format!("invalid update id {id:?}")));
    }
    Ok(())
}

async fn read(api: &Api, id: &str) -> Result<StoredUpdate, ApiError> {
    check_id(id)?;
    api.registry
        .update(id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("update {id} does not exist")))
}

pub(crate) async fn get_update(
    State(api): State<Api>,
    NameParam(id): NameParam,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(json(read(&api, &id).await?.update))
}

/// What a steering request does to an update in `state`: its new state, or why not.
fn steer(action: &str, state: UpdateState) -> Result<UpdateState, String> {
    match (action, state) {
        ("pause", UpdateState::Running | UpdateState::Paused) => Ok(UpdateState::Paused),
        ("resume", UpdateState::Running | UpdateState::Paused) => Ok(UpdateState::Running),
        ("abort", s) if !s.is_final() => Ok(UpdateState::Aborted),
        (action, s) => Err(format!("cannot {action} an update that is {}", s.as_str())),
    }
}

/// What an update takes, in words: its units, and the machines of its global units.
fn what(update: &Update) -> String {
    let units = update.names().len();
    match update.units.iter().filter(|u| u.machine.is_some()).count() {
        0 => format!("{units} units"),
        machines => format!("{units} units on {machines} machines"),
    }
}

/// What `action` did, in words.
fn done(action: &str) -> &str {
    match action {
        "pause" => "paused",
        "resume" => "resumed",
        "abort" => "aborted",
        other => other,
    }
}

async fn steer_update(
    api: &Api,
    id: &str,
    action: &str,
) -> Result<Json<serde_json::Value>, ApiError> {
    loop {
        let stored = read(api, id).await?;
        let to = steer(action, stored.update.state)
            .map_err(|m| ApiError::new(StatusCode::CONFLICT, m))?;
        if to == stored.update.state {
            return Ok(json(stored.update));
        }
        let mut update = stored.update;
        update.state = to;
        if to == UpdateState::Aborted {
            update.ended_ms = Some(now_ms());
            update.reason = Some("aborted by hand".into());
        }
        if api
            .registry
            .write_update(&update, stored.layout, stored.revision, None)
            .await?
        {
            record(
                api,
                Event::new(
                    EventKind::UpdateStep,
                    format!("update {} {} by hand", update.id, done(action)),
                ),
            )
            .await;
            return Ok(json(update));
        }
    }
}

pub(crate) async fn pause_update(
    State(api): State<Api>,
    NameParam(id): NameParam,
) -> Result<Json<serde_json::Value>, ApiError> {
    steer_update(&api, &id, "pause").await
}

pub(crate) async fn resume_update(
    State(api): State<Api>,
    NameParam(id): NameParam,
) -> Result<Json<serde_json::Value>, ApiError> {
    steer_update(&api, &id, "resume").await
}

pub(crate) async fn abort_update(
    State(api): State<Api>,
    NameParam(id): NameParam,
) -> Result<Json<serde_json::Value>, ApiError> {
    steer_update(&api, &id, "abort").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steering_follows_the_states() {
        use UpdateState::*;
        assert_eq!(steer("pause", Running), Ok(Paused));
        assert_eq!(steer("pause", Paused), Ok(Paused));
        assert_eq!(steer("resume", Paused), Ok(Running));
        assert_eq!(steer("abort", Reverting), Ok(Aborted));
        for s in [Done, Failed, Reverted, Aborted] {
            assert!(steer("pause", s).is_err());
            assert!(steer("resume", s).is_err());
            assert!(steer("abort", s).is_err());
        }
        assert!(steer("resume", Reverting).is_err());
    }
}
