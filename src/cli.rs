//! Command-line options: one table drives getopts, `--help` and the test
//! that keeps `man/cuirass.1` in step with the binary.

use std::path::PathBuf;

/// Whether an option takes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    Flag,
    Value(&'static str),
}

/// One command-line option, documented beside its definition.
#[derive(Debug, Clone, Copy)]
pub struct OptionDef {
    pub short: &'static str,
    pub long: &'static str,
    pub arity: Arity,
    pub help: &'static str,
}

const fn opt(
    short: &'static str,
    long: &'static str,
    arity: Arity,
    help: &'static str,
) -> OptionDef {
    OptionDef {
        short,
        long,
        arity,
        help,
    }
}

/// Every option cuirass accepts, in the order `--help` lists them.
pub const OPTIONS: &[OptionDef] = &[
    opt(
        "",
        "one-shot",
        Arity::Flag,
        "evaluate and build every specification once, then exit",
    ),
    opt(
        "",
        "cache-directory",
        Arity::Value("DIR"),
        "where repository checkouts live ($CUIRASS_CACHEDIR, else ~/.cache/cuirass)",
    ),
    opt(
        "",
        "log-directory",
        Arity::Value("DIR"),
        "where each build's copy of its log is kept (default: build-logs beside the database)",
    ),
    opt(
        "",
        "fallback",
        Arity::Flag,
        "build locally when a substitute fails",
    ),
    opt(
        "",
        "no-offload",
        Arity::Flag,
        "never let the daemon offload builds to its build machines",
    ),
    opt(
        "L",
        "load-path",
        Arity::Value("DIR"),
        "prepend DIR (colon-separated list) to the evaluator's module path",
    ),
    opt(
        "S",
        "specifications",
        Arity::Value("FILE"),
        "add the specifications in FILE to the database before starting",
    ),
    opt(
        "",
        "check",
        Arity::Flag,
        "only check the specification file of -S (exit 0, or 1 naming the error); no database is touched",
    ),
    opt(
        "D",
        "database",
        Arity::Value("DB"),
        "SQLite database file, created if missing",
    ),
    opt("p", "port", Arity::Value("NUM"), "HTTP port (default 8080)"),
    opt(
        "",
        "admin-tokens",
        Arity::Value("FILE"),
        "bearer tokens allowed to act (one a line, LABEL:TOKEN; re-read on SIGHUP); without it every action is refused",
    ),
    opt(
        "",
        "webhook-secret",
        Arity::Value("FILE"),
        "shared secret of the signed push webhooks (/api/push-github, -gitea, -gitlab)",
    ),
    opt(
        "",
        "secure-cookies",
        Arity::Flag,
        "mark the dashboard's session cookie Secure (when served over TLS by a proxy)",
    ),
    opt(
        "",
        "listen",
        Arity::Value("HOST"),
        "HTTP listen address (default localhost)",
    ),
    opt(
        "I",
        "interval",
        Arity::Value("N"),
        "seconds between two polls of the repositories (default 300)",
    ),
    opt(
        "",
        "use-substitutes",
        Arity::Flag,
        "let the daemon use substitutes",
    ),
    opt(
        "",
        "threads",
        Arity::Value("N"),
        "accepted for compatibility; cuirass is single-threaded",
    ),
    opt(
        "",
        "evaluator",
        Arity::Value("COMMAND"),
        "command that runs Guile scripts ($CUIRASS_EVALUATOR, else \"guix repl --\")",
    ),
    opt(
        "",
        "evaluation-timeout",
        Arity::Value("SECONDS"),
        "kill an evaluation running longer than this (default 3600)",
    ),
    opt(
        "",
        "fetch-timeout",
        Arity::Value("SECONDS"),
        "kill a git fetch or compilation running longer than this (default 1800)",
    ),
    opt("V", "version", Arity::Flag, "print the version and exit"),
    opt("h", "help", Arity::Flag, "print this help and exit"),
];

/// Everything a run needs to know, resolved from options and environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub one_shot: bool,
    /// Validate `specifications` and exit.
    pub check: bool,
    pub cache_dir: PathBuf,
    pub fallback: bool,
    pub load_path: Vec<PathBuf>,
    pub specifications: Option<PathBuf>,
    pub database: PathBuf,
    /// Per-build copies of build logs (`buildlog::copy`).
    pub log_dir: PathBuf,
    pub port: u16,
    pub listen: String,
    pub interval_secs: u64,
    pub use_substitutes: bool,
    /// Whether the daemon may hand builds to its build hook (`guix
    /// offload`); `--no-offload` turns it off.
    pub offload: bool,
    pub evaluator: Vec<String>,
    pub evaluation_timeout_secs: u64,
    pub fetch_timeout_secs: u64,
    pub daemon_socket: PathBuf,
    /// The operators' token file (`admin::Tokens::parse`).
    pub admin_tokens: Option<PathBuf>,
    /// The push webhooks' shared secret, a file.
    pub webhook_secret: Option<PathBuf>,
    pub secure_cookies: bool,
}

