//! Shared helpers: the two Guix test beds, temporary directories, real git
//! repositories, running the cuirass binary, and reading its database.
//!
//! Integration tests run against **today's Guix** (1.5.0, in the Debian-sid
//! root that `.ci/setup-guix-today.sh` makes, with its own guix-daemon):
//! the cuirass binary is copied into the root and run there with
//! `chroot`.  Inside the root, the root's own host path leads back to its
//! `/`, so a path under the root names the same file inside and outside:
//! tests make their repositories and databases under `ROOT/tmp` and hand
//! those paths to the binary as they are.  Tests of the 2018 conventions
//! use [`Setup::new_2018`]: the host's Guix 1.2.0 and its daemon.

use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const DAEMON_SOCKET: &str = "/var/guix/daemon-socket/socket";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique token for derivation names, so every test run builds fresh
/// derivations on the shared daemon.
pub fn nonce() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "t{}x{}x{}",
        nanos % 1_000_000_000_000,
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Which Guix, and so which guix-daemon and evaluator, a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guix {
    /// Guix 1.5.0 in its Debian-sid root: the main test bed.
    Today,
    /// Guix 1.2.0 on the host: the 2018 conventions.
    V1_2,
}

/// The Guix 1.5.0 root (as `.ci/setup-guix-today.sh` makes it).
pub fn guix_root() -> PathBuf {
    PathBuf::from(
        std::env::var("CUIRASS_GUIX_ROOT").unwrap_or_else(|_| "/var/tmp/cuirass-guix-1.5.0".into()),
    )
}

impl Guix {
    /// The daemon's socket, as a host path.
    pub fn socket(self) -> PathBuf {
        match self {
            Guix::Today => guix_root().join("var/guix/daemon-socket/socket"),
            Guix::V1_2 => PathBuf::from(
                std::env::var("GUIX_DAEMON_SOCKET").unwrap_or_else(|_| DAEMON_SOCKET.into()),
            ),
        }
    }

    /// The host path of a path as this Guix's processes see it (store
    /// items, log files).
    pub fn host_path(self, path: &str) -> PathBuf {
        match self {
            Guix::Today => guix_root().join(path.trim_start_matches('/')),
            Guix::V1_2 => PathBuf::from(path),
        }
    }

    /// Where tests make their directories: under the root for 1.5.0, so
    /// that the binary running there sees them at the same path.
    pub fn temp_parent(self) -> PathBuf {
        match self {
            Guix::Today => guix_root().join("tmp"),
            Guix::V1_2 => std::env::temp_dir(),
        }
    }

    /// `program` (looked up on this Guix's PATH) as a command, with
    /// `GUIX_DAEMON_SOCKET` from the test's own environment left out.
    pub fn command(self, program: &str) -> Command {
        let mut cmd = match self {
            Guix::Today => {
                let mut cmd = Command::new("chroot");
                cmd.arg(guix_root()).arg(program);
                cmd
            }
            Guix::V1_2 => Command::new(program),
        };
        cmd.env_remove("GUIX_DAEMON_SOCKET");
        cmd
    }

    /// The cuirass binary under test, as this Guix's processes name it.
    pub fn cuirass_binary(self) -> String {
        let built = env!("CARGO_BIN_EXE_cuirass");
        match self {
            Guix::V1_2 => built.to_string(),
            Guix::Today => {
                static IN_ROOT: OnceLock<String> = OnceLock::new();
                IN_ROOT
                    .get_or_init(|| copy_into_root(Path::new(built)))
                    .clone()
            }
        }
    }

    /// Tests of the real pipeline need the real daemon; say how to get it.
    pub fn require_daemon(self) {
        let socket = self.socket();
        let script = match self {
            Guix::Today => "setup-guix-today.sh",
            Guix::V1_2 => "setup-guix.sh",
        };
        assert!(
            std::os::unix::net::UnixStream::connect(&socket).is_ok(),
            "guix-daemon is not answering on {}: run `.ci/{script}` (as root) first",
            socket.display()
        );
    }
}

/// Copies the binary into the root once per test process, under a name of
/// its own size and time, so that concurrent and later runs never see a
/// half-written or stale copy.
fn copy_into_root(built: &Path) -> String {
    let meta = std::fs::metadata(built).unwrap();
    let stamp = meta
        .modified()
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let inside = format!("/usr/local/lib/cuirass-it/cuirass-{}-{stamp}", meta.len());
    let host = Guix::Today.host_path(&inside);
    if !host.exists() {
        std::fs::create_dir_all(host.parent().unwrap()).unwrap();
        let partial = host.with_extension(format!("partial{}", std::process::id()));
        std::fs::copy(built, &partial).unwrap();
        std::fs::rename(&partial, &host).unwrap();
    }
    inside
}

