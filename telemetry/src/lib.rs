//! fleetd's metrics: a handful of process-wide atomics that the engine and the registry update,
//! and a writer of the Prometheus text exposition format (version 0.0.4) that `/metrics`
//! renders them with.
//!
//! No dependencies and no locks: updating a metric is one or two relaxed atomic operations, so
//! any crate may count anything on any path, and rendering never waits on anyone.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

// ---- the metrics ----------------------------------------------------------------------------

/// Placements the engine wrote (each unit put on a machine counts once).
pub static ENGINE_PLACEMENTS: Counter = Counter::new();

/// Plans of the whole cluster the engine made (the changes its memo could not decide alone,
/// and the first after a read of the cluster: after an error, or a periodic one that found it
/// other than its view had it).
pub static ENGINE_WHOLE_PLANS: Counter = Counter::new();

/// Reads of the whole cluster the engine made (on taking the lead, once a minute by default,
/// and after an error).
pub static ENGINE_CLUSTER_READS: Counter = Counter::new();

/// How long one engine reconciliation takes: read the cluster, plan, write the changes.
pub static ENGINE_RECONCILE: Histogram<RECONCILE_BUCKETS_LEN> = Histogram::new(RECONCILE_BUCKETS);

/// 1 while this fleetd leads the engine, else 0.
pub static ENGINE_LEADER: Gauge = Gauge::new();

/// etcd requests that failed (unreachable, timed out, or refused).
pub static ETCD_ERRORS: Counter = Counter::new();

const RECONCILE_BUCKETS_LEN: usize = 12;
/// Seconds: a reconciliation is a few milliseconds on a small cluster and up to about a second
/// for 10,000 units.
const RECONCILE_BUCKETS: [f64; RECONCILE_BUCKETS_LEN] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Writes the process-wide metrics above.
pub fn render(out: &mut Exposition) {
    out.counter(
        "fleet_engine_placements_total",
        "Placements of units on machines written by this fleetd's engine.",
        ENGINE_PLACEMENTS.get(),
    );
    out.counter(
        "fleet_engine_whole_plans_total",
        "Plans of the whole cluster by this fleetd's engine (changes its memo could not decide \
         alone: rules between units, drains and updates while a machine drains, held units \
         changed; and the first plan after a read of the cluster: after an error, or a periodic \
         one that found it other than the engine's view had it).",
        ENGINE_WHOLE_PLANS.get(),
    );
    out.counter(
        "fleet_engine_cluster_reads_total",
        "Reads of the whole cluster by this fleetd's engine (on taking the lead, once a minute \
         by default, and after an error).",
        ENGINE_CLUSTER_READS.get(),
    );
    out.histogram(
        "fleet_engine_reconcile_seconds",
        "Duration of the engine's reconciliations (read, plan, write) on this fleetd.",
        &ENGINE_RECONCILE,
    );
    out.gauge(
        "fleet_engine_leader",
        "Whether this fleetd leads the engine (1) or not (0).",
        &[(&[], ENGINE_LEADER.get() as f64)],
    );
    out.counter(
        "fleet_etcd_errors_total",
        "etcd requests of this fleetd that failed (unreachable, timed out or refused).",
        ETCD_ERRORS.get(),
    );
}

/// Sets [`ENGINE_LEADER`] to 1 while it lives, back to 0 when dropped (also when the engine's
/// task is aborted).
#[must_use]
pub struct LeaderGuard(());

impl LeaderGuard {
    pub fn new() -> LeaderGuard {
        ENGINE_LEADER.set(1);
        LeaderGuard(())
    }
}

impl Default for LeaderGuard {
    fn default() -> Self {
        LeaderGuard::new()
    }
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        ENGINE_LEADER.set(0);
    }
}

// ---- metric types ---------------------------------------------------------------------------

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub const fn new() -> Gauge {
        Gauge(AtomicI64::new(0))
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A distribution over fixed upper bounds (`le`, ascending), plus `+Inf`, a sum and a count.
/// Each observation increments exactly one bucket; rendering accumulates them.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds: [f64; N],
    /// Observations in `(bounds[i-1], bounds[i]]`; the last slot is above every bound.
    buckets: [AtomicU64; N],
    above: AtomicU64,
    count: AtomicU64,
    /// The sum as `f64` bits.
    sum: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    /// `bounds` must ascend (checked by the tests of the histograms defined here).
    pub const fn new(bounds: [f64; N]) -> Histogram<N> {
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; N],
            above: AtomicU64::new(0),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        match self.bounds.iter().position(|b| value <= *b) {
            Some(i) => self.buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.above.fetch_add(1, Ordering::Relaxed),
        };
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// `(upper bound, cumulative count)` per bucket, `+Inf` last (its count is the total).
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        let mut out = Vec::with_capacity(N + 1);
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            total += bucket.load(Ordering::Relaxed);
            out.push((*bound, total));
        }
        total += self.above.load(Ordering::Relaxed);
        out.push((f64::INFINITY, total));
        out
    }

    /// How many values were observed.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum(&self) -> f64 {
        f64::from_bits(self.sum.load(Ordering::Relaxed))
    }
}

// ---- the text format ------------------------------------------------------------------------

