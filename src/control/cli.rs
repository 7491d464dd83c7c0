//! `skiff ctl`: the command line turned into one request, sent over the control
//! socket, and its answer printed (as text, or as the JSON line with `--json`).
//! Exit 0 on ok, 1 with a one-line reason on anything else.

use super::protocol::{format_duration, parse_duration, Answer, Request};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A backup of a large database may take minutes; nothing else should.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
const BACKUP_TIMEOUT: Duration = Duration::from_secs(3600);

pub const USAGE: &str = "\
usage: skiff ctl [--control PATH] [--json] COMMAND

Talks to a running skiff over its control socket (--control, SKIFF_CONTROL; default:
the database path (--db, SKIFF_DB, chat.db) + \".ctl\"). Exit 0 on success, 1 with a
one-line reason otherwise.

commands:
  status                                   version, uptime, connections, users, storage
  users [--online] [--limit N] [--after NAME]
                                           name, registered, online, sessions, and bans
                                           (since, until, reason)
  kick NAME [--for DURATION]               close NAME's WebSockets (1000 \"kicked\"); they may
                                           come back, or with --for not before it ends
  ban NAME [--reason TEXT] [--for DURATION]
                                           end NAME's sessions (1008 \"banned\"); login
                                           answers 403; --for ends it by itself
                                           (DURATION: 30s, 10m, 2h, 7d)
  unban NAME
  reset-key NAME                           print a new key; the old one and its sessions end
  delete-user NAME [--messages]            free the name; --messages: their messages go too
  delete-message ID                        out of /api/history and every replay
  backup FILE                              a checked copy of the live database (FILE must not exist)
";

#[derive(Debug, PartialEq, Eq)]
pub struct Invocation {
    pub control: PathBuf,
    pub json: bool,
    pub request: Request,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Run(Invocation),
    Help,
}

/// `args` after `ctl`; `env` looks up SKIFF_CONTROL and SKIFF_DB; `cwd` makes the
/// backup path absolute (the server does not share the caller's directory).
pub fn parse(args: &[String], env: &dyn Fn(&str) -> Option<String>, cwd: &Path) -> Result<Parsed, String> {
    let mut control = None;
    let mut json = false;
    let mut words: Vec<&str> = Vec::new();
    let mut flags: Vec<(&str, Option<&str>)> = Vec::new();
    let mut it = args.iter().map(String::as_str);
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if a.starts_with("--") => (f, Some(v)),
            _ => (a, None),
        };
        match flag {
            "-h" | "--help" | "help" if words.is_empty() => return Ok(Parsed::Help),
            "--json" => json = true,
            "--control" | "--limit" | "--after" | "--reason" | "--for" => {
                let v = match inline {
                    Some(v) => v,
                    None => it.next().ok_or_else(|| format!("{flag}: missing value"))?,
                };
                if flag == "--control" {
                    control = Some(PathBuf::from(v));
                } else {
                    flags.push((flag, Some(v)));
                }
            }
            "--online" | "--messages" => flags.push((flag, None)),
            f if f.starts_with('-') && f.len() > 1 && f.parse::<i64>().is_err() => {
                return Err(format!("unknown flag {f}"))
            }
            w => words.push(w),
        }
    }
    let Some((&command, rest)) = words.split_first() else { return Err("no command given".into()) };
    let take = |f: &str| flags.iter().find(|(n, _)| *n == f).map(|(_, v)| *v);
    let allowed = |ok: &[&str]| -> Result<(), String> {
        match flags.iter().find(|(n, _)| !ok.contains(n)) {
            Some((n, _)) => Err(format!("{command} does not take {n}")),
            None => Ok(()),
        }
    };
    let one = |what: &str| -> Result<String, String> {
        match rest {
            [x] => Ok((*x).to_owned()),
            [] => Err(format!("{command}: missing {what}")),
            _ => Err(format!("{command}: one {what}, got {}", rest.len())),
        }
    };
    let none = || if rest.is_empty() { Ok(()) } else { Err(format!("{command} takes no argument")) };
    let request = match command {
        "status" => {
            allowed(&[])?;
            none()?;
            Request::Status
        }
        "users" => {
            allowed(&["--online", "--limit", "--after"])?;
            none()?;
            let limit = match take("--limit").flatten() {
                Some(v) => Some(v.parse::<usize>().map_err(|_| format!("--limit: expected a number, got {v:?}"))?),
                None => None,
            };
            Request::Users {
                online: take("--online").is_some(),
                limit,
                after: take("--after").flatten().map(str::to_owned),
            }
        }
        "kick" => {
            allowed(&["--for"])?;
            Request::Kick { name: one("NAME")?, for_s: take("--for").flatten().map(parse_duration).transpose()? }
        }
        "ban" => {
            allowed(&["--reason", "--for"])?;
            Request::Ban {
                name: one("NAME")?,
                reason: take("--reason").flatten().map(str::to_owned),
                for_s: take("--for").flatten().map(parse_duration).transpose()?,
            }
        }
        "unban" => {
            allowed(&[])?;
            Request::Unban { name: one("NAME")? }
        }
        "reset-key" => {
            allowed(&[])?;
            Request::ResetKey { name: one("NAME")? }
        }
        "delete-user" => {
            allowed(&["--messages"])?;
            Request::DeleteUser { name: one("NAME")?, messages: take("--messages").is_some() }
        }
        "delete-message" => {
            allowed(&[])?;
            let v = one("ID")?;
            let id = v.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(|| format!("delete-message: bad id {v:?}"))?;
            Request::DeleteMessage { id }
        }
        "backup" => {
            allowed(&[])?;
            let file = cwd.join(one("FILE")?);
            let file = file.to_str().ok_or("backup: the path is not UTF-8")?.to_owned();
            Request::Backup { file }
        }
        other => return Err(format!("unknown command {other:?}")),
    };
    let control = control.unwrap_or_else(|| default_path(env));
    Ok(Parsed::Run(Invocation { control, json, request }))
}

