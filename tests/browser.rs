//! The built-in web client in a real browser: headless Chromium (Debian's package)
//! driven by tests/browser/e2e.mjs through playwright-core, against a real skiff.
//! Skips with a notice where Chromium or the npm packages are missing, unless
//! SKIFF_REQUIRE_BROWSER=1 (CI sets it), where a missing browser is a failure.

mod common;

use common::Server;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn two_browsers_chat_through_the_built_in_page() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/browser/e2e.mjs");
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ready = Path::new(&chromium).exists()
        && root.join("tests/browser/node_modules/playwright-core").exists()
        && Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ready {
        assert!(
            std::env::var("SKIFF_REQUIRE_BROWSER").is_err(),
            "SKIFF_REQUIRE_BROWSER is set but chromium, node or tests/browser/node_modules is missing"
        );
        eprintln!("skipping the browser test: needs {chromium}, node and `npm ci` in tests/browser");
        return;
    }
    let srv = Server::start();
    let shots = root.join("test-artifacts/browser");
    std::fs::create_dir_all(&shots).unwrap();
    let mut child = Command::new("node")
        .arg(&script)
        .env("SKIFF_URL", format!("http://{}", srv.addr))
        .env("SKIFF_SCREENSHOTS", &shots)
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
