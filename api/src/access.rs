//! Who may do what through the API. The caller is what the listener says it is
//! ([`fleet_trust::Caller`], set by [`fleet_trust::serve`] on TCP): an operator's certificate
//! may do everything; a viewer's or a machine's may read (list, cat, journals, statuses) and
//! is answered 403, with fleet's JSON error envelope and nothing changed, for anything else.
//! A plain-HTTP listener (`api_insecure_http`) and the unix socket (root's alone, where no
//! caller is set) trust whoever reaches them, as fleet did.

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fleet_trust::{Caller, Role};

use crate::server::ApiError;

/// Whether `method` only reads.
fn reads_only(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The API's middleware: refuses changes from callers whose role may only read.
pub(crate) async fn authorize(request: Request, next: Next) -> Response {
    if let Some(Caller::Certificate(identity)) = request.extensions().get::<Caller>() {
        if identity.role != Role::Operator && !reads_only(request.method()) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "the certificate of {} ({}) may only read; changing the cluster needs an \
                     operator's certificate",
                    identity.name, identity.role
                ),
            )
            .into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_are_reads() {
        for m in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert!(reads_only(&m), "{m}");
        }
        for m in [Method::PUT, Method::DELETE, Method::PATCH, Method::POST] {
            assert!(!reads_only(&m), "{m}");
        }
    }
}
