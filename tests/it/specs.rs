//! Today's specification files (a list of `specification` records whose
//! channels name the repositories), run under Guix 1.5.0: build types,
//! channels and their checkouts, systems, build products, `is-active?`,
//! `period`, `--check`, the default channels offline, and channel
//! introductions.  Each test checks the database and the HTTP API.

use crate::support::*;
use std::path::Path;
use std::time::Duration;

/// `(mine ci)` under `dir`, with a fresh nonce.
fn write_ci(dir: &Path) {
    std::fs::create_dir_all(dir.join("mine")).unwrap();
    let ci = std::fs::read_to_string(fixture("channel/mine/ci.scm")).unwrap();
    std::fs::write(dir.join("mine/ci.scm"), ci.replace("@NONCE@", &nonce())).unwrap();
}

/// The channel `mine` (fixtures/channel): `(mine ci)`'s `cuirass-jobs`
/// and `(mine packages)`, with a nonce in its jobs' derivations.
fn mine(parent: &Path) -> Repo {
    let repo = Repo::named(parent, "mine", &[]);
    write_ci(&repo.dir);
    for file in ["mine/packages.scm", "manifest.scm"] {
        std::fs::copy(fixture(&format!("channel/{file}")), repo.dir.join(file)).unwrap();
    }
    repo.commit("the mine channel");
    repo
}

fn channel(name: &str, repo: &Repo) -> String {
    format!(
        "(channel (name '{name}) (url \"{}\") (branch \"master\"))",
        repo.url()
    )
}

