//! The book in docs/ (mdBook): it builds without a warning, every link between its
//! pages and from README into it resolves (to a heading, where one is named), and
//! every shell block in it is accounted for: run by a test, or marked as not runnable
//! here with the reason. A block is marked by an HTML comment on the line before it:
//! `<!-- sh: run by FILE: how -->` (FILE must exist and name the page) or
//! `<!-- sh: not run here: why -->`. The blocks FILE = tests/book.rs names run here.
//!
//! Needs mdbook (`cargo install mdbook --locked --version 0.5.4
//! --no-default-features --features search`, which ./scripts/test does). A missing
//! mdbook fails the build test with that command; `SKIFF_SKIP_DOCS=1` skips instead.

mod common;

use common::Server;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const SHELLS: [&str; 4] = ["sh", "bash", "shell", "console"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// docs/src/*.md, by file name, with their text.
fn pages() -> Vec<(String, String)> {
    let mut pages: Vec<(String, String)> = std::fs::read_dir(root().join("docs/src"))
        .expect("docs/src")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    pages.sort();
    assert!(pages.len() >= 10, "docs/src has the book's pages");
    pages
}

/// A fenced block: its info string, its lines, and the nearest non-blank line before it.
struct Block {
    info: String,
    body: Vec<String>,
    before: String,
}

fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    let mut before = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(info) = trimmed.strip_prefix("```") {
            match open.take() {
                Some(block) => out.push(block),
                None => open = Some(Block { info: info.trim().to_owned(), body: Vec::new(), before: before.clone() }),
            }
            continue;
        }
        match open.as_mut() {
            Some(block) => block.body.push(trimmed.to_owned()),
            None if !trimmed.is_empty() => before = trimmed.to_owned(),
            None => {}
        }
    }
    assert!(open.is_none(), "an unclosed code block");
    out
}

/// mdBook's id for a heading: lowercase, spaces to '-', only alphanumerics, '-' and '_'
/// kept.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The heading ids of a page (code blocks left out).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut fence = false;
    let mut ids = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fence = !fence;
        } else if !fence && line.starts_with('#') {
            ids.insert(slug(line.trim_start_matches('#')));
        }
    }
    ids
}

/// The targets of `[text](target)` links outside code.
fn links(text: &str) -> Vec<String> {
    let mut fence = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fence = !fence;
            continue;
        }
        if fence {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            if let Some(end) = rest.find(')') {
                out.push(rest[..end].to_owned());
                rest = &rest[end..];
            }
        }
    }
    out
}

fn check_links(file: &Path, text: &str, broken: &mut Vec<String>) {
    for target in links(text) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
        let dest: PathBuf = if path.is_empty() { file.to_owned() } else { file.parent().unwrap().join(path) };
        let Ok(dest_text) = std::fs::read_to_string(&dest) else {
            if !dest.exists() {
                broken.push(format!("{}: {target} (no such file)", file.display()));
            }
            continue;
        };
        if !anchor.is_empty() && !anchors(&dest_text).contains(anchor) {
            broken.push(format!("{}: {target} (no heading #{anchor})", file.display()));
        }
    }
}

#[test]
fn links_between_pages_resolve() {
    let mut broken = Vec::new();
    for (name, text) in pages() {
        check_links(&root().join("docs/src").join(&name), &text, &mut broken);
    }
    check_links(&root().join("README.md"), include_str!("../README.md"), &mut broken);
    assert!(broken.is_empty(), "broken links:\n  {}", broken.join("\n  "));
    // Every page is in the book: one left out of SUMMARY.md would never be built.
    let summary = std::fs::read_to_string(root().join("docs/src/SUMMARY.md")).unwrap();
    for (name, _) in pages().iter().filter(|(n, _)| n != "SUMMARY.md") {
        assert!(summary.contains(&format!("]({name})")), "docs/src/SUMMARY.md lists {name}");
    }
}

#[test]
fn links_are_checked() {
    let mut broken = Vec::new();
    let page = root().join("docs/src/introduction.md");
    check_links(&page, "[a](protocol.md#no-such-heading) [b](nowhere.md) [c](protocol.md#limits)", &mut broken);
    assert_eq!(broken.len(), 2, "{broken:?}");
    assert_eq!(slug("Crashes and acks: what an ack means"), "crashes-and-acks-what-an-ack-means");
    assert_eq!(slug("Debian packages: Debian and Raspberry Pi OS"), "debian-packages-debian-and-raspberry-pi-os");
}

