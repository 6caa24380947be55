//! fleetctl as a user runs it, for what needs no cluster: flags, deprecated and generated
//! commands, and clear errors when fleetd cannot be reached.

mod support;

use std::time::{Duration, Instant};

fn fleetctl(args: &[&str]) -> (Option<i32>, String, String) {
    let out = support::fleetctl_command()
        .args(args)
        .output()
        .expect("run fleetctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn verify_is_deprecated_and_exits_2() {
    let (code, _, err) = fleetctl(&["verify", "hello.service"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("deprecated"), "{err}");
}

#[test]
fn version_names_the_program() {
    let (code, out, _) = fleetctl(&["version"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        out,
        format!("fleetctl version {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn completions_for_each_shell_know_the_commands() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = fleetctl(&["completion", shell]);
        assert_eq!(code, Some(0), "{shell}: {err}");
        for command in [
            "list-units",
            "start",
            "journal",
            "endpoint",
            "tls",
            "ca-file",
            "key-file",
            "history",
            "rollback",
            "events",
        ] {
            assert!(out.contains(command), "{shell} completion lacks {command}");
        }
    }
}

#[test]
fn the_manual_page_is_roff() {
    let (code, out, _) = fleetctl(&["man"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains(".TH fleetctl"),
        "{}",
        &out[..out.len().min(200)]
    );
    assert!(out.contains("list\\-units"), "subcommands are listed");
    assert!(out.contains("ca\\-file"), "TLS flags are listed");
    assert!(out.contains("fleetctl\\-tls"), "tls is listed");
    assert!(out.contains("fleetctl\\-history"), "history is listed");
    assert!(out.contains("fleetctl\\-rollback"), "rollback is listed");
    assert!(out.contains("fleetctl\\-events"), "events is listed");
}

#[test]
fn a_bad_endpoint_is_refused_clearly() {
    let (code, _, err) = fleetctl(&["--endpoint", "ftp://x", "list-units"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("invalid endpoint"), "{err}");
}

#[test]
fn an_absent_fleetd_is_reported_not_waited_for() {
    let socket = std::env::temp_dir().join(format!("fleetctl-test-{}.sock", std::process::id()));
    let endpoint = format!("unix://{}", socket.display());
    // A request timeout well beyond the bound below: an answer within the bound is no timeout.
    let started = Instant::now();
    let (code, _, err) = fleetctl(&[
        "--endpoint",
        &endpoint,
        "--request-timeout",
        "60",
        "list-machines",
    ]);
    let elapsed = started.elapsed();
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot reach fleetd"), "{err}");
    assert!(
        elapsed < Duration::from_secs(20),
        "reported after {elapsed:?}"
    );
}

#[test]
fn list_commands_refuse_an_unknown_output_format() {
    let (code, _, err) = fleetctl(&["list-units", "--output", "yaml"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("yaml"), "{err}");
}

#[test]
fn out_of_range_numbers_are_refused_clearly_not_a_panic() {
    for args in [
        &["--request-timeout", "1e300", "list-units"][..],
        &["--request-timeout=NaN", "list-units"],
        &["--ssh-timeout", "1e300", "list-units"],
    ] {
        let (code, _, err) = fleetctl(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(
            err.contains("is not a number of seconds"),
            "{args:?}: {err}"
        );
    }
    let out = support::fleetctl_command()
        .args(["list-units"])
        .env("FLEETCTL_REQUEST_TIMEOUT", "1e300")
        .output()
        .expect("run fleetctl");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a number of seconds"));
}

#[test]
fn no_command_prints_the_help_with_the_version_and_succeeds() {
    // fleet printed its help and exited 0; its help has a VERSION section scripts read.
    let version = format!("VERSION:\n\t{}\n", env!("CARGO_PKG_VERSION"));
    for args in [&[][..], &["help"], &["--help"], &["-h"]] {
        let (code, out, err) = fleetctl(args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(out.contains(&version), "{args:?}: {out}");
        assert!(out.starts_with("NAME:\n\tfleetctl - "), "{args:?}: {out}");
        for section in ["USAGE:\n", "COMMANDS:\n", "OPTIONS:\n"] {
            assert!(out.contains(section), "{args:?} lacks {section}: {out}");
        }
        assert!(out.contains("list-units"), "{args:?}: {out}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}
