//! Watches every node's systemd continuously, to prove that a unit never ran on two machines at
//! once. One loop inside each node lists the running services matching a pattern every 50 ms
//! or so (stamped with the node's clock, which is the host's: containers share the kernel's),
//! streamed to a thread here; a node that dies is watched again when it comes back.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{node_name, Cluster, NODES};

/// The unit states that count as running: processes may be alive.
const RUNNING: &str = "active,activating,deactivating,reloading";

/// The longest a sampling loop inside a node lives (it also ends when nobody reads it).
const LOOP_LIFETIME_SECS: u32 = 3600;

/// One look at one node: when (ns since the epoch) and which matching units were running.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at_ns: u128,
    pub running: BTreeSet<String>,
}

/// The samples taken, per node (index 0 is node1).
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub nodes: Vec<Vec<Sample>>,
}

pub struct Sampler {
    stop: Arc<AtomicBool>,
    children: Arc<Mutex<Vec<Option<Child>>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    samples: Arc<Mutex<Samples>>,
}

impl Sampler {
    /// Starts sampling the services matching `pattern` (a systemctl glob, e.g. `chaos-12-*`)
    /// on every node.
    pub fn start(c: &Cluster, pattern: &str) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let children = Arc::new(Mutex::new((0..NODES).map(|_| None).collect::<Vec<_>>()));
        let samples = Arc::new(Mutex::new(Samples {
            nodes: vec![Vec::new(); NODES as usize],
        }));
        let script = format!(
            "exec timeout --foreground {LOOP_LIFETIME_SECS} sh -c 'while :; do \
             t=$(date +%s%N); \
             a=$(systemctl list-units --state={RUNNING} --plain --no-legend --no-pager --type=service \"{pattern}\" 2>/dev/null | while read -r u rest; do printf \"%s \" \"$u\"; done); \
             echo \"$t $a\" || exit 0; sleep 0.05; done'"
        );
        let tool = c.tool_path();
        let threads = (1..=NODES)
            .map(|n| {
                let (stop, children, samples) = (stop.clone(), children.clone(), samples.clone());
                let (script, tool) = (script.clone(), tool.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let child = Command::new(&tool)
                            .args(["exec", &node_name(n), "sh", "-c", &script])
                            .stdout(Stdio::piped())
                            .stderr(Stdio::null())
                            .stdin(Stdio::null())
                            // A group of its own, so that stopping kills the loop inside the
                            // node too (nsenter forks it; it holds the pipe this thread reads).
                            .process_group(0)
                            .spawn();
                        let Ok(mut child) = child else {
                            std::thread::sleep(Duration::from_millis(300));
                            continue;
                        };
                        let out = child.stdout.take();
                        lock(&children)[n as usize - 1] = Some(child);
                        if stop.load(Ordering::Relaxed) {
                            if let Some(child) = lock(&children)[n as usize - 1].take() {
                                kill_group(child);
                            }
                        }
                        if let Some(out) = out {
                            for line in BufReader::new(out).lines() {
                                let Ok(line) = line else { break };
                                if let Some(sample) = parse(&line) {
                                    lock(&samples).nodes[n as usize - 1].push(sample);
                                }
                            }
                        }
                        if let Some(child) = lock(&children)[n as usize - 1].take() {
                            kill_group(child);
                        }
                        std::thread::sleep(Duration::from_millis(300));
                    }
                })
            })
            .collect();
        Sampler {
            stop,
            children,
            threads,
            samples,
        }
    }

    /// The samples taken so far; sampling goes on.
    pub fn snapshot(&self) -> Samples {
        lock(&self.samples).clone()
    }

    /// Stops sampling and returns every sample.
    pub fn finish(self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        for child in lock(&self.children).iter_mut().filter_map(Option::take) {
            kill_group(child);
        }
        // A thread still reading after this (its loop not killed) is left behind rather than
        // waited for: the samples taken are what counts.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for t in self.threads {
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        let samples = lock(&self.samples).clone();
        samples
    }
}

