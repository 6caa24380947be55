//! Events (issue 11; not in fleet's API, which stays as it was): `GET /events` lists what fleet
//! decided and what happened, oldest first, a page at a time (`nextPageToken`), only a unit's
//! (`unit=`) or a machine's (`machine=`) if asked, only the newest N (`last=N`) if asked; with
//! `follow=true` it streams them as they are recorded, one JSON object per line (the newest
//! `last` first, or everything after `nextPageToken`, or only what comes next). Every query
//! value is validated before the registry is asked anything: a bad one is a 400 with the
//! error envelope. Followers count against the same caps as followed journals (`follows`).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet_client::schema;
use fleet_registry::{
    Event, EventCursor, EventFilter, EventFollow, EventPage, MachineId, Registry, EVENTS_KEPT,
    MAX_PAGE,
};
use fleet_units::UnitName;
use futures_util::stream::{self, StreamExt};

use crate::follows::{self, Client};
use crate::history::rfc3339;
use crate::server::{
    flag_param, next_page_token, page_start, query_params, single_param, Api, ApiError,
};

/// What a `GET /events` asks for, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventsQuery {
    pub filter: EventFilter,
    /// Page size.
    pub limit: u32,
    /// Where the previous page ended.
    pub after: Option<EventCursor>,
    /// Only the newest so many.
    pub last: Option<usize>,
    pub follow: bool,
}

impl EventsQuery {
    pub(crate) fn from_params(
        params: &BTreeMap<String, Vec<String>>,
        page_size: u32,
    ) -> Result<EventsQuery, ApiError> {
        let one = |key: &str| single_param(params, key).map_err(ApiError::bad_request);
        let bad = |e: &dyn std::fmt::Display| ApiError::bad_request(e.to_string());
        let unit = one("unit")?
            .map(UnitName::parse)
            .transpose()
            .map_err(|e| bad(&e))?;
        let machine = one("machine")?
            .map(MachineId::parse)
            .transpose()
            .map_err(|e| bad(&e))?;
        // A token is for pages of this list only: its position must be an event's.
        one("nextPageToken")?;
        let (token_limit, after) = page_start(page_size, params, |p| EventCursor::parse(p).ok())?;
        let limit = match one("limit")? {
            None => token_limit,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (1..=MAX_PAGE as u32).contains(&n) => n,
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "invalid limit {v:?}: expected an integer from 1 to {MAX_PAGE}"
                    )))
                }
            },
        };
        let last = match one("last")? {
            None => None,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=EVENTS_KEPT).contains(&n) => Some(n),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "invalid last {v:?}: expected an integer from 1 to {EVENTS_KEPT}"
                    )))
                }
            },
        };
        if last.is_some() && after.is_some() {
            return Err(ApiError::bad_request(
                "last and nextPageToken cannot be given together: last reads the newest events, \
                 a token the ones after a page",
            ));
        }
        let follow = flag_param(params, "follow").map_err(ApiError::bad_request)?;
        Ok(EventsQuery {
            filter: EventFilter { unit, machine },
            limit,
            after,
            last,
            follow,
        })
    }
}

/// `t` in RFC 3339, UTC, to the millisecond (`2016-05-04T10:02:11.042Z`).
fn rfc3339_millis(t: SystemTime) -> String {
    let seconds = rfc3339(t);
    let millis = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_millis())
        .unwrap_or_default();
    format!("{}.{millis:03}Z", seconds.trim_end_matches('Z'))
}

fn event_json(e: Event) -> schema::Event {
    let id = |m: Option<MachineId>| m.map(|m| m.to_string()).unwrap_or_default();
    schema::Event {
        time: rfc3339_millis(e.time),
        kind: e.kind.to_string(),
        unit: e.unit.map(|u| u.to_string()).unwrap_or_default(),
        machine: id(e.machine),
        message: e.message,
        source: id(e.source),
    }
}

pub(crate) async fn list_events(
    State(api): State<Api>,
    client: Client,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = EventsQuery::from_params(&query_params(query), api.page_size)?;
    if query.follow {
        return follow(&api, client, query).await;
    }
    let page = match query.last {
        Some(n) => api.registry.latest_events(&query.filter, n).await?,
        None => {
            api.registry
                .events(&query.filter, query.after.as_ref(), query.limit as usize)
                .await?
        }
    };
    let next = page.last.filter(|_| page.more).map(|c| c.to_string());
    Ok(Json(schema::EventPage {
        events: page.events.into_iter().map(event_json).collect(),
        next_page_token: next_page_token(query.limit, next),
    })
    .into_response())
}

/// One line of JSON per event.
fn lines(events: Vec<Event>) -> Bytes {
    let mut out = Vec::new();
    for event in events {
        // Plain strings: serialising cannot fail.
        if serde_json::to_writer(&mut out, &event_json(event)).is_ok() {
            out.push(b'\n');
        }
    }
    Bytes::from(out)
}

