//! The `cuirass` binary: parse options, load specifications, run the loop.

use cuirass::cli::{self, Command, Config};
use cuirass::{db::Db, event_loop::EventLoop, fetch, spec};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The fetch child: git2 blocks, so the loop runs it as a subprocess.
    if args.first().map(String::as_str) == Some(fetch::SUBCOMMAND) {
        return ExitCode::from(fetch::child_main(&args) as u8);
    }
    if args.first().map(String::as_str) == Some(fetch::CHANNELS_SUBCOMMAND) {
        return ExitCode::from(fetch::channels_child_main(&args) as u8);
    }
    // The child that checkpoints the database's write-ahead log.
    if args.first().map(String::as_str) == Some(cuirass::db::checkpointer::SUBCOMMAND) {
        return ExitCode::from(cuirass::db::checkpointer::child_main(&args) as u8);
    }
    // The child that re-reads a specification file on SIGHUP.
    if args.first().map(String::as_str) == Some(spec::SUBCOMMAND) {
        return ExitCode::from(spec::child_main(&args) as u8);
    }
    // The operators' client: one request to a running server.
    if args.first().map(String::as_str) == Some(cuirass::admin::client::SUBCOMMAND) {
        return ExitCode::from(cuirass::admin::client::main(&args[1..], &cli::ProcessEnv) as u8);
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_secs()
        .init();
    match cli::parse(&args, &cli::ProcessEnv) {
        Ok(Command::Help(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(Command::Version(v)) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Ok(Command::Run(config)) => match run(*config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cuirass: {e}");
                ExitCode::from(1)
            }
        },
        Err(e) => {
            eprintln!("cuirass: {e}");
            ExitCode::from(2)
        }
    }
}

/// `--check -S FILE`: reads the file as a run would, and says what it
/// holds; the database is not opened.
fn check(config: &Config) -> Result<(), String> {
    let path = config
        .specifications
        .as_ref()
        .ok_or("--check needs -S FILE")?;
    spec::set_guile_timeout(std::time::Duration::from_secs(
        config.evaluation_timeout_secs,
    ));
    let specs = spec::read_spec_file(path, &config.evaluator).map_err(|e| e.to_string())?;
    let names: Vec<String> = specs.iter().map(|s| format!("{:?}", s.name)).collect();
    println!(
        "{}: {} specification(s): {}",
        path.display(),
        specs.len(),
        names.join(", ")
    );
    Ok(())
}

fn run(mut config: Config) -> Result<(), String> {
    if config.check {
        return check(&config);
    }
    // Children run in checkouts; every path they are given must be absolute.
    config.cache_dir = std::path::absolute(&config.cache_dir)
        .map_err(|e| format!("{}: {e}", config.cache_dir.display()))?;
    spec::set_guile_timeout(std::time::Duration::from_secs(
        config.evaluation_timeout_secs,
    ));
    // Read specifications before touching the database, so that a broken
    // file writes nothing at all.
    let specs = match &config.specifications {
        Some(path) => {
            Some(spec::read_spec_file(path, &config.evaluator).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let mut db = Db::open(&config.database).map_err(|e| e.to_string())?;
    if let Some(specs) = specs {
        db.add_specifications(&specs).map_err(|e| e.to_string())?;
        log::info!(
            "{} specification(s) added from {}",
            specs.len(),
            config.specifications.as_ref().unwrap().display()
        );
    }
    if let Err(e) = std::os::unix::net::UnixStream::connect(&config.daemon_socket) {
        let msg = format!(
            "cannot connect to guix-daemon at {}: {e} (is guix-daemon running? GUIX_DAEMON_SOCKET selects another socket)",
            config.daemon_socket.display()
        );
        if config.one_shot {
            return Err(msg);
        }
        log::error!("{msg}; will keep retrying");
    }
    EventLoop::new(config, db)?.run()
}