/// Kills a sampling loop's whole process group and reaps its leader.
fn kill_group(mut child: Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is shared.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.wait();
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn parse(line: &str) -> Option<Sample> {
    let mut words = line.split_whitespace();
    let at_ns = words.next()?.parse().ok()?;
    Some(Sample {
        at_ns,
        running: words.map(str::to_string).collect(),
    })
}

impl Samples {
    /// How many samples were taken.
    pub fn count(&self) -> usize {
        self.nodes.iter().map(Vec::len).sum()
    }

    /// The most of `units` not running at once, counted from the first moment every one of
    /// them was seen running (before it, they were still starting); `None` if there was no such
    /// moment. At each sample of a node, a unit is down when no node's latest sample shows it.
    pub fn most_down(&self, units: &[String]) -> Option<usize> {
        self.most_after_none(|latest| {
            units
                .iter()
                .filter(|u| !latest.iter().any(|r| r.contains(*u)))
                .count()
        })
    }

    /// The most nodes not running `unit` at once (a global unit), counted from the first
    /// moment every node was seen running it; `None` if there was no such moment.
    pub fn most_nodes_without(&self, unit: &str) -> Option<usize> {
        self.most_after_none(|latest| latest.iter().filter(|r| !r.contains(unit)).count())
    }

    /// The most `count` says of the nodes' latest samples at any sample (once every node was
    /// sampled), from the first moment it says 0; `None` if it never does.
    fn most_after_none(&self, count: impl Fn(&[&BTreeSet<String>]) -> usize) -> Option<usize> {
        let mut events: Vec<(u128, usize, &BTreeSet<String>)> = self
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(n, s)| s.iter().map(move |x| (x.at_ns, n, &x.running)))
            .collect();
        events.sort_by_key(|(at, n, _)| (*at, *n));
        let mut latest: Vec<Option<&BTreeSet<String>>> = vec![None; self.nodes.len()];
        let mut most: Option<usize> = None;
        for (_, n, running) in events {
            latest[n] = Some(running);
            let Some(all) = latest.iter().copied().collect::<Option<Vec<_>>>() else {
                continue;
            };
            let now = count(&all);
            most = match most {
                None if now == 0 => Some(0),
                None => None,
                Some(m) => Some(m.max(now)),
            };
        }
        most
    }

    /// The median time between two samples of one node.
    pub fn median_period(&self) -> Duration {
        let mut gaps: Vec<u128> = self
            .nodes
            .iter()
            .flat_map(|s| s.windows(2).map(|w| w[1].at_ns.saturating_sub(w[0].at_ns)))
            .collect();
        gaps.sort();
        Duration::from_nanos(gaps.get(gaps.len() / 2).copied().unwrap_or(0) as u64)
    }

    /// Every moment a unit was seen running on two nodes: a sample of one node shows it while
    /// the samples of another node just before and just after (at most `window` apart) both
    /// show it too. One line per unit and pair of nodes, with the first such moment.
    pub fn doubles(&self, window: Duration) -> Vec<String> {
        let window = window.as_nanos();
        let mut found: Vec<String> = Vec::new();
        let mut seen: BTreeSet<(String, usize, usize)> = BTreeSet::new();
        for (a, samples) in self.nodes.iter().enumerate() {
            for s in samples {
                for unit in &s.running {
                    for (b, other) in self.nodes.iter().enumerate() {
                        if a == b {
                            continue;
                        }
                        let after = other.partition_point(|o| o.at_ns < s.at_ns);
                        let (Some(before), Some(next)) = (
                            after.checked_sub(1).and_then(|i| other.get(i)),
                            other.get(after),
                        ) else {
                            continue;
                        };
                        if next.at_ns - before.at_ns <= window
                            && before.running.contains(unit)
                            && next.running.contains(unit)
                            && seen.insert((unit.clone(), a.min(b), a.max(b)))
                        {
                            found.push(format!(
                                "{unit} on node{} and node{} at {} ns",
                                a + 1,
                                b + 1,
                                s.at_ns
                            ));
                        }
                    }
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ns: u128, units: &[&str]) -> Sample {
        Sample {
            at_ns,
            running: units.iter().map(|u| u.to_string()).collect(),
        }
    }

    #[test]
    fn a_unit_seen_on_two_nodes_at_once_is_a_double() {
        let ms = 1_000_000;
        let samples = Samples {
            nodes: vec![
                vec![
                    sample(0, &["a"]),
                    sample(100 * ms, &["a"]),
                    sample(200 * ms, &[]),
                ],
                vec![
                    sample(50 * ms, &[]),
                    sample(150 * ms, &["a"]),
                    sample(250 * ms, &["a"]),
                ],
            ],
        };
        // node2 starts it after node1's last sample with it: no overlap seen.
        assert!(samples.doubles(Duration::from_millis(500)).is_empty());
        let samples = Samples {
            nodes: vec![
                vec![
                    sample(0, &["a"]),
                    sample(100 * ms, &["a"]),
                    sample(200 * ms, &["a"]),
                ],
                vec![
                    sample(50 * ms, &[]),
                    sample(150 * ms, &["a"]),
                    sample(250 * ms, &["a"]),
                ],
            ],
        };
        assert_eq!(samples.doubles(Duration::from_millis(500)).len(), 1);
        assert_eq!(samples.median_period(), Duration::from_millis(100));
        let units = vec!["a".to_string(), "b".to_string()];
        let starting = Samples {
            nodes: vec![
                vec![
                    sample(0, &[]),
                    sample(100 * ms, &["a"]),
                    sample(200 * ms, &["a"]),
                ],
                vec![
                    sample(50 * ms, &[]),
                    sample(150 * ms, &["b"]),
                    sample(250 * ms, &[]),
                ],
            ],
        };
        // Both down before they first ran together: not counted; then b went down.
        assert_eq!(starting.most_down(&units), Some(1));
        let never = Samples {
            nodes: vec![vec![sample(0, &["a"])], vec![sample(50 * ms, &[])]],
        };
        assert_eq!(never.most_down(&units), None);
        assert_eq!(starting.most_nodes_without("a"), None, "node 2 never ran a");
        let rolling = Samples {
            nodes: vec![
                vec![
                    sample(0, &["a"]),
                    sample(100 * ms, &[]),
                    sample(200 * ms, &["a"]),
                ],
                vec![
                    sample(50 * ms, &["a"]),
                    sample(150 * ms, &["a"]),
                    sample(250 * ms, &[]),
                ],
            ],
        };
        assert_eq!(rolling.most_nodes_without("a"), Some(1));
        assert_eq!(
            parse("12 a.service b.service").map(|s| s.running.len()),
            Some(2)
        );
        assert_eq!(parse("12").map(|s| s.running.len()), Some(0));
    }
}
