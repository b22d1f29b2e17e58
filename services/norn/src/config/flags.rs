//! What every flag block shares: [`Deferred`] values and the [`set`] helper.
//!
//! Durations and policies are parsed when the configuration is loaded, not by clap, so a bad
//! value is a configuration error that names the flag (exit code 1, like a bad YAML value),
//! whether it came from the command line or from the flag's `NORN_…` environment variable.

use std::ffi::OsStr;
use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use clap::builder::{TypedValueParser, ValueParserFactory};
use norn_model::duration::parse_duration;

/// A flag's text as given, with the flag's name, parsed at load time.
///
/// clap fills in the name (and env variable) from the argument being parsed, so a block
/// declares each flag once and its error messages cannot name the wrong flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferred {
    flag: String,
    env: Option<String>,
    text: String,
}

impl Deferred {
    /// The value as a duration (`30s`, `1h30m`, `0`).
    pub fn duration(&self) -> anyhow::Result<Duration> {
        parse_duration(&self.text).with_context(|| self.origin())
    }

    /// The value parsed with `FromStr` (e.g. the WAL fsync policy).
    pub fn parse<T>(&self) -> anyhow::Result<T>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.text
            .parse()
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.origin()))
    }

    /// `flag --name (env NORN_NAME)`: where a bad value came from.
    fn origin(&self) -> String {
        match &self.env {
            Some(env) => format!("flag --{} (env {env})", self.flag),
            None => format!("flag --{}", self.flag),
        }
    }
}

/// Parses `Option<Deferred>` fields: keeps the text, records the flag.
#[derive(Debug, Clone, Copy)]
pub struct DeferredParser;

impl TypedValueParser for DeferredParser {
    type Value = Deferred;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<Deferred, clap::Error> {
        let text = clap::builder::StringValueParser::new().parse_ref(cmd, arg, value)?;
        Ok(Deferred {
            flag: arg
                .and_then(|a| a.get_long())
                .unwrap_or_default()
                .to_owned(),
            env: arg
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned()),
            text,
        })
    }
}

impl ValueParserFactory for Deferred {
    type Parser = DeferredParser;
    fn value_parser() -> DeferredParser {
        DeferredParser
    }
}

/// `*field = flag` when the flag (or its environment variable) was given.
pub fn set<T: Clone>(field: &mut T, flag: &Option<T>) {
    if let Some(v) = flag {
        *field = v.clone();
    }
}

/// `*field = flag` parsed as a duration, when given.
pub fn set_duration(field: &mut Duration, flag: &Option<Deferred>) -> anyhow::Result<()> {
    if let Some(v) = flag {
        *field = v.duration()?;
    }
    Ok(())
}

/// The environment variable that sets a flag: `NORN_` and the flag's name upper-cased, with
/// `.` and `-` as `_` (`--blocks-storage.tsdb.dir` → `NORN_BLOCKS_STORAGE_TSDB_DIR`).
#[cfg(test)]
pub fn env_name(long: &str) -> String {
    format!("NORN_{}", long.to_uppercase().replace(['.', '-'], "_"))
}
