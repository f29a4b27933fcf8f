//! Chaos: cuirass is killed with SIGKILL at random moments of a 100-job
//! evaluation-and-build cycle, twenty times, and restarted each time;
//! whenever a cycle has been completed, a new commit starts another.  A
//! last one-shot run must then leave every evaluation completed, every job
//! of each with exactly one build, in a final status, the last commit
//! evaluated, and a sound database.

use crate::support::*;
use std::time::Duration;

const ROUNDS: usize = 20;
const JOBS: i64 = 100;

/// xorshift64*, so a failing run can be repeated with its seed.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn kill_9_at_random_moments_loses_and_duplicates_nothing() {
    require_daemon();
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xc4a0_5eed);
    eprintln!("chaos seed {seed} (set CHAOS_SEED to repeat another run)");
    let mut rng = Rng(seed | 1);
    let setup = Setup::new("chaos");
    let nonce = nonce();
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/sleepy-jobs.scm")]);
    let spec = setup.write_spec(&format!(
        "(list {})\n",
        spec_entry(
            "chaos",
            &repo.url(),
            "ci.scm",
            "sleepy-jobs",
            &format!("(nonce . \"{nonce}\") (seconds . \"0\") (count . {JOBS})")
        )
    ));
    let spec_arg = spec.to_str().unwrap();
    for round in 0..ROUNDS {
        // Log-uniform between 5 ms and 6 s: start-up, fetch, the evaluator
        // streaming jobs, batches in flight, and idle time all get hit.
        let delay = Duration::from_secs_f64(0.005 * 1200f64.powf(rng.unit()));
        let args: &[&str] = if round == 0 {
            &["-S", spec_arg, "--interval", "1"]
        } else {
            &["--interval", "1"]
        };
        let mut cuirass = Running::start(&setup, args, &[]);
        std::thread::sleep(delay);
        cuirass.signal(libc::SIGKILL);
        let status = cuirass.wait_for_exit(Duration::from_secs(5));
        assert!(status.is_some(), "round {round}: cuirass survived SIGKILL");
        let conn = setup.db();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        let builds = count(&conn, "SELECT COUNT(*) FROM Builds");
        let done = count(&conn, "SELECT COUNT(*) FROM Builds WHERE status >= 0");
        let evals = count(&conn, "SELECT COUNT(*) FROM Evaluations WHERE status = 0");
        eprintln!(
            "round {round}: killed after {delay:?}; evaluations {evals}, builds {builds}, finished {done}"
        );
        if builds > 0 && done == builds {
            std::fs::write(repo.dir.join("round"), round.to_string()).unwrap();
            repo.commit(&format!("round {round}"));
        }
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok", "round {round}");
    }
    let out = setup.one_shot(&[]);
    assert!(out.status.success());
    assert_sound(&setup.db);
    let conn = setup.db();
    let evals = count(&conn, "SELECT COUNT(*) FROM Evaluations");
    assert!(evals >= 1);
    assert_eq!(
        count(&conn, "SELECT COUNT(*) FROM Evaluations WHERE status = 0"),
        evals
    );
    let last = git(&repo.dir, &["rev-parse", "HEAD"]);
    assert_eq!(
        count(
            &conn,
            &format!("SELECT COUNT(*) FROM Evaluations WHERE revision = '{last}'")
        ),
        1
    );
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM Builds"), JOBS * evals);
    assert_eq!(
        count(&conn, "SELECT COUNT(*) FROM Builds WHERE status = 0"),
        JOBS * evals
    );
    // Exactly one build per job of each evaluation.
    let per_job: Vec<Vec<i64>> = query_rows(
        &conn,
        "SELECT COUNT(*) FROM Builds b JOIN Derivations d
           ON d.derivation = b.derivation AND d.evaluation = b.evaluation
         GROUP BY d.evaluation, d.job_name",
    );
    assert_eq!(per_job.len() as i64, JOBS * evals);
    assert!(per_job.iter().all(|c| c[0] == 1), "{per_job:?}");
    eprintln!("{evals} evaluation(s) completed across the kills");
}
