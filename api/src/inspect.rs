//! Reading a unit's journal and status on this machine: `journalctl` and `systemctl status` as
//! child processes (read-only; arguments passed as a vector, never through a shell), and the
//! validation of what a request asks for.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use axum::body::Bytes;
use fleet_units::UnitName;
use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

use crate::server::{flag_param, single_param, ApiError};

/// A body streamed from a child process or a peer.
pub type ByteStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// The most journal lines one request may ask for.
pub const MAX_LINES: u32 = 100_000;

/// fleetctl's default `--lines`.
pub const DEFAULT_LINES: u32 = 10;

/// How long `systemctl status` may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(15);

/// What a journal request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalQuery {
    pub lines: u32,
    pub follow: bool,
}

impl JournalQuery {
    /// From the `lines` and `follow` query parameters: `lines` a positive integer up to
    /// [`MAX_LINES`] (default [`DEFAULT_LINES`]), `follow` `true` or `false` (default false).
    pub fn from_params(params: &BTreeMap<String, Vec<String>>) -> Result<JournalQuery, String> {
        let lines = match single_param(params, "lines")? {
            None => DEFAULT_LINES,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (1..=MAX_LINES).contains(&n) => n,
                _ => {
                    return Err(format!(
                        "invalid lines {v:?}: expected an integer from 1 to {MAX_LINES}"
                    ))
                }
            },
        };
        let follow = flag_param(params, "follow")?;
        Ok(JournalQuery { lines, follow })
    }

    /// As query parameters, for a request to a peer.
    pub fn to_params(self) -> [(&'static str, String); 2] {
        [
            ("lines", self.lines.to_string()),
            ("follow", self.follow.to_string()),
        ]
    }
}

/// The arguments of `journalctl` for a unit (the name is one argument, attached to its option
/// so that it can never be read as an option).
pub fn journal_args(unit: &UnitName, query: JournalQuery) -> Vec<String> {
    let mut args = vec![
        format!("--unit={unit}"),
        "--no-pager".to_string(),
        "-n".to_string(),
        query.lines.to_string(),
    ];
    if query.follow {
        args.push("--follow".to_string());
    }
    args
}

/// The arguments of `systemctl` for a unit's status.
pub fn status_args(unit: &UnitName) -> Vec<String> {
    vec![
        "status".to_string(),
        "--no-pager".to_string(),
        "-l".to_string(),
        "--".to_string(),
        unit.to_string(),
    ]
}

/// The line that opens one machine's section when a unit runs on several machines:
/// `=== f1ee7001.../10.233.0.11 ===`.
pub fn section_header(machine_id: &str, ip: &str) -> String {
    // By character: a byte slice would panic on an id that is not ASCII.
    let short = match machine_id.char_indices().nth(8) {
        Some((end, _)) => format!("{}...", &machine_id[..end]),
        None => machine_id.to_string(),
    };
    if ip.is_empty() {
        format!("=== {short} ===\n")
    } else {
        format!("=== {short}/{ip} ===\n")
    }
}

fn command(program: &str, args: &[String]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_PAGER", "")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Maps a child process that could not be run to this fleetd's failure (500), naming it.
pub(crate) fn not_run(what: &'static str) -> impl FnOnce(std::io::Error) -> ApiError {
    move |e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot run {what}: {e}"),
        )
    }
}

/// Streams `journalctl --unit UNIT --no-pager -n N [--follow]` run on this machine. The child
/// is killed when the stream is dropped (the client went away); what it wrote to stderr
/// follows its output.
pub fn local_journal(unit: &UnitName, query: JournalQuery) -> std::io::Result<ByteStream> {
    child_stream(command("journalctl", &journal_args(unit, query)))
}

/// How much of a streamed child's stderr is kept (the rest is read and dropped).
const STDERR_KEPT: usize = 64 * 1024;

/// Runs `cmd` and streams its stdout as it comes, then the first [`STDERR_KEPT`] bytes of its
/// stderr. Both pipes are read all along: a child that fills its stderr pipe before it ends
/// its stdout would otherwise block forever. The child travels with the stream, so dropping
/// the stream kills it.
fn child_stream(mut cmd: Command) -> std::io::Result<ByteStream> {
    let mut child = cmd.spawn()?;
    let output = ChildOutput {
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        stderr_text: Vec::new(),
        _child: child,
    };
    Ok(stream::unfold(output, |mut output| async move {
        let chunk = output.next().await?;
        Some((chunk, output))
    })
    .boxed())
}

/// A child's pipes, read together.
struct ChildOutput {
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    stderr_text: Vec<u8>,
    /// Killed on drop.
    _child: Child,
}

