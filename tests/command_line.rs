//! The command lines of the examples: `--help` lists every flag with its default and its
//! environment variable and exits 0; a misspelled flag is an error with exit status 2, before
//! anything starts. Found by replaying a bug report: `sse_demo --help` started the server, and
//! `sse_demo --stroe memory` ran on SQLite, the flag silently ignored.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// An example's binary, built by cargo next to the test binaries.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let binary = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>").join("examples").join(name);
    assert!(binary.exists(), "{} is missing: cargo builds the examples with the tests", binary.display());
    binary
}

/// Runs `binary` with `args`; its output once it exits (none of these calls starts a server).
fn run(binary: &PathBuf, args: &[&str]) -> Output {
    Command::new(binary)
        .args(args)
        .env_remove("PORT")
        .stdin(Stdio::null())
        .output()
        .expect("the example runs")
}

/// `--help`: status 0, and each flag with what it says about it.
fn assert_help(name: &str, expected: &[&str]) {
    let out = run(&example(name), &["--help"]);
    assert_eq!(out.status.code(), Some(0), "{name} --help");
    let help = String::from_utf8_lossy(&out.stdout);
    for text in expected {
        assert!(help.contains(text), "{name} --help does not say {text:?}:\n{help}");
    }
}

/// A misspelled flag: status 2, an error naming it, and the flag meant.
fn assert_unknown_flag_refused(name: &str, misspelled: &str, meant: &str) {
    let out = run(&example(name), &[misspelled, "x"]);
    assert_eq!(out.status.code(), Some(2), "{name} {misspelled}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("unexpected argument '{misspelled}'")), "{err}");
    assert!(err.contains(meant), "{name}: the error suggests {meant}: {err}");
    assert!(out.stdout.is_empty(), "{name} printed {:?}: it started", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn sse_demo_help_lists_every_flag_with_its_default_and_environment_variable() {
    assert_help(
        "sse_demo",
        &[
            "--port <PORT>",
            "[env: PORT=]",
            "[default: 8888]",
            "--store <STORE>",
            "[default: sqlite:./tidings-data/events.db]",
            "--retain <N>",
            "[default: 10000]",
            "--quiet",
            "--max-connections <N>",
            "[default: 90 % of the open-file limit]",
            "--max-connections-per-ip <N>",
            "[default: 1024]",
            "--header-timeout <SECS>",
            "[default: 10]",
            "--push-allow-hosts",
            "[env: TIDINGS_PUSH_ALLOW_HOSTS=]",
            "--push-ca-file",
            "[env: TIDINGS_PUSH_CA_FILE=]",
            "--push-contact",
            "[env: TIDINGS_PUSH_CONTACT=]",
            "[default: mailto:tidings-demo@example.com]",
            "--jwt-secret",
            "[env: TIDINGS_JWT_SECRET]",
        ],
    );
}

#[test]
fn sse_demo_refuses_what_it_cannot_use_with_status_2() {
    assert_unknown_flag_refused("sse_demo", "--stroe", "--store");
    let demo = example("sse_demo");
    let not_pem = std::env::current_exe().unwrap();
    let not_pem = not_pem.to_str().unwrap();
    for args in [
        &["--store", "mongodb://x"][..],
        &["--port", "88888"],
        &["--retain", "many"],
        &["--retain", "0"],
        &["--max-connections", "0"],
        &["--max-connections-per-ip", "0"],
        &["--header-timeout", "0"],
        &["--jwt-secret", "short"],
        &["--push-allow-hosts", "not a host"],
        &["--push-contact", "somebody"],
        &["--push-ca-file", "/nonexistent/ca.pem"],
        &["--push-ca-file", not_pem],
        &["--trusted-proxies", "10.0.0.0/8,nonsense"],
        &["--trusted-proxies", "10.0.0.0/33"],
    ] {
        let out = run(&demo, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value"), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?} started the demo");
    }
    // One TLS flag without the other.
    let out = run(&demo, &["--tls-cert", "cert.pem"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key <FILE>"), "{:?}", String::from_utf8_lossy(&out.stderr));
    // TLS files that make no configuration: a clear message, status 2, before anything listens.
    let text = std::env::temp_dir().join(format!("tidings-not-pem-{}", std::process::id()));
    std::fs::write(&text, "not a certificate\n").unwrap();
    let out = run(&demo, &["--tls-cert", text.to_str().unwrap(), "--tls-key", "/nonexistent/key.pem", "--store", "memory"]);
    std::fs::remove_file(&text).unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot serve HTTPS:") && err.contains("no certificate in it"), "{err}");
    assert!(out.stdout.is_empty(), "it started");
    // The environment is checked the same way.
    let out = Command::new(&demo).env("PORT", "eighty").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'eighty' for '--port <PORT>'"));
}

#[test]
fn authorized_example_command_line() {
    assert_help("authorized", &["--port <PORT>", "[env: PORT=]", "[default: 8889]", "--jwt-secret", "[env: TIDINGS_JWT_SECRET]"]);
    assert_unknown_flag_refused("authorized", "--prot", "--port");
}

#[test]
fn push_service_example_command_line() {
    assert_help("push_service", &["--cert <PATH>", "--record <RECORD>", "[default: true]"]);
    assert_unknown_flag_refused("push_service", "--cret", "--cert");
}

#[test]
fn vapid_keys_command_line() {
    assert_help("vapid_keys", &["Prints a fresh VAPID key pair"]);
    assert_unknown_flag_refused("vapid_keys", "--privte", "--help");
}

#[test]
fn benchmark_examples_command_lines() {
    assert_help(
        "webpush_bench",
        &["--control <CONTROL>", "--cert <CERT>", "--mode <MODE>", "[default: sender]", "--runtime <RUNTIME>", "[default: multi]", "[default: 100]", "[default: 20000]", "[default: 64]"],
    );
    assert_unknown_flag_refused("webpush_bench", "--concurency", "--concurrency");
    assert_help(
        "bench",
        &["--events <EVENTS>", "[env: BENCH_EVENTS=]", "[default: 20000]", "[env: BENCH_BYTES=]", "[env: BENCH_CLIENTS=]", "[env: BENCH_FANOUT_EVENTS=]"],
    );
    assert_unknown_flag_refused("bench", "--event", "--events");
    let out = run(&example("bench"), &["--events", "0"]);
    assert_eq!(out.status.code(), Some(2), "bench --events 0");
}
