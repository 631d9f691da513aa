//! The load generator's and the hand-written baseline's command lines: `--help` lists every flag
//! with its default and exits 0; an unknown flag or value is an error with exit status 2 (a
//! typo in `bench/run` must not measure something else in silence).

use std::process::Command;

fn run(binary: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(binary).args(args).output().expect("the binary runs");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn loadgen_help_and_errors() {
    let loadgen = env!("CARGO_BIN_EXE_loadgen");
    let (code, help, _) = run(loadgen, &["fanout", "--help"]);
    assert_eq!(code, Some(0));
    for text in ["--addr <ADDR>", "--subscribers <SUBSCRIBERS>", "[default: 1000]", "--kind <KIND>", "[default: tidings]", "--rate", "--sources"] {
        assert!(help.contains(text), "loadgen fanout --help lacks {text:?}:\n{help}");
    }
    let (code, help, _) = run(loadgen, &["replay", "--help"]);
    assert_eq!(code, Some(0));
    assert!(help.contains("[default: 100000]"), "{help}");
    for args in [&["fanout", "--addr", "127.0.0.1:1", "--subscriber", "5"][..], &["fanout", "--addr", "127.0.0.1:1", "--kind", "mercure"], &["flood"], &[]] {
        let (code, out, err) = run(loadgen, args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?} ran: {out}");
        assert!(err.contains("error:") || err.contains("Usage:"), "{args:?}: {err}");
    }
}

#[test]
fn handwritten_help_and_errors() {
    let handwritten = env!("CARGO_BIN_EXE_handwritten");
    let (code, help, _) = run(handwritten, &["--help"]);
    assert_eq!(code, Some(0));
    for text in ["--port <PORT>", "[default: 0]", "--variant <VARIANT>", "[default: events]", "shared"] {
        assert!(help.contains(text), "handwritten --help lacks {text:?}:\n{help}");
    }
    let (code, _, err) = run(handwritten, &["--variant", "fast"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = run(handwritten, &["--prot", "1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--port"), "{err}");
}
