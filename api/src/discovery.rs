//! The API's discovery document (`GET /fleet/v1/discovery`), in the Google API discovery
//! format fleet published: generated clients (fleet's own Go client among them) read resource,
//! method and schema names from it, so those names, ids and paths are fleet's.

use serde_json::{json, Map, Value};

/// The document, served as-is under every API prefix (`baseUrl` names `/fleet/v1/`, as fleet's
/// did under `/v1-alpha` too).
pub fn document() -> Value {
    json!({
        "kind": "discovery#restDescription",
        "discoveryVersion": "v1",
        "id": "fleet:v1",
        "name": "schema",
        "version": "v1",
        "title": "fleet API",
        "description": "",
        "documentationLink": "http://github.com/coreos/fleet",
        "protocol": "rest",
        "icons": {"x16": "", "x32": ""},
        "labels": [],
        "baseUrl": "$ENDPOINT/fleet/v1/",
        "basePath": "/fleet/v1/",
        "rootUrl": "$ENDPOINT/",
        "servicePath": "fleet/v1/",
        "batchPath": "batch",
        "parameters": {},
        "auth": {},
        "schemas": schemas(),
        "resources": resources(),
    })
}

fn string() -> Value {
    json!({"type": "string"})
}

fn job_state() -> Value {
    json!({"type": "string", "enum": ["inactive", "loaded", "launched"]})
}

fn array_of(schema: &str) -> Value {
    json!({"type": "array", "items": {"$ref": schema}})
}

fn object(id: &str, properties: Value) -> Value {
    json!({"id": id, "type": "object", "properties": properties})
}

fn schemas() -> Value {
    json!({
        "Machine": object("Machine", json!({
            "id": string(),
            "primaryIP": string(),
            "metadata": {
                "type": "object",
                "properties": {},
                "additionalProperties": string(),
            },
        })),
        "MachinePage": object("MachinePage", json!({
            "machines": array_of("Machine"),
            "nextPageToken": string(),
        })),
        "UnitOption": object("UnitOption", json!({
            "section": string(),
            "name": string(),
            "value": string(),
        })),
        "Unit": object("Unit", json!({
            "name": string(),
            "options": array_of("UnitOption"),
            "desiredState": job_state(),
            "currentState": job_state(),
            "machineID": {"type": "string", "required": true},
            // Ours, not fleet's: why the engine cannot place the unit, and why its last start
            // failed on its machine.
            "reason": string(),
            "startFailure": string(),
        })),
        "UnitPage": object("UnitPage", json!({
            "units": array_of("Unit"),
            "nextPageToken": string(),
        })),
        // Ours, not fleet's: a unit's versions, and a rollback to one of them.
        "UnitVersion": object("UnitVersion", json!({
            "hash": string(),
            "since": string(),
            "until": string(),
            "current": {"type": "boolean"},
            "options": array_of("UnitOption"),
        })),
        "UnitHistory": object("UnitHistory", json!({
            "name": string(),
            "versions": array_of("UnitVersion"),
        })),
        "RollbackRequest": object("RollbackRequest", json!({
            "hash": string(),
        })),
        "Rollback": object("Rollback", json!({
            "name": string(),
            "from": string(),
            "to": string(),
        })),
        // Ours, not fleet's: a member removed by hand.
        "MachineRemoval": object("MachineRemoval", json!({
            "machine": string(),
            "units": {"type": "integer"},
        })),
        // Ours, not fleet's: machines being drained.
        "Drain": object("Drain", json!({
            "machine": string(),
            "since": string(),
            "state": {"type": "string", "enum": ["draining", "drained"]},
            "units": {"type": "integer"},
            "stopping": {"type": "integer"},
        })),
        "DrainList": object("DrainList", json!({
            "drains": array_of("Drain"),
        })),
        // Ours, not fleet's: rolling updates.
        "UpdateRequest": object("UpdateRequest", json!({
            "units": {"type": "array", "items": {"type": "string"}},
            "options": array_of("UnitOption"),
            "maxParallel": {"type": "integer"},
            "minHealthyMs": {"type": "integer"},
            "healthyDeadlineMs": {"type": "integer"},
            "autoRevert": {"type": "boolean"},
        })),
        "UpdateUnit": object("UpdateUnit", json!({
            "name": string(),
            // A global unit: the machine this entry updates, or none for its own content.
            "machine": string(),
            "global": {"type": "boolean"},
            "from": string(),
            "phase": {"type": "string", "enum": ["pending", "updating", "healthy", "failed", "reverting", "reverted"]},
            "sinceMs": {"type": "integer"},
            "upSinceMs": {"type": "integer"},
            "failure": string(),
        })),
        "Update": object("Update", json!({
            "id": string(),
            "createdMs": {"type": "integer"},
            "options": array_of("UnitOption"),
            "maxParallel": {"type": "integer"},
            "minHealthyMs": {"type": "integer"},
            "healthyDeadlineMs": {"type": "integer"},
            "autoRevert": {"type": "boolean"},
            "state": {"type": "string", "enum": ["running", "paused", "reverting", "done", "failed", "reverted", "aborted"]},
            "reason": string(),
            "endedMs": {"type": "integer"},
            "units": array_of("UpdateUnit"),
        })),
        "UpdateList": object("UpdateList", json!({
            "updates": array_of("Update"),
        })),
        // Ours, not fleet's: what fleet decided and what happened.
        "Event": object("Event", json!({
            "time": string(),
            "kind": {
                "type": "string",
                "enum": fleet_registry::EventKind::ALL.map(fleet_registry::EventKind::as_str),
            },
            "unit": string(),
            "machine": string(),
            "message": string(),
            "source": string(),
        })),
        "EventPage": object("EventPage", json!({
            "events": array_of("Event"),
            "nextPageToken": string(),
        })),
        "UnitState": object("UnitState", json!({
            "name": string(),
            "hash": string(),
            "machineID": string(),
            "systemdLoadState": string(),
            "systemdActiveState": string(),
            "systemdSubState": string(),
        })),
        "UnitStatePage": object("UnitStatePage", json!({
            "states": array_of("UnitState"),
            "nextPageToken": string(),
        })),
    })
}