/// SKIFF_CONTROL, else the database path (SKIFF_DB, else chat.db) + ".ctl": the
/// server's own default, so `skiff ctl` beside a `skiff` with the same settings
/// needs no flag.
pub fn default_path(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(p) = env("SKIFF_CONTROL").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let db = env("SKIFF_DB").filter(|p| !p.is_empty()).unwrap_or_else(|| "chat.db".into());
    beside(Path::new(&db))
}

/// The control socket next to a database file.
pub fn beside(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".ctl");
    PathBuf::from(p)
}

/// Sends the request, waits for the answer. Errors are one line.
pub fn call(inv: &Invocation) -> Result<Answer, String> {
    let path = &inv.control;
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => return Err(format!("{shown} is not a socket")),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("no control socket at {shown} (is skiff running? --control names another)"))
        }
        Err(e) => return Err(format!("{shown}: {e}")),
    }
    let stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => format!("nobody answers on {shown} (skiff is not running)"),
        std::io::ErrorKind::PermissionDenied => {
            format!("{shown}: permission denied (run as the user skiff runs as, or as root)")
        }
        _ => format!("{shown}: {e}"),
    })?;
    let timeout = if matches!(inv.request, Request::Backup { .. }) { BACKUP_TIMEOUT } else { ANSWER_TIMEOUT };
    let io = |e: std::io::Error| format!("control socket {shown}: {e}");
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
    (&stream).write_all(inv.request.to_line().as_bytes()).map_err(io)?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => format!("no answer within {timeout:?}"),
        _ => io(e),
    })?;
    if line.is_empty() {
        return Err("skiff closed the control connection without an answer".into());
    }
    Answer::from_line(&line).ok_or_else(|| "skiff sent an answer that is not one".into())
}

