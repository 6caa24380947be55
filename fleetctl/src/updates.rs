//! `fleetctl update` and the commands that follow and steer rolling updates (not in fleet).
//! The engine leader does the work from the update's record in etcd: fleetctl asks for it,
//! then only watches, so an update goes on when fleetctl exits.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use fleet_client::schema::{Update, UpdateRequest};
use fleet_client::ClientError;
use fleet_units::{glob_match, UnitName};

use crate::commands::{
    fields, print_json, print_or_fail, read_unit_file, render, short_hash, stderr, Ctl,
};
use crate::{Listing, Output};

/// How often a blocking `update` looks at its update.
const WATCH: Duration = Duration::from_millis(500);

/// `--max-parallel` and the rest of `fleetctl update`.
#[derive(clap::Args, Debug, Clone)]
pub struct UpdateOptions {
    /// At most this many units down because of the update at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_parallel: u32,
    /// How long a unit must run its new content without a break to be healthy
    /// (e.g. 10s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub min_healthy: Duration,
    /// How long a unit has to become healthy before it has failed (default 5m, and longer
    /// than --min-healthy).
    #[arg(long, value_parser = parse_duration)]
    pub healthy_deadline: Option<Duration>,
    /// When a unit does not become healthy, put back the content of every unit the update
    /// changed, as many at a time as --max-parallel allows.
    #[arg(long)]
    pub auto_revert: bool,
    /// Do not wait for the update to end.
    #[arg(long)]
    pub no_block: bool,
}

/// `10s`, `500ms`, `2m`, `1h`, or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 10s, 500ms, 2m"))?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        _ => {
            return Err(format!(
                "invalid duration {text:?}: expected e.g. 10s, 500ms, 2m"
            ))
        }
    };
    Ok(Duration::from_millis(ms))
}

/// The units an update of `file_name` to new content covers: those matching `patterns`, or
/// without any, the instances of the template `file_name` names, or the unit itself.
pub fn select_units(
    file_name: &UnitName,
    patterns: &[String],
    in_cluster: &[String],
) -> Result<Vec<String>, String> {
    let mut chosen: Vec<String> = if !patterns.is_empty() {
        in_cluster
            .iter()
            .filter(|n| patterns.iter().any(|p| glob_match(p, n)))
            .cloned()
            .collect()
    } else if file_name.is_template() {
        in_cluster
            .iter()
            .filter(|n| {
                UnitName::parse(n)
                    .is_ok_and(|u| u.is_instance() && u.template().as_ref() == Some(file_name))
            })
            .cloned()
            .collect()
    } else {
        in_cluster
            .iter()
            .filter(|n| *n == file_name.as_str())
            .cloned()
            .collect()
    };
    chosen.retain(|n| UnitName::parse(n).is_ok_and(|u| !u.is_template()));
    chosen.sort();
    chosen.dedup();
    if chosen.is_empty() {
        return Err(match patterns {
            [] if file_name.is_template() => {
                format!("no instance of {file_name} is in the cluster")
            }
            [] => format!("unit {file_name} is not in the cluster"),
            _ => format!("no unit in the cluster matches {}", patterns.join(" ")),
        });
    }
    Ok(chosen)
}

