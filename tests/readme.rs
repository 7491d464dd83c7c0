//! The README's "Two commands" and "API" examples, run as printed (docs/src/protocol.md
//! carries the same API block; tests/book.rs checks it is identical). The API block runs
//! verbatim (`localhost:7777`, no substitution) against a skiff started with no flags at
//! all, in a private network namespace where port 7777 is always free and no packet can
//! leave the machine. Output lines in the block are checked: `# TEXT` after a command is
//! what it prints (`...` matches anything, `<- note` is prose), `> TEXT` is typed into
//! it, `< TEXT` is what it then prints.
//!
//! Needs curl, awk, unshare and ip (Debian: curl, gawk or mawk, util-linux, iproute2)
//! and wscat (`npm install -g wscat@6`). A missing tool fails the test with the command
//! that installs it; `SKIFF_SKIP_DOCS=1` skips instead.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const README: &str = include_str!("../README.md");
const WAIT: Duration = Duration::from_secs(15);

/// The lines of the first ```sh block after `heading`.
fn sh_block(heading: &str) -> Vec<&'static str> {
    let section = &README[README.find(&format!("\n{heading}\n")).unwrap_or_else(|| panic!("README has {heading}"))..];
    let start = section.find("```sh\n").expect("an sh block") + "```sh\n".len();
    let end = start + section[start..].find("```").expect("block end");
    section[start..end].lines().collect()
}

#[derive(Debug, Default)]
struct Step {
    command: String,
    input: Vec<String>,
    output: Vec<String>,
}

fn steps(block: &[&str]) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for line in block.iter().filter(|l| !l.trim().is_empty()) {
        let last = steps.last_mut();
        if let Some(out) = line.strip_prefix("# ").or_else(|| line.strip_prefix("< ")) {
            let out = out.split("<-").next().unwrap().trim_end();
            last.expect("output follows a command").output.push(out.to_owned());
        } else if let Some(input) = line.strip_prefix("> ") {
            last.expect("input follows a command").input.push(input.to_owned());
        } else {
            steps.push(Step { command: line.to_string(), ..Step::default() });
        }
    }
    steps
}

/// `pattern` with `...` standing for any text.
fn matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split("...");
    let first = parts.next().unwrap();
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// False (and a notice) when a tool is missing and SKIFF_SKIP_DOCS=1; panics with the
/// install command when it is missing otherwise.
fn tools_present() -> bool {
    let tools = [
        ("curl", "apt-get install -y curl"),
        ("awk", "apt-get install -y gawk"),
        ("unshare", "apt-get install -y util-linux"),
        ("ip", "apt-get install -y iproute2"),
        ("wscat", "npm install -g wscat@6"),
    ];
    let missing: Vec<_> = tools
        .iter()
        .filter(|(tool, _)| {
            !Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().unwrap().status.success()
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let install: Vec<&str> = missing.iter().map(|(_, how)| *how).collect();
    let msg = format!("README examples need {missing:?}: run `{}`", install.join(" && "));
    if std::env::var("SKIFF_SKIP_DOCS").as_deref() == Ok("1") {
        eprintln!("skipped (SKIFF_SKIP_DOCS=1): {msg}");
        return false;
    }
    panic!("{msg}, or set SKIFF_SKIP_DOCS=1 to skip");
}

/// README stays a front page; the rest is the book's (docs/).
#[test]
fn readme_is_at_most_250_lines() {
    let lines = README.lines().count();
    assert!(lines <= 250, "README.md has {lines} lines; move detail into docs/src/");
}

#[test]
fn two_commands_are_cargo_run_and_the_test_script() {
    let commands: Vec<&str> = sh_block("## Two commands")
        .iter()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(commands, ["cargo run --release", "./scripts/test"]);
    // The test command ends in the whole suite, and CI runs exactly it.
    let script = include_str!("../scripts/test");
    assert_eq!(script.lines().last(), Some("exec cargo test \"$@\""), "scripts/test ends by running cargo test");
    let ci = include_str!("../.ci/run");
    assert!(ci.lines().any(|l| l == "./scripts/test"), ".ci/run calls ./scripts/test as README prints it");
    // README's prerequisites state the minimum Cargo.toml pins.
    let manifest = include_str!("../Cargo.toml");
    let min = manifest.lines().find_map(|l| l.strip_prefix("rust-version = \"")).expect("rust-version in Cargo.toml");
    let min = min.trim_end_matches('"');
    assert!(README.contains(&format!("Rust {min} or newer")), "README names the minimum Rust, {min}");
    // `cargo run` must pick the server, not skiff-bench.
    assert!(manifest.lines().any(|l| l.trim() == "default-run = \"skiff\""), "Cargo.toml: default-run = \"skiff\"");
}

/// Runs the API block in a network namespace against `skiff` with no flags, started
/// in an empty directory: what `cargo run --release` does in a fresh checkout.
#[test]
fn api_example_runs_as_printed() {
    if !tools_present() {
        return;
    }
    let steps = steps(&sh_block("## API"));
    assert!(steps.iter().any(|s| s.command.starts_with("wscat ")), "the block has its WebSocket step");
    let work = tempfile::tempdir().unwrap();
    let mut script = String::new();
    for (i, step) in steps.iter().enumerate() {
        // A blank line after each command: JSON answers may not end with a newline.
        script.push_str(&format!("echo '@@cmd {i}'\n{}\ns=$?\necho\necho \"@@end {i} $s\"\n", step.command));
    }
    std::fs::write(work.path().join("readme.sh"), script).unwrap();
    std::fs::write(work.path().join("driver.sh"), DRIVER).unwrap();

    let mut cmd = Command::new("unshare");
    if !is_root() {
        cmd.arg("--map-root-user");
    }
    let mut child = cmd
        .args(["--net", "bash", "driver.sh"])
        .current_dir(work.path())
        .env("SKIFF", env!("CARGO_BIN_EXE_skiff"))
        .env("TMPDIR", work.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(work.path().join("driver.err")).unwrap())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut stdin = child.stdin.take();
    let next = |what: &str| {
        rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            let err = std::fs::read_to_string(work.path().join("driver.err")).unwrap_or_default();
            let log = std::fs::read_to_string(work.path().join("skiff.err")).unwrap_or_default();
            panic!("no {what} within {WAIT:?}; driver stderr: {err}\nskiff stderr: {log}")
        })
    };
    assert_eq!(next("page status"), "@@page 200", "http://localhost:7777/ serves the chat page");
    for (i, step) in steps.iter().enumerate() {
        assert_eq!(next("start marker"), format!("@@cmd {i}"));
        let mut out = Vec::new();
        if !step.input.is_empty() {
            // Type only once the socket is open, as a person would after the prompt.
            let log = work.path().join("skiff.err");
            wait_for(|| std::fs::read_to_string(&log).unwrap_or_default().contains(" joined "), "the WebSocket join");
            let w = stdin.as_mut().expect("input for one command only");
            for line in &step.input {
                writeln!(w, "{line}").unwrap();
            }
            w.flush().unwrap();
            while out.iter().filter(|l: &&String| !l.is_empty()).count() < step.output.len() {
                out.push(next(&format!("answer to {:?}", step.input)));
            }
            // End of input: wscat quits, as after Ctrl-D.
            stdin = None;
        }
        let status = loop {
            let line = next("end marker");
            if let Some(status) = line.strip_prefix(&format!("@@end {i} ")) {
                break status.to_owned();
            }
            out.push(line);
        };
        // wscat writes its input prompt `> ` to stdout too; drop it, as a reader's eye does.
        let out: Vec<&str> =
            out.iter().map(|l| l.trim_start_matches("> ").trim_end()).filter(|l| !l.is_empty() && *l != ">").collect();
        assert_eq!(status, "0", "{:?} exits 0", step.command);
        assert_eq!(out.len(), step.output.len(), "{:?} printed {out:?}, README says {:?}", step.command, step.output);
        for (got, want) in out.iter().zip(&step.output) {
            assert!(matches(want, got), "{:?} printed {got:?}, README says {want:?}", step.command);
        }
    }
    assert_eq!(next("skiff's exit"), "@@skiff exit 0");
    assert!(child.wait().unwrap().success());
    // The two commands' promise: no flags -> 0.0.0.0:7777 and ./chat.db.
    let first = std::fs::read_to_string(work.path().join("skiff.out")).unwrap();
    assert_eq!(first, "listening on http://0.0.0.0:7777\nopen http://localhost:7777/\n");
    assert!(work.path().join("chat.db").exists(), "./chat.db created");
    let leftovers: Vec<_> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert!(!leftovers.iter().any(|n| n == "jar"), "the example writes nothing into the repository");
}

