//! Latency samples and what is reported about them.

use std::time::Duration;

use serde_json::{json, Value};

/// Latencies of one run.
#[derive(Default, Clone)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    /// Adds one sample.
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    /// Merges another set in.
    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// Every sample, in microseconds (how a generator process reports them).
    pub fn micros(&self) -> Vec<u64> {
        self.0.iter().map(|d| d.as_micros() as u64).collect()
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The `q` quantile (0..=1), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        let mut v = self.0.clone();
        v.sort();
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[i].as_secs_f64() * 1000.0
    }

    /// p50/p90/p99/max as JSON.
    pub fn summary(&self) -> Value {
        json!({
            "p50_ms": round(self.quantile_ms(0.5)),
            "p90_ms": round(self.quantile_ms(0.9)),
            "p99_ms": round(self.quantile_ms(0.99)),
            "max_ms": round(self.quantile_ms(1.0)),
        })
    }
}

/// Rounds to two decimals for reports.
pub fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Median of `v` (empty -> 0).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}
