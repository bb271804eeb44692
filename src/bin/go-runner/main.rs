//! `go-runner`: what kops' etcd-manager image runs first (kubernetes/release's
//! go-runner, re-done): run a command, write its output to `--log-file`
//! (appended; also to stdout with `--also-stdout`; stderr with it unless
//! `--redirect-stderr=false`), forward the first SIGTERM, SIGINT, SIGHUP or
//! SIGQUIT to it, and exit 0 when it succeeded, 1 otherwise (as go-runner).
//!
//! ```text
//! /go-runner --log-file=/var/log/etcd.log --also-stdout /ko-app/etcd-manager --v=6 ...
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Runs a command, saving its output to a log file and forwarding signals.
#[derive(Debug, Parser)]
#[command(name = "go-runner")]
struct Args {
    /// If non-empty, save stdout to this file.
    #[arg(long, default_value = "")]
    log_file: String,
    /// Useful with --log-file: log to standard output as well as the log file.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = etcd_manager::cli::config::go_bool)]
    also_stdout: bool,
    /// Treat stderr the same as stdout.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", value_parser = etcd_manager::cli::config::go_bool)]
    redirect_stderr: bool,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let cmd = <Args as clap::CommandFactory>::command();
    let argv = etcd_manager::cli::goflags::normalize(
        go_runner_args(),
        &etcd_manager::cli::goflags::long_names(&cmd),
    );
    let args = match Args::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) if e.kind() == clap::error::ErrorKind::MissingRequiredArgument => {
            eprintln!("go-runner: not enough arguments to run");
            return ExitCode::FAILURE;
        }
        Err(e) => e.exit(),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("go-runner: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("go-runner: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Our arguments, Go style: flags end at the first argument that is not one
/// (the command), so the command's own flags are left alone.
fn go_runner_args() -> Vec<std::ffi::OsString> {
    let mut out = vec![];
    let mut command = false;
    let mut value_next = false;
    for (i, a) in std::env::args_os().enumerate() {
        let text = a.to_string_lossy().to_string();
        if i > 0 && !command && !value_next && !text.starts_with('-') {
            // clap must not read the command's flags as ours.
            out.push("--".into());
            command = true;
        }
        // `--log-file PATH`: the next argument is its value, not the command.
        value_next = !command && matches!(text.as_str(), "--log-file" | "-log-file");
        out.push(a);
    }
    out
}

type Sink = Arc<tokio::sync::Mutex<Vec<Box<dyn AsyncWrite + Send + Unpin>>>>;

/// Copy `from` into every writer of `sink` until it ends.
async fn tee(mut from: impl AsyncRead + Unpin, sink: Sink) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut writers = sink.lock().await;
        for w in writers.iter_mut() {
            // A full disk or a closed stdout must not stop the command.
            let _ = w.write_all(&buf[..n]).await;
            let _ = w.flush().await;
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut out: Vec<Box<dyn AsyncWrite + Send + Unpin>> = vec![];
    if args.log_file.is_empty() {
        out.push(Box::new(tokio::io::stdout()));
    } else {
        let path = PathBuf::from(&args.log_file);
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .with_context(|| format!("cannot open the log file {}", path.display()))?;
        out.push(Box::new(file));
        if args.also_stdout {
            out.push(Box::new(tokio::io::stdout()));
        }
    }
    let sink: Sink = Arc::new(tokio::sync::Mutex::new(out));
    let (program, rest) = args
        .command
        .split_first()
        .context("not enough arguments to run")?;
    eprintln!(
        "go-runner: running {program} (log-file={}, also-stdout={}, redirect-stderr={})",
        args.log_file, args.also_stdout, args.redirect_stderr
    );
    // The one process this binary starts: the command it was given.
    #[allow(clippy::disallowed_methods)]
    let mut command = tokio::process::Command::new(program);
    command
        .args(rest)
        .stdin(std::process::Stdio::inherit())
        .stdout(std::process::Stdio::piped())
        .stderr(if args.redirect_stderr {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::inherit()
        });
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let pid = child.id().context("the command exited before it started")?;
    let mut copies = vec![];
    if let Some(o) = child.stdout.take() {
        copies.push(tokio::spawn(tee(o, sink.clone())));
    }
    if let Some(e) = child.stderr.take() {
        copies.push(tokio::spawn(tee(e, sink.clone())));
    }
    let mut sigs = vec![];
    for kind in [
        SignalKind::terminate(),
        SignalKind::interrupt(),
        SignalKind::hangup(),
        SignalKind::quit(),
    ] {
        sigs.push((kind, signal(kind).context("cannot catch signals")?));
    }
    let mut forwarded = false;
    let status = loop {
        let next_signal = async {
            let futs = sigs
                .iter_mut()
                .map(|(k, s)| Box::pin(async move { s.recv().await.map(|_| *k) }));
            futures::future::select_all(futs).await.0
        };
        tokio::select! {
            st = child.wait() => break st.with_context(|| format!("waiting for {program}"))?,
            Some(kind) = next_signal => {
                // The first signal goes to the command; later ones are swallowed.
                if !forwarded {
                    forwarded = true;
                    let sig = nix::sys::signal::Signal::try_from(kind.as_raw_value())
                        .context("signal")?;
                    let target = nix::unistd::Pid::from_raw(pid as i32);
                    nix::sys::signal::kill(target, sig).with_context(|| format!("forwarding {sig}"))?;
                    eprintln!("go-runner: forwarded {sig} to {program}");
                }
            }
        }
    };
    for c in copies {
        let _ = c.await;
    }
    let mut writers = sink.lock().await;
    for w in writers.iter_mut() {
        let _ = w.flush().await;
    }
    if !status.success() {
        eprintln!("go-runner: running command: {status}");
    }
    Ok(status.success())
}
