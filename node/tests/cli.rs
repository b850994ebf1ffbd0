//! The CLI against a real cluster: tables, `-o json`, `--addr` fallback, errors.

mod support;

use std::time::Duration;

use support::{berth, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_manages_pools_and_falls_back_to_the_next_node() {
    let c = Cluster::start(3, &[]);
    c.wait_leader(Duration::from_secs(20)).await;
    // The first address refuses connections: the CLI moves on to the next.
    let addr = format!("http://127.0.0.1:1,{}", c.url(2));
    let (code, out, err) =
        berth(&addr, &["ipam", "create", "lan", "--subnet", "198.18.20.0/24", "--range", "198.18.20.8/29"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("NAME"), "{out}");
    let (code, out, _) = berth(&addr, &["ipam", "allocate", "lan", "--owner", "cli-test"]);
    assert_eq!((code, out.trim()), (0, "198.18.20.8"));
    let (code, out, _) = berth(&c.url(3), &["ipam", "allocations", "lan", "-o", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v, serde_json::json!([{"ip": "198.18.20.8", "owner": "cli-test"}]));
    let (code, out, _) = berth(&c.url(1), &["cluster"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("leader "), "{out}");
    assert_eq!(out.lines().filter(|l| l.contains("voter")).count(), 3, "{out}");

    // An API error: non-zero exit, one line naming the problem and its code.
    let (code, _, err) = berth(&c.url(1), &["ipam", "release", "lan", "198.18.20.9"]);
    assert_ne!(code, 0);
    assert_eq!(err, "berth: 198.18.20.9 is not allocated in pool lan (allocation_not_found)");
    let (code, _, err) = berth("http://127.0.0.1:1", &["ipam", "pools"]);
    assert_ne!(code, 0);
    assert!(err.starts_with("berth: no node answered: http://127.0.0.1:1 (connection refused)"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_deploys_waits_scales_rolls_back_and_reads_logs() {
    let c = Cluster::start(3, &[]);
    c.wait_leader(Duration::from_secs(20)).await;
    let addr = format!("{},{}", c.url(2), c.url(3));
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("app.yaml");
    let yaml = |v: &str| {
        format!(
            r#"
id: hello
cmd: ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do echo \"hi from $BERTH_INSTANCE v{v}\"; sleep 0.2 & wait $!; done"]
instances: 2
cpus: 0.1
mem_mb: 16
health_check: {{cmd: ["/bin/true"], interval_s: 1, grace_s: 0}}
upgrade: {{min_healthy: 0.5, max_surge: 1}}
stop_grace_s: 2
"#
        )
    };
    std::fs::write(&spec, yaml("1")).unwrap();
    let (code, out, err) = berth(&addr, &["deploy", "-f", spec.to_str().unwrap(), "--wait"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("hello"), "{out}");
    assert!(err.contains("2/2 running"), "progress shown: {err}");

    let (code, out, _) = berth(&addr, &["ps", "hello", "-o", "json"]);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(list.as_array().unwrap().iter().all(|i| i["state"] == "running"));

    std::fs::write(&spec, yaml("2")).unwrap();
    let (code, _, err) = berth(&addr, &["deploy", "-f", spec.to_str().unwrap(), "--wait"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = berth(&addr, &["apps", "-o", "json"]);
    assert_eq!(code, 0);
    let apps: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(apps[0]["version"], 2);

    let (code, _, err) = berth(&addr, &["rollback", "hello", "--to", "1"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = berth(&addr, &["scale", "hello", "3"]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = berth(&addr, &["apps"]);
    assert!(out.lines().nth(1).unwrap().starts_with("hello  3        3"), "{out}");

    // Logs of one instance, through any node; the rollback's spec prints v1.
    let mut text = String::new();
    for _ in 0..100 {
        let (_, out, _) = berth(&c.url(1), &["logs", "hello/1", "--tail", "3"]);
        text = out;
        if text.contains("hi from hello-1 v1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(text.contains("hi from hello-1 v1"), "{text}");
    assert!(text.lines().count() <= 3, "{text}");

    let (code, out, err) = berth(&addr, &["exec", "hello/1", "--", "sh", "-c", "echo $BERTH_INSTANCE"]);
    assert_eq!((code, out.trim()), (0, "hello-1"), "{err}");
    let (code, _, _) = berth(&addr, &["exec", "hello/1", "--", "false"]);
    assert_eq!(code, 1);

    let (code, out, _) = berth(&addr, &["hosts"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().filter(|l| l.contains(" up ")).count(), 3, "{out}");

    // A failing deploy: --wait exits non-zero and says why.
    std::fs::write(&spec, "id: broken\ncmd: [\"/nonexistent/program\"]\ninstances: 1\n").unwrap();
    let (code, _, err) = berth(&addr, &["deploy", "-f", spec.to_str().unwrap(), "--wait", "--timeout", "60"]);
    assert_ne!(code, 0);
    assert!(err.contains("keeps failing") && err.contains("/nonexistent/program"), "{err}");
    // And a bad spec file is refused before anything is sent.
    std::fs::write(&spec, "id: x\ncmd: [a]\ncpus: -1\n").unwrap();
    let (code, _, err) = berth(&addr, &["deploy", "-f", spec.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("cpus:"), "{err}");
}

#[test]
fn completions_are_generated_for_each_shell_and_a_bad_shell_is_refused() {
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef berth"), ("fish", "complete -c berth")] {
        let (code, out, err) = berth("http://127.0.0.1:1", &["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains(marker), "{shell}: {marker:?} not in the script");
        for sub in ["deploy", "restart", "drain", "events"] {
            assert!(out.contains(sub), "{shell}: no {sub} in the script");
        }
    }
    let (code, _, err) = berth("http://127.0.0.1:1", &["completions", "tcsh"]);
    assert_eq!(code, 2);
    assert!(err.contains("tcsh") && err.contains("see berth --help"), "{err}");
}
