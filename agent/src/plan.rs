//! The agent's decision: what to do to the local systemd. Pure: no IO.

use std::collections::{BTreeMap, BTreeSet};

use fleet_registry::JobState;
use fleet_units::{glob_match, Requirements, UnitFile, UnitHash, UnitName, UnitOption};

/// What this machine should run: one entry per unit placed here or global.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub hash: UnitHash,
    /// `Loaded` or `Launched`.
    pub state: JobState,
}

/// What the agent has done to a unit, as far as it knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    pub hash: UnitHash,
    /// `Loaded` or `Launched`.
    pub state: JobState,
}

/// One step against systemd. The executor runs them in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Stop(UnitName),
    /// Stop was done before if needed: unlink and delete the unit file.
    Unload(UnitName),
    /// Write the unit file and link it.
    Load(UnitName),
    /// One daemon-reload for all replaced unit files of this batch.
    ReloadDaemon,
    Start(UnitName),
}

impl Action {
    /// The unit the action is about (none for a daemon-reload).
    pub fn unit(&self) -> Option<&UnitName> {
        match self {
            Action::Stop(n) | Action::Unload(n) | Action::Load(n) | Action::Start(n) => Some(n),
            Action::ReloadDaemon => None,
        }
    }

    /// What the action does, for the log.
    pub fn describe(&self) -> &'static str {
        match self {
            Action::Stop(_) => "stopping",
            Action::Unload(_) => "unloading: unlinking and removing the unit file",
            Action::Load(_) => "loading: writing and linking the unit file",
            Action::ReloadDaemon => "reloading systemd",
            Action::Start(_) => "starting",
        }
    }
}

/// A unit this machine could run: placed here by the engine, or global.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub name: &'a UnitName,
    pub options: &'a [UnitOption],
    pub global: bool,
}

/// Which units this machine runs: every unit placed here, then the global units whose
/// `MachineMetadata` matches this machine's metadata, in name order, skipping a global unit
/// that conflicts (either way) with one already chosen, as fleet's agent does.
pub fn select<'a>(
    metadata: &BTreeMap<String, String>,
    candidates: &[Candidate<'a>],
) -> Vec<Candidate<'a>> {
    let requirements = |c: &Candidate<'_>| {
        Requirements::from_unit(c.name, &UnitFile::from_options(c.options.to_vec()))
            .map(|(r, _)| r)
            .ok()
    };
    let mut chosen: Vec<(Candidate<'a>, Vec<String>)> = candidates
        .iter()
        .filter(|c| !c.global)
        .map(|c| {
            (
                c.clone(),
                requirements(c).map(|r| r.conflicts).unwrap_or_default(),
            )
        })
        .collect();
    let mut globals: Vec<&Candidate<'a>> = candidates.iter().filter(|c| c.global).collect();
    globals.sort_by(|a, b| a.name.cmp(b.name));
    for g in globals {
        let Some(req) = requirements(g) else {
            continue;
        };
        if !req.metadata_matches(metadata) {
            continue;
        }
        let conflicts = chosen.iter().any(|(other, other_conflicts)| {
            req.conflicts
                .iter()
                .any(|p| glob_match(p, other.name.as_str()))
                || other_conflicts
                    .iter()
                    .any(|p| glob_match(p, g.name.as_str()))
        });
        if !conflicts {
            chosen.push((g.clone(), req.conflicts));
        }
    }
    chosen.into_iter().map(|(c, _)| c).collect()
}

