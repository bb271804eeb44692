//! `etcd-manager`: parse flags, validate, set up logs, run until SIGINT/SIGTERM.
//! Run as `etcd-backup` (a symlink or a copy under that name) it takes
//! upstream's etcd-backup flags and runs in backup-only mode.

use clap::{CommandFactory, FromArgMatches};
use etcd_manager::cli::config::{Args, Config, EtcdBackupArgs};
use tokio_util::sync::CancellationToken;

mod daemon;

fn main() -> std::process::ExitCode {
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let as_etcd_backup = raw
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == "etcd-backup");
    let parsed = if as_etcd_backup {
        parse::<EtcdBackupArgs>(raw)
    } else {
        parse::<Args>(raw)
    };
    let cfg = match parsed {
        Ok(c) => c,
        Err(e) => {
            eprintln!("etcd-manager: error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    init_tracing(cfg.json_logs, &cfg.log_filter);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("etcd-manager: error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            s.cancel();
        });
        daemon::run(cfg, shutdown).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("etcd-manager: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Go-style flags, then `--env-file`, then clap, then validation. clap's own
/// errors (unknown flags, --help, --version) exit here as clap decides.
fn parse<A>(raw: Vec<std::ffi::OsString>) -> anyhow::Result<Config>
where
    A: CommandFactory + FromArgMatches,
    Config: TryFrom<A, Error = etcd_manager::cli::config::ConfigError>,
{
    let cmd = A::command();
    let argv =
        etcd_manager::cli::goflags::normalize(raw, &etcd_manager::cli::goflags::long_names(&cmd));
    let vars = match etcd_manager::cli::envfile::named_in(&argv) {
        Some(path) => etcd_manager::cli::envfile::load(&path)?,
        None => vec![],
    };
    let argv = etcd_manager::cli::envfile::apply_to_argv(argv, &vars, &cmd);
    let args = match cmd
        .try_get_matches_from(argv)
        .and_then(|m| A::from_arg_matches(&m))
    {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    let cfg = Config::try_from(args)?;
    Ok(cfg.with_env_file(&vars))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut i), Ok(mut t)) => {
            tokio::select! {
                _ = i.recv() => {}
                _ = t.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Logs to stderr; `RUST_LOG` wins over `--v`.
fn init_tracing(json: bool, filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
