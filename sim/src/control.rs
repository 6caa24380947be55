//! fleet-sim's control (`--control`): commands on standard input from a benchmark that runs the
//! simulation as a child process (so that its memory is measured apart from the engine's).
//!
//! One command a line; each answer ends with a line that starts with `end` or `error`:
//!
//! - `kill INDEX`: powers machine INDEX off (its units stop, its lease is no longer renewed and
//!   expires; it is not revoked). Answers `end killed MACHINE`.
//! - `running`: a line `UNIT MACHINE...` for every unit that runs now, then `end`.
//! - `double-runs`: a line `UNIT MACHINE...` for every unit that ever ran on more than one
//!   machine at once (with every machine it ran on then), then `end TRANSITIONS`: how many times
//!   a unit started or stopped running on a machine, each of which was checked (`fleet_sim::Running`).

use anyhow::{Context, Result};
use fleet_registry::MachineId;
use fleet_sim::Simulation;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Kill(u32),
    Running,
    DoubleRuns,
}

fn parse(line: &str) -> Result<Command, String> {
    let mut words = line.split_whitespace();
    let command = match (words.next(), words.next()) {
        (Some("kill"), Some(index)) => Command::Kill(
            index
                .parse()
                .map_err(|_| format!("kill: {index:?} is not a machine index"))?,
        ),
        (Some("running"), None) => Command::Running,
        (Some("double-runs"), None) => Command::DoubleRuns,
        _ => {
            return Err(format!(
                "unknown command {line:?} (kill INDEX, running, double-runs)"
            ))
        }
    };
    match words.next() {
        None => Ok(command),
        Some(extra) => Err(format!(
            "unexpected {extra:?} after the command in {line:?}"
        )),
    }
}

fn unit_lines<'a, M>(units: impl IntoIterator<Item = (&'a String, M)>) -> String
where
    M: IntoIterator<Item = &'a MachineId>,
{
    let mut out = String::new();
    for (unit, machines) in units {
        out.push_str(unit);
        for machine in machines {
            out.push(' ');
            out.push_str(machine.as_str());
        }
        out.push('\n');
    }
    out
}

/// Answers commands until the end of standard input.
pub async fn serve(simulation: &mut Simulation, run: u32) -> Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    while let Some(line) = lines
        .next_line()
        .await
        .context("cannot read a command from standard input")?
    {
        if line.trim().is_empty() {
            continue;
        }
        let answer = match parse(&line) {
            Err(why) => format!("error {why}\n"),
            Ok(Command::Kill(index)) => {
                let id = fleet_sim::machine_id(run, index);
                if simulation.kill(&id) {
                    tracing::info!(machine = %id, "powered off by command");
                    format!("end killed {id}\n")
                } else {
                    format!("error no simulated machine {id} (index {index}) is on\n")
                }
            }
            Ok(Command::Running) => {
                let units = simulation.running().units();
                unit_lines(&units) + "end\n"
            }
            Ok(Command::DoubleRuns) => {
                let running = simulation.running();
                unit_lines(&running.double_runs()) + &format!("end {}\n", running.transitions())
            }
        };
        stdout
            .write_all(answer.as_bytes())
            .await
            .context("cannot answer on standard output")?;
        stdout
            .flush()
            .await
            .context("cannot answer on standard output")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn commands_parse() {
        let table: &[(&str, Result<Command, ()>)] = &[
            ("kill 7", Ok(Command::Kill(7))),
            ("  kill   12 ", Ok(Command::Kill(12))),
            ("running", Ok(Command::Running)),
            ("double-runs", Ok(Command::DoubleRuns)),
            ("kill", Err(())),
            ("kill -1", Err(())),
            ("kill 3 4", Err(())),
            ("running now", Err(())),
            ("stop", Err(())),
        ];
        for (line, expected) in table {
            assert_eq!(&parse(line).map_err(|_| ()), expected, "{line:?}");
        }
    }

    #[test]
    fn units_are_listed_with_their_machines() {
        let a = fleet_sim::machine_id(0, 1);
        let b = fleet_sim::machine_id(0, 2);
        let units = BTreeMap::from([("x.service".to_string(), vec![a.clone(), b.clone()])]);
        assert_eq!(unit_lines(&units), format!("x.service {a} {b}\n"));
    }
}
