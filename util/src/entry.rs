//! How a node's command line ends: serving until a signal, and an error as one line.
//! `dllm-control-plane`, `dllm-worker`, `dllm control-plane` and `dllm worker` all end here.

use std::{future::Future, net::SocketAddr, process::ExitCode};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// `result` as a process's exit: an error is one line on stderr, `name: reason: cause: ...`
/// (no backtrace: these are an operator's mistakes, not bugs), and exit code 1.
pub fn exit(name: &str, result: Result<(), BoxError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut line = e.to_string();
            let mut cause = e.source();
            while let Some(c) = cause {
                let text = c.to_string();
                // Errors that print their source in their own message say it once.
                if !line.ends_with(&text) {
                    line = format!("{line}: {text}");
                }
                cause = c.source();
            }
            eprintln!("{name}: {line}");
            ExitCode::FAILURE
        }
    }
}

/// What a node's command line fails with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Starts a multi-threaded runtime, binds `listen` (the `--listen` flag), and runs
/// `serve(listener, shutdown)` until it returns; `shutdown` is cancelled on SIGINT or
/// SIGTERM.
///
/// # Errors
/// The runtime or the signal handlers cannot be set up, the address cannot be bound, or
/// `serve` fails.
pub fn serve<F, Fut, E>(listen: SocketAddr, serve: F) -> Result<(), BoxError>
where
    F: FnOnce(TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(async {
        let listener = crate::net::bind("listen", listen).await?;
        let shutdown = CancellationToken::new();
        crate::shutdown::cancel_on_signal(shutdown.clone())
            .map_err(|e| format!("installing the SIGTERM handler: {e}"))?;
        serve(listener, shutdown).await?;
        Ok(())
    })
}
