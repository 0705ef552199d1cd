//! The load generator as a smoke check: `chorus-bench suite --quick` runs every scenario end to
//! end against the `chorus` binary, on the embedded default and on the distributed roles (and
//! against Centrifugo where a run is given `CHORUS_BENCH_CENTRIFUGO`). This asserts that the
//! benchmark works and what it counts (every send answered, every fan-out delivery arrived),
//! never how fast: the figures of a debug build on a shared machine mean nothing.

use std::path::Path;

use chorus_process::distributed_services;
use serde_json::Value;

/// Runs the quick suite with `mode_args` and returns its JSON document.
fn quick_suite(mode_args: &[&str]) -> Vec<Value> {
    // built for this test by cargo; it starts the `chorus` binary beside it (built for
    // chorus's own integration tests in the same workspace run)
    let bench = std::path::PathBuf::from(env!("CARGO_BIN_EXE_chorus-bench"));
    let dir = tempfile::tempdir().expect("temporary directory");
    let json = dir.path().join("bench.json");
    let output = std::process::Command::new(&bench)
        .args(mode_args)
        .arg("--json")
        .arg(&json)
        .args(["suite", "--quick"])
        .output()
        .expect("running chorus-bench");
    assert!(
        output.status.success(),
        "chorus-bench failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("raw baseline") && table.contains("ratio"),
        "the table compares with the raw baseline:\n{table}"
    );
    read_document(&json)
}

fn read_document(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("the JSON report was written");
    let document: Value = serde_json::from_str(&text).expect("the report is JSON");
    document.as_array().expect("a list of reports").clone()
}

fn report<'a>(reports: &'a [Value], prefix: &str) -> &'a Value {
    reports
        .iter()
        .find(|report| {
            report["scenario"]
                .as_str()
                .is_some_and(|name| name.starts_with(prefix))
        })
        .unwrap_or_else(|| panic!("no {prefix} report in {reports:#?}"))
}

/// What every mode's quick suite must show.
fn check_common(reports: &[Value]) {
    let idle = report(reports, "idle");
    assert!(
        idle["runs"][0]["server_bytes_per_session"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // Centrifugo's idle sessions, when the run was given a binary
    if !idle["centrifugo"]["skipped"].is_string() {
        assert!(
            idle["centrifugo"]["runs"][0]["server_bytes_per_session"]
                .as_f64()
                .unwrap()
                > 0.0,
            "{idle}"
        );
    }
    for name in ["1:1 highest rate", "1:1 at half rate", "groups of 10"] {
        let traffic = &report(reports, name)["chorus"];
        assert!(traffic["acked"].as_u64().unwrap() > 0, "{name}: {traffic}");
        assert_eq!(
            traffic["errors"],
            serde_json::json!({}),
            "{name}: every send acked and delivered"
        );
        assert!(traffic["delivery_latency"]["count"].as_u64().unwrap() > 0);
    }
    // the baselines ran in the same run
    for name in ["1:1 highest rate", "1:1 at half rate"] {
        let raw = &report(reports, name)["raw"];
        assert!(raw["acked"].as_u64().unwrap() > 0, "{name}: {raw}");
        // the raw relay did the same hops for the same client: every send acked and delivered
        let relay = &report(reports, name)["relay"];
        assert!(relay["acked"].as_u64().unwrap() > 0, "{name}: {relay}");
        assert_eq!(
            relay["errors"],
            serde_json::json!({}),
            "{name}: the relay acked and delivered every send"
        );
        assert!(relay["delivery_latency"]["count"].as_u64().unwrap() > 0);
    }
    // the low rate: Chorus, then Centrifugo with the same client when the run was given a binary
    // (CHORUS_BENCH_CENTRIFUGO), else the report says Centrifugo was skipped
    let low_rate = report(reports, "1:1 at low rate");
    for server in ["chorus", "centrifugo"] {
        let traffic = &low_rate[server];
        if server == "centrifugo" && traffic["skipped"].is_string() {
            continue;
        }
        assert!(
            traffic["acked"].as_u64().unwrap() > 0,
            "low rate: {traffic}"
        );
        assert_eq!(
            traffic["errors"],
            serde_json::json!({}),
            "low rate on {server}: every send acked and delivered"
        );
        assert!(traffic["delivery_latency"]["count"].as_u64().unwrap() > 0);
        assert!(traffic["server_write_syscalls"].is_u64(), "{traffic}");
    }
    let group = &report(reports, "groups of 10")["chorus"];
    assert_eq!(
        group["delivered"].as_u64().unwrap(),
        9 * group["sent"].as_u64().unwrap(),
        "every group message reached the nine other members"
    );
    let fanout = report(reports, "fan-out");
    assert_eq!(
        fanout["deliveries"].as_f64().unwrap(),
        (199 * 3) as f64,
        "every member got every round"
    );
    // the burst: 20 messages a second for 2 s to 200 members, on Chorus and on Centrifugo when
    // the run was given a binary
    let burst = report(reports, "sustained fan-out burst");
    for server in ["chorus", "centrifugo"] {
        let outcome = &burst[server];
        if server == "centrifugo" && outcome["skipped"].is_string() {
            continue;
        }
        assert_eq!(
            outcome["deliveries"].as_u64().unwrap(),
            199 * 40,
            "burst on {server}: every member got every message: {outcome}"
        );
        assert_eq!(outcome["missing_deliveries"], 0, "{outcome}");
    }
}

#[test]
fn the_quick_suite_runs_on_the_embedded_default() {
    let reports = quick_suite(&[]);
    check_common(&reports);
    assert!(
        reports.iter().any(|report| report["scenario"]
            .as_str()
            .is_some_and(|name| name.contains("projector"))),
        "the projection scenarios ran: {reports:#?}"
    );
    // the embedded log's writes are counted from /proc/<pid>/io (pwrite is a write syscall)
    let low_rate = &report(&reports, "1:1 at low rate")["chorus"];
    assert!(
        low_rate["server_write_syscalls"].as_u64().unwrap() > 0,
        "{low_rate}"
    );
}

#[test]
fn the_quick_suite_runs_on_kafka_and_redis() {
    let Some((kafka, redis)) = distributed_services() else {
        return;
    };
    let reports = quick_suite(&["--kafka", &kafka, "--redis", &redis]);
    check_common(&reports);
    assert!(
        report(&reports, "1:1 highest rate")["raw"]["baseline"] == "raw kafka",
        "the Kafka mode's baseline is a raw rdkafka producer"
    );
}