/// One method: `parameters` are `(name, location)`; path parameters are required and ordered.
fn method(
    id: &str,
    description: &str,
    http_method: &str,
    path: &str,
    parameters: &[(&str, &str)],
    request: Option<&str>,
    response: Option<&str>,
) -> Value {
    let mut params = Map::new();
    let mut order = Vec::new();
    for (name, location) in parameters {
        let mut p = json!({"type": "string", "location": location});
        if *location == "path" {
            p["required"] = Value::Bool(true);
            order.push(Value::String(name.to_string()));
        }
        params.insert(name.to_string(), p);
    }
    let mut m = json!({
        "id": id,
        "description": description,
        "httpMethod": http_method,
        "path": path,
        "parameters": params,
    });
    if !order.is_empty() {
        m["parameterOrder"] = Value::Array(order);
    }
    if let Some(r) = request {
        m["request"] = json!({"$ref": r});
    }
    if let Some(r) = response {
        m["response"] = json!({"$ref": r});
    }
    m
}

fn resources() -> Value {
    let page = ("nextPageToken", "query");
    let unit_name = ("unitName", "path");
    let machine_id = ("machineID", "path");
    let update_id = ("updateID", "path");
    json!({
        "Machines": {"methods": {
            "List": method(
                "fleet.Machine.List",
                "List the live machines, one page at a time.",
                "GET", "machines", &[page], None, Some("MachinePage"),
            ),
        }},
        // Ours, not fleet's (whose Machines resource stays as it was).
        "Members": {"methods": {
            "Remove": method(
                "fleet.Member.Remove",
                "Remove a member whose lease is gone, which the operator says is powered off \
                 for good: its units are placed elsewhere, and majorities are counted without \
                 it.",
                "DELETE", "machines/{machineID}", &[machine_id], None, Some("MachineRemoval"),
            ),
        }},
        "Units": {"methods": {
            "List": method(
                "fleet.Unit.List",
                "List the units, one page at a time.",
                "GET", "units", &[page], None, Some("UnitPage"),
            ),
            "Get": method(
                "fleet.Unit.Get",
                "Read one unit.",
                "GET", "units/{unitName}", &[unit_name], None, Some("Unit"),
            ),
            "Delete": method(
                "fleet.Unit.Delete",
                "Destroy one unit.",
                "DELETE", "units/{unitName}", &[unit_name], None, None,
            ),
            "Set": method(
                "fleet.Unit.Set",
                "Create or replace a unit, or change its desired state.",
                "PUT", "units/{unitName}", &[unit_name], Some("Unit"), None,
            ),
        }},
        // Ours, not fleet's: a resource of its own, so that fleet's `Units` stays as it was.
        "UnitHistory": {"methods": {
            "List": method(
                "fleet.UnitHistory.List",
                "List the versions of a unit's content, the current one first.",
                "GET", "units/{unitName}/history", &[unit_name], None, Some("UnitHistory"),
            ),
            "Rollback": method(
                "fleet.UnitHistory.Rollback",
                "Put back a previous version of a unit's content (by a prefix of its hash; \
                 without one, the version before the current), keeping its desired state.",
                "POST", "units/{unitName}/rollback", &[unit_name], Some("RollbackRequest"),
                Some("Rollback"),
            ),
        }},
        // Ours, not fleet's.
        "Drains": {"methods": {
            "List": method(
                "fleet.Drain.List",
                "List the machines being drained, and how far each drain has got.",
                "GET", "drains", &[], None, Some("DrainList"),
            ),
            "Get": method(
                "fleet.Drain.Get",
                "Read one machine's drain.",
                "GET", "drains/{machineID}", &[machine_id], None, Some("Drain"),
            ),
            "Start": method(
                "fleet.Drain.Start",
                "Drain a machine: it takes no new units, and its non-global units move \
                 elsewhere one at a time, each stopped before it starts elsewhere.",
                "PUT", "drains/{machineID}", &[machine_id], None, Some("Drain"),
            ),
            "End": method(
                "fleet.Drain.End",
                "End a machine's drain: it takes units again.",
                "DELETE", "drains/{machineID}", &[machine_id], None, None,
            ),
        }},
        // Ours, not fleet's.
        "Updates": {"methods": {
            "List": method(
                "fleet.Update.List",
                "List the rolling updates kept (those not over, and the last finished ones).",
                "GET", "updates", &[], None, Some("UpdateList"),
            ),
            "Get": method(
                "fleet.Update.Get",
                "Read one rolling update.",
                "GET", "updates/{updateID}", &[update_id], None, Some("Update"),
            ),
            "Create": method(
                "fleet.Update.Create",
                "Update units to new content a few at a time, each healthy before the next; \
                 driven by the engine leader.",
                "POST", "updates", &[], Some("UpdateRequest"), Some("Update"),
            ),
            "Pause": method(
                "fleet.Update.Pause",
                "Start no more units of an update.",
                "POST", "updates/{updateID}/pause", &[update_id], None, Some("Update"),
            ),
            "Resume": method(
                "fleet.Update.Resume",
                "Go on with a paused update.",
                "POST", "updates/{updateID}/resume", &[update_id], None, Some("Update"),
            ),
            "Abort": method(
                "fleet.Update.Abort",
                "End an update, leaving its units as they are.",
                "POST", "updates/{updateID}/abort", &[update_id], None, Some("Update"),
            ),
        }},
        // Ours, not fleet's.
        "Events": {"methods": {
            "List": method(
                "fleet.Event.List",
                "List what fleet decided and what happened, oldest first, one page at a time: \
                 a unit's (unit), a machine's (machine), the newest N (last); with \
                 follow=true, stream them as they are recorded, one JSON object per line.",
                "GET", "events",
                &[
                    page,
                    ("unit", "query"),
                    ("machine", "query"),
                    ("limit", "query"),
                    ("last", "query"),
                    ("follow", "query"),
                ],
                None, Some("EventPage"),
            ),
        }},
        "UnitState": {"methods": {
            "Get": method(
                "fleet.UnitState.Get",
                "Read the state of one unit.",
                "GET", "state/{unitName}", &[unit_name], None, Some("UnitState"),
            ),
            "List": method(
                "fleet.UnitState.List",
                "List the states of units on machines, one page at a time.",
                "GET", "state", &[page, ("unitName", "query"), ("machineID", "query")],
                None, Some("UnitStatePage"),
            ),
        }},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_resolves_and_methods_have_ids() {
        let doc = document();
        let schemas = doc["schemas"].as_object().unwrap();
        for (name, schema) in schemas {
            assert_eq!(schema["id"], name.as_str());
        }
        let mut refs = Vec::new();
        fn collect(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|v| collect(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| collect(v, out)),
                _ => {}
            }
        }
        collect(&doc, &mut refs);
        assert!(refs.len() > 5);
        for r in refs {
            assert!(schemas.contains_key(&r), "dangling $ref {r}");
        }
        for (resource, r) in doc["resources"].as_object().unwrap() {
            for (name, m) in r["methods"].as_object().unwrap() {
                assert!(
                    m["id"].as_str().unwrap().starts_with("fleet."),
                    "{resource}.{name}"
                );
                for p in m["parameterOrder"].as_array().into_iter().flatten() {
                    let p = p.as_str().unwrap();
                    assert_eq!(m["parameters"][p]["location"], "path");
                    assert!(m["path"].as_str().unwrap().contains(&format!("{{{p}}}")));
                }
            }
        }
    }
}