/// (job name, system, status) of a spec's builds, by job name.
fn jobs(conn: &rusqlite::Connection, spec: &str) -> Vec<(String, String, i64)> {
    let mut stmt = conn
        .prepare(
            "SELECT d.job_name, d.system, b.status FROM Builds b
             JOIN Derivations d ON d.derivation = b.derivation AND d.evaluation = b.evaluation
             JOIN Evaluations e ON e.id = b.evaluation
             WHERE e.specification = ?1 ORDER BY d.job_name",
        )
        .unwrap();
    stmt.query_map([spec], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// (evaluation, channel, commit) of a spec's checkouts.
fn checkouts(conn: &rusqlite::Connection, spec: &str) -> Vec<(i64, String, String)> {
    let mut stmt = conn
        .prepare(
            "SELECT c.evaluation, c.channel, c.revision FROM Checkouts c
             JOIN Evaluations e ON e.id = c.evaluation
             WHERE e.specification = ?1 ORDER BY c.evaluation, c.channel",
        )
        .unwrap();
    stmt.query_map([spec], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The first row of `sql`'s two columns.
fn two<A: rusqlite::types::FromSql, B: rusqlite::types::FromSql>(
    conn: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> (A, B) {
    conn.query_row(sql, params, |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
}

fn serve(setup: &Setup, extra: &[&str]) -> (Running, u16) {
    let port = free_port();
    let mut args = vec!["--port".to_string(), port.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Running::start(setup, &args, &[]);
    wait_until(Duration::from_secs(20), "the HTTP server", || {
        http_status(port, "/api/queue?nr=1") == Some(200)
    });
    (daemon, port)
}

/// A spec file in the shape of Guix's manual: a custom channel by
/// `file://` URL (not guix) with its own `cuirass-jobs`, built for two
/// systems, with a build product; the same channel's packages; a Guix
/// package by name.  The custom jobs build and succeed, the packages are
/// registered as `PACKAGE.SYSTEM` (their builds fail: no sources
/// offline), the product downloads, and the API answers today's shapes.
#[test]
fn manual_shaped_specs_build_custom_jobs_channel_packages_and_products() {
    require_daemon();
    let setup = Setup::new("records");
    let mine = mine(setup.tmp.path());
    let other = Repo::named(setup.tmp.path(), "other", &[]);
    let spec = setup.write_spec(&format!(
        r#";; Cuirass's manual's shape: records, channels, build types.
(list (specification
       (name "custom")
       (build '(custom (mine ci)))
       (channels (list {mine} {other}))
       (build-outputs (list (build-output (job "^greet\\.x86_64") (type "text")
                                          (path "greeting.txt"))))
       (priority 3)
       (systems '("x86_64-linux" "i686-linux")))
      (specification
       (name 'chan)
       (build '(channels mine))
       (channels (list {mine}))
       (systems (list "x86_64-linux" "i686-linux")))
      (specification
       (name "pkgs")
       (build '(packages "hello" "mine-hello"))
       (channels (list {mine})))
      (specification
       (name "manifest")
       (build '(manifests "manifest.scm"))
       (channels (list {mine})))
      (specification
       (name "subset")
       (build 'hello)
       (channels (list {mine}))))
"#,
        mine = channel("mine", &mine),
        other = channel("other", &other),
    ));
    let out = setup.one_shot(&["-S", spec.to_str().unwrap()]);
    assert!(out.status.success());
    let conn = setup.db();
    let x86 = "x86_64-linux".to_string();
    let i686 = "i686-linux".to_string();
    assert_eq!(
        jobs(&conn, "custom"),
        [
            ("greet.i686-linux".into(), i686.clone(), 0),
            ("greet.x86_64-linux".into(), x86.clone(), 0)
        ]
    );
    let chan = jobs(&conn, "chan");
    let names: Vec<_> = chan.iter().map(|j| (j.0.as_str(), j.1.as_str())).collect();
    assert_eq!(
        names,
        [
            ("mine-hello.i686-linux", "i686-linux"),
            ("mine-hello.x86_64-linux", "x86_64-linux")
        ]
    );
    let names =
        |spec: &str| -> Vec<String> { jobs(&conn, spec).into_iter().map(|j| j.0).collect() };
    assert_eq!(
        names("pkgs"),
        ["hello.x86_64-linux", "mine-hello.x86_64-linux"]
    );
    assert_eq!(names("manifest"), ["mine-hello-1.0"]);
    // Guix's own subsets come from the evaluating Guix's (gnu ci): here
    // the installed one, the spec following no guix channel.
    assert_eq!(names("subset"), ["hello.x86_64-linux"]);
    let head = git(&mine.dir, &["rev-parse", "HEAD"]);
    let other_head = git(&other.dir, &["rev-parse", "HEAD"]);
    let custom = checkouts(&conn, "custom");
    assert_eq!(
        custom
            .iter()
            .map(|c| (c.1.as_str(), c.2.as_str()))
            .collect::<Vec<_>>(),
        [("mine", head.as_str()), ("other", other_head.as_str())]
    );
    // The record and its priority are stored with the spec.
    let (priority, record): (i64, String) = two(
        &conn,
        "SELECT priority, record FROM Specifications WHERE repo_name = 'custom'",
        [],
    );
    assert_eq!(priority, 3);
    assert!(
        record.starts_with("(<specification> (name . \"custom\")"),
        "{record}"
    );
    // The x86_64 greeting is the one product.
    let (product, build, path): (i64, i64, String) = conn
        .query_row("SELECT id, build, path FROM BuildProducts", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert!(path.ends_with("/greeting.txt"), "{path}");
    assert_eq!(
        std::fs::read_to_string(setup.host_path(&path)).unwrap(),
        "hello from mine\n"
    );

    let (_daemon, port) = serve(&setup, &["--interval", "100000"]);
    let (_, specs) = get_json(port, "/specifications");
    let custom_json = specs
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "custom")
        .unwrap();
    assert_eq!(
        custom_json["build"],
        serde_json::json!(["custom", ["mine", "ci"]])
    );
    assert_eq!(
        custom_json["systems"],
        serde_json::json!(["x86_64-linux", "i686-linux"])
    );
    assert_eq!(custom_json["priority"], 3);
    assert_eq!(custom_json["channels"][1]["name"], "other");
    assert_eq!(custom_json["build-outputs"][0]["type"], "text");
    let (_, evals) = get_json(port, "/api/evaluations?nr=10&spec=custom");
    let checkouts = &evals[0]["checkouts"];
    assert_eq!(checkouts.as_array().unwrap().len(), 2, "{evals}");
    assert_eq!(checkouts[0]["channel"], "mine");
    assert_eq!(checkouts[0]["commit"], head.as_str());
    assert_eq!(checkouts[1]["input"], "other");
    let (_, b) = get_json(port, &format!("/build/{build}"));
    assert_eq!(b["buildproducts"][0]["id"], product);
    assert_eq!(b["buildproducts"][0]["file-size"], 16);
    let (status, head_text, body) = get_raw(port, &format!("/download/{product}"));
    assert_eq!(status, 200, "{head_text}");
    assert_eq!(body, b"hello from mine\n");
    assert!(
        head_text.contains("filename=\"greeting.txt\""),
        "{head_text}"
    );
    let (status, _, _) = get_raw(port, "/download/999999");
    assert_eq!(status, 404);
    let (status, head_text, body) =
        get_raw(port, "/search/latest/text?query=spec:custom%20greet.x86_64");
    assert_eq!(status, 302, "{head_text}{}", String::from_utf8_lossy(&body));
    assert!(
        head_text.contains(&format!("/download/{product}\r\n")),
        "{head_text}"
    );
}

/// A new commit in either of two channels makes a new evaluation whose
/// checkouts list both channels at their commits.
#[test]
fn a_new_commit_in_either_channel_makes_an_evaluation_with_both_checkouts() {
    require_daemon();
    let setup = Setup::new("two-channels");
    let mine = mine(setup.tmp.path());
    let other = Repo::named(setup.tmp.path(), "other", &[]);
    let spec = setup.write_spec(&format!(
        "(list (specification (name \"two\") (build '(custom (mine ci)))\n\
         (channels (list {} {}))))",
        channel("mine", &mine),
        channel("other", &other)
    ));
    let (daemon, port) = serve(&setup, &["--interval", "1", "-S", spec.to_str().unwrap()]);
    let evaluations = |n: i64| {
        wait_until(Duration::from_secs(60), &format!("evaluation {n}"), || {
            count(
                &setup.db(),
                "SELECT COUNT(*) FROM Evaluations WHERE status = 0",
            ) >= n
        })
    };
    evaluations(1);
    let o2 = other.commit("other moves");
    evaluations(2);
    std::fs::write(mine.dir.join("README"), "moved").unwrap();
    let m2 = mine.commit("mine moves");
    evaluations(3);
    drop(daemon);
    let m1 = git(&mine.dir, &["rev-parse", "HEAD~1"]);
    let o1 = git(&other.dir, &["rev-parse", "HEAD~1"]);
    let rows: Vec<(String, String)> = checkouts(&setup.db(), "two")
        .into_iter()
        .map(|(_, c, r)| (c, r))
        .collect();
    let pair = |m: &str, o: &str| {
        [
            ("mine".to_string(), m.to_string()),
            ("other".into(), o.into()),
        ]
    };
    let expected: Vec<_> = [pair(&m1, &o1), pair(&m1, &o2), pair(&m2, &o2)].concat();
    assert_eq!(rows, expected);
    let _ = port;
}

/// `--check` reads a file as a run would and touches no database: exit 0
/// with the names, or 1 with file, line, column and field.
#[test]
fn check_validates_without_a_database() {
    let setup = Setup::new("check");
    let good = setup.write_spec(
        "(list (specification (name \"a\") (build 'hello))\n\
         (specification (name \"b\") (channels (list (channel (name 'b) (url \"file:///b\"))))))",
    );
    let out = setup
        .command()
        .args(["--check", "-S", good.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("2 specification(s): \"a\", \"b\""),
        "{stdout}"
    );
    let broken = setup.tmp.path().join("broken.scm");
    std::fs::write(
        &broken,
        "(list (specification (name \"a\")\n   (priority 42)))",
    )
    .unwrap();
    let out = setup
        .command()
        .args(["--check", "-S", broken.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "broken.scm:2:14: specification field `priority` must be an integer from 0 to 9, not 42"
        ),
        "{stderr}"
    );
    assert!(!setup.db.exists(), "--check created the database");
}

/// The default channels (guix) cannot be fetched offline: the guix
/// channel is left to `guix time-machine`, whose error is recorded as a
/// failed evaluation, with nothing registered; the next spec of the file
/// is evaluated and built as usual.
#[test]
fn default_channels_offline_fail_the_evaluation_with_the_time_machines_error() {
    require_daemon();
    let setup = Setup::new("offline");
    let mine = mine(setup.tmp.path());
    let spec = setup.write_spec(&format!(
        "(list (specification (name \"guix\") (build 'hello))\n\
         (specification (name \"after\") (build '(custom (mine ci)))\n\
           (channels (list {}))))",
        channel("mine", &mine)
    ));
    setup.one_shot(&["-S", spec.to_str().unwrap()]);
    let conn = setup.db();
    let (status, error): (i64, String) = two(
        &conn,
        "SELECT status, error FROM Evaluations WHERE specification = 'guix'",
        [],
    );
    assert_eq!(status, 1);
    assert!(error.contains("guix time-machine: error:"), "{error}");
    assert_eq!(jobs(&conn, "guix"), []);
    let guix: Vec<_> = checkouts(&conn, "guix")
        .into_iter()
        .map(|c| (c.1, c.2))
        .collect();
    assert_eq!(guix, [("guix".to_string(), String::new())]);
    assert_eq!(jobs(&conn, "after").iter().filter(|j| j.2 == 0).count(), 1);
    assert_sound(&setup.db);
}

fn one_channel_spec(name: &str, repo: &Repo, fields: &str) -> String {
    format!(
        "(list (specification (name \"{name}\") (build '(custom (mine ci)))\n\
           (channels (list {})) {fields}))",
        channel("mine", repo)
    )
}

/// `is-active? #f`: the spec is kept and served with its history, but not
/// polled, even when its channel moves; switched back on, it resumes.
#[test]
fn an_inactive_spec_keeps_its_history_and_resumes_when_switched_on() {
    require_daemon();
    let setup = Setup::new("inactive");
    let mine = mine(setup.tmp.path());
    let active = setup.write_spec(&one_channel_spec("sleepy", &mine, ""));
    setup.one_shot(&["-S", active.to_str().unwrap()]);
    let evaluations = || count(&setup.db(), "SELECT COUNT(*) FROM Evaluations");
    assert_eq!(evaluations(), 1);
    std::fs::write(mine.dir.join("README"), "moved").unwrap();
    let moved = mine.commit("moved");

    let inactive = setup.tmp.path().join("inactive.scm");
    std::fs::write(
        &inactive,
        one_channel_spec("sleepy", &mine, "(is-active? #f)"),
    )
    .unwrap();
    let (daemon, port) = serve(
        &setup,
        &["--interval", "1", "-S", inactive.to_str().unwrap()],
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(evaluations(), 1, "an inactive spec was polled");
    let (_, specs) = get_json(port, "/specifications");
    assert_eq!(specs[0]["is-active?"], false);
    let (_, evals) = get_json(port, "/api/evaluations?nr=10&spec=sleepy");
    assert_eq!(evals.as_array().unwrap().len(), 1);
    assert!(!daemon.log_text().contains("sleepy\" Idle=>Fetching"));
    drop(daemon);
    let is_active: i64 = setup
        .db()
        .query_row("SELECT is_active FROM Specifications", [], |r| r.get(0))
        .unwrap();
    assert_eq!(is_active, 0);

    setup.one_shot(&["-S", active.to_str().unwrap()]);
    let revisions =
        query_rows::<String>(&setup.db(), "SELECT revision FROM Evaluations ORDER BY id");
    assert_eq!(revisions.len(), 2);
    assert_eq!(revisions[1][0], moved);
}

/// `period 6` with a poll every second: a commit pushed right after an
/// evaluation waits until the period has passed.
#[test]
fn period_spaces_evaluations() {
    require_daemon();
    let setup = Setup::new("period");
    let mine = mine(setup.tmp.path());
    let spec = setup.write_spec(&one_channel_spec("spaced", &mine, "(period 6)"));
    let (daemon, _port) = serve(&setup, &["--interval", "1", "-S", spec.to_str().unwrap()]);
    let evaluations = || {
        count(
            &setup.db(),
            "SELECT COUNT(*) FROM Evaluations WHERE status >= 0",
        )
    };
    wait_until(Duration::from_secs(60), "the first evaluation", || {
        evaluations() >= 1
    });
    std::fs::write(mine.dir.join("README"), "moved").unwrap();
    mine.commit("moved");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(evaluations(), 1, "evaluated again within the period");
    wait_until(Duration::from_secs(60), "the second evaluation", || {
        evaluations() >= 2
    });
    drop(daemon);
    let times = query_rows::<i64>(&setup.db(), "SELECT timestamp FROM Evaluations ORDER BY id");
    let gap = times[1][0] - times[0][0];
    assert!((5..=20).contains(&gap), "evaluations {gap} s apart");
}

/// A throwaway OpenPGP key in its own GnuPG home, for signed commits.
struct Gpg {
    home: TempDir,
    fingerprint: String,
}

impl Gpg {
    fn new() -> Gpg {
        // On the host, where gpg runs: the agent's socket path must stay short.
        let home = TempDir::new_for(Guix::V1_2, "gpg");
        let gpg = |args: &[&str]| {
            let out = std::process::Command::new("gpg")
                .env("GNUPGHOME", home.path())
                .args([
                    "--batch",
                    "--quiet",
                    "--pinentry-mode",
                    "loopback",
                    "--passphrase",
                    "",
                ])
                .args(args)
                .output()
                .expect("gpg (GnuPG) is needed to sign test commits");
            assert!(out.status.success(), "gpg {args:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        gpg(&[
            "--quick-gen-key",
            "cuirass tests <tests@cuirass>",
            "ed25519",
            "sign",
            "never",
        ]);
        let listing = gpg(&["--with-colons", "--list-keys"]);
        let fingerprint = listing
            .lines()
            .find_map(|l| {
                l.strip_prefix("fpr:")
                    .map(|f| f.trim_matches(':').to_string())
            })
            .unwrap();
        Gpg { home, fingerprint }
    }

    fn export(&self) -> Vec<u8> {
        let out = std::process::Command::new("gpg")
            .env("GNUPGHOME", self.home.path())
            .args(["--batch", "--armor", "--export", &self.fingerprint])
            .output()
            .unwrap();
        out.stdout
    }

    /// `git commit -S` in `repo` with this key; the commit.
    fn commit(&self, repo: &Repo, message: &str) -> String {
        let out = std::process::Command::new("git")
            .current_dir(&repo.dir)
            .env("GNUPGHOME", self.home.path())
            .env("GIT_AUTHOR_NAME", "cuirass tests")
            .env("GIT_AUTHOR_EMAIL", "tests@cuirass")
            .env("GIT_COMMITTER_NAME", "cuirass tests")
            .env("GIT_COMMITTER_EMAIL", "tests@cuirass")
            .args(["-c", &format!("user.signingkey={}", self.fingerprint)])
            .args(["commit", "-q", "--allow-empty", "-S", "-m", message])
            .output()
            .unwrap();
        assert!(out.status.success(), "signed commit: {out:?}");
        git(&repo.dir, &["rev-parse", "HEAD"])
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = std::process::Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .output();
    }
}

/// A channel with an introduction is authenticated with `guix git
/// authenticate` before evaluation: commits signed by the key the test
/// made, with a `keyring` branch and `.guix-authorizations`, pass with
/// the right signer (evaluated, built); with another signer in the
/// introduction, the evaluation fails with the tool's reason.
#[test]
fn channel_introductions_are_authenticated() {
    require_daemon();
    let setup = Setup::new("intro");
    let gpg = Gpg::new();
    let mine = mine(setup.tmp.path());
    std::fs::write(
        mine.dir.join(".guix-authorizations"),
        format!(
            "(authorizations (version 0) ((\"{}\" (name \"tests\"))))\n",
            gpg.fingerprint
        ),
    )
    .unwrap();
    git(&mine.dir, &["add", "-A"]);
    let intro = gpg.commit(&mine, "authorizations");
    std::fs::write(mine.dir.join("README"), "signed").unwrap();
    git(&mine.dir, &["add", "-A"]);
    gpg.commit(&mine, "a signed change");
    git(&mine.dir, &["checkout", "-q", "--orphan", "keyring"]);
    git(&mine.dir, &["rm", "-rq", "--cached", "."]);
    git(&mine.dir, &["clean", "-fdq"]);
    std::fs::write(mine.dir.join("tests.key"), gpg.export()).unwrap();
    git(&mine.dir, &["add", "tests.key"]);
    git(&mine.dir, &["commit", "-q", "-m", "keyring"]);
    git(&mine.dir, &["checkout", "-q", "-f", "master"]);
    let with_intro = |name: &str, signer: &str| {
        format!(
            "(specification (name \"{name}\") (build '(custom (mine ci)))\n\
               (channels (list (channel (name 'mine) (url \"{}\")\n\
                 (introduction (make-channel-introduction \"{intro}\"\n\
                   (openpgp-fingerprint \"{signer}\")))))))",
            mine.url()
        )
    };
    let spec = setup.write_spec(&format!(
        "(list {}\n{})",
        with_intro("signed", &gpg.fingerprint),
        with_intro(
            "stranger",
            "AAAA BBBB CCCC DDDD EEEE  FFFF 0000 1111 2222 3333"
        )
    ));
    setup.one_shot(&["-S", spec.to_str().unwrap()]);
    let conn = setup.db();
    let outcome = |spec: &str| -> (i64, Option<String>) {
        two(
            &conn,
            "SELECT status, error FROM Evaluations WHERE specification = ?1",
            [spec],
        )
    };
    assert_eq!(outcome("signed"), (0, None));
    assert_eq!(jobs(&conn, "signed").iter().filter(|j| j.2 == 0).count(), 1);
    let (status, error) = outcome("stranger");
    assert_eq!(status, 1);
    let error = error.unwrap();
    assert!(
        error.contains("channel \"mine\"") && error.contains("failed authentication"),
        "{error}"
    );
    assert!(error.contains("is signed by"), "{error}");
    assert_eq!(jobs(&conn, "stranger"), []);
    assert_eq!(checkouts(&conn, "stranger").len(), 1);
    // An unsigned commit on top: the spec that passed fails now.
    std::fs::write(mine.dir.join("README"), "unsigned").unwrap();
    let unsigned = mine.commit("an unsigned change");
    setup.one_shot(&["-S", spec.to_str().unwrap()]);
    let (status, error): (i64, String) = two(
        &conn,
        "SELECT status, error FROM Evaluations WHERE specification = 'signed' AND revision = ?1",
        [&unsigned],
    );
    assert_eq!(status, 1);
    assert!(
        error.contains(&unsigned[..7]) || error.contains("not signed"),
        "{error}"
    );
}

/// A channel whose `.guix-channel` puts its modules under `src`: that
/// directory is on the evaluator's load path, not the checkout's root.
#[test]
fn guix_channel_files_name_the_module_directory() {
    require_daemon();
    let setup = Setup::new("guix-channel");
    let repo = Repo::named(setup.tmp.path(), "sub", &[]);
    write_ci(&repo.dir.join("src"));
    std::fs::rename(
        repo.dir.join("test-shell.scm"),
        repo.dir.join("src/test-shell.scm"),
    )
    .unwrap();
    std::fs::write(
        repo.dir.join(".guix-channel"),
        "(channel (version 0) (directory \"src\"))\n",
    )
    .unwrap();
    repo.commit("modules under src");
    let spec = setup.write_spec(&format!(
        "(list (specification (name \"sub\") (build '(custom (mine ci)))\n\
           (channels (list {}))))",
        channel("sub", &repo)
    ));
    setup.one_shot(&["-S", spec.to_str().unwrap()]);
    assert_eq!(
        jobs(&setup.db(), "sub"),
        [("greet.x86_64-linux".into(), "x86_64-linux".into(), 0)]
    );
}

/// A running daemon switches an inactive spec on when its file, read
/// again on SIGHUP, says so: the spec is polled and evaluated at once.
#[test]
fn sighup_switches_an_inactive_spec_on() {
    require_daemon();
    let setup = Setup::new("sighup-active");
    let mine = mine(setup.tmp.path());
    let spec = setup.write_spec(&one_channel_spec("later", &mine, "(is-active? #f)"));
    let (daemon, _port) = serve(&setup, &["--interval", "1", "-S", spec.to_str().unwrap()]);
    std::thread::sleep(Duration::from_secs(3));
    let evaluations = || {
        count(
            &setup.db(),
            "SELECT COUNT(*) FROM Evaluations WHERE status = 0",
        )
    };
    assert_eq!(evaluations(), 0);
    std::fs::write(&spec, one_channel_spec("later", &mine, "(is-active? #t)")).unwrap();
    daemon.signal(libc::SIGHUP);
    wait_until(
        Duration::from_secs(60),
        "the evaluation once active",
        || evaluations() == 1,
    );
    let active: i64 = two::<i64, String>(
        &setup.db(),
        "SELECT is_active, repo_name FROM Specifications",
        [],
    )
    .0;
    assert_eq!(active, 1);
}