/// Every shell block is run by a test or marked, with a reason, as not run here.
#[test]
fn every_shell_block_is_run_or_marked() {
    let mut problems = Vec::new();
    let mut counted = 0;
    for (name, text) in pages() {
        for block in blocks(&text).iter().filter(|b| SHELLS.contains(&b.info.as_str())) {
            counted += 1;
            let first = block.body.first().cloned().unwrap_or_default();
            let marker = block.before.strip_prefix("<!-- sh: ").and_then(|m| m.strip_suffix(" -->"));
            match marker {
                Some(m) if m.starts_with("not run here: ") && m.len() > "not run here: ".len() + 10 => {}
                Some(m) if m.starts_with("run by ") => {
                    let file = m["run by ".len()..].split(':').next().unwrap();
                    match std::fs::read_to_string(root().join(file)) {
                        Ok(src) if src.contains(&name) => {}
                        Ok(_) => problems.push(format!("{name}: `{first}`: {file} does not mention {name}")),
                        Err(_) => problems.push(format!("{name}: `{first}`: no file {file}")),
                    }
                }
                _ => problems.push(format!("{name}: `{first}` has no `<!-- sh: ... -->` line before it")),
            }
        }
    }
    assert!(problems.is_empty(), "shell blocks:\n  {}", problems.join("\n  "));
    assert!(counted >= 15, "found {counted} shell blocks");
}

/// protocol.md's curl/wscat block is README's, which tests/readme.rs runs.
#[test]
fn protocol_example_is_readmes() {
    let readme = blocks(include_str!("../README.md"));
    let book = blocks(include_str!("../docs/src/protocol.md"));
    let example = |bs: &[Block]| {
        bs.iter().find(|b| b.body.iter().any(|l| l.starts_with("wscat "))).map(|b| b.body.clone()).expect("the example")
    };
    assert_eq!(example(&book), example(&readme), "docs/src/protocol.md's example differs from README's");
}

/// The `skiff ctl` block of operating.md, as printed, beside a skiff serving
/// ./chat.db with a user named spammer.
#[test]
fn operating_ctl_block_runs_as_printed() {
    let text = include_str!("../docs/src/operating.md");
    let block = blocks(text)
        .into_iter()
        .find(|b| b.before.starts_with("<!-- sh: run by tests/book.rs"))
        .expect("operating.md has a block for tests/book.rs");
    let srv = Server::start();
    let key = srv.register("spammer");
    let bin = Path::new(env!("CARGO_BIN_EXE_skiff")).parent().unwrap().to_owned();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut outputs = Vec::new();
    for line in block.body.iter().filter(|l| !l.is_empty()) {
        let out = Command::new("sh")
            .args(["-c", line])
            .current_dir(srv.dir.path())
            .env("PATH", &path)
            .env_remove("SKIFF_CONTROL")
            .env_remove("SKIFF_DB")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "`{line}` failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        outputs.push(stdout);
    }
    assert!(outputs.iter().any(|o| o.contains("spammer")), "the block's users list names spammer: {outputs:?}");
    // The ban took effect: as the page says, login then answers 403 banned.
    let login = srv.post("/api/login", &format!(r#"{{"key": "{key}"}}"#), None);
    assert_eq!((login.status, login.error()), (403, "banned".to_owned()), "{}", srv.stderr());
}

/// `mdbook build` succeeds and prints no warning.
#[test]
fn book_builds_without_warnings() {
    let install = "cargo install mdbook --locked --version 0.5.4 --no-default-features --features search";
    if Command::new("mdbook").arg("--version").output().is_err() {
        if std::env::var("SKIFF_SKIP_DOCS").as_deref() == Ok("1") {
            eprintln!("skipped (SKIFF_SKIP_DOCS=1): no mdbook; `{install}` installs it");
            return;
        }
        panic!("no mdbook: run `{install}` (./scripts/test does), or set SKIFF_SKIP_DOCS=1 to skip");
    }
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new("mdbook")
        .args(["build", "docs", "--dest-dir"])
        .arg(out_dir.path())
        .current_dir(root())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "mdbook build failed:\n{log}");
    let noisy: Vec<&str> = log.lines().filter(|l| !l.trim_start().starts_with("INFO")).collect();
    assert!(noisy.is_empty(), "mdbook build printed more than INFO lines:\n{log}");
    assert!(out_dir.path().join("protocol.html").exists(), "the protocol page was built");
}