impl ChildOutput {
    /// The next chunk of stdout, reading stderr meanwhile; once stdout ends, stderr's text.
    async fn next(&mut self) -> Option<std::io::Result<Bytes>> {
        let ChildOutput {
            stdout,
            stderr,
            stderr_text,
            ..
        } = self;
        let mut buf = vec![0u8; 16 * 1024];
        let mut err_buf = vec![0u8; 4 * 1024];
        loop {
            let Some(out) = stdout.as_mut() else {
                // stdout is done: read stderr to its end, then hand on what was kept, once.
                while let Some(err) = stderr.as_mut() {
                    match err.read(&mut err_buf).await {
                        Ok(0) | Err(_) => *stderr = None,
                        Ok(n) => keep_stderr(stderr_text, &err_buf[..n]),
                    }
                }
                if stderr_text.is_empty() {
                    return None;
                }
                return Some(Ok(Bytes::from(std::mem::take(stderr_text))));
            };
            let err_read = async {
                match stderr.as_mut() {
                    Some(err) => err.read(&mut err_buf).await,
                    None => std::future::pending().await,
                }
            };
            // Both reads are cancel-safe: the one that loses the race has read nothing.
            tokio::select! {
                read = out.read(&mut buf) => match read {
                    Ok(0) => *stdout = None,
                    Ok(n) => {
                        buf.truncate(n);
                        return Some(Ok(Bytes::from(buf)));
                    }
                    Err(e) => {
                        (*stdout, *stderr) = (None, None);
                        stderr_text.clear();
                        return Some(Err(e));
                    }
                },
                read = err_read => match read {
                    Ok(0) | Err(_) => *stderr = None,
                    Ok(n) => keep_stderr(stderr_text, &err_buf[..n]),
                },
            }
        }
    }
}

fn keep_stderr(kept: &mut Vec<u8>, chunk: &[u8]) {
    let room = STDERR_KEPT.saturating_sub(kept.len());
    kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
}

/// `systemctl status --no-pager -l UNIT` on this machine: its exit code and its output
/// (stdout, then stderr).
pub async fn local_status(unit: &UnitName) -> std::io::Result<(i32, Vec<u8>)> {
    let child = command("systemctl", &status_args(unit)).spawn()?;
    let output = tokio::time::timeout(STATUS_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("systemctl status did not finish within {STATUS_TIMEOUT:?}"),
            )
        })??;
    let mut text = output.stdout;
    text.extend_from_slice(&output.stderr);
    Ok((output.status.code().unwrap_or(1), text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in pairs {
            out.entry(k.to_string()).or_default().push(v.to_string());
        }
        out
    }

    #[test]
    fn journal_queries_are_validated() {
        let ok = [
            (vec![], 10, false),
            (vec![("lines", "5")], 5, false),
            (vec![("lines", "100000"), ("follow", "true")], 100_000, true),
            (vec![("follow", "false")], 10, false),
        ];
        for (pairs, lines, follow) in ok {
            assert_eq!(
                JournalQuery::from_params(&params(&pairs)),
                Ok(JournalQuery { lines, follow }),
                "{pairs:?}"
            );
        }
        let bad = [
            vec![("lines", "0")],
            vec![("lines", "-1")],
            vec![("lines", "100001")],
            vec![("lines", "ten")],
            vec![("lines", "5; rm -rf /")],
            vec![("lines", "")],
            vec![("lines", "1"), ("lines", "2")],
            vec![("follow", "yes")],
            vec![("follow", "")],
        ];
        for pairs in bad {
            assert!(
                JournalQuery::from_params(&params(&pairs)).is_err(),
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn command_lines() {
        // A name may start with `-`: it stays attached to its option, or after `--`.
        let unit = UnitName::parse("-x@1.service").unwrap();
        let args = journal_args(
            &unit,
            JournalQuery {
                lines: 5,
                follow: true,
            },
        );
        assert_eq!(args[0], format!("--unit={unit}"));
        assert_eq!(&args[1..], ["--no-pager", "-n", "5", "--follow"]);
        let args = journal_args(
            &unit,
            JournalQuery {
                lines: 10,
                follow: false,
            },
        );
        assert!(!args.contains(&"--follow".to_string()));
        assert_eq!(
            status_args(&unit),
            ["status", "--no-pager", "-l", "--", unit.as_str()]
        );
    }

    #[tokio::test]
    async fn a_child_that_fills_stderr_before_stdout_ends_does_not_block() {
        // More than a pipe buffer (64 KiB) on stderr before anything on stdout: reading
        // stderr only after stdout ended once hung here forever.
        let script = "head -c 300000 /dev/zero | tr '\\0' e >&2; echo out; echo late >&2";
        let text = shell_output(script).await;
        assert!(text.starts_with(b"out\n"), "stdout comes first");
        assert_eq!(
            text.len(),
            4 + STDERR_KEPT,
            "stderr is kept up to its bound"
        );
        assert!(text[4..].iter().all(|b| *b == b'e'));
    }

    #[tokio::test]
    async fn a_childs_stderr_follows_its_stdout() {
        assert_eq!(shell_output("echo err >&2; echo out").await, b"out\nerr\n");
    }

    /// Everything `child_stream` gives of `sh -c script`, within 20 s.
    async fn shell_output(script: &str) -> Vec<u8> {
        let body =
            child_stream(command("sh", &["-c".to_string(), script.to_string()])).expect("sh runs");
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            tokio::time::timeout(Duration::from_secs(20), body.collect())
                .await
                .expect("the child's output ends");
        chunks
            .into_iter()
            .flat_map(|c| c.expect("a chunk").to_vec())
            .collect()
    }

    #[test]
    fn section_headers() {
        assert_eq!(
            section_header("f1ee7001000000000000000000000000", "10.233.0.11"),
            "=== f1ee7001.../10.233.0.11 ===\n"
        );
        assert_eq!(
            section_header("f1ee7001000000000000000000000000", ""),
            "=== f1ee7001... ===\n"
        );
        assert_eq!(section_header("f1ee", ""), "=== f1ee ===\n");
        assert_eq!(section_header("aéééééééé", ""), "=== aééééééé... ===\n");
    }
}
