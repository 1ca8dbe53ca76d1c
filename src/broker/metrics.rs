//! Counters and latency histograms, rendered as Prometheus text. Labels are stable codes and
//! endpoint names only: never a subject, serial, token or PIN.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Histogram bucket upper bounds in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
];

/// A fixed-bucket latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; 12],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        for (bound, count) in BUCKETS.iter().zip(self.counts.iter()) {
            if secs <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (bound, count) in BUCKETS.iter().zip(self.counts.iter()) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let total = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {total}");
    }
}

/// The codes of answers that did what was asked (a token, a pending request, a recorded
/// decision or outcome, a redemption, a health check); every other code is a refusal.
const SUCCESSES: &[&str] = &[
    "granted",
    "pending_approval",
    "rejected",
    "ok",
    "redeemed",
    "recorded",
    "checked",
];

/// The broker's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    issuance: Histogram,
    hsm_sign: Histogram,
}

impl Metrics {
    /// Counts a request to `endpoint` that ended with `outcome` (a status or error code).
    pub fn record_request(&self, endpoint: &'static str, outcome: &'static str) {
        if let Ok(mut map) = self.requests.lock() {
            *map.entry((endpoint, outcome)).or_insert(0) += 1;
        }
    }

    /// Records the latency of one granted issuance (decision to durable token).
    pub fn observe_issuance(&self, elapsed: Duration) {
        self.issuance.observe(elapsed);
    }

    /// Records the latency of one device signature.
    pub fn observe_hsm_sign(&self, elapsed: Duration) {
        self.hsm_sign.observe(elapsed);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP seb_requests_total Requests by endpoint, outcome (success or refused) and \
             code (the answer's status or its stable error code)."
        );
        let _ = writeln!(out, "# TYPE seb_requests_total counter");
        if let Ok(map) = self.requests.lock() {
            for ((endpoint, code), n) in map.iter() {
                let outcome = if SUCCESSES.contains(code) {
                    "success"
                } else {
                    "refused"
                };
                let _ = writeln!(
                    out,
                    "seb_requests_total{{endpoint=\"{endpoint}\",outcome=\"{outcome}\",\
                     code=\"{code}\"}} {n}"
                );
            }
        }
        self.issuance.render(
            "seb_issuance_seconds",
            "Time from request to durably recorded, signed token.",
            &mut out,
        );
        self.hsm_sign.render(
            "seb_hsm_sign_seconds",
            "Time the device takes to sign one token.",
            &mut out,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.record_request("executions", "granted");
        m.record_request("executions", "granted");
        m.record_request("executions", "operation_not_granted");
        m.observe_issuance(Duration::from_micros(700));
        m.observe_issuance(Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains(
            "seb_requests_total{endpoint=\"executions\",outcome=\"success\",code=\"granted\"} 2"
        ));
        assert!(text.contains(
            "seb_requests_total{endpoint=\"executions\",outcome=\"refused\",\
             code=\"operation_not_granted\"} 1"
        ));
        assert!(text.contains("seb_issuance_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("seb_issuance_seconds_bucket{le=\"0.004\"} 2"));
        assert!(text.contains("seb_issuance_seconds_count 2"));
        assert!(text.contains("seb_hsm_sign_seconds_count 0"));
    }
}