#[derive(Debug, PartialEq)]
pub enum Command {
    Run(Box<Config>),
    Help(String),
    Version(String),
}

pub const DEFAULT_DAEMON_SOCKET: &str = "/var/guix/daemon-socket/socket";

/// The environment as cuirass sees it; a parameter so tests need not touch
/// the process environment.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
    fn is_root(&self) -> bool;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
    fn is_root(&self) -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }
}

fn getopts_options() -> getopts::Options {
    let mut opts = getopts::Options::new();
    for o in OPTIONS {
        match o.arity {
            Arity::Flag => opts.optflag(o.short, o.long, o.help),
            Arity::Value(hint) if o.long == "load-path" => {
                opts.optmulti(o.short, o.long, o.help, hint)
            }
            Arity::Value(hint) => opts.optopt(o.short, o.long, o.help, hint),
        };
    }
    opts
}

pub fn usage() -> String {
    getopts_options().usage(
        "Usage: cuirass [OPTIONS]\n\
         Run the Cuirass continuous-integration daemon for GNU Guix.",
    ) + &crate::admin::client::usage()
}

fn number<T: std::str::FromStr>(m: &getopts::Matches, name: &str, default: T) -> Result<T, String> {
    match m.opt_str(name) {
        None => Ok(default),
        Some(s) => s
            .parse()
            .map_err(|_| format!("--{name}: '{s}' is not a valid number")),
    }
}

fn home(env: &dyn Env) -> PathBuf {
    PathBuf::from(env.var("HOME").unwrap_or_else(|| "/".into()))
}

