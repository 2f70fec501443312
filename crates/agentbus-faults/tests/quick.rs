//! The fault suite's quick profile, as the test command runs it: every
//! scenario against real servers and worker processes, with no task lost
//! and no effect made twice.

use serde_json::Value;

#[test]
fn no_scenario_loses_a_task_or_makes_an_effect_twice() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentbus-faults"))
        .args(["--quick", "--json"])
        .output()
        .expect("run agentbus-faults");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rows: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect();
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 9, "{stdout}\n{stderr}");
    for row in &rows {
        let scenario = row["scenario"].as_str().unwrap();
        assert_eq!(row["lost"], 0, "{row}");
        assert_eq!(row["duplicate_effects"], 0, "{row}");
        let acknowledged = row["acknowledged"].as_u64().unwrap();
        assert!(acknowledged > 0, "{row}");
        if scenario == "cluster-majority-lost" {
            // Publishes fail visibly while two of three servers are down,
            // saying so, and blaming neither setup nor a missing agent.
            assert!(row["errors"].as_u64().unwrap() > 0, "{row}");
            for message in row["error_messages"].as_array().unwrap() {
                let text = message[0].as_str().unwrap();
                assert!(text.contains("did not store"), "{text}");
                assert!(
                    !text.contains("setup") && !text.contains("no agent"),
                    "{text}"
                );
            }
        } else {
            assert_eq!(row["errors"], 0, "{row}");
            assert_eq!(row["refused_but_run"], 0, "{row}");
            assert_eq!(acknowledged, row["submitted"].as_u64().unwrap(), "{row}");
        }
        if scenario == "dead-letters-full" {
            assert_eq!(row["executed"], 0, "poison never runs a handler: {row}");
        } else {
            // One effect per task that ran: every acknowledged one, and any
            // whose refusal came before the cluster stored it after all;
            // plus those a killed worker made without storing them, which
            // the next attempt makes again once their claim ran out (what
            // `TaskContext::once` documents), and only those.
            let ran = acknowledged + row["refused_but_run"].as_u64().unwrap();
            let redone = row["effects_redone_after_kill"].as_u64().unwrap();
            assert_eq!(
                row["effects"].as_u64().unwrap(),
                ran + redone,
                "one effect per task: {row}"
            );
        }
    }
    assert!(out.status.success(), "{stderr}");
}