/// The text `skiff ctl` prints for an ok answer.
pub fn render(req: &Request, a: &Answer) -> String {
    let s = |f: &str| a.get(f).map(show).unwrap_or_default();
    match req {
        Request::Status => {
            let mut out = String::new();
            for f in [
                "version",
                "uptime_s",
                "connections",
                "online",
                "users",
                "banned",
                "sessions",
                "history",
                "last_id",
                "epoch",
                "database_bytes",
                "storage",
                "cluster",
            ] {
                out.push_str(&format!("{f}: {}\n", s(f)));
            }
            out
        }
        Request::Users { .. } => {
            let mut out = format!(
                "{:<32} {:<16} {:>6} {:>8} {:>6}  {}\n",
                "NAME", "REGISTERED", "ONLINE", "SESSIONS", "BANNED", "BAN"
            );
            for u in a.get("users").and_then(Value::as_array).into_iter().flatten() {
                let f = |k: &str| u.get(k).map(show).unwrap_or_default();
                let yes = |k: &str| if u.get(k) == Some(&Value::Bool(true)) { "yes" } else { "no" };
                let registered = u.get("registered").and_then(Value::as_i64).map_or("-".into(), |s| minute(s * 1000));
                out.push_str(&format!(
                    "{:<32} {:<16} {:>6} {:>8} {:>6}  {}\n",
                    f("name"),
                    registered,
                    yes("online"),
                    f("sessions"),
                    yes("banned"),
                    ban_text(u)
                ));
            }
            out
        }
        Request::Kick { for_s: Some(_), .. } => format!("kicked {} until {}\n", s("name"), s("until")),
        Request::Kick { .. } => format!("kicked {}\n", s("name")),
        Request::Ban { for_s, .. } => {
            let until =
                for_s.map(|f| format!(" for {} (until {})", format_duration(f), s("until"))).unwrap_or_default();
            format!("banned {}{until} ({} sessions ended)\n", s("name"), s("sessions_ended"))
        }
        Request::Unban { .. } if a.get("was_banned") == Some(&Value::Bool(false)) => {
            format!("{} was not banned\n", s("name"))
        }
        Request::Unban { .. } => format!("unbanned {}\n", s("name")),
        // Only the key on stdout, for scripts; it is shown this once.
        Request::ResetKey { .. } => format!("{}\n", s("key")),
        Request::DeleteUser { .. } => {
            format!("deleted user {} ({} messages deleted)\n", s("name"), s("messages_deleted"))
        }
        Request::DeleteMessage { .. } => format!("deleted message {}\n", s("id")),
        Request::Backup { .. } => format!("backup written to {} ({} bytes, integrity ok)\n", s("file"), s("bytes")),
    }
}

/// Unix ms as `YYYY-MM-DD HH:MM` (UTC): a table column, not a timestamp to parse.
fn minute(unix_ms: i64) -> String {
    let t = crate::chat::moderation::rfc3339(unix_ms);
    format!("{} {}", &t[..10], &t[11..16])
}