fn wait_for(mut ready: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < WAIT, "no {what} within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs inside the namespace: loopback up, skiff with no flags in the work directory,
/// the chat page fetched, the README block, then a graceful stop.
const DRIVER: &str = r#"
ip link set lo up || exit 1
"$SKIFF" >skiff.out 2>skiff.err </dev/null &
pid=$!
n=0
until grep -q '^open ' skiff.out 2>/dev/null; do
    n=$((n + 1))
    if [ $n -gt 300 ]; then echo "@@skiff did not start"; exit 1; fi
    sleep 0.05
done
echo "@@page $(curl -s -o /dev/null -w '%{http_code}' http://localhost:7777/)"
bash ./readme.sh
kill "$pid"
wait "$pid"
echo "@@skiff exit $?"
"#;

#[test]
fn wildcard_matching() {
    assert!(matches(r#"{"key":"..."}"#, r#"{"key":"abc"}"#));
    assert!(matches("plain", "plain"));
    assert!(!matches("plain", "plainer"));
    assert!(!matches(r#"{"key":"..."}"#, r#"{"error":"x"}"#));
    assert!(matches("a...b...c", "a1b2c"));
}

/// The book's configuration table (docs/src/configuration.md) is a second copy of
/// `--help`; it must list every flag with its env var and default.
#[test]
fn configuration_table_matches_help() {
    let help = Command::new(env!("CARGO_BIN_EXE_skiff")).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let page = include_str!("../docs/src/configuration.md");
    let section = &page[page.find("# Configuration\n").expect("the page is # Configuration")..];
    let rows: Vec<&str> =
        section.lines().skip(2).take_while(|l| !l.starts_with("## ")).filter(|l| l.starts_with('|')).collect();
    let mut seen = 0;
    for line in help.lines().filter(|l| l.starts_with("  --")) {
        let flag = line.split_whitespace().next().unwrap();
        let env = line.split_whitespace().find(|w| w.starts_with("SKIFF_")).expect("an env var");
        let row = rows
            .iter()
            .find(|r| {
                [" ", "`"]
                    .iter()
                    .any(|end| r.contains(&format!("`{flag}{end}")) || r.contains(&format!(" {flag}{end}")))
            })
            .unwrap_or_else(|| panic!("the configuration table has a row for {flag}"));
        assert!(row.contains(&format!("`{env}`")), "{flag}: the row names {env}: {row}");
        if let Some(default) = line.strip_suffix(']').and_then(|l| l.rsplit_once('[')).map(|(_, d)| d) {
            if !default.contains(' ') {
                assert!(row.contains(&format!("`{default}`")), "{flag}: the row gives default {default}: {row}");
            }
        }
        seen += 1;
    }
    assert!(seen >= 17, "--help listed {seen} flags");
}
