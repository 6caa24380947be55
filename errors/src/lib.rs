//! How fleet reports errors that come from its dependencies (etcd-client, reqwest, hyper): by
//! their innermost cause, e.g. "Connection refused (os error 111)", which is what an operator
//! needs, without the layers of gRPC or HTTP wrapping above it.
//!
//! No dependencies, so the registry, the API and its client can all share it.

use std::error::Error;

/// The innermost cause of `e` (`e` itself when it has no source), as text.
pub fn root_cause(e: &(dyn Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped(&'static str, Option<Box<Wrapped>>);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as &(dyn Error + 'static))
        }
    }

    #[test]
    fn the_innermost_cause_is_reported() {
        let refused = Wrapped("connection refused", None);
        assert_eq!(root_cause(&refused), "connection refused");
        let chain = Wrapped(
            "transport error",
            Some(Box::new(Wrapped(
                "error trying to connect",
                Some(Box::new(refused)),
            ))),
        );
        assert_eq!(root_cause(&chain), "connection refused");
    }
}
