//! `agentbus bench`: each benchmark runs end to end on small counts against
//! the nats-server it starts itself, checks every answer, and prints its
//! figures. The figures themselves are not judged here (timing belongs in
//! the benchmark, not in tests); their presence, shape and sanity are.

mod common;

use common::{ensure_nats_server, run};
use serde_json::Value;

/// A positive, finite number at `key` of `value`.
fn positive(value: &Value, key: &str) -> f64 {
    let number = value[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {value}"));
    assert!(
        number.is_finite() && number > 0.0,
        "{key} = {number} in {value}"
    );
    number
}

#[tokio::test]
async fn request_reply_measures_every_variant_and_prints_their_ratios() {
    ensure_nats_server().await;
    let small = [
        "--requests",
        "400",
        "--latency-requests",
        "30",
        "--warmup-requests",
        "100",
    ];
    let out = run(["bench", "request-reply", "--json"].iter().chain(&small)).await;
    assert!(out.status.success(), "{out:#?}");
    let report = out.json();
    for variant in ["bare", "agentbus", "agentbus_task_events"] {
        let figures = &report[variant];
        positive(figures, "throughput_rps");
        let p50 = positive(figures, "p50_us");
        let p99 = positive(figures, "p99_us");
        assert!(p50 <= p99, "{variant}: p50 above p99 in {report}");
    }
    for ratio in [
        "ratio_throughput",
        "ratio_p50",
        "ratio_throughput_task_events",
        "ratio_p50_task_events",
    ] {
        positive(&report, ratio);
    }
    let expected = report["agentbus"]["throughput_rps"].as_f64().unwrap()
        / report["bare"]["throughput_rps"].as_f64().unwrap();
    let printed = report["ratio_throughput"].as_f64().unwrap();
    assert!((printed - expected).abs() < 0.002, "{report}");
    assert_eq!(report["requests"], 400);
    assert_eq!(report["in_flight"], 64);
    assert_eq!(report["identities"], false);
    assert!(report.get("bare_identities").is_none(), "{report}");
    assert_eq!(report["metrics"], false);
    assert_eq!(report["trace"], false);
    assert!(report.get("bare_traced").is_none(), "{report}");

    // With trace context on: a fourth variant, bare async-nats tracing by
    // hand, and agentbus's ratios against it.
    let out = run(["bench", "request-reply", "--json", "--trace"]
        .iter()
        .chain(&small))
    .await;
    assert!(out.status.success(), "{out:#?}");
    let report = out.json();
    assert_eq!(report["trace"], true);
    positive(&report["bare_traced"], "throughput_rps");
    let expected = report["agentbus"]["throughput_rps"].as_f64().unwrap()
        / report["bare_traced"]["throughput_rps"].as_f64().unwrap();
    let printed = positive(&report, "ratio_throughput_to_bare_traced");
    assert!((printed - expected).abs() < 0.002, "{report}");
    positive(&report, "ratio_p50_to_bare_traced");
    let exported: u64 = out
        .stderr
        .split("trace context on: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no span count in {}", out.stderr));
    // 830 requests per variant, three of them traced, two spans each (the
    // exporter's queue may drop some when full).
    assert!(exported > 830, "{exported} spans exported");

    // With the runtimes counting Prometheus metrics.
    let out = run(["bench", "request-reply", "--json", "--metrics"]
        .iter()
        .chain(&small))
    .await;
    assert!(out.status.success(), "{out:#?}");
    let report = out.json();
    assert_eq!(report["metrics"], true);
    positive(&report["agentbus"], "throughput_rps");

    // With agent identities: the serving agents and the caller each on an
    // nkey of its own, with the permissions `creds add` gives.
    let out = run(["bench", "request-reply", "--identities"]
        .iter()
        .chain(&small))
    .await;
    assert!(out.status.success(), "{out:#?}");
    for line in [
        "agentbus variants with agent identities",
        "agentbus/bare",
        "agentbus_task_events/bare",
        "bare_identities",
        "agentbus/bare_identities",
        "throughput ratio",
        "p50 ratio",
        "with a task event per task",
        "against bare async-nats on agent identities too: throughput ratio",
    ] {
        assert!(out.stdout.contains(line), "no {line:?} in {}", out.stdout);
    }
    // The same as JSON: bare async-nats on identities of its own, measured
    // beside the others, with agentbus's ratios to it.
    let out = run(["bench", "request-reply", "--json", "--identities"]
        .iter()
        .chain(&small))
    .await;
    assert!(out.status.success(), "{out:#?}");
    let report = out.json();
    positive(&report["bare_identities"], "throughput_rps");
    positive(&report, "ratio_throughput_to_bare_identities");
    positive(&report, "ratio_p50_to_bare_identities");
}

