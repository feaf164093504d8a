//! The configuration error both binaries report, and the value parsers they validate with.
//! Every error names the flag, so that the operator knows what to change whichever of flag,
//! environment variable or file key set it.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// A setting that is missing or wrong, naming the flag.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required setting is absent.
    #[error("--{0} is required")]
    Missing(&'static str),
    /// A setting has a bad value.
    #[error("--{flag}: {reason}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The config file cannot be read or parsed, or holds a key or value that is not a setting.
    #[error("--config {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong, naming the key or flag where one is at fault.
        reason: String,
    },
    /// The command line or environment does not parse (or asked for `--help`): clap's own
    /// error, which [`crate::layered::load`] prints and exits with, as `Parser::parse` does.
    #[error("{0}")]
    Args(#[from] clap::Error),
}

impl ConfigError {
    /// A bad value for `--{flag}`.
    pub fn invalid(flag: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            flag,
            reason: reason.into(),
        }
    }
}

/// Splits `host:port` (the host may be a bracketed IPv6 address, returned without brackets),
/// with a port in 1..=65535.
///
/// # Errors
/// [`ConfigError::Invalid`] naming `flag`.
pub fn split_host_port(flag: &'static str, value: &str) -> Result<(String, u16), ConfigError> {
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| ConfigError::invalid(flag, format!("{value:?} is not host:port")))?;
    if host.is_empty() {
        return Err(ConfigError::invalid(flag, format!("{value:?} has no host")));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ConfigError::invalid(flag, format!("{value:?} has no valid port")))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

/// Parses an `ip:port` to listen on.
///
/// # Errors
/// [`ConfigError::Invalid`] naming `flag`.
pub fn parse_socket_addr(flag: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError::invalid(flag, format!("{value:?} is not ip:port")))
}

/// Parses "1s", "500ms", "2m" or a bare number of seconds; `None` unless it is a positive,
/// finite duration.
pub fn parse_duration(value: &str) -> Option<Duration> {
    let v = value.trim();
    let (num, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60.0)
    } else {
        (v, 1.0)
    };
    let secs = num.trim().parse::<f64>().ok()? * scale;
    (secs.is_finite() && secs > 0.0).then(|| Duration::from_secs_f64(secs))
}

/// A whole number of milliseconds as a duration, rejecting 0.
///
/// # Errors
/// [`ConfigError::Invalid`] naming `flag` when `ms` is 0.
pub fn nonzero_ms(flag: &'static str, ms: u64) -> Result<Duration, ConfigError> {
    match ms {
        0 => Err(ConfigError::invalid(flag, "must be > 0")),
        n => Ok(Duration::from_millis(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5m"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("0s"), None, "zero is no interval");
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn host_port_splits_and_errors_name_the_flag() {
        assert_eq!(
            split_host_port("x", "[::1]:80").expect("valid"),
            ("::1".to_string(), 80)
        );
        for bad in ["nohost", ":80", "h:0", "h:99999", "h:"] {
            let err = split_host_port("seed-nodes", bad)
                .expect_err(bad)
                .to_string();
            assert!(err.starts_with("--seed-nodes: "), "{err}");
        }
    }
}
