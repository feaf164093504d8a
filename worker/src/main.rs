//! `dllm-worker`: parse and validate the configuration, bind, and run until SIGINT or
//! SIGTERM, then leave the cluster.

use anyhow::Context;
use dllm_worker::config::Args;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = dllm_util::layered::load::<Args>()?;
    let format = args.log.log_format;
    dllm_util::logging::init("info", format, dllm_util::logging::Output::Stdout);
    let config = args.resolve()?;
    let listener = dllm_util::net::bind("listen", config.listen).await?;
    let shutdown = CancellationToken::new();
    dllm_util::shutdown::cancel_on_signal(shutdown.clone())
        .context("installing the SIGTERM handler")?;
    dllm_worker::run(config, listener, shutdown).await?;
    Ok(())
}
