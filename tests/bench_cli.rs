//! `seb bench broker` as an operator runs it, on a short setting: it must drive the real
//! broker to completion and report every figure it promises, with no failed request. Speed is
//! not asserted here (docs/PERFORMANCE.md has the measurements).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Hsm;

#[test]
fn bench_broker_reports_raw_rate_throughput_latency_and_cpu_with_no_failures() {
    let hsm = Hsm::initialised();
    // What a bench killed before it could clean up left behind (no process has this id: it
    // is above the kernel's largest); the next bench removes it.
    let abandoned = hsm.path("state").join("bench-4294967");
    std::fs::create_dir_all(abandoned.join("agent")).unwrap();
    std::fs::write(abandoned.join(".seb-bench"), b"").unwrap();
    // A directory of that form the bench did not make is not its to remove.
    let foreign = hsm.path("state").join("bench-4294968");
    std::fs::create_dir_all(&foreign).unwrap();
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
    assert!(!abandoned.exists());
    assert!(foreign.exists());
    std::fs::remove_dir(&foreign).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    // Each agent count with the audit log on and off (the default), side by side.
    let keep_alive: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("keep-alive agent(s), sqlite, audit log "))
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

#[test]
fn bench_broker_compares_the_postgres_store_with_one_and_two_replicas_to_sqlite() {
    let hsm = Hsm::initialised_postgres();
    // No --store: on a broker configured for PostgreSQL both stores are measured by default.
    let out = hsm.seb_ok(&[
        "bench",
        "broker",
        "--replicas",
        "1,2",
        "--audit",
        "on",
        "--seconds",
        "1",
        "--agents",
        "1,4",
        "--handshake-agents",
        "0",
        "--open-loop",
        "0",
    ]);
    for variant in [
        "sqlite, audit log on",
        "postgres, 1 replica",
        "postgres, 2 replicas",
    ] {
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.contains(&format!("keep-alive agent(s), {variant}:")))
            .collect();
        assert_eq!(lines.len(), 2, "{variant}: {out}");
        for line in lines {
            assert!(line.contains("tokens/s") && line.contains("p99"), "{line}");
            assert!(line.contains(", 0 failed)"), "{line}");
            assert!(!line.contains("(0 ok"), "{line}");
        }
    }
    let ratios = out
        .lines()
        .filter(|l| l.contains("% of sqlite's throughput"))
        .count();
    assert_eq!(ratios, 4, "{out}");
    // The run's throwaway schemas are gone; the broker's own tables were not touched.
    let password = std::fs::read_to_string(hsm.path("pg.password")).unwrap();
    let port = std::fs::read_to_string(hsm.path("pg.port")).unwrap();
    let psql = |sql: &str| {
        let out = std::process::Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                port.trim(),
                "-U",
                "seb",
                "-d",
                "seb",
                "-Atc",
                sql,
            ])
            .env("PGPASSWORD", password.trim())
            .output()
            .unwrap();
        common::assert_success(&out, sql);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(
        psql("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'seb_bench_%'"),
        "0"
    );
    assert_eq!(psql("SELECT count(*) FROM public.executions"), "0");
}

/// Values the bench cannot run with are usage errors before anything starts (an infinite
/// open-loop rate once made the load generator allocate until it aborted).
#[test]
fn bench_options_out_of_range_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    for (option, value, says) in [
        ("--open-loop", "inf", "from 0 (skip) to 10"),
        ("--open-loop", "1e12", "from 0 (skip) to 10"),
        ("--open-loop", "NaN", "from 0 (skip) to 10"),
        ("--seconds", "0", "--seconds"),
        ("--seconds", "18446744073709551615", "--seconds"),
        ("--agents", "0", "from 1 to 4096"),
        ("--replicas", "0", "from 1 to 16"),
    ] {
        let out = common::seb(&["bench", "broker", option, value], dir.path());
        assert_eq!(out.status.code(), Some(2), "{option} {value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{option} {value}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
