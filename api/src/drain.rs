//! Draining machines (issue 11; not in fleet's API, which stays as it was):
//! `GET /drains` lists every drain, `GET /drains/{machine}` one, `PUT /drains/{machine}` starts
//! one (201, or 200 when the machine was already being drained) and `DELETE /drains/{machine}`
//! ends it (204). A machine is named by its full id; an id that is not one is 400, a machine
//! that is not a member of the cluster 404, and nothing is changed then.

use std::time::{Duration, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use fleet_client::schema;
use fleet_registry::{DrainStart, DrainStatus, Event, EventKind, MachineId};

use crate::events::record;
use crate::history::rfc3339;
use crate::server::{parse_machine, Api, ApiError, NameParam};

fn drain_json(d: DrainStatus) -> schema::Drain {
    schema::Drain {
        machine: d.machine.to_string(),
        since: rfc3339(UNIX_EPOCH + Duration::from_secs(d.since)),
        state: if d.drained() { "drained" } else { "draining" }.to_string(),
        units: d.units,
        stopping: d.stopping,
    }
}

fn not_drained(machine: &MachineId) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("machine {machine} is not being drained"),
    )
}

pub(crate) async fn list_drains(
    State(api): State<Api>,
) -> Result<Json<schema::DrainList>, ApiError> {
    let drains = api.registry.drains().await?;
    Ok(Json(schema::DrainList {
        drains: drains.into_iter().map(drain_json).collect(),
    }))
}

pub(crate) async fn get_drain(
    State(api): State<Api>,
    NameParam(machine): NameParam,
) -> Result<Json<schema::Drain>, ApiError> {
    let machine = parse_machine(&machine)?;
    match api.registry.drain_status(&machine).await? {
        Some(status) => Ok(Json(drain_json(status))),
        None => Err(not_drained(&machine)),
    }
}

pub(crate) async fn put_drain(
    State(api): State<Api>,
    NameParam(machine): NameParam,
) -> Result<(StatusCode, Json<schema::Drain>), ApiError> {
    let machine = parse_machine(&machine)?;
    let status = match api.registry.drain(&machine).await? {
        DrainStart::Started => StatusCode::CREATED,
        DrainStart::AlreadyDraining => StatusCode::OK,
        DrainStart::Unknown => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("machine {machine} does not exist"),
            ))
        }
    };
    if status == StatusCode::CREATED {
        record(
            &api,
            Event::new(
                EventKind::Drained,
                "drain asked for: no new units, and its units move elsewhere one at a time",
            )
            .machine(&machine),
        )
        .await;
    }
    match api.registry.drain_status(&machine).await? {
        Some(drain) => Ok((status, Json(drain_json(drain)))),
        // Undrained in between.
        None => Err(not_drained(&machine)),
    }
}

pub(crate) async fn delete_drain(
    State(api): State<Api>,
    NameParam(machine): NameParam,
) -> Result<StatusCode, ApiError> {
    let machine = parse_machine(&machine)?;
    if api.registry.undrain(&machine).await? {
        record(
            &api,
            Event::new(
                EventKind::Undrained,
                "drain ended: the machine takes units again",
            )
            .machine(&machine),
        )
        .await;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_drained(&machine))
    }
}