/// The original kept its database under /var/run, which is wiped at boot;
/// ours lives where persistent state belongs.
pub fn default_database(env: &dyn Env) -> PathBuf {
    if env.is_root() {
        return PathBuf::from("/var/lib/cuirass/cuirass.db");
    }
    let data = env
        .var("XDG_DATA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home(env).join(".local/share"));
    data.join("cuirass/cuirass.db")
}

pub fn parse(args: &[String], env: &dyn Env) -> Result<Command, String> {
    let m = getopts_options()
        .parse(args)
        .map_err(|e| format!("{e} (try --help)"))?;
    if m.opt_present("help") {
        return Ok(Command::Help(usage()));
    }
    if m.opt_present("version") {
        return Ok(Command::Version(format!(
            "cuirass {}",
            env!("CARGO_PKG_VERSION")
        )));
    }
    if let Some(extra) = m.free.first() {
        return Err(format!("unexpected argument '{extra}' (try --help)"));
    }
    // Accepted and checked, then ignored: the loop is single-threaded.
    let _threads: u32 = number(&m, "threads", 1)?;
    let cache_dir = m
        .opt_str("cache-directory")
        .or_else(|| env.var("CUIRASS_CACHEDIR"))
        .map(PathBuf::from)
        .unwrap_or_else(|| home(env).join(".cache/cuirass"));
    let evaluator_command = m
        .opt_str("evaluator")
        .or_else(|| env.var("CUIRASS_EVALUATOR"))
        .unwrap_or_else(|| "guix repl --".into());
    let evaluator: Vec<String> = evaluator_command
        .split_whitespace()
        .map(String::from)
        .collect();
    if evaluator.is_empty() {
        return Err("--evaluator: empty command".into());
    }
    let database = m
        .opt_str("database")
        .map(PathBuf::from)
        .unwrap_or_else(|| default_database(env));
    let log_dir = m
        .opt_str("log-directory")
        .map_or_else(|| database.with_file_name("build-logs"), PathBuf::from);
    if m.opt_present("check") && !m.opt_present("specifications") {
        return Err("--check needs -S FILE, the file to check".into());
    }
    let interval_secs = number(&m, "interval", 300u64)?;
    if interval_secs == 0 {
        return Err("--interval: must be at least 1 second".into());
    }
    Ok(Command::Run(Box::new(Config {
        one_shot: m.opt_present("one-shot"),
        check: m.opt_present("check"),
        cache_dir,
        fallback: m.opt_present("fallback"),
        load_path: m
            .opt_strs("load-path")
            .iter()
            .flat_map(|s| s.split(':'))
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect(),
        specifications: m.opt_str("specifications").map(PathBuf::from),
        database,
        log_dir,
        port: number(&m, "port", 8080u16)?,
        listen: m.opt_str("listen").unwrap_or_else(|| "localhost".into()),
        interval_secs,
        use_substitutes: m.opt_present("use-substitutes"),
        offload: !m.opt_present("no-offload"),
        evaluator,
        evaluation_timeout_secs: number(&m, "evaluation-timeout", 3600u64)?,
        fetch_timeout_secs: number(&m, "fetch-timeout", 1800u64)?,
        daemon_socket: env
            .var("GUIX_DAEMON_SOCKET")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DAEMON_SOCKET)),
        admin_tokens: m.opt_str("admin-tokens").map(PathBuf::from),
        webhook_secret: m.opt_str("webhook-secret").map(PathBuf::from),
        secure_cookies: m.opt_present("secure-cookies"),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct FakeEnv(HashMap<&'static str, &'static str>, bool);
    impl Env for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|s| s.to_string())
        }
        fn is_root(&self) -> bool {
            self.1
        }
    }

    fn run(args: &[&str], env: &FakeEnv) -> Config {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match parse(&args, env).unwrap() {
            Command::Run(c) => *c,
            other => panic!("expected Run, got {other:?}"),
        }
    }

    fn user_env() -> FakeEnv {
        FakeEnv(HashMap::from([("HOME", "/home/u")]), false)
    }

    #[test]
    fn defaults_follow_cuirass() {
        let c = run(&[], &user_env());
        assert!(!c.one_shot);
        assert_eq!(c.port, 8080);
        assert_eq!(c.listen, "localhost");
        assert_eq!(c.interval_secs, 300);
        assert_eq!(c.cache_dir, PathBuf::from("/home/u/.cache/cuirass"));
        assert_eq!(
            c.database,
            PathBuf::from("/home/u/.local/share/cuirass/cuirass.db")
        );
        assert_eq!(c.evaluator, vec!["guix", "repl", "--"]);
        assert_eq!(c.daemon_socket, PathBuf::from(DEFAULT_DAEMON_SOCKET));
    }

    #[test]
    fn root_keeps_its_database_under_var_lib() {
        let c = run(&[], &FakeEnv(HashMap::new(), true));
        assert_eq!(c.database, PathBuf::from("/var/lib/cuirass/cuirass.db"));
    }

    #[test]
    fn environment_variables_are_honoured() {
        let env = FakeEnv(
            HashMap::from([
                ("HOME", "/h"),
                ("CUIRASS_CACHEDIR", "/c"),
                ("XDG_DATA_HOME", "/x"),
                ("GUIX_DAEMON_SOCKET", "/tmp/s"),
                ("CUIRASS_EVALUATOR", "guile-2.2 -s"),
            ]),
            false,
        );
        let c = run(&[], &env);
        assert_eq!(c.cache_dir, PathBuf::from("/c"));
        assert_eq!(c.database, PathBuf::from("/x/cuirass/cuirass.db"));
        assert_eq!(c.daemon_socket, PathBuf::from("/tmp/s"));
        assert_eq!(c.evaluator, vec!["guile-2.2", "-s"]);
    }

    #[test]
    fn every_option_parses() {
        let c = run(
            &[
                "--one-shot",
                "--cache-directory=/cache",
                "--fallback",
                "-L",
                "/a:/b",
                "--load-path=/c",
                "-S",
                "specs.scm",
                "-D",
                "db.sqlite",
                "-p",
                "9000",
                "--listen=0.0.0.0",
                "-I",
                "60",
                "--use-substitutes",
                "--threads=4",
                "--evaluator=/bin/ev x",
                "--evaluation-timeout=5",
                "--fetch-timeout=7",
            ],
            &user_env(),
        );
        assert!(c.one_shot && c.fallback && c.use_substitutes);
        assert_eq!(c.cache_dir, PathBuf::from("/cache"));
        assert_eq!(
            c.load_path,
            vec![
                PathBuf::from("/a"),
                PathBuf::from("/b"),
                PathBuf::from("/c")
            ]
        );
        assert_eq!(c.specifications, Some(PathBuf::from("specs.scm")));
        assert_eq!(c.database, PathBuf::from("db.sqlite"));
        assert_eq!((c.port, c.listen.as_str()), (9000, "0.0.0.0"));
        assert_eq!(c.interval_secs, 60);
        assert_eq!(c.evaluator, vec!["/bin/ev", "x"]);
        assert_eq!((c.evaluation_timeout_secs, c.fetch_timeout_secs), (5, 7));
    }

    #[test]
    fn bad_values_are_named() {
        let env = user_env();
        for (args, needle) in [
            (vec!["--port=http"], "--port"),
            (vec!["--interval=0"], "--interval"),
            (vec!["--threads=-1"], "--threads"),
            (vec!["--bogus"], "bogus"),
            (vec!["stray"], "stray"),
        ] {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            let err = parse(&args, &env).unwrap_err();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }

    #[test]
    fn help_and_version() {
        let env = user_env();
        let help = parse(&["-h".to_string()], &env).unwrap();
        match help {
            Command::Help(text) => {
                for o in OPTIONS {
                    assert!(text.contains(&format!("--{}", o.long)), "{}", o.long);
                }
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["--version".to_string()], &env).unwrap(),
            Command::Version(v) if v.starts_with("cuirass ")
        ));
    }
}