#[tokio::test]
async fn work_queue_measures_every_variant_and_prints_their_ratios() {
    ensure_nats_server().await;
    let out = run(["bench", "work-queue", "--json", "--tasks", "300"]).await;
    assert!(out.status.success(), "{out:#?}");
    let report = out.json();
    for variant in [
        "bare",
        "agentbus",
        "bare_keeping_results",
        "agentbus_keeping_results",
    ] {
        positive(&report[variant], "throughput_rps");
    }
    positive(&report, "ratio_throughput");
    positive(&report, "ratio_throughput_keeping_results");
    // Keeping results is compared with bare workers doing the same.
    let like_for_like = report["agentbus_keeping_results"]["throughput_rps"]
        .as_f64()
        .unwrap()
        / report["bare_keeping_results"]["throughput_rps"]
            .as_f64()
            .unwrap();
    let printed = report["ratio_throughput_keeping_results"].as_f64().unwrap();
    assert!((like_for_like - printed).abs() < 0.002, "{report}");
    assert_eq!(report["identities"], false);

    let out = run([
        "bench",
        "work-queue",
        "--json",
        "--tasks",
        "300",
        "--identities",
    ])
    .await;
    assert!(out.status.success(), "{out:#?}");
    let report = out.json();
    assert_eq!(report["identities"], true);
    positive(&report["agentbus"], "throughput_rps");
    positive(&report["agentbus_keeping_results"], "throughput_rps");
}

#[tokio::test]
async fn scale_prints_one_row_per_agent_count_backlog_and_payload() {
    ensure_nats_server().await;
    let out = run([
        "bench",
        "scale",
        "--json",
        "--max-agents",
        "100",
        "--idle-seconds",
        "0.5",
        "--requests",
        "300",
        "--payload-requests",
        "64",
        "--max-backlog",
        "1000",
    ])
    .await;
    assert!(out.status.success(), "{out:#?}");
    let rows: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let kinds: Vec<(&str, u64)> = rows
        .iter()
        .map(|row| {
            let kind = row["kind"].as_str().unwrap();
            let size = ["agents", "queued", "bytes"]
                .iter()
                .find_map(|key| row[*key].as_u64())
                .unwrap();
            (kind, size)
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("agents", 1),
            ("agents", 100),
            ("backlog", 1_000),
            ("payload", 128),
            ("payload", 4_096),
            ("payload", 65_536),
            ("payload", 524_288),
        ]
    );
    for row in rows.iter().filter(|row| row["kind"] == "agents") {
        assert_eq!(row["errors"], 0, "{row}");
        positive(row, "rr_rps");
        positive(row, "rr_ratio_to_one");
        positive(row, "bare_rr_rps");
        positive(row, "rr_ratio_to_bare");
        positive(row, "bare_ratio_to_one");
        positive(row, "bare_one_task_rr_rps");
        positive(row, "bare_one_task_ratio_to_one");
        // Read from /proc when the kernel keeps per-thread CPU times.
        for cpu in [
            "bare_server_cpu_us_per_request",
            "bare_one_task_server_cpu_us_per_request",
        ] {
            if !row[cpu].is_null() {
                positive(row, cpu);
            }
        }
        positive(row, "server_consumers");
        assert!(row["queue_pickup_ms"].as_f64().unwrap() >= 0.0, "{row}");
    }
    for ratio in [
        "rr_ratio_to_one",
        "bare_ratio_to_one",
        "bare_one_task_ratio_to_one",
    ] {
        assert_eq!(rows[0][ratio], 1.0, "the one-agent row is the reference");
    }
    for row in rows.iter().filter(|row| row["kind"] != "agents") {
        positive(
            row,
            if row["kind"] == "backlog" {
                "drain_tps"
            } else {
                "ratio"
            },
        );
    }
}