/// The BAN column: `since ... until ... (reason)`, or nothing.
fn ban_text(u: &Value) -> String {
    if u.get("banned") != Some(&Value::Bool(true)) {
        return String::new();
    }
    let mut out = String::new();
    if let Some(since) = u.get("since").and_then(Value::as_str) {
        out.push_str(&format!("since {since}"));
    }
    match u.get("until").and_then(Value::as_str) {
        Some(until) => out.push_str(&format!(" until {until}")),
        None => out.push_str(" until unbanned"),
    }
    if let Some(why) = u.get("reason").and_then(Value::as_str) {
        out.push_str(&format!(" ({why})"));
    }
    out.trim_start().to_owned()
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `skiff ctl ...`: the whole client. Returns the process's exit code.
pub fn main(args: &[String]) -> u8 {
    let env = |name: &str| std::env::var(name).ok();
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let inv = match parse(args, &env, &cwd) {
        Ok(Parsed::Run(inv)) => inv,
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            return 0;
        }
        Err(e) => {
            eprintln!("skiff ctl: {e}");
            eprintln!("Try 'skiff ctl --help' for more information.");
            return 1;
        }
    };
    let answer = match call(&inv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("skiff ctl: {e}");
            return 1;
        }
    };
    let mut stdout = std::io::stdout();
    if inv.json {
        let _ = stdout.write_all(answer.to_line().as_bytes());
    } else if answer.is_ok() {
        let _ = stdout.write_all(render(&inv.request, &answer).as_bytes());
        if let Some(next) = answer.get("next").and_then(Value::as_str) {
            eprintln!("more: skiff ctl users --after {next}");
        }
    }
    if answer.is_ok() {
        0
    } else {
        if !inv.json {
            eprintln!("skiff ctl: {}", answer.message());
        }
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn run(s: &str) -> Result<Invocation, String> {
        let env = |k: &str| (k == "SKIFF_DB").then(|| "/var/lib/skiff/chat.db".to_owned());
        match parse(&args(s), &env, Path::new("/home/op"))? {
            Parsed::Run(inv) => Ok(inv),
            Parsed::Help => Err("help".into()),
        }
    }

    #[test]
    fn commands_and_flags_in_any_order() {
        let inv = run("ban alice --reason spam --json").unwrap();
        assert_eq!(inv.request, Request::Ban { name: "alice".into(), reason: Some("spam".into()), for_s: None });
        assert_eq!(
            run("ban bob --for 2h --reason x").unwrap().request,
            Request::Ban { name: "bob".into(), reason: Some("x".into()), for_s: Some(7200) }
        );
        assert_eq!(run("kick bob --for=30s").unwrap().request, Request::Kick { name: "bob".into(), for_s: Some(30) });
        assert!(inv.json);
        assert_eq!(inv.control, Path::new("/var/lib/skiff/chat.db.ctl"), "beside SKIFF_DB");
        let inv = run("--control=/run/skiff/control users --online --limit 5").unwrap();
        assert_eq!(inv.control, Path::new("/run/skiff/control"));
        assert_eq!(inv.request, Request::Users { online: true, limit: Some(5), after: None });
        assert_eq!(run("backup b.db").unwrap().request, Request::Backup { file: "/home/op/b.db".into() });
        assert_eq!(
            run("delete-user bob --messages").unwrap().request,
            Request::DeleteUser { name: "bob".into(), messages: true }
        );
        assert_eq!(run("--help").unwrap_err(), "help");
    }

    #[test]
    fn bad_command_lines_say_why() {
        for (line, why) in [
            ("", "no command given"),
            ("explode", "unknown command \"explode\""),
            ("kick", "kick: missing NAME"),
            ("kick a b", "kick: one NAME, got 2"),
            ("kick a --reason x", "kick does not take --reason"),
            ("delete-message x", "delete-message: bad id \"x\""),
            ("delete-message 0", "delete-message: bad id \"0\""),
            ("delete-message -5", "delete-message: bad id \"-5\""),
            ("users --limit lots", "--limit: expected a number, got \"lots\""),
            ("status --bogus", "unknown flag --bogus"),
            ("ban", "ban: missing NAME"),
            ("ban a --for soon", "--for: expected a duration like 30s, 10m, 2h or 7d, got \"soon\""),
            ("kick a --for 0s", "--for must be from 1s to 3650d"),
            ("status extra", "status takes no argument"),
        ] {
            assert_eq!(run(line).unwrap_err(), why, "{line:?}");
        }
    }

    #[test]
    fn the_default_path_follows_the_servers() {
        assert_eq!(default_path(&|_| None), Path::new("chat.db.ctl"));
        assert_eq!(default_path(&|k| (k == "SKIFF_CONTROL").then(|| "/x".into())), Path::new("/x"));
    }
}
