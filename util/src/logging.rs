//! The `tracing` subscriber every dllm binary installs: `RUST_LOG` when set, else the binary's
//! own default filter.

use tracing_subscriber::{fmt::MakeWriter, EnvFilter};

/// Installs the fmt subscriber writing to `writer` (e.g. `std::io::stdout`), filtered by
/// `RUST_LOG` or, when that is unset or unparsable, by `default_filter` such as
/// `"info,openraft=warn"`.
///
/// # Panics
/// When a global subscriber is already installed: call it once, first thing in `main`.
pub fn init<W>(default_filter: &str, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .with_writer(writer)
        .init();
}