/// Works out the steps that take `local` to `desired`.
///
/// Order: stop and unload what must go, write and link what is new or changed, one
/// daemon-reload if a unit systemd already knows changed, then starts and stops. `preloaded`
/// names the new units systemd has already loaded from another file (say a unit of the same
/// name in `/lib/systemd/system`): linking ours only takes effect after a daemon-reload. A changed unit that
/// was running is stopped first and started again on its new content. A unit that was started
/// is not started again because it exited: like fleet, the agent acts on changes of desired
/// state, and systemd's own `Restart=` governs restarts.
pub fn plan(
    desired: &BTreeMap<UnitName, Desired>,
    local: &BTreeMap<UnitName, Local>,
    preloaded: &BTreeSet<UnitName>,
) -> Vec<Action> {
    let mut stops = Vec::new();
    let mut unloads = Vec::new();
    let mut loads = Vec::new();
    let mut starts = Vec::new();
    let mut reload = false;

    for (name, have) in local {
        if !desired.contains_key(name) {
            if have.state == JobState::Launched {
                stops.push(Action::Stop(name.clone()));
            }
            unloads.push(Action::Unload(name.clone()));
        }
    }
    for (name, want) in desired {
        match local.get(name) {
            None => {
                reload |= preloaded.contains(name);
                loads.push(Action::Load(name.clone()));
                if want.state == JobState::Launched {
                    starts.push(Action::Start(name.clone()));
                }
            }
            Some(have) if have.hash != want.hash => {
                if have.state == JobState::Launched {
                    stops.push(Action::Stop(name.clone()));
                }
                loads.push(Action::Load(name.clone()));
                reload = true;
                if want.state == JobState::Launched {
                    starts.push(Action::Start(name.clone()));
                }
            }
            Some(have) => match (have.state, want.state) {
                (JobState::Launched, JobState::Loaded) => stops.push(Action::Stop(name.clone())),
                (JobState::Loaded, JobState::Launched) => starts.push(Action::Start(name.clone())),
                _ => {}
            },
        }
    }
    let mut actions = stops;
    actions.extend(unloads);
    actions.extend(loads);
    if reload {
        actions.push(Action::ReloadDaemon);
    }
    actions.extend(starts);
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_units::{UnitFile, UnitOption};

    fn name(s: &str) -> UnitName {
        UnitName::parse(s).unwrap()
    }

    fn hash(v: &str) -> UnitHash {
        UnitFile::from_options(vec![UnitOption {
            section: "Service".into(),
            name: "ExecStart".into(),
            value: v.into(),
        }])
        .hash()
    }

    fn desired(entries: &[(&str, &str, JobState)]) -> BTreeMap<UnitName, Desired> {
        entries
            .iter()
            .map(|(n, h, s)| {
                (
                    name(n),
                    Desired {
                        hash: hash(h),
                        state: *s,
                    },
                )
            })
            .collect()
    }

    fn local(entries: &[(&str, &str, JobState)]) -> BTreeMap<UnitName, Local> {
        entries
            .iter()
            .map(|(n, h, s)| {
                (
                    name(n),
                    Local {
                        hash: hash(h),
                        state: *s,
                    },
                )
            })
            .collect()
    }

    use JobState::{Launched, Loaded};

    type Case = (
        &'static str,
        BTreeMap<UnitName, Desired>,
        BTreeMap<UnitName, Local>,
        Vec<Action>,
    );

    #[test]
    fn table() {
        let a = || name("a.service");
        let cases: Vec<Case> = vec![
            ("nothing", desired(&[]), local(&[]), vec![]),
            (
                "new launched unit: load then start",
                desired(&[("a.service", "1", Launched)]),
                local(&[]),
                vec![Action::Load(a()), Action::Start(a())],
            ),
            (
                "new loaded unit: load only",
                desired(&[("a.service", "1", Loaded)]),
                local(&[]),
                vec![Action::Load(a())],
            ),
            (
                "launched to loaded: stop",
                desired(&[("a.service", "1", Loaded)]),
                local(&[("a.service", "1", Launched)]),
                vec![Action::Stop(a())],
            ),
            (
                "loaded to launched: start",
                desired(&[("a.service", "1", Launched)]),
                local(&[("a.service", "1", Loaded)]),
                vec![Action::Start(a())],
            ),
            (
                "gone while running: stop then unload",
                desired(&[]),
                local(&[("a.service", "1", Launched)]),
                vec![Action::Stop(a()), Action::Unload(a())],
            ),
            (
                "gone while loaded: unload",
                desired(&[]),
                local(&[("a.service", "1", Loaded)]),
                vec![Action::Unload(a())],
            ),
            (
                "content changed while running: stop, rewrite, reload, start",
                desired(&[("a.service", "2", Launched)]),
                local(&[("a.service", "1", Launched)]),
                vec![
                    Action::Stop(a()),
                    Action::Load(a()),
                    Action::ReloadDaemon,
                    Action::Start(a()),
                ],
            ),
            (
                "steady: nothing",
                desired(&[("a.service", "1", Launched)]),
                local(&[("a.service", "1", Launched)]),
                vec![],
            ),
        ];
        for (what, d, l, want) in cases {
            assert_eq!(plan(&d, &l, &BTreeSet::new()), want, "{what}");
        }
    }

    #[test]
    fn one_reload_for_many_changed_units() {
        let d = desired(&[("a.service", "2", Loaded), ("b.service", "2", Loaded)]);
        let l = local(&[("a.service", "1", Loaded), ("b.service", "1", Loaded)]);
        let reloads = plan(&d, &l, &BTreeSet::new())
            .into_iter()
            .filter(|a| *a == Action::ReloadDaemon)
            .count();
        assert_eq!(reloads, 1);
    }

    #[test]
    fn global_units_follow_metadata_and_yield_to_conflicts_in_name_order() {
        let opts = |lines: &[(&str, &str)]| -> Vec<UnitOption> {
            lines
                .iter()
                .map(|(k, v)| UnitOption::new("X-Fleet", *k, *v))
                .chain([UnitOption::new("Service", "ExecStart", "/bin/true")])
                .collect()
        };
        let placed = name("placed.service");
        let (g_a, g_b, g_c, g_d) = (
            name("a-global.service"),
            name("b-global.service"),
            name("c-global.service"),
            name("d-global.service"),
        );
        let placed_opts = opts(&[("Conflicts", "d-*")]);
        let a_opts = opts(&[("Global", "true"), ("MachineMetadata", "role=web")]);
        let b_opts = opts(&[("Global", "true"), ("MachineMetadata", "role=db")]);
        let c_opts = opts(&[("Global", "true"), ("Conflicts", "a-global.service")]);
        let d_opts = opts(&[("Global", "true")]);
        let candidates = vec![
            Candidate {
                name: &g_d,
                options: &d_opts,
                global: true,
            },
            Candidate {
                name: &g_c,
                options: &c_opts,
                global: true,
            },
            Candidate {
                name: &g_b,
                options: &b_opts,
                global: true,
            },
            Candidate {
                name: &g_a,
                options: &a_opts,
                global: true,
            },
            Candidate {
                name: &placed,
                options: &placed_opts,
                global: false,
            },
        ];
        let metadata: BTreeMap<String, String> = [("role".to_string(), "web".to_string())].into();
        let chosen: Vec<&str> = select(&metadata, &candidates)
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        // placed: always; a: metadata matches; b: role=db does not; c: conflicts with a,
        // chosen before it by name; d: the placed unit conflicts with it.
        assert_eq!(chosen, vec!["placed.service", "a-global.service"]);
    }

    #[test]
    fn a_new_unit_that_systemd_already_loaded_from_elsewhere_needs_a_reload() {
        let d = desired(&[("a.service", "1", Launched)]);
        let preloaded: BTreeSet<UnitName> = [name("a.service")].into();
        assert_eq!(
            plan(&d, &local(&[]), &preloaded),
            vec![
                Action::Load(name("a.service")),
                Action::ReloadDaemon,
                Action::Start(name("a.service")),
            ]
        );
    }

    #[test]
    fn new_units_need_no_reload() {
        let d = desired(&[("a.service", "1", Launched), ("b.service", "1", Launched)]);
        assert!(!plan(&d, &local(&[]), &BTreeSet::new()).contains(&Action::ReloadDaemon));
    }
}