#[tokio::test]
async fn stream_measures_first_partial_rates_and_cancel_for_every_variant() {
    ensure_nats_server().await;
    let small = [
        "--tasks",
        "3",
        "--warmup-tasks",
        "1",
        "--partials",
        "200",
        "--concurrent-tasks",
        "4",
        "--concurrent-partials",
        "20",
        "--cancels",
        "3",
        "--rounds",
        "1",
    ];
    let out = run(["bench", "stream", "--json"].iter().chain(&small)).await;
    assert!(out.status.success(), "{out:#?}");
    let report = out.json();
    let first = &report["first_partial"];
    for variant in ["agentbus", "bare_live", "bare_stored"] {
        let figures = &first[variant];
        let p50 = positive(figures, "p50_us");
        assert!(p50 <= positive(figures, "p99_us"), "{variant}: {report}");
        let from_send = positive(figures, "from_send_p50_us");
        assert!(
            from_send <= positive(figures, "from_send_p99_us"),
            "{report}"
        );
        // The first partial comes after following is set up and the task sent.
        assert!(
            positive(figures, "setup_p50_us") <= p50,
            "{variant}: {report}"
        );
        assert!(from_send <= p50, "{variant}: {report}");
        for rates in ["one_task", "concurrent"] {
            let rate = &report[rates][variant];
            positive(rate, "partials_per_s");
            positive(rate, "streaming_partials_per_s");
        }
    }
    for section in ["first_partial", "one_task", "concurrent"] {
        positive(&report[section], "ratio_to_live");
        positive(&report[section], "ratio_to_stored");
    }
    let rates = &report["one_task"];
    let expected = rates["agentbus"]["partials_per_s"].as_f64().unwrap()
        / rates["bare_stored"]["partials_per_s"].as_f64().unwrap();
    let printed = rates["ratio_to_stored"].as_f64().unwrap();
    assert!((printed - expected).abs() < 0.002, "{report}");
    let cancel = &report["cancel"];
    for variant in ["agentbus", "bare"] {
        let figures = &cancel[variant];
        let seen = positive(figures, "seen_p50_us");
        assert!(seen <= positive(figures, "seen_p99_us"), "{report}");
        positive(figures, "answered_p50_us");
        positive(figures, "answered_p99_us");
    }
    positive(cancel, "ratio_seen_p50");
    positive(cancel, "ratio_answered_p50");
    assert_eq!(report["tasks"], 3);
    assert_eq!(report["partials"], 200);
    assert_eq!(report["concurrent_tasks"], 4);
    assert_eq!(report["chunk_bytes"], 32);
    assert_eq!(report["cancels"], 3);

    let out = run([
        "bench",
        "stream",
        "--tasks",
        "1",
        "--warmup-tasks",
        "0",
        "--partials",
        "10",
        "--concurrent-tasks",
        "2",
        "--concurrent-partials",
        "5",
        "--cancels",
        "1",
        "--rounds",
        "1",
    ])
    .await;
    assert!(out.status.success(), "{out:#?}");
    for line in [
        "agentbus/live",
        "agentbus/stored",
        "first partial p50 (us)",
        "partials/s, one task of 10",
        "partials/s, 2 tasks of 5 at once",
        "to the handler seeing it, p50 (us)",
        "to the final answer, p99 (us)",
    ] {
        assert!(out.stdout.contains(line), "no {line:?} in {}", out.stdout);
    }
}

#[tokio::test]
async fn bench_refuses_a_zero_count_and_names_the_flag() {
    let out = run(["bench", "request-reply", "--requests", "0"]).await;
    assert!(!out.status.success(), "{out:#?}");
    assert!(out.stderr.contains("--requests"), "{}", out.stderr);
}
