//! The JS client module (clients/js) in Node against a real skiff: `node --test` over
//! clients/js/test/*.test.mjs, with this build's binary. Missing devDependencies are
//! installed with `npm ci`; a missing node, or an `npm ci` that fails, is a failure
//! naming the command that installs them.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn js_client_passes_its_node_tests_against_a_real_skiff() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js");
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "no node: run `apt-get install nodejs npm` (the JS client's tests need Node 18 or later)"
    );
    if !dir.join("node_modules/ws").exists() {
        // The devDependencies (ws, for Node < 22) are pinned by package-lock.json.
        let ci =
            Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]).current_dir(&dir).status();
        assert!(
            ci.is_ok_and(|s| s.success()) && dir.join("node_modules/ws").exists(),
            "the JS client's devDependencies are missing and `npm ci` failed: run `cd clients/js && npm ci`"
        );
    }
    let mut tests: Vec<_> = std::fs::read_dir(dir.join("test"))
        .expect("clients/js/test")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_str().is_some_and(|s| s.ends_with(".test.mjs")))
        .collect();
    tests.sort();
    assert!(!tests.is_empty(), "no clients/js/test/*.test.mjs");
    let mut child = Command::new("node")
        .arg("--test")
        .args(&tests)
        .env("SKIFF_BIN", env!("CARGO_BIN_EXE_skiff"))
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start node");
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("node --test did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader.join().unwrap_or_default();
    // Skipped checks name the server feature they wait for; show them in cargo's output.
    for line in out.lines().filter(|l| l.contains("SKIPPED") || l.starts_with("not ok") || l.starts_with("# ")) {
        eprintln!("{line}");
    }
    assert!(status.success(), "node --test failed ({status}):\n{out}");
    assert!(out.contains("# fail 0"), "no test summary:\n{out}");
}