impl Ctl {
    /// `fleetctl update FILE [UNIT|GLOB...]`: asks for a rolling update of the units to FILE's
    /// content, then (unless `--no-block`) shows each unit's steps until it ends.
    pub async fn update(&self, file: &str, patterns: &[String], options: &UpdateOptions) -> u8 {
        let path = Path::new(file);
        let name = match path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("{file}: not a unit file name"))
            .and_then(|n| UnitName::parse(n).map_err(|e| format!("{file}: {e}")))
        {
            Ok(n) => n,
            Err(e) => {
                stderr(e);
                return 1;
            }
        };
        let unit_file = match read_unit_file(path) {
            Ok(f) => f,
            Err(e) => {
                stderr(format_args!("Unable to read the new unit file: {e}"));
                return 1;
            }
        };
        let in_cluster: Vec<String> = match self.client.units().await {
            Ok(units) => units.into_iter().map(|u| u.name).collect(),
            Err(e) => {
                stderr(format_args!(
                    "Error retrieving list of units from repository: {e}"
                ));
                return 1;
            }
        };
        let units = match select_units(&name, patterns, &in_cluster) {
            Ok(u) => u,
            Err(e) => {
                stderr(format_args!("Unable to update: {e}"));
                return 1;
            }
        };
        let request = UpdateRequest {
            units,
            options: unit_file.into_options(),
            max_parallel: Some(options.max_parallel),
            min_healthy_ms: Some(options.min_healthy.as_millis() as u64),
            healthy_deadline_ms: options.healthy_deadline.map(|d| d.as_millis() as u64),
            auto_revert: options.auto_revert,
        };
        let update = match self.client.create_update(&request).await {
            Ok(u) => u,
            Err(ClientError::Api { message, .. }) => {
                stderr(format_args!("Unable to update: {message}"));
                return 1;
            }
            Err(e) => {
                stderr(format_args!("Unable to update: {e}"));
                return 1;
            }
        };
        let names: std::collections::BTreeSet<&str> =
            update.units.iter().map(|u| u.name.as_str()).collect();
        let machines = update.units.iter().filter(|u| u.machine.is_some()).count();
        let global = if machines > 0 {
            format!(" ({machines} machines of global units, each in turn)")
        } else {
            String::new()
        };
        println!(
            "Update {} of {} units{global}, {} at a time, started",
            update.id,
            names.len(),
            update.max_parallel
        );
        if options.no_block {
            return 0;
        }
        self.follow_update(update).await
    }

    /// Prints each step of `update` as it happens until it ends: 0 when done.
    async fn follow_update(&self, mut update: Update) -> u8 {
        let mut shown: BTreeMap<String, String> = BTreeMap::new();
        loop {
            for unit in &update.units {
                let label = unit.label(false);
                if shown.get(&label) != Some(&unit.phase) {
                    if unit.phase != "pending" {
                        match &unit.failure {
                            Some(f) => println!("{label}: {} ({f})", unit.phase),
                            None => println!("{label}: {}", unit.phase),
                        }
                    }
                    shown.insert(label, unit.phase.clone());
                }
            }
            if matches!(
                update.state.as_str(),
                "done" | "failed" | "reverted" | "aborted"
            ) {
                let reason = update
                    .reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                println!("Update {} {}{reason}", update.id, update.state);
                return u8::from(update.state != "done");
            }
            tokio::time::sleep(WATCH).await;
            update = match self.client.update(&update.id).await {
                Ok(u) => u,
                Err(e) => {
                    stderr(format_args!(
                        "Error retrieving update {}: {e}; it goes on (fleetctl update-status {})",
                        update.id, update.id
                    ));
                    return 1;
                }
            };
        }
    }

    /// `fleetctl list-updates`: `ID STATE UNITS HEALTHY REASON`.
    pub async fn list_updates(&self, listing: &Listing) -> u8 {
        match self.client.updates().await {
            Ok(updates) if listing.output == Output::Json => print_json(&updates),
            Ok(updates) => print_or_fail(render_updates(&updates, listing)),
            Err(e) => {
                stderr(format_args!("Error retrieving updates: {e}"));
                1
            }
        }
    }

    /// `fleetctl update-status ID`: the update's state, then `UNIT PHASE FROM FAILURE`.
    pub async fn update_status(&self, id: &str, listing: &Listing) -> u8 {
        match self.client.update(id).await {
            Ok(update) if listing.output == Output::Json => print_json(&[update]),
            Ok(update) => {
                if !listing.no_legend {
                    let reason = update
                        .reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default();
                    println!(
                        "Update {} {} ({} at a time){reason}",
                        update.id, update.state, update.max_parallel
                    );
                }
                print_or_fail(render_update_units(&update, listing))
            }
            Err(ClientError::Api { code: 404, .. }) => {
                stderr(format_args!("Update {id} does not exist."));
                1
            }
            Err(e) => {
                stderr(format_args!("Error retrieving update {id}: {e}"));
                1
            }
        }
    }

    /// `fleetctl pause-update|resume-update|abort-update ID`.
    pub async fn steer_update(&self, id: &str, action: &str) -> u8 {
        match self.client.steer_update(id, action).await {
            Ok(update) => {
                println!("Update {} {}", update.id, update.state);
                0
            }
            Err(ClientError::Api { message, .. }) => {
                stderr(format_args!("Unable to {action} update {id}: {message}"));
                1
            }
            Err(e) => {
                stderr(format_args!("Unable to {action} update {id}: {e}"));
                1
            }
        }
    }
}

