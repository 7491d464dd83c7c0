//! The skiff binary: configuration -> store -> reactor, and the exit codes around them.

use skiff::config::{self, Command};
use skiff::log;
use skiff::reactor::Reactor;
use skiff::store::Store;
use std::io::Write;
use std::process::ExitCode;

/// Why skiff stopped without serving (or stopped serving), each with its exit code.
enum Fatal {
    /// A bad flag or setting: 2, with a pointer to `--help`.
    Usage(String),
    /// Could not start (the database, the certificate, the port): 1.
    Startup(String),
    /// The event loop itself failed: 1, in the log.
    EventLoop(std::io::Error),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `skiff ctl ...` is the operator's client, not a server: its own flags.
    if args.first().map(String::as_str) == Some("ctl") {
        return ExitCode::from(skiff::control::cli::main(&args[1..]));
    }
    if args.first().map(String::as_str) == Some(skiff::handover::probe::PROBE_FLAG) {
        probe(args[1..].to_vec());
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal::Usage(e)) => {
            eprintln!("skiff: {e}");
            eprintln!("Try 'skiff --help' for more information.");
            ExitCode::from(2)
        }
        Err(Fatal::Startup(e)) => {
            eprintln!("skiff: {e}");
            ExitCode::from(1)
        }
        Err(Fatal::EventLoop(e)) => {
            log::error(format_args!("event loop failed: {e}"));
            ExitCode::from(1)
        }
    }
}

/// A hand-over's probe (`handover::probe::run`): takes the state in memory as the
/// next image would, writes the verdict for the process that asked, and exits
/// without running any destructor, so nothing it was handed is touched.
fn probe(args: Vec<String>) -> ! {
    let Some((inherited, status)) = skiff::handover::probe::inherit_probe() else {
        eprintln!("skiff: {} is for a running skiff's hand-over", skiff::handover::probe::PROBE_FLAG);
        std::process::exit(2);
    };
    let env = |name: &str| std::env::var(name).ok();
    let verdict = match config::parse(args, &env) {
        Ok(Command::Run(cfg)) => inherited.and_then(|i| Reactor::probe(&cfg, i)),
        Ok(_) => Err("no configuration to run".to_owned()),
        Err(e) => Err(e.to_string()),
    };
    let line = match verdict {
        Ok(conns) => format!("{} {conns} connections\n", skiff::handover::probe::PROBE_OK),
        Err(why) => format!("error: {why}\n"),
    };
    if let Some(fd) = status {
        let _ = std::fs::File::from(fd).write_all(line.as_bytes());
    }
    // SAFETY: _exit ends the process at once; nothing of it is needed any more.
    unsafe { libc::_exit(0) }
}

fn run(args: Vec<String>) -> Result<(), Fatal> {
    skiff::handover::os::remember_exe();
    // Taken before anything else can open a descriptor or start a thread.
    let inherited = skiff::handover::os::inherit();
    let env = |name: &str| std::env::var(name).ok();
    let mut cfg = match config::parse(args, &env).map_err(|e| Fatal::Usage(e.to_string()))? {
        Command::Run(cfg) => *cfg,
        Command::Help => {
            print!("{}", config::usage());
            return Ok(());
        }
        Command::Version => {
            println!("skiff {}", skiff::VERSION);
            return Ok(());
        }
    };
    log::set_level(cfg.log_level);
    if let Some(dir) = &cfg.static_dir {
        // Canonical once, so every request's resolved path can be checked against it.
        match dir.canonicalize() {
            Ok(real) if real.is_dir() => cfg.static_dir = Some(real),
            _ => return Err(Fatal::Startup(format!("--static {}: not a readable directory", dir.display()))),
        }
    }
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => Some(skiff::tls::load_config(cert, key).map_err(|e| Fatal::Startup(e.to_string()))?),
        _ => None,
    };
    // A file-size limit (RLIMIT_FSIZE) is a full disk, not a reason to die: with
    // SIGXFSZ ignored the write fails with EFBIG and the request gets a 503.
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let taking_over = matches!(inherited, Some(Ok(_)));
    let open = if taking_over { Store::reopen } else { Store::open };
    // A start that fails (the port in use) must not leave a new empty database
    // behind: the next start, with the right port, would take it for the real one.
    let made_db = cfg.redis.is_none() && !taking_over && std::fs::symlink_metadata(&cfg.db).is_err();
    // Cluster mode keeps everything in Redis: no database file is opened or made.
    let store = match cfg.redis {
        Some(_) => None,
        None => Some(open(&cfg.db).map_err(|e| Fatal::Startup(e.to_string()))?),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let started = match inherited {
        Some(Ok(inherited)) => Reactor::take_over(&cfg, store, tls, inherited),
        Some(Err(why)) => {
            log::warn(format_args!("hand-over ignored: {why}"));
            Reactor::new(&cfg, store, tls)
        }
        None => Reactor::new(&cfg, store, tls),
    };
    let mut reactor = started.map_err(|e| {
        if made_db {
            remove_database(&cfg.db);
        }
        Fatal::Startup(e)
    })?;
    reactor.handle_signals().map_err(|e| Fatal::Startup(format!("cannot install signal handlers: {e}")))?;
    let addr = reactor.local_addr();
    let data = match &cfg.redis {
        Some(url) => format!("cluster node on {url}"),
        None => format!("database {}", cfg.db.display()),
    };
    if taking_over {
        // The listener never closed: nobody waits for a "listening on" line now.
        log::info(format_args!("skiff {} took over on {addr}, {data}", skiff::VERSION));
    } else {
        // Scripts and tests read this first line to find an ephemeral port: it stays
        // exactly `listening on SCHEME://IP:PORT`.
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "listening on {scheme}://{addr}");
        if addr.ip().is_unspecified() {
            // 0.0.0.0 and [::] are not addresses a browser can open; name one that is.
            let _ = writeln!(stdout, "open {scheme}://localhost:{}/", addr.port());
        }
        let _ = stdout.flush();
        log::info(format_args!("skiff {} listening on {addr}, {data}", skiff::VERSION));
    }
    reactor.run().map_err(Fatal::EventLoop)
}

/// Removes the database file this start made, with SQLite's side files.
fn remove_database(db: &std::path::Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}
