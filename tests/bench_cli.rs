//! `seb bench broker` as an operator runs it, on a short setting: it must drive the real
//! broker to completion and report every figure it promises, with no failed request. Speed is
//! not asserted here (docs/PERFORMANCE.md has the measurements).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Hsm;

#[test]
fn bench_broker_reports_raw_rate_throughput_latency_and_cpu_with_no_failures() {
    let hsm = Hsm::initialised();
    let out = hsm.seb_ok(&[
        "bench",
        "broker",
        "--seconds",
        "1",
        "--agents",
        "1,4",
        "--handshake-agents",
        "2",
        "--open-loop",
        "0.5",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    // Each agent count with the audit log on and off (the default), side by side.
    let keep_alive: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("keep-alive agent(s), audit log "))
        .collect();
    assert_eq!(keep_alive.len(), 4, "{out}");
    let costs = lines
        .iter()
        .filter(|l| l.contains("the audit log costs") && l.contains("% of throughput"))
        .count();
    assert_eq!(costs, 2, "{out}");
    for line in keep_alive {
        for field in [
            "tokens/s",
            "% of raw",
            "before",
            "after",
            "p50",
            "p99",
            "µs/token",
        ] {
            assert!(line.contains(field), "{field} missing: {line}");
        }
        assert!(line.contains(", 0 failed)"), "{line}");
        assert!(!line.contains("(0 ok"), "{line}");
    }
    // The open loop runs the largest agent count at half its closed-loop rate.
    let open: Vec<&&str> = lines.iter().filter(|l| l.contains("open loop")).collect();
    assert_eq!(open.len(), 1, "{out}");
    for field in [
        "  4 keep-alive agent(s), open loop at",
        "tokens/s offered (50 %",
        "p99",
        "not sent by the end)",
    ] {
        assert!(open[0].contains(field), "{field} missing: {}", open[0]);
    }
    assert!(open[0].contains(", 0 failed,"), "{}", open[0]);
    assert!(!open[0].contains("(0 ok"), "{}", open[0]);
    let handshakes = lines
        .iter()
        .find(|l| l.contains("new connection per request"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(handshakes.contains(", 0 failed)"), "{handshakes}");
    // The throwaway store of the run is removed.
    let leftovers: Vec<_> = std::fs::read_dir(hsm.path("state"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("bench-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
