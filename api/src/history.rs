//! Units' history and rollback (issue 11; not in fleet's API, which stays as it was):
//! `GET /units/{name}/history` lists a unit's versions, the current one first, and
//! `POST /units/{name}/rollback` puts a previous one back (`{"hash":"<prefix>"}`, or no body
//! or `{}` for the version before the current one). Names and bodies are validated before the
//! registry is asked anything; a refused rollback changes nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, Request, StatusCode};
use axum::Json;
use fleet_client::schema;
use fleet_registry::{Event, EventKind, HashPrefix, RollbackError, UnitVersion};

use crate::events::record;
use crate::server::{parse_name, read_body, Api, ApiError, NameParam};

fn version_json(v: UnitVersion) -> schema::UnitVersion {
    schema::UnitVersion {
        hash: v.hash.to_string(),
        since: v.since.map(rfc3339).unwrap_or_default(),
        until: v.until.map(rfc3339).unwrap_or_default(),
        current: v.current,
        options: v.options,
    }
}

pub(crate) async fn unit_history(
    State(api): State<Api>,
    NameParam(name): NameParam,
) -> Result<Json<schema::UnitHistory>, ApiError> {
    let name = parse_name(&name)?;
    let Some(history) = api.registry.unit_history(&name).await? else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "unit does not exist"));
    };
    Ok(Json(schema::UnitHistory {
        name: name.to_string(),
        versions: history.versions.into_iter().map(version_json).collect(),
    }))
}

/// The version a rollback body asks for: `None` for the one before the current.
fn rollback_target(body: &[u8]) -> Result<Option<HashPrefix>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let bad =
        |e: &dyn std::fmt::Display| ApiError::bad_request(format!("unable to decode body: {e}"));
    // An object: serde would take `[]` for a struct too.
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| bad(&e))?;
    if !value.is_object() {
        return Err(bad(
            &"expected a JSON object such as {\"hash\":\"<hash prefix>\"}",
        ));
    }
    let request: schema::RollbackRequest = serde_json::from_value(value).map_err(|e| bad(&e))?;
    match request.hash.as_str() {
        "" => Ok(None),
        hash => HashPrefix::parse(hash)
            .map(Some)
            .map_err(|e| ApiError::bad_request(e.to_string())),
    }
}

pub(crate) async fn rollback_unit(
    State(api): State<Api>,
    NameParam(name): NameParam,
    request: Request<Body>,
) -> Result<Json<schema::Rollback>, ApiError> {
    let name = parse_name(&name)?;
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| t.trim() == "application/json");
    let body = read_body(request).await?;
    if !json && !body.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "only application/json is supported",
        ));
    }
    let target = rollback_target(&body)?;
    let done = api
        .registry
        .rollback_unit(&name, target.as_ref())
        .await
        .map_err(|e| match e {
            RollbackError::NoSuchUnit(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unit does not exist")
            }
            RollbackError::UnknownVersion { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, e.to_string())
            }
            RollbackError::NoPrevious(_) | RollbackError::Ambiguous { .. } => {
                ApiError::new(StatusCode::CONFLICT, e.to_string())
            }
            RollbackError::Registry(e) => ApiError::from(e),
        })?;
    if done.from != done.to {
        record(
            &api,
            Event::new(
                EventKind::Reverted,
                format!("rolled back by hand from {} to {}", done.from, done.to),
            )
            .unit(&name),
        )
        .await;
    }
    Ok(Json(schema::Rollback {
        name: name.to_string(),
        from: done.from.to_string(),
        to: done.to.to_string(),
    }))
}

/// `t` in RFC 3339, UTC, to the second (`2016-05-04T10:02:11Z`).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's `civil_from_days`).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_rfc3339_in_utc() {
        let at = |secs| rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
        for (secs, text) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_462_356_131, "2016-05-04T10:02:11Z"),
            (4_107_542_399, "2100-02-28T23:59:59Z"),
            (4_107_542_400, "2100-03-01T00:00:00Z"),
        ] {
            assert_eq!(at(secs), text, "{secs}");
        }
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn rollback_bodies() {
        let target = |b: &str| rollback_target(b.as_bytes()).map(|t| t.map(|p| p.to_string()));
        assert_eq!(target("").unwrap(), None);
        assert_eq!(target(" \n").unwrap(), None);
        assert_eq!(target("{}").unwrap(), None);
        assert_eq!(target(r#"{"hash":""}"#).unwrap(), None);
        assert_eq!(
            target(r#"{"hash":"AbC123"}"#).unwrap().as_deref(),
            Some("abc123")
        );
        for bad in [
            r#"{"hash":"xyz"}"#,
            r#"{"hash":"0123456789012345678901234567890123456789a"}"#,
            r#"{"hash":7}"#,
            r#"{"version":"abc"}"#,
            "[]",
            "abc",
        ] {
            let err = target(bad).expect_err(bad);
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