pub fn render_updates(updates: &[Update], listing: &Listing) -> Result<String, String> {
    let columns = fields(
        listing,
        &["id", "state", "units", "healthy", "reason"],
        &["id", "state", "units", "healthy", "reason"],
    )?;
    let rows = updates
        .iter()
        .map(|u| {
            columns
                .iter()
                .map(|c| match *c {
                    "id" => u.id.clone(),
                    "state" => u.state.clone(),
                    // A global unit counts once per machine; its own content not at all.
                    "units" => u.count(None).to_string(),
                    "healthy" => u.count(Some("healthy")).to_string(),
                    "reason" => u.reason.clone().unwrap_or_else(|| "-".into()),
                    _ => "-".into(),
                })
                .collect()
        })
        .collect();
    Ok(render(listing, &columns, rows))
}

pub fn render_update_units(update: &Update, listing: &Listing) -> Result<String, String> {
    // The machine column by default only when a global unit is updated machine by machine.
    let default: &[&str] = if update.units.iter().any(|u| u.machine.is_some()) {
        &["unit", "machine", "phase", "from", "failure"]
    } else {
        &["unit", "phase", "from", "failure"]
    };
    let columns = fields(
        listing,
        &["unit", "machine", "phase", "from", "failure"],
        default,
    )?;
    let rows = update
        .units
        .iter()
        .map(|u| {
            columns
                .iter()
                .map(|c| match *c {
                    "unit" => u.name.clone(),
                    "machine" => match (&u.machine, u.global) {
                        (Some(m), _) if listing.full => m.clone(),
                        (Some(m), _) => m.get(..8).unwrap_or(m).to_string(),
                        (None, true) => "(unit)".into(),
                        (None, false) => "-".into(),
                    },
                    "phase" => u.phase.clone(),
                    "from" => short_hash(&u.from, listing.full),
                    "failure" => u.failure.clone().unwrap_or_else(|| "-".into()),
                    _ => "-".into(),
                })
                .collect()
        })
        .collect();
    Ok(render(listing, &columns, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list of updates counts a global unit's machines (counted by the API, or listed) and
    /// the units placed on one machine, never a global unit's own content.
    #[test]
    fn a_list_of_updates_counts_machines_listed_or_counted() {
        let entry =
            |machine: Option<&str>, global: bool, phase: &str| fleet_client::schema::UpdateUnit {
                name: "u.service".into(),
                machine: machine.map(str::to_string),
                global,
                phase: phase.into(),
                ..Default::default()
            };
        let counted = Update {
            id: "1a".into(),
            state: "running".into(),
            units: vec![entry(None, false, "healthy"), entry(None, true, "healthy")],
            machines: [(
                "g.service".to_string(),
                [
                    ("healthy".to_string(), 5_000),
                    ("pending".to_string(), 4_998),
                ]
                .into(),
            )]
            .into(),
            ..Default::default()
        };
        let listed = Update {
            id: "1b".into(),
            state: "done".into(),
            units: vec![
                entry(Some("m1"), true, "healthy"),
                entry(Some("m2"), true, "healthy"),
                entry(None, true, "healthy"),
            ],
            ..Default::default()
        };
        let listing = Listing {
            fields: None,
            full: false,
            no_legend: true,
            output: Output::Table,
        };
        let table = render_updates(&[counted, listed], &listing).unwrap();
        assert_eq!(
            table.lines().collect::<Vec<_>>(),
            ["1a\trunning\t9999\t5001\t-", "1b\tdone\t2\t2\t-"]
        );
    }

    #[test]
    fn durations() {
        let ms = |t: &str| parse_duration(t).map(|d| d.as_millis() as u64);
        assert_eq!(ms("10s"), Ok(10_000));
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("2m"), Ok(120_000));
        assert_eq!(ms("1h"), Ok(3_600_000));
        assert_eq!(ms("3"), Ok(3_000));
        for bad in ["", "s", "10x", "-1s", "1.5s"] {
            assert!(ms(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn units_are_chosen_by_glob_template_or_name() {
        let cluster: Vec<String> = [
            "web@.service",
            "web@1.service",
            "web@2.service",
            "webby.service",
            "db.service",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let template = UnitName::parse("web@.service").unwrap();
        assert_eq!(
            select_units(&template, &[], &cluster).unwrap(),
            ["web@1.service", "web@2.service"]
        );
        let db = UnitName::parse("db.service").unwrap();
        assert_eq!(select_units(&db, &[], &cluster).unwrap(), ["db.service"]);
        assert_eq!(
            select_units(&db, &["web*".to_string()], &cluster).unwrap(),
            ["web@1.service", "web@2.service", "webby.service"]
        );
        let other = UnitName::parse("other.service").unwrap();
        assert_eq!(
            select_units(&other, &[], &cluster),
            Err("unit other.service is not in the cluster".to_string())
        );
    }
}
