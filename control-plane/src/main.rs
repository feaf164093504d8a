//! `dllm-control-plane`: parse and validate the configuration, bind, and run a replica until
//! SIGINT or SIGTERM.

use anyhow::Context;
use dllm_control_plane::{config::Args, server};
use tokio_util::sync::CancellationToken;

/// jemalloc instead of glibc's malloc: replica CPU per write 7% lower at 64 clients on the
/// benchmark VM (allocation-heavy request handling), same RSS (BENCHMARKS.md, item 10).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = dllm_util::layered::load::<Args>()?;
    let format = args.log.log_format;
    dllm_util::logging::init(
        "info,openraft=warn,sled=warn",
        format,
        dllm_util::logging::Output::Stdout,
    );
    let config = args.resolve()?;
    let listener = dllm_util::net::bind("listen", config.listen).await?;
    let shutdown = CancellationToken::new();
    dllm_util::shutdown::cancel_on_signal(shutdown.clone())
        .context("installing the SIGTERM handler")?;
    server::run(config, listener, shutdown).await?;
    Ok(())
}
