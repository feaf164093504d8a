//! The worker's command line, shared by `dllm-worker` and `dllm worker`: parse and validate
//! the configuration, bind, and run until SIGINT or SIGTERM, then leave the cluster.

use std::{ffi::OsString, process::ExitCode};

use anyhow::Context;
use clap::CommandFactory;
use tokio_util::sync::CancellationToken;

use crate::config::Args;

/// [`main_from`] as a process's exit: an error is one line on stderr, `name: reason` with
/// its causes (no backtrace: these are an operator's mistakes, not bugs), and exit code 1.
pub fn exit_from<I, T>(name: &'static str, argv: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    match main_from(name, argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a worker from `argv` (the program name first); `name` is how `--help` and errors
/// name the command.
///
/// # Errors
/// A configuration that does not validate, a port that cannot be bound, a worker that stops
/// with an error.
pub fn main_from<I, T>(name: &'static str, argv: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let command = Args::command().name(name).bin_name(name);
    let args = dllm_util::layered::load_from::<Args, _, _>(command, argv)?;
    dllm_util::logging::init(
        "info",
        args.log.log_format,
        dllm_util::logging::Output::Stdout,
    );
    let config = args.resolve()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(async {
            let listener = dllm_util::net::bind("listen", config.listen).await?;
            let shutdown = CancellationToken::new();
            dllm_util::shutdown::cancel_on_signal(shutdown.clone())
                .context("installing the SIGTERM handler")?;
            crate::run(config, listener, shutdown).await?;
            Ok(())
        })
}
