//! `slipstream bench`: a small run on its own local mesh, and one against running nodes.
//! These check what the bench reports and that it checks the mesh, not how fast it is
//! (figures come from runs of the release build, in BENCHMARKS.md).

use std::process::Command;

use serde_json::Value;
use slipstream_testkit::{NodeOptions, TestNode};

mod common;
use common::BIN;

/// Runs the bench with `args` and `--json`; returns its exit code, report and stderr.
fn bench<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (Option<i32>, Value, String) {
    let out = Command::new(BIN)
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), report, stderr)
}

fn number(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

#[test]
fn a_local_mesh_run_reports_every_figure_and_that_every_node_holds_every_write() {
    let (code, r, stderr) = bench(&[
        "--nodes",
        "3",
        "--messages",
        "2000",
        "--warmup",
        "100",
        "--window",
        "500",
    ]);
    assert_eq!(code, Some(0), "{stderr}\n{r}");
    assert_eq!(r["everyNodeHoldsEveryWrite"], true, "{r}");
    assert_eq!(r["acked"], 2000, "{r}");
    assert_eq!(r["keys"], "sequential", "the default: {r}");
    assert!(number(&r["appliedOnAllPerSecond"], "applied/s") > 0.0);
    let l = &r["latencyMs"];
    let (p50, p99, max) = (
        number(&l["p50"], "p50"),
        number(&l["p99"], "p99"),
        number(&l["max"], "max"),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{l}");
    assert_eq!(
        r["behindScheduleMsMax"],
        Value::Null,
        "no --rate, no schedule: {r}"
    );
    // Direct forwarding on a healthy full mesh: the origin sends each write to the two
    // others and nobody forwards it again (a resend after a slow ACK may add a little).
    let sends = number(&r["messagesSentPerWrite"], "messages per write");
    assert!((2.0..2.5).contains(&sends), "{sends}");
    let nodes = r["perNode"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{r}");
    for n in nodes {
        assert_eq!(n["applied"], 2000, "{n}");
        let (p50, p99) = (
            number(&n["appliedLatencyMs"]["p50"], "node p50"),
            number(&n["appliedLatencyMs"]["p99"], "node p99"),
        );
        // Applied on one node no later than on all of them.
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{n}");
        assert!(number(&n["cpuSeconds"], "cpu") > 0.0, "{n}");
        assert!(number(&n["peakRssMiB"], "rss") > 1.0, "{n}");
        assert!(number(&n["commits"], "commits") >= 1.0, "{n}");
    }
}

#[test]
fn at_a_rate_the_mesh_cannot_hold_each_write_counts_its_wait_from_its_scheduled_time() {
    // One write in flight at a time cannot go out a million times a second: each write waits
    // for the ACK of the one before, past its scheduled time.
    let (code, r, stderr) = bench(&[
        "--nodes",
        "2",
        "--messages",
        "300",
        "--warmup",
        "0",
        "--window",
        "1",
        "--batch",
        "1",
        "--rate",
        "1000000",
    ]);
    assert_eq!(code, Some(0), "{stderr}\n{r}");
    assert_eq!(r["everyNodeHoldsEveryWrite"], true, "{r}");
    let late = number(&r["behindScheduleMsMax"], "behind schedule");
    assert!(late > 0.0, "{r}");
    // The latest write was applied after it went out, and it went out `late` after it was
    // due: counted from its schedule, its latency holds that wait.
    let max = number(&r["latencyMs"]["max"], "max");
    assert!(max >= late, "max {max} ms, behind schedule {late} ms: {r}");
}

#[test]
fn a_stall_run_freezes_the_last_node_and_reports_how_far_behind_it_fell() {
    let (code, r, stderr) = bench(&[
        "--nodes",
        "2",
        "--messages",
        "3000",
        "--warmup",
        "0",
        "--stall",
        "1",
    ]);
    assert_eq!(code, Some(0), "{stderr}\n{r}");
    let st = &r["stall"];
    assert_eq!(st["node"], 2, "{r}");
    assert_eq!(st["seconds"], 1.0, "{r}");
    number(&st["mostBehind"], "most behind");
    number(&st["behindAtLastWrite"], "behind at the last write");
    // The frozen node was let go again: it holds every write.
    assert_eq!(r["everyNodeHoldsEveryWrite"], true, "{r}");
    for wrong in [
        &["--nodes", "2", "--stall", "1", "--catch-up"][..],
        &["--nodes", "2", "--stall", "0"],
        &["--nodes", "2", "--stall", "NaN"],
        &["--nodes", "1", "--stall", "1"],
        &["--target", "ws://never-dialed.invalid", "--stall", "1"],
    ] {
        let (code, _, stderr) = bench(wrong);
        assert_ne!(code, Some(0), "{wrong:?}");
        assert!(stderr.contains("--stall"), "{wrong:?}: {stderr}");
    }
}

#[test]
fn a_catch_up_run_restarts_the_last_node_and_times_it_until_it_holds_every_write() {
    let (code, r, stderr) = bench(&["--nodes", "3", "--messages", "3000", "--catch-up"]);
    assert_eq!(code, Some(0), "{stderr}\n{r}");
    assert_eq!(
        r["nodes"], 3,
        "the mesh, the node that was down included: {r}"
    );
    let c = &r["catchUp"];
    assert_eq!(c["writes"], 3000, "{r}");
    assert!(number(&c["writesPerSecond"], "catch-up rate") > 0.0, "{r}");
    assert!(
        number(&c["returningNodeCpuSeconds"], "its cpu") > 0.0,
        "{r}"
    );
    // The writes' own figures end before the restart: the node that was down has none.
    let nodes = r["perNode"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{r}");
    assert_eq!(nodes[2]["cpuSeconds"], Value::Null, "{r}");
    assert!(number(&nodes[0]["cpuSeconds"], "origin cpu") > 0.0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_against_running_nodes_reads_their_figures_from_their_status_and_metrics() {
    let a = TestNode::start(BIN, NodeOptions::default()).unwrap();
    let b = TestNode::start(BIN, NodeOptions::dialing(&[&a])).unwrap();
    a.wait_connected(1).await;
    b.wait_connected(1).await;
    let args = [
        "--target",
        &a.ws_url(),
        "--target",
        &b.ws_url(),
        "--target-http",
        &a.http_addr.to_string(),
        "--target-http",
        &b.http_addr.to_string(),
        "--messages",
        "1000",
        "--warmup",
        "100",
        // Keys in random order: the warm-up waits for its last key by name on each node, and
        // every node's pushes are matched to their writes by key.
        "--keys",
        "random",
    ]
    .map(str::to_owned);
    let (code, r, stderr) = tokio::task::spawn_blocking(move || bench(&args))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{stderr}\n{r}");
    assert_eq!(r["everyNodeHoldsEveryWrite"], true, "{r}");
    assert_eq!(r["nodes"], 2, "{r}");
    assert_eq!(r["keys"], "random", "{r}");
    assert!(
        number(&r["messagesSentPerWrite"], "messages per write") >= 1.0,
        "{r}"
    );
    let nodes = r["perNode"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{r}");
    for n in nodes {
        assert_eq!(n["applied"], 1000, "{n}");
        assert!(number(&n["cpuSeconds"], "cpu") > 0.0, "{n}");
        assert!(number(&n["peakRssMiB"], "rss") > 1.0, "{n}");
        assert!(number(&n["commits"], "commits") >= 1.0, "{n}");
    }
    assert_eq!(
        r["nodeWorkers"],
        Value::Null,
        "running nodes keep their own: {r}"
    );

    // Without their HTTP addresses, what only their status and metrics tell is reported as
    // not known, not as zero.
    let args = ["--target", &a.ws_url(), "--target", &b.ws_url()].map(str::to_owned);
    let (code, r, stderr) = tokio::task::spawn_blocking(move || {
        bench(&[&args[..], &["--messages".into(), "500".into()]].concat())
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{stderr}\n{r}");
    assert_eq!(r["everyNodeHoldsEveryWrite"], true, "{r}");
    for field in ["messagesSentPerWrite", "framesPerWrite", "bytesPerWrite"] {
        assert_eq!(r[field], Value::Null, "{field}: {r}");
    }
    for n in r["perNode"].as_array().unwrap() {
        assert_eq!(n["applied"], 500, "{n}");
        assert_eq!(n["cpuSeconds"], Value::Null, "{n}");
        assert_eq!(n["commits"], Value::Null, "{n}");
    }
}

#[test]
fn target_http_must_pair_with_the_targets() {
    let (code, _, stderr) = bench(&["--target-http", "127.0.0.1:1"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--target-http needs --target"), "{stderr}");
    let (code, _, stderr) = bench(&[
        "--target",
        "ws://127.0.0.1:1",
        "--target-http",
        "127.0.0.1:1",
        "--target-http",
        "127.0.0.1:2",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("--target-http is given 2 times and --target 1 times"),
        "{stderr}"
    );
}
