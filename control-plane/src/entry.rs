//! The replica's command line, shared by `dllm-control-plane` and `dllm control-plane`:
//! parse and validate the configuration, bind, and run a replica until SIGINT or SIGTERM.

use std::{ffi::OsString, process::ExitCode};

use clap::CommandFactory;

use crate::{config::Args, server};

/// [`main_from`] as a process's exit ([`dllm_util::entry::exit`]).
pub fn exit_from<I, T>(name: &'static str, argv: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    dllm_util::entry::exit(name, main_from(name, argv))
}

/// Runs a replica from `argv` (the program name first); `name` is how `--help` and errors
/// name the command.
///
/// # Errors
/// A configuration that does not validate, a port that cannot be bound, a replica that stops
/// with an error.
pub fn main_from<I, T>(name: &'static str, argv: I) -> Result<(), dllm_util::entry::BoxError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let command = Args::command().name(name).bin_name(name);
    let args = dllm_util::layered::load_from::<Args, _, _>(command, argv)?;
    dllm_util::logging::init(
        "info,openraft=warn,sled=warn",
        args.log.log_format,
        dllm_util::logging::Output::Stdout,
    );
    let config = args.resolve()?;
    let listen = config.listen;
    dllm_util::entry::serve(listen, |listener, shutdown| {
        server::run(config, listener, shutdown)
    })
}