/// Tests of the real pipeline need the real daemon (Guix 1.5.0's).
pub fn require_daemon() {
    Guix::Today.require_daemon()
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new_for(guix: Guix, label: &str) -> TempDir {
        let dir = guix
            .temp_parent()
            .join(format!("cuirass-it-{label}-{}", nonce()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "cuirass tests")
        .env("GIT_AUTHOR_EMAIL", "tests@cuirass")
        .env("GIT_COMMITTER_NAME", "cuirass tests")
        .env("GIT_COMMITTER_EMAIL", "tests@cuirass")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(path)
}

/// A real git repository (branch master) whose files are copied from
/// fixtures: `(name in repo, fixture path)`.
pub struct Repo {
    pub dir: PathBuf,
}

impl Repo {
    pub fn new(parent: &Path, files: &[(&str, &str)]) -> Repo {
        Repo::named(parent, "repo", files)
    }

    pub fn named(parent: &Path, name: &str, files: &[(&str, &str)]) -> Repo {
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        git(&dir, &["init", "-q", "-b", "master"]);
        // Every job file's builders use the shell of this module.
        std::fs::copy(fixture("jobs/test-shell.scm"), dir.join("test-shell.scm")).unwrap();
        for (name, fixture_path) in files {
            std::fs::copy(fixture(fixture_path), dir.join(name)).unwrap();
        }
        let repo = Repo { dir };
        repo.commit("initial");
        repo
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    pub fn commit(&self, message: &str) -> String {
        git(&self.dir, &["add", "-A"]);
        git(&self.dir, &["commit", "-q", "--allow-empty", "-m", message]);
        git(&self.dir, &["rev-parse", "HEAD"])
    }
}

/// A test's own database, cache and specification file.
pub struct Setup {
    pub tmp: TempDir,
    pub db: PathBuf,
    pub cache: PathBuf,
    pub guix: Guix,
}

impl Setup {
    /// A test against Guix 1.5.0 (the binary runs in its root).
    pub fn new(label: &str) -> Setup {
        Setup::with(Guix::Today, label)
    }

    /// A test of the 2018 conventions, against the host's Guix 1.2.0.
    pub fn new_2018(label: &str) -> Setup {
        Setup::with(Guix::V1_2, label)
    }

    pub fn with(guix: Guix, label: &str) -> Setup {
        let tmp = TempDir::new_for(guix, label);
        Setup {
            db: tmp.path().join("cuirass.db"),
            cache: tmp.path().join("cache"),
            tmp,
            guix,
        }
    }

    /// The host path of a store item or log file the daemon named.
    pub fn host_path(&self, path: &str) -> PathBuf {
        self.guix.host_path(path)
    }

    pub fn write_spec(&self, text: &str) -> PathBuf {
        let path = self.tmp.path().join("specs.scm");
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn command(&self) -> Command {
        let mut cmd = self.guix.command(&self.guix.cuirass_binary());
        cmd.arg("--database")
            .arg(&self.db)
            .arg("--cache-directory")
            .arg(&self.cache)
            .env("RUST_LOG", "info");
        cmd
    }

    pub fn one_shot(&self, extra: &[&str]) -> Output {
        let out = self
            .command()
            .arg("--one-shot")
            .args(extra)
            .output()
            .unwrap();
        eprintln!(
            "cuirass --one-shot {extra:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn db(&self) -> Connection {
        Connection::open(&self.db).unwrap()
    }
}

/// A specification in the 2018 file format for a test repository.
pub fn spec_text(name: &str, url: &str, file: &str, proc_name: &str, nonce: &str) -> String {
    format!(
        "(list {})\n",
        spec_entry(
            name,
            url,
            file,
            proc_name,
            &format!("(nonce . \"{nonce}\")")
        )
    )
}

/// One specification alist; `arguments` is the body of `#:arguments`.
pub fn spec_entry(name: &str, url: &str, file: &str, proc_name: &str, arguments: &str) -> String {
    format!(
        "`((#:name . \"{name}\")\n\
         (#:url . \"{url}\")\n\
         (#:branch . \"master\")\n\
         (#:no-compile? . #t)\n\
         (#:load-path . \".\")\n\
         (#:file . \"{file}\")\n\
         (#:proc . {proc_name})\n\
         (#:arguments {arguments}))"
    )
}

/// A cuirass process in daemon mode, killed when dropped; its log goes to
/// a file so a failing test can show it.
pub struct Running {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl Running {
    pub fn start(setup: &Setup, args: &[&str], env: &[(&str, &str)]) -> Running {
        let log = setup.tmp.path().join(format!("cuirass-{}.log", nonce()));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = setup.command();
        // Daemons serve HTTP: a port the kernel picks keeps parallel tests
        // (and anything on 8080) apart.
        if !args.iter().any(|a| a.starts_with("--port")) {
            cmd.args(["--listen", "127.0.0.1", "--port", "0"]);
        }
        cmd.args(args)
            .stderr(file)
            .stdout(std::process::Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Running {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The HTTP port it bound (`--port 0`), read from its log.
    pub fn port(&self) -> u16 {
        let mut port = None;
        wait_until(Duration::from_secs(30), "the HTTP port", || {
            port = self.log_text().lines().find_map(|l| {
                l.split("(127.0.0.1:")
                    .nth(1)?
                    .split(')')
                    .next()?
                    .parse()
                    .ok()
            });
            port.is_some()
        });
        port.unwrap()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for exit, up to `limit`; None if still running.
    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- cuirass log ----\n{}", self.log_text());
        }
    }
}

/// Polls `condition` every 100 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

pub fn query_rows<T: rusqlite::types::FromSql>(conn: &Connection, sql: &str) -> Vec<Vec<T>> {
    let mut stmt = conn.prepare(sql).unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| (0..n).map(|i| r.get(i)).collect())
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

pub fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One GET with `Connection: close`; the status code, or None when the
/// server does not answer within a second.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).ok()?;
    let head = String::from_utf8_lossy(&reply[..reply.len().min(12)]).into_owned();
    head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// What every fault test ends with: the database passes SQLite's own
/// check, and no evaluation is left in progress (status -1).
pub fn assert_sound(db: &Path) {
    let conn = Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let fk: i64 = conn
        .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(fk, 0, "foreign key violations");
    assert_eq!(
        count(&conn, "SELECT COUNT(*) FROM Evaluations WHERE status = -1"),
        0,
        "an evaluation was left in progress"
    );
}

/// A shell script written into `dir`, to stand in for the evaluator with
/// `--evaluator "/bin/sh SCRIPT"`: it is still a real process whose output
/// cuirass reads through a pipe.
pub fn fake_evaluator(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(format!("{name}.sh"));
    std::fs::write(&path, format!("# Fake evaluator: {name}\n{body}\n")).unwrap();
    format!("/bin/sh {}", path.display())
}

/// A daemon-mode cuirass serving HTTP on a port of its own, stopped with
/// SIGTERM when dropped.
pub struct Server {
    pub child: std::process::Child,
    pub port: u16,
}

impl Server {
    pub fn start(setup: &Setup) -> Server {
        let port = free_port();
        let child = setup
            .command()
            .args(["--listen", "127.0.0.1", "--port", &port.to_string()])
            .args(["--interval", "100000"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let server = Server { child, port };
        wait_until(Duration::from_secs(20), "cuirass to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// A real one-shot build of fixtures/jobs/keyword-jobs.scm: the database
/// the HTTP and dashboard tests read.
pub struct Built {
    pub setup: Setup,
    pub repo: Repo,
    /// The commit evaluated.
    pub head: String,
    /// The specification's name.
    pub name: String,
    /// The nonce in its derivation names.
    pub nonce: String,
}

pub fn build_keyword_project(label: &str) -> Built {
    build_keyword_project_with(Guix::Today, label)
}

pub fn build_keyword_project_with(guix: Guix, label: &str) -> Built {
    guix.require_daemon();
    let setup = Setup::with(guix, label);
    let nonce = nonce();
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/keyword-jobs.scm")]);
    let head = git(&repo.dir, &["rev-parse", "HEAD"]);
    let name = format!("{label}-{nonce}");
    one_shot_of(&setup, &name, &repo, "cuirass-jobs", &nonce);
    Built {
        setup,
        repo,
        head,
        name,
        nonce,
    }
}

/// One GET with HTTP/1.0 (so no chunked body); the status, the head and
/// the body.
pub fn get_raw(port: u16, target: &str) -> (u16, String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {target} HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    let end = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let status = String::from_utf8_lossy(&reply[9..12]).parse().unwrap();
    let head = String::from_utf8_lossy(&reply[..end]).into_owned();
    (status, head, reply[end..].to_vec())
}

/// One GET; the status and the body as JSON (`Null` if it is not JSON).
pub fn get_json(port: u16, target: &str) -> (u16, serde_json::Value) {
    let (status, _, body) = get_raw(port, target);
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

/// Writes a 2018 spec named `name` for `repo`'s `ci.scm` and `proc_name`
/// (arguments: the nonce), runs one-shot on it, and checks it succeeded;
/// the spec file.
pub fn one_shot_of(
    setup: &Setup,
    name: &str,
    repo: &Repo,
    proc_name: &str,
    nonce: &str,
) -> PathBuf {
    let spec = setup.write_spec(&spec_text(name, &repo.url(), "ci.scm", proc_name, nonce));
    assert!(
        setup
            .one_shot(&["-S", spec.to_str().unwrap()])
            .status
            .success()
    );
    spec
}
