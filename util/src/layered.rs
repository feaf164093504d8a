//! Where a setting comes from: a flag wins over its `DLLM_*` environment variable, which wins
//! over its key in the `--config` TOML file, which wins over the default.
//!
//! Flags, environment and defaults are clap's own: each binary writes a default once, as
//! `default_value_t` on its `Args` field (so `--help` shows it). The file is one more layer
//! under clap rather than a second struct to merge: the command line is parsed once to find
//! the file and to learn, with [`ArgMatches::value_source`], which settings came only from a
//! default or from nowhere; each file key for such a setting is then appended as
//! `--key=value` and the command line parsed again. Clap thus validates file values exactly
//! like flags, and nothing is merged field by field.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use clap::{parser::ValueSource, ArgMatches, Command, CommandFactory, FromArgMatches};

use crate::config::ConfigError;

/// The id (field name) of the argument that names the TOML file.
pub const CONFIG_ARG: &str = "config";

/// `A` from this process's command line, environment and config file. On a command line that
/// does not parse, or asks for `--help` or `--version`, prints clap's message and exits, as
/// `Parser::parse` does.
///
/// # Errors
/// [`ConfigError::File`] when the config file cannot be read, or holds a key that is not a
/// setting or a value its flag would not take.
pub fn load<A: CommandFactory + FromArgMatches>() -> Result<A, ConfigError> {
    load_from(A::command(), std::env::args_os())
}

/// As [`load`], from `argv` (the program name first) parsed by `command`: how `dllm
/// control-plane ...` and `dllm worker ...` run the same flags as the standalone binaries.
///
/// # Errors
/// As [`load`].
pub fn load_from<A, I, T>(command: Command, argv: I) -> Result<A, ConfigError>
where
    A: FromArgMatches,
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    match try_load_from(command, argv) {
        Err(ConfigError::Args(e)) => e.exit(),
        other => other,
    }
}

/// `A` from `argv` (the program name first), the environment and the file `argv` names,
/// parsed by `command`, which is `A::command()` or a variant of it (tests rename environment
/// variables with `Command::mut_arg`).
///
/// File keys are the argument ids (the field names: the long flags with '_' for '-'). A file
/// value is a TOML string or number, read as the flag's text would be.
///
/// # Errors
/// [`ConfigError::Args`] when `argv` or the environment does not parse; [`ConfigError::File`]
/// as for [`load`].
pub fn try_load_from<A, I, T>(command: Command, argv: I) -> Result<A, ConfigError>
where
    A: FromArgMatches,
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let mut matches = command.clone().try_get_matches_from(&argv)?;
    let path = matches
        .try_get_one::<PathBuf>(CONFIG_ARG)
        .ok()
        .flatten()
        .cloned();
    if let Some(path) = path {
        let from_file = file_args(&command, &matches, &path)?;
        if !from_file.is_empty() {
            argv.extend(from_file);
            matches = command
                .try_get_matches_from(&argv)
                .map_err(|e| file_error(&path, clap_reason(&e)))?;
        }
    }
    Ok(A::from_arg_matches(&matches)?)
}

/// `--flag=value` for each key of the file at `path` whose setting neither a flag nor the
/// environment gave.
fn file_args(
    command: &Command,
    matches: &ArgMatches,
    path: &Path,
) -> Result<Vec<OsString>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e.to_string()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| file_error(path, e.to_string()))?;
    let settings: Vec<_> = command
        .get_arguments()
        .filter(|a| a.get_id() != CONFIG_ARG && a.get_action().takes_values())
        .filter_map(|a| {
            let repeatable = matches!(a.get_action(), clap::ArgAction::Append);
            Some((a.get_id().as_str(), a.get_long()?, repeatable))
        })
        .collect();
    let mut args = Vec::new();
    for (key, value) in table {
        let Some((id, long, repeatable)) = settings.iter().find(|(id, _, _)| *id == key) else {
            let keys: Vec<&str> = settings.iter().map(|(id, _, _)| *id).collect();
            return Err(file_error(
                path,
                format!("{key:?} is not a setting; the keys are {}", keys.join(", ")),
            ));
        };
        if !matches!(
            matches.value_source(id),
            None | Some(ValueSource::DefaultValue)
        ) {
            continue;
        }
        // A list (a repeatable flag) is that flag once per item.
        let items = match value {
            toml::Value::Array(items) if *repeatable => items,
            one => vec![one],
        };
        for value in items {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(x) => x.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(file_error(
                        path,
                        format!("{key}: give a string or a number, not {}", other.type_str()),
                    ))
                }
            };
            args.push(format!("--{long}={text}").into());
        }
    }
    Ok(args)
}