/// What a follower is sent before the events to come, and the revision they were read at.
async fn catch_up(registry: &Registry, query: &EventsQuery) -> Result<EventPage, ApiError> {
    if let Some(n) = query.last {
        return Ok(registry.latest_events(&query.filter, n).await?);
    }
    let Some(mut after) = query.after.clone() else {
        // From now on only: watched from etcd's current revision.
        return Ok(EventPage::default());
    };
    let mut caught = EventPage::default();
    loop {
        let page = registry
            .events(&query.filter, Some(&after), MAX_PAGE)
            .await?;
        caught.events.extend(page.events);
        caught.revision = page.revision;
        match (page.more, page.last) {
            (true, Some(last)) => after = last,
            _ => return Ok(caught),
        }
    }
}

/// `GET /events?follow=true`: the events asked for so far, then each one as it is recorded,
/// until the reader goes away or the watch ends (etcd unreachable: read and follow again).
/// Errors before the first byte (a cap reached, etcd unreachable) get their status code.
async fn follow(api: &Api, client: Client, query: EventsQuery) -> Result<Response, ApiError> {
    let permit = api.follows.admit(client)?;
    let caught = catch_up(&api.registry, &query).await?;
    let watch = api
        .registry
        .follow_events(query.filter.clone(), caught.revision)
        .await?;
    let first = stream::iter(
        (!caught.events.is_empty()).then(|| Ok::<_, std::io::Error>(lines(caught.events))),
    );
    let later = stream::unfold(watch, |mut watch: EventFollow| async move {
        match watch.next().await {
            Ok(events) => Some((Ok(lines(events)), watch)),
            Err(e) => {
                tracing::debug!(error = %e, "event follow ended");
                None
            }
        }
    });
    let body = follows::held(first.chain(later).boxed(), Some(permit));
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

/// Records what an operator asked for as an event (and in the journal); a failure to record
/// does not undo what was done.
pub(crate) async fn record(api: &Api, event: Event) {
    tracing::info!(
        event = event.kind.as_str(),
        unit = ?event.unit,
        machine = ?event.machine,
        "{}",
        event.message
    );
    if let Err(e) = api.registry.record_events(&[event]).await {
        tracing::warn!(error = %e, "cannot record an event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use std::time::Duration;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
        let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in pairs {
            params.entry(k.to_string()).or_default().push(v.to_string());
        }
        params
    }

    fn token(after: &str) -> String {
        next_page_token(7, Some(after.to_string()))
    }

    #[test]
    fn queries_are_validated() {
        let cursor = format!("{:017}-{}-{:020}", 1, "a".repeat(32), 2);
        let q = EventsQuery::from_params(&params(&[]), 100).unwrap();
        assert_eq!(
            q,
            EventsQuery {
                filter: EventFilter::default(),
                limit: 100,
                after: None,
                last: None,
                follow: false,
            }
        );
        let t = token(&cursor);
        let q = EventsQuery::from_params(
            &params(&[
                ("unit", "web@1.service"),
                ("machine", &"A".repeat(32)),
                ("nextPageToken", &t),
                ("follow", "true"),
            ]),
            100,
        )
        .unwrap();
        assert_eq!(q.filter.unit.unwrap().as_str(), "web@1.service");
        assert_eq!(q.filter.machine.unwrap().as_str(), "a".repeat(32));
        assert_eq!((q.limit, q.after.unwrap().as_str()), (7, cursor.as_str()));
        assert!(q.follow);
        let q = EventsQuery::from_params(&params(&[("limit", "3"), ("last", "5")]), 100).unwrap();
        assert_eq!((q.limit, q.last), (3, Some(5)));

        let unit_token = token("web.service");
        for bad in [
            &[("unit", "../x")][..],
            &[("unit", "web")],
            &[("unit", "a.service"), ("unit", "b.service")],
            &[("machine", "f1ee7001")],
            &[("machine", "")],
            &[("limit", "0")],
            &[("limit", "10001")],
            &[("limit", "x")],
            &[("last", "0")],
            &[("last", "10001")],
            &[("last", "-1")],
            &[("follow", "yes")],
            &[("nextPageToken", "garbage")],
            &[("nextPageToken", &unit_token)],
            &[("nextPageToken", &t), ("last", "3")],
        ] {
            let e = EventsQuery::from_params(&params(bad), 100).expect_err(&format!("{bad:?}"));
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }

    #[test]
    fn events_are_shown_with_millisecond_times() {
        let t = UNIX_EPOCH + Duration::from_millis(1_462_356_131_042);
        assert_eq!(rfc3339_millis(t), "2016-05-04T10:02:11.042Z");
        let e = Event {
            time: t,
            ..Event::new(fleet_registry::EventKind::DeclaredDead, "gone")
                .machine(&MachineId::parse(&"b".repeat(32)).unwrap())
        };
        assert_eq!(
            serde_json::to_value(event_json(e)).unwrap(),
            serde_json::json!({
                "time": "2016-05-04T10:02:11.042Z",
                "kind": "declared-dead",
                "machine": "b".repeat(32),
                "message": "gone",
            })
        );
    }
}
