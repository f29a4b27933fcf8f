//! What the benchmarks share: the cached evaluator output, temporary
//! directories, child processes and their resource use, and the figures.

use cuirass::db::Db;
use cuirass::spec::Specification;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Bump when fixtures/bench/jobs.scm changes what it prints: the cache and
/// the derivation names are keyed by it.
pub const JOBS_VERSION: &str = "v1";
pub const JOBS: usize = 50_000;
/// The one-shot memory benchmark builds these; they are built once, at
/// generation, so that its run measures cuirass, not the builders.
pub const BUILT_JOBS: usize = 5_000;

pub const JOBS_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/bench/jobs.scm");

/// One measured figure and the target it is held to.
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    pub target: Option<Target>,
    pub note: String,
}

#[derive(Clone, Copy)]
pub enum Target {
    AtMost(f64),
    AtLeast(f64),
}

impl Figure {
    pub fn new(name: &str, value: f64, unit: &'static str, target: Option<Target>) -> Figure {
        Figure {
            name: name.into(),
            value,
            unit,
            target,
            note: String::new(),
        }
    }

    pub fn note(mut self, note: impl Into<String>) -> Figure {
        self.note = note.into();
        self
    }

    pub fn met(&self) -> Option<bool> {
        self.target.map(|t| match t {
            Target::AtMost(x) => self.value <= x,
            Target::AtLeast(x) => self.value >= x,
        })
    }
}

pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let base = std::env::temp_dir().join(format!(
            "cuirass-bench-{label}-{}-{}",
            std::process::id(),
            nonce()
        ));
        std::fs::create_dir_all(&base).expect("temporary directory");
        TempDir(base)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}{:09}", t.as_secs(), t.subsec_nanos())
}

fn cache_dir() -> PathBuf {
    PathBuf::from("/var/tmp/cuirass-bench").join(JOBS_VERSION)
}

/// Runs fixtures/bench/jobs.scm with the real Guix and returns its output.
pub fn generate_jobs(tag: &str, count: usize, build: usize) -> Result<String, String> {
    eprintln!("  generating {count} derivations ({build} built) with guix repl…");
    let out = Command::new("guix")
        .args(["repl", "--", JOBS_SCRIPT, tag])
        .arg(count.to_string())
        .arg(build.to_string())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("guix repl: {e}"))?;
    let text = String::from_utf8(out.stdout).map_err(|_| "guix repl: not UTF-8".to_string())?;
    if !out.status.success() || !text.ends_with(&format!("(done {count})\n")) {
        return Err(format!("guix repl -- {JOBS_SCRIPT} failed: {}", out.status));
    }
    Ok(text)
}

