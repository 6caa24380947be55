//! Removing a member by hand (not in fleet's API): `DELETE /machines/{machine}` (200, with
//! how many units it releases), for a machine whose lease is gone and that the operator says
//! is powered off for good, so that a cluster that lost a majority of its machines for good
//! can move their units (`fleet_registry::Registry::remove_member`).
//!
//! Before it removes the machine, fleetd asks the machine's peer endpoint whether it runs
//! ([`PROBE_TIMEOUT`]), and waits as long as the engine waits before it declares a machine dead
//! ([`Inspect::removal_wait`](crate::server::Inspect::removal_wait)), counted from when it found
//! the lease gone: a machine that lost its lease because it lost every link has stopped its units
//! by then (it confirms nothing for itself, and holds a peer's confirmation for a bounded time
//! only). An id that is not one is 400; a fleetd that cannot ask its peers (no machine of its own:
//! only in tests) 501; a machine that is no member (never registered, declared dead or removed
//! already) 404; one that holds its lease, whose peer endpoint answers, that is the machine serving
//! the request, or that registered again meanwhile, 409: nothing is changed then.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use fleet_client::schema;
use fleet_registry::{Event, EventKind, MachineId, Removal, Witness};
use tokio::time::Instant;

use crate::events::record;
use crate::peer::PeerWitness;
use crate::server::{parse_machine, Api, ApiError, NameParam};

/// How long a machine's peer endpoint has to answer before it counts as not running: a
/// fleetd answers in milliseconds.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

fn conflict(message: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, message)
}

fn not_member(machine: &MachineId) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "machine {machine} is not a member of the cluster (never registered, or declared \
             dead or removed already)"
        ),
    )
}

fn live(machine: &MachineId) -> ApiError {
    conflict(format!(
        "machine {machine} holds its lease: it runs; only a machine whose lease is gone can be \
         removed"
    ))
}

pub(crate) async fn remove_machine(
    State(api): State<Api>,
    NameParam(machine): NameParam,
) -> Result<Json<schema::MachineRemoval>, ApiError> {
    let machine = parse_machine(&machine)?;
    let Some(inspect) = &api.inspect else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "this fleetd cannot ask its peers whether a machine runs: it removes no machine",
        ));
    };
    let Some(status) = api.registry.member_status(&machine).await? else {
        return Err(not_member(&machine));
    };
    if status.live {
        return Err(live(&machine));
    }
    let found_gone = Instant::now();
    if inspect.machine == machine {
        return Err(conflict(format!(
            "machine {machine} is the one serving this request: it runs, though its lease is gone"
        )));
    }
    let announced = status.member.as_ref().map(|m| &m.machine);
    if let Some(machine_record) = announced.filter(|m| m.peer_address.is_some()) {
        let answers = PeerWitness::new(inspect.peers.clone())
            .since_renewal(vec![machine_record.clone()], PROBE_TIMEOUT)
            .await;
        if !answers.is_empty() {
            return Err(conflict(format!(
                "machine {machine}'s fleetd answers at its peer address {}: it runs, though its \
                 lease is gone (cut off from etcd?); power it off before removing it",
                machine_record.peer_address.as_deref().unwrap_or_default()
            )));
        }
    }
    tokio::time::sleep_until(found_gone + inspect.removal_wait).await;
    let units = match api
        .registry
        .remove_member(&machine, status.revision)
        .await?
    {
        Removal::Removed { units } => units,
        Removal::Changed => {
            return Err(match api.registry.member_status(&machine).await? {
                None => not_member(&machine),
                Some(now) if now.live => live(&machine),
                Some(_) => conflict(format!(
                    "machine {machine} registered again while it was being removed: nothing \
                     removed"
                )),
            })
        }
    };
    record(
        &api,
        Event::new(
            EventKind::DeclaredDead,
            format!(
                "removed by hand (its lease is gone, and the operator says it is powered off for \
                 good): {units} units released to be placed elsewhere"
            ),
        )
        .machine(&machine),
    )
    .await;
    Ok(Json(schema::MachineRemoval {
        machine: machine.to_string(),
        units,
    }))
}