/// Labels of one sample: `(name, value)`; values are escaped when written.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// A metrics page being written in the text exposition format: for each metric a `# HELP` and a
/// `# TYPE` line, then its samples, `name{label="value",...} value`.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    pub fn finish(self) -> String {
        self.text
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: Labels, value: &str) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape_label(v));
            }
            self.text.push('}');
        }
        self.text.push(' ');
        self.text.push_str(value);
        self.text.push('\n');
    }

    /// A counter without labels.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, help, "counter");
        self.sample(name, &[], &value.to_string());
    }

    /// A gauge with one sample per label set.
    pub fn gauge(&mut self, name: &str, help: &str, samples: &[(Labels, f64)]) {
        self.gauge_family(name, help);
        for (labels, value) in samples {
            self.gauge_sample(name, labels, *value);
        }
    }

    /// The `# HELP` and `# TYPE` lines of a gauge whose samples follow
    /// ([`Exposition::gauge_sample`]).
    pub fn gauge_family(&mut self, name: &str, help: &str) {
        self.header(name, help, "gauge");
    }

    /// One sample of the gauge family just started.
    pub fn gauge_sample(&mut self, name: &str, labels: Labels, value: f64) {
        self.sample(name, labels, &format_value(value));
    }

    /// A histogram: cumulative `_bucket{le=...}` samples, `_sum` and `_count`.
    pub fn histogram<const N: usize>(&mut self, name: &str, help: &str, h: &Histogram<N>) {
        self.header(name, help, "histogram");
        let buckets = h.cumulative();
        let bucket = format!("{name}_bucket");
        for (bound, count) in &buckets {
            let le = format_value(*bound);
            self.sample(&bucket, &[("le", &le)], &count.to_string());
        }
        let count = buckets.last().map(|(_, c)| *c).unwrap_or_default();
        self.sample(&format!("{name}_sum"), &[], &format_value(h.sum()));
        self.sample(&format!("{name}_count"), &[], &count.to_string());
    }
}

/// A sample value as Prometheus reads it (`+Inf`, `-Inf`, `NaN` spelt its way).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
}

/// Label values escape `\`, `"` and line feeds.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Help texts escape `\` and line feeds.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new([0.1, 1.0, 10.0]);
        for v in [0.05, 0.1, 0.5, 2.0, 3.0, 100.0] {
            h.observe(v);
        }
        assert_eq!(
            h.cumulative(),
            [(0.1, 2), (1.0, 3), (10.0, 5), (f64::INFINITY, 6)]
        );
        assert_eq!(h.count(), 6, "the count kept beside the buckets");
        let mut out = Exposition::new();
        out.histogram("x_seconds", "An x.", &h);
        let text = out.finish();
        assert_eq!(
            text,
            "# HELP x_seconds An x.\n\
             # TYPE x_seconds histogram\n\
             x_seconds_bucket{le=\"0.1\"} 2\n\
             x_seconds_bucket{le=\"1\"} 3\n\
             x_seconds_bucket{le=\"10\"} 5\n\
             x_seconds_bucket{le=\"+Inf\"} 6\n\
             x_seconds_sum 105.65\n\
             x_seconds_count 6\n"
        );
    }

    #[test]
    fn an_empty_histogram_renders_zeros() {
        let h = Histogram::new([1.0]);
        let mut out = Exposition::new();
        out.histogram("h", "h", &h);
        let text = out.finish();
        assert!(text.contains("h_bucket{le=\"+Inf\"} 0\n"), "{text}");
        assert!(text.contains("h_sum 0\nh_count 0\n"), "{text}");
    }

    #[test]
    fn the_reconcile_buckets_ascend() {
        assert!(RECONCILE_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn labels_and_help_are_escaped() {
        let mut out = Exposition::new();
        out.gauge(
            "g",
            "a \\ help\nline",
            &[
                (&[("state", "a\"b\\c\nd")], 1.0),
                (&[("a", "x"), ("b", "y")], 2.5),
                (&[], f64::NAN),
            ],
        );
        assert_eq!(
            out.finish(),
            "# HELP g a \\\\ help\\nline\n\
             # TYPE g gauge\n\
             g{state=\"a\\\"b\\\\c\\nd\"} 1\n\
             g{a=\"x\",b=\"y\"} 2.5\n\
             g NaN\n"
        );
    }

    #[test]
    fn counters_and_the_leader_guard() {
        let c = Counter::new();
        c.inc();
        c.add(4);
        assert_eq!(c.get(), 5);
        {
            let _leading = LeaderGuard::new();
            assert_eq!(ENGINE_LEADER.get(), 1);
        }
        assert_eq!(ENGINE_LEADER.get(), 0);
        let mut out = Exposition::new();
        render(&mut out);
        let text = out.finish();
        for name in [
            "fleet_engine_placements_total ",
            "fleet_engine_whole_plans_total ",
            "fleet_engine_cluster_reads_total ",
            "fleet_engine_reconcile_seconds_bucket{le=\"+Inf\"} ",
            "fleet_engine_reconcile_seconds_sum ",
            "fleet_engine_reconcile_seconds_count ",
            "fleet_engine_leader 0\n",
            "fleet_etcd_errors_total ",
        ] {
            assert!(text.contains(name), "{name:?} missing from\n{text}");
        }
    }

    #[test]
    fn values_use_prometheus_spelling() {
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(0.0025), "0.0025");
        assert_eq!(format_value(3.0), "3");
    }
}
