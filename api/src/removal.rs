//! Removing a member by hand (not in fleet's API): `DELETE /machines/{machine}` (200, with
//! how many units it releases), for a machine whose lease is gone and that the operator says
//! is powered off for good, so that a cluster that lost a majority of its machines for good
//! can move their units (`fleet_registry::Registry::remove_member`). An id that is not one is
//! 400; a machine that is no member (never registered, declared dead or removed already) 404;
//! one that holds its lease, whose peer endpoint answers (it runs, cut off from etcd), that is
//! the machine serving the request, or that registered again meanwhile, 409: nothing is
//! changed then.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use fleet_client::schema;
use fleet_registry::{Event, EventKind, MachineId, Removal, Witness};

use crate::events::record;
use crate::peer::PeerWitness;
use crate::server::{Api, ApiError, NameParam};

/// How long a machine's peer endpoint has to answer before it counts as not running: a
/// fleetd answers in milliseconds, and the whole request must fit in fleetctl's timeout (3 s
/// by default; a machine powered off leaves the probe waiting all of this).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

fn conflict(message: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, message)
}

pub(crate) async fn remove_machine(
    State(api): State<Api>,
    NameParam(machine): NameParam,
) -> Result<Json<schema::MachineRemoval>, ApiError> {
    let machine = MachineId::parse(&machine).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let Some(status) = api.registry.member_status(&machine).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "machine {machine} is not a member of the cluster (never registered, or declared \
                 dead or removed already)"
            ),
        ));
    };
    if status.live {
        return Err(conflict(format!(
            "machine {machine} holds its lease: it runs; only a machine whose lease is gone can \
             be removed"
        )));
    }
    if let Some(inspect) = &api.inspect {
        if inspect.machine == machine {
            return Err(conflict(format!(
                "machine {machine} is the one serving this request: it runs, though its lease is \
                 gone"
            )));
        }
        let answers = PeerWitness::new(inspect.peers.clone())
            .since_renewal(vec![status.member.machine.clone()], PROBE_TIMEOUT)
            .await;
        if !answers.is_empty() {
            return Err(conflict(format!(
                "machine {machine} answers at its peer address {}: it runs, though its lease is \
                 gone (cut off from etcd?); power it off before removing it",
                status.member.machine.peer_address.as_deref().unwrap_or("-")
            )));
        }
    }
    match api
        .registry
        .remove_member(&machine, status.revision)
        .await?
    {
        Removal::Removed => {}
        Removal::Changed => {
            return Err(conflict(format!(
                "machine {machine} registered again or changed while it was being removed: \
                 nothing removed"
            )))
        }
    }
    record(
        &api,
        Event::new(
            EventKind::DeclaredDead,
            format!(
                "removed by hand (its lease is gone, and the operator says it is powered off for \
                 good): {} units released to be placed elsewhere",
                status.placed
            ),
        )
        .machine(&machine),
    )
    .await;
    Ok(Json(schema::MachineRemoval {
        machine: machine.to_string(),
        units: status.placed,
    }))
}
