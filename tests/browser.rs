//! The built-in web client in a real browser: headless Chromium (Debian's package)
//! driven by tests/browser/e2e.mjs through playwright-core, against a real skiff.
//! A missing prerequisite is a failure naming the command that installs it: a skip
//! would pass silently in `cargo test` output. SKIFF_SKIP_BROWSER=1 opts out on purpose.
//! The script covers protocol v2 too (history on a fresh page, resume after the page's
//! connection is cut), several devices of one user, and moderation seen on the page
//! (ban with a reason, timed ban, kick --for): those print "SKIPPED (server lacks X)"
//! where the server answers that it lacks the feature.

mod common;

use common::Server;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn two_browsers_chat_through_the_built_in_page() {
    if std::env::var("SKIFF_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("browser test not run: SKIFF_SKIP_BROWSER=1 opts out of it");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/browser/e2e.mjs");
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut missing = Vec::new();
    if !Path::new(&chromium).exists() {
        missing.push(format!("no browser at {chromium}: run `apt-get install chromium` (or set CHROMIUM_PATH)"));
    }
    if !Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success()) {
        missing.push("no node: run `apt-get install nodejs npm`".to_owned());
    }
    if !root.join("tests/browser/node_modules/playwright-core").exists() {
        missing.push("no playwright-core: run `cd tests/browser && npm ci`".to_owned());
    }
    assert!(
        missing.is_empty(),
        "the browser test cannot run:\n  {}\nor set SKIFF_SKIP_BROWSER=1 to skip it on purpose",
        missing.join("\n  ")
    );
    let srv = Server::start();
    let shots = root.join("test-artifacts/browser");
    std::fs::create_dir_all(&shots).unwrap();
    let mut child = Command::new("node")
        .arg(&script)
        .env("SKIFF_URL", format!("http://{}", srv.addr))
        .env("SKIFF_SCREENSHOTS", &shots)
        .env("SKIFF_BIN", env!("CARGO_BIN_EXE_skiff"))
        .env("SKIFF_CONTROL", format!("{}.ctl", srv.db_path().display()))
        .current_dir(root)
        .spawn()
        .expect("start node");
    // The script has its own watchdog; this bound only guards against a hung node.
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            panic!("the browser test did not finish in 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "browser test failed ({status}); screenshots in {}", shots.display());
    assert!(shots.join("01-exchange-A.png").exists(), "screenshots were saved");
}
