//! Benchmarks on the local cluster, printed beside the figure to beat.
//!
//! `fleet-bench start-latency [--bin DIR] [--runs N]`: wall time of a blocking
//! `fleetctl start` of a fresh unit, from the host against node1's API, until it returns.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use fleet_e2e::{ticker_unit, Cluster};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut bin = fleet_e2e::target_dir().join("release");
    let mut runs = 10usize;
    let mut what = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bin" => match it.next() {
                Some(v) => bin = PathBuf::from(v),
                None => return usage("--bin needs a directory"),
            },
            "--runs" => match it.next().and_then(|v| v.parse().ok()) {
                Some(n) if n > 0 => runs = n,
                _ => return usage("--runs needs a positive number"),
            },
            "start-latency" => what = Some(arg.clone()),
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    match what.as_deref() {
        Some("start-latency") => start_latency(&bin, runs),
        _ => usage("name a benchmark"),
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("fleet-bench: {problem}\nusage: fleet-bench start-latency [--bin DIR] [--runs N]");
    ExitCode::from(2)
}

fn start_latency(bin: &std::path::Path, runs: usize) -> ExitCode {
    let cluster = Cluster::new(bin);
    cluster.up();
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        let name = format!("bench-start-{}-{i}.service", std::process::id());
        let path = cluster.unit_file(&name, &ticker_unit("start latency benchmark"));
        let started = Instant::now();
        let out = cluster.fleetctl(&["start", &path.to_string_lossy()]);
        let elapsed = started.elapsed();
        cluster.fleetctl(&["destroy", &name]);
        if !out.ok() || !out.stdout.contains("launched on") {
            eprintln!("fleet-bench: start of {name} failed: {out:#?}");
            return ExitCode::FAILURE;
        }
        times.push(elapsed);
    }
    times.sort();
    let median = if runs % 2 == 1 {
        times[runs / 2]
    } else {
        (times[runs / 2 - 1] + times[runs / 2]) / 2
    };
    let secs = |d: Duration| format!("{:.3} s", d.as_secs_f64());
    println!("start latency: blocking `fleetctl start` of a fresh unit, 3-node local cluster, binaries from {}", bin.display());
    println!(
        "  runs {runs}   median {}   min {}   max {}",
        secs(median),
        secs(times[0]),
        secs(times[runs - 1])
    );
    println!("  to beat: under 0.100 s (the original fleet: ~4 s)");
    ExitCode::SUCCESS
}