/// The evaluator output of the 50,000 cached jobs, made once; made again
/// when a `.drv` file or a built output is missing (a `guix gc` ran).
pub fn cached_jobs() -> Result<PathBuf, String> {
    let dir = cache_dir();
    let path = dir.join("jobs.out");
    if let Ok(text) = std::fs::read_to_string(&path)
        && cache_is_complete(&text)
    {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let text = generate_jobs(&format!("cuirass-bench-{JOBS_VERSION}"), JOBS, BUILT_JOBS)?;
    if !cache_is_complete(&text) {
        return Err("guix repl did not make every derivation".into());
    }
    let tmp = dir.join("jobs.tmp");
    std::fs::write(&tmp, &text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

fn cache_is_complete(text: &str) -> bool {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() != JOBS + 1 || lines[JOBS] != format!("(done {JOBS})") {
        return false;
    }
    lines[..JOBS].iter().enumerate().all(|(i, line)| {
        let Ok(cuirass::job::Line::Job { derivation, .. }) =
            cuirass::job::parse_line(line.as_bytes())
        else {
            return false;
        };
        let drv = Path::new(&derivation);
        // The output path is the .drv name without its hash and suffix,
        // under another hash: check the built ones through the .drv.
        drv.exists() && (i >= BUILT_JOBS || outputs_valid(drv))
    })
}

fn outputs_valid(drv: &Path) -> bool {
    std::fs::read(drv)
        .ok()
        .and_then(|b| cuirass::drv::Derivation::parse(&b).ok())
        .is_some_and(|d| d.outputs.iter().all(|o| Path::new(&o.path).exists()))
}

/// The first `n` job lines of an evaluator output, and its `(done n)`.
pub fn first_jobs(text: &str, n: usize) -> String {
    let mut out: String = text.lines().take(n).flat_map(|l| [l, "\n"]).collect();
    out.push_str(&format!("(done {n})\n"));
    out
}

/// The `cuirass` binary beside this one, rebuilt first under `cargo run`
/// (which builds only the binary it runs).
pub fn cuirass_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = exe.with_file_name("cuirass");
    if let (Ok(cargo), Ok(dir)) = (std::env::var("CARGO"), std::env::var("CARGO_MANIFEST_DIR")) {
        let release = !exe.to_string_lossy().contains("/debug/");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--bin", "cuirass", "--manifest-path"])
            .arg(Path::new(&dir).join("Cargo.toml"));
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().map_err(|e| format!("cargo build: {e}"))?;
        if !status.success() {
            return Err("cargo build --bin cuirass failed".into());
        }
    }
    if !bin.exists() {
        return Err(format!(
            "{} is missing: run cargo build --release",
            bin.display()
        ));
    }
    Ok(bin)
}

/// A git repository and a database holding one specification for it,
/// whose evaluator is a shell script that prints `jobs_output`.
pub struct OneShotSetup {
    pub tmp: TempDir,
    pub db: PathBuf,
    pub cache: PathBuf,
    pub evaluator: String,
    pub commit: String,
}

pub const SPEC: &str = "bench";

/// A database holding the benchmark's specification, for `url`.
pub fn open_db(path: &Path, url: &str) -> Result<Db, String> {
    let spec = Specification::new(SPEC, url, "jobs.scm", "jobs");
    let mut db = Db::open(path).map_err(|e| e.to_string())?;
    db.add_specifications(&[spec]).map_err(|e| e.to_string())?;
    Ok(db)
}

impl OneShotSetup {
    pub fn new(label: &str, jobs_output: &Path) -> Result<OneShotSetup, String> {
        let tmp = TempDir::new(label);
        let repo = tmp.path().join("repo");
        std::fs::create_dir_all(&repo).map_err(|e| e.to_string())?;
        std::fs::write(
            repo.join("jobs.scm"),
            ";; replayed by the bench evaluator\n",
        )
        .map_err(|e| e.to_string())?;
        git(&repo, &["init", "-q", "-b", "master"])?;
        git(&repo, &["add", "-A"])?;
        git(
            &repo,
            &[
                "-c",
                "user.name=bench",
                "-c",
                "user.email=bench@localhost",
                "commit",
                "-q",
                "-m",
                "jobs",
            ],
        )?;
        let commit = git(&repo, &["rev-parse", "HEAD"])?;
        // Cuirass appends the evaluator script and its argument; the
        // stand-in ignores both and replays recorded output.
        let script = tmp.path().join("evaluator.sh");
        std::fs::write(&script, format!("exec cat '{}'\n", jobs_output.display()))
            .map_err(|e| e.to_string())?;
        let db = tmp.path().join("cuirass.db");
        // Added through the library: `-S` would read the file with the
        // evaluator command, which here is the stand-in.
        open_db(&db, &format!("file://{}", repo.display()))?;
        Ok(OneShotSetup {
            cache: tmp.path().join("cache"),
            evaluator: format!("/bin/sh {}", script.display()),
            db,
            commit,
            tmp,
        })
    }

    pub fn command(&self, cuirass: &Path) -> Command {
        let mut cmd = Command::new(cuirass);
        cmd.arg("--database")
            .arg(&self.db)
            .arg("--cache-directory")
            .arg(&self.cache)
            .arg("--evaluator")
            .arg(&self.evaluator)
            .env("RUST_LOG", "info");
        cmd
    }
}

pub fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("git: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A child's exit and the resources it and its waited-for children used.
pub struct Usage {
    pub success: bool,
    pub cpu: f64,
}

/// Waits for `child` with wait4, which reports its own rusage rather than
/// the sum over every child this process ever had.
pub fn wait_usage(child: &mut Child) -> Result<Usage, String> {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data, written by the kernel.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if r != pid {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Usage {
        success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
    })
}

/// A `/proc/PID/status` field in KiB, e.g. VmHWM.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<i64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime+stime+cutime+cstime of a live process, in seconds.
pub fn proc_cpu(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields resume after its ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14-17 of stat(5); `rest` starts at field 3.
    let ticks: u64 = f[11..15].iter().filter_map(|x| x.parse::<u64>().ok()).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks as f64 / hz)
}

/// Pids of the live children of `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s[s.rfind(')')? + 2..].to_string();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

pub fn terminate(child: &mut Child) {
    // SAFETY: the pid is our own child, not yet reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let _ = child.wait();
}
