//! Prometheus text-format metrics: command counters and latency, plus the
//! gauges each service adds (relay lag, projector position and lag, cache
//! hit ratio, dead letters).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS_MS: [f64; 11] = [
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS_MS.len()],
    sum_ms: f64,
    count: u64,
}

/// The process's metrics.
#[derive(Default)]
pub struct Metrics {
    commands: Mutex<BTreeMap<(String, String), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// One gauge sample: name, labels, value.
pub type Sample = (&'static str, Vec<(&'static str, String)>, f64);

impl Metrics {
    /// Counts one command by kind and outcome, with its latency.
    pub fn command(&self, kind: &str, outcome: &str, took: Duration) {
        *self
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((kind.to_owned(), outcome.to_owned()))
            .or_default() += 1;
        let ms = took.as_secs_f64() * 1000.0;
        let mut latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let h = latency.entry(kind.to_owned()).or_default();
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            if ms <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum_ms += ms;
        h.count += 1;
    }

    /// The text exposition, with `gauges` appended.
    pub fn render(&self, gauges: &[Sample]) -> String {
        let mut out = String::new();
        out.push_str("# HELP strata_commands_total Commands handled, by kind and outcome.\n# TYPE strata_commands_total counter\n");
        for ((kind, outcome), n) in self
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "strata_commands_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        out.push_str("# HELP strata_command_duration_seconds Command latency.\n# TYPE strata_command_duration_seconds histogram\n");
        for (kind, h) in self
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            for (i, b) in BUCKETS_MS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "strata_command_duration_seconds_bucket{{kind=\"{kind}\",le=\"{}\"}} {}",
                    b / 1000.0,
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "strata_command_duration_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "strata_command_duration_seconds_sum{{kind=\"{kind}\"}} {}",
                h.sum_ms / 1000.0
            );
            let _ = writeln!(
                out,
                "strata_command_duration_seconds_count{{kind=\"{kind}\"}} {}",
                h.count
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for (name, labels, value) in gauges {
            if seen.insert(*name) {
                let _ = writeln!(out, "# TYPE {name} gauge");
            }
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
            }
        }
        out
    }
}
