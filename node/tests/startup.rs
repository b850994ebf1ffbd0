//! `berth agent` refuses bad input with a non-zero exit and one clear line on stderr.

mod support;

use std::process::Command;

use support::{free_port, BERTH};

fn agent(args: &[&str]) -> (i32, String) {
    let out = Command::new(BERTH).arg("agent").args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    (out.status.code().unwrap_or(-1), stderr)
}

fn base(dir: &str, grpc: u16, http: u16) -> Vec<String> {
    vec![
        "--id".into(),
        "1".into(),
        "--data-dir".into(),
        dir.into(),
        "--listen".into(),
        format!("127.0.0.1:{grpc}"),
        "--http".into(),
        format!("127.0.0.1:{http}"),
        "--peers".into(),
        format!("1=127.0.0.1:{grpc}"),
    ]
}

fn assert_one_line(stderr: &str, needle: &str) {
    assert_eq!(stderr.lines().count(), 1, "one line expected, got:\n{stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
}

#[test]
fn bad_flags_and_config_are_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // A valid one-node cluster, but for the id (later flags win).
    let one = ["--data-dir", d, "--listen", "127.0.0.1:1", "--http", "127.0.0.1:2", "--peers", "1=127.0.0.1:1"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--bogus"], "--bogus"),
        (vec!["--id", "x"], "invalid value 'x'"),
        (vec!["--id", "1"], "missing data_dir"),
        ([&one[..], &["--id", "4"]].concat(), "id 4 is not in the peers list"),
        (
            vec!["--id", "1", "--data-dir", d, "--listen", "127.0.0.1:1", "--http", "127.0.0.1:2", "--peers", "1=nope"],
            "peers: \"nope\" is not host:port",
        ),
        (
            vec!["--id", "1", "--data-dir", d, "--listen", "localhost", "--http", "127.0.0.1:2", "--peers", "1=a:1"],
            "listen: \"localhost\" is not an ip:port address",
        ),
        (vec!["--runtime", "vm"], "unknown runtime"),
        (
            [&one[..], &["--id", "1", "--host-deadline-s", "2"]].concat(),
            "host_deadline_s: 2 is not between 6 and 86400 seconds",
        ),
        ([&one[..], &["--id", "1", "--voters", "3"]].concat(), "voters: 3 voters but only 1 peers"),
    ];
    for (args, needle) in cases {
        let (code, stderr) = agent(&args);
        assert_ne!(code, 0, "{args:?}");
        assert_one_line(&stderr, needle);
    }
}

#[test]
fn a_bad_config_file_is_named_with_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("node.toml");
    std::fs::write(&f, "id = 1\ncolour = \"blue\"\n").unwrap();
    let (code, stderr) = agent(&["--config", f.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert_one_line(&stderr, "colour");
    let (code, stderr) = agent(&["--config", "/nonexistent/node.toml"]);
    assert_eq!(code, 2);
    assert_one_line(&stderr, "cannot read config file /nonexistent/node.toml");
}

#[test]
fn a_port_in_use_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let args = base(dir.path().to_str().unwrap(), port, free_port());
    let (code, stderr) = agent(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_ne!(code, 0);
    assert_one_line(&stderr, &format!("cannot listen on 127.0.0.1:{port} (--listen, gRPC): the port is in use"));
}

#[test]
fn an_unusable_data_dir_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let args = base(file.to_str().unwrap(), free_port(), free_port());
    let (code, stderr) = agent(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_ne!(code, 0);
    assert_one_line(&stderr, "is unusable");
}

#[test]
fn a_data_dir_in_use_by_another_node_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let first_args = base(d, free_port(), free_port());
    let mut first = Command::new(BERTH).arg("agent").args(&first_args).spawn().unwrap();
    // Wait until the first node holds the lock (it serves /healthz).
    let http = first_args[7].clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(&http).is_err() {
        assert!(std::time::Instant::now() < deadline, "first node did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let second = base(d, free_port(), free_port());
    let (code, stderr) = agent(&second.iter().map(String::as_str).collect::<Vec<_>>());
    let _ = first.kill();
    let _ = first.wait();
    assert_ne!(code, 0);
    assert_one_line(&stderr, "is in use by another berth process");
}
