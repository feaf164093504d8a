//! The `tracing` subscriber every dllm binary installs: `RUST_LOG` when set, else the binary's
//! own default filter; lines as text or as JSON (`--log-format`); colours only on a terminal,
//! so that a log file or a log shipper never gets ANSI escape codes.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::{fmt::MakeWriter, EnvFilter};

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `message`, the event's fields,
    /// `span` and `spans`), for log shippers.
    Json,
}

/// The logging flag every server binary flattens into its clap `Args`, so it layers like the
/// others (flag > `DLLM_LOG_FORMAT` > `log_format` in the TOML file > default).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LogArgs {
    /// Log line format: text, or json (one object per line).
    #[arg(long, env = "DLLM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text,
          hide_possible_values = true)]
    pub log_format: LogFormat,
}

/// Where the log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Standard output (the servers).
    Stdout,
    /// Standard error (the `dllm` command, whose output is its answer).
    Stderr,
}

/// Installs the subscriber writing to `output` in `format`, filtered by `RUST_LOG` or, when
/// that is unset or unparsable, by `default_filter` such as `"info,openraft=warn"`. Text is
/// coloured only when `output` is a terminal.
///
/// # Panics
/// When a global subscriber is already installed: call it once, first thing in `main`.
pub fn init(default_filter: &str, format: LogFormat, output: Output) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let subscriber = match output {
        Output::Stdout => {
            let ansi = std::io::stdout().is_terminal();
            subscriber(filter, format, ansi, std::io::stdout)
        }
        Output::Stderr => {
            let ansi = std::io::stderr().is_terminal();
            subscriber(filter, format, ansi, std::io::stderr)
        }
    };
    tracing::subscriber::set_global_default(subscriber).expect("logging is initialized once");
}

/// The subscriber [`init`] installs, writing to `writer`.
fn subscriber<W>(
    filter: EnvFilter,
    format: LogFormat,
    ansi: bool,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use clap::{CommandFactory, Parser};

    use super::*;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What one event logged through a subscriber of `format` writes.
    fn logged(format: LogFormat, ansi: bool) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = subscriber(EnvFilter::new("info"), format, ansi, move || writer.clone());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("rpc", path = "/a.B/C");
            let _in = span.enter();
            tracing::warn!(node_id = "w1", "heartbeat failed");
        });
        let bytes = buffer.0.lock().expect("lock").clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    /// A JSON line is one object with the level, the message, the event's fields and the
    /// span it was logged in.
    #[test]
    fn json_lines_parse_as_json() {
        let text = logged(LogFormat::Json, false);
        let line: serde_json::Value = serde_json::from_str(text.trim_end()).expect("one JSON line");
        assert_eq!(line["level"], "WARN", "{line}");
        assert_eq!(line["message"], "heartbeat failed", "{line}");
        assert_eq!(line["node_id"], "w1", "{line}");
        assert_eq!(line["span"]["path"], "/a.B/C", "{line}");
    }

    /// Text has colour codes only when asked for (a terminal).
    #[test]
    fn text_is_plain_unless_on_a_terminal() {
        let plain = logged(LogFormat::Text, false);
        assert!(plain.contains("heartbeat failed"), "{plain}");
        assert!(!plain.contains('\u{1b}'), "no escape codes: {plain:?}");
        assert!(logged(LogFormat::Text, true).contains('\u{1b}'));
    }

    #[derive(Parser, Debug)]
    struct Args {
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        #[command(flatten)]
        log: LogArgs,
    }

    /// `--log-format` layers like every other setting: the flag over the file over the
    /// default.
    #[test]
    fn the_format_comes_from_the_flag_or_the_file() {
        let load = |argv: &[&str]| -> Args {
            let argv = std::iter::once("x").chain(argv.iter().copied());
            crate::layered::try_load_from(Args::command(), argv).expect("parses")
        };
        assert_eq!(load(&[]).log.log_format, LogFormat::Text);
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "log_format = \"json\"\n").expect("write");
        let path = path.to_str().expect("utf-8");
        assert_eq!(
            load(&["--config", path]).log.log_format,
            LogFormat::Json,
            "the file wins over the default"
        );
        assert_eq!(
            load(&["--config", path, "--log-format=text"])
                .log
                .log_format,
            LogFormat::Text,
            "the flag wins over the file"
        );
    }
}