/// `base`, arguments of the form `--flag=value`, with each flag that `changes` gives taken
/// from `changes` instead, since clap refuses a flag given twice. For tests and tools that vary
/// a few settings of a command line known to be good.
pub fn with_changes<'a>(base: &[&'a str], changes: &[&'a str]) -> Vec<&'a str> {
    let flag = |arg: &str| arg.split('=').next().unwrap_or(arg).to_string();
    let mut args: Vec<&str> = base
        .iter()
        .copied()
        .filter(|b| !changes.iter().any(|c| flag(c) == flag(b)))
        .collect();
    args.extend(changes);
    args
}

fn file_error(path: &Path, reason: String) -> ConfigError {
    ConfigError::File {
        path: path.to_path_buf(),
        reason,
    }
}

/// Clap's one-line description of a bad value, without its "error: " prefix and usage hint.
fn clap_reason(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use clap::Parser;

    use super::*;

    /// A command of the shape both binaries' `Args` have.
    #[derive(Parser, Debug)]
    struct Args {
        #[arg(long, env = "DLLM_UTIL_TEST_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, env = "DLLM_UTIL_TEST_A", default_value_t = 1)]
        a: u64,
        #[arg(long, env = "DLLM_UTIL_TEST_B", default_value_t = 1)]
        b: u64,
        #[arg(long, env = "DLLM_UTIL_TEST_C", default_value_t = 1)]
        c: u64,
        #[arg(long, default_value_t = 1)]
        d: u64,
        #[arg(long)]
        some_name: Option<String>,
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    fn load(argv: &[&str]) -> Result<Args, ConfigError> {
        try_load_from(
            Args::command(),
            std::iter::once("t").chain(argv.iter().copied()),
        )
    }

    /// Each layer wins over the ones below it: a flag over the environment, the environment
    /// over the file, the file over the default.
    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let f = file("a = 4\nb = 4\nc = 4\nsome_name = \"from-file\"\n");
        // Names no other test reads, so setting them cannot change another test's outcome.
        std::env::set_var("DLLM_UTIL_TEST_A", "3");
        std::env::set_var("DLLM_UTIL_TEST_B", "3");
        let path = f.path().to_str().expect("utf-8");
        let args = load(&["--config", path, "--a", "2"]).expect("valid");
        assert_eq!(args.a, 2, "the flag wins over env and file");
        assert_eq!(args.b, 3, "the environment wins over the file");
        assert_eq!(args.c, 4, "the file wins over the default");
        assert_eq!(args.d, 1, "the default stands where nothing sets it");
        assert_eq!(args.some_name.as_deref(), Some("from-file"), "keys use '_'");
    }

    /// Without a file, flags and defaults are clap's alone.
    #[test]
    fn no_file_no_change() {
        let args = load(&["--d", "9"]).expect("valid");
        assert_eq!((args.d, args.config), (9, None));
    }

    /// A file's mistakes name the file and the key or flag at fault.
    #[test]
    fn file_errors_name_the_file_and_the_key() {
        for (text, says) in [
            ("d = \"x\"\n", "'--d <D>'"),
            ("d = -1\n", "'--d <D>'"),
            ("nope = 1\n", "\"nope\" is not a setting"),
            ("config = \"other.toml\"\n", "\"config\" is not a setting"),
            ("d = [1]\n", "d: give a string or a number"),
            ("d = \n", "TOML parse error"),
        ] {
            let f = file(text);
            let path = f.path().to_str().expect("utf-8");
            let err = load(&["--config", path]).expect_err(text).to_string();
            assert!(
                err.starts_with(&format!("--config {path}: ")) && err.contains(says),
                "{text:?} gave {err:?}, which should name the file and say {says:?}"
            );
        }
        let err = load(&["--config", "/nonexistent/dllm.toml"]).expect_err("missing file");
        assert!(matches!(err, ConfigError::File { .. }), "{err:?}");
    }

    #[test]
    fn changes_replace_what_they_give() {
        assert_eq!(
            with_changes(&["--a=1", "--b=1"], &["--b=2", "--c=2"]),
            ["--a=1", "--b=2", "--c=2"]
        );
    }

    /// A bad flag is clap's error, which `load` prints and exits with.
    #[test]
    fn a_bad_flag_is_a_clap_error() {
        assert!(matches!(load(&["--d", "x"]), Err(ConfigError::Args(_))));
    }
}
