//! `norn tools check-config [SERVER FLAGS…]`: validates a server command line without serving.
//!
//! It runs exactly what `norn` does before it binds anything — clap's parsing of the flags and
//! their `NORN_…` environment variables, the YAML file of `--config.file` (unknown keys are
//! errors), the values' own checks and the `--target` list — and stops there. Deployment
//! manifests (`deploy/kubernetes/`) are checked with it in tests, so a flag renamed in the code
//! fails the test rather than a rollout. Files the server only opens while starting (the
//! runtime overrides file, the tokens file) are not read.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};

use crate::config::{Args, Config};

/// `norn tools check-config`.
#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// The server's flags, as they would follow `norn` (e.g. `--target=ingester --config.file=…`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "SERVER FLAGS"
    )]
    pub server_args: Vec<OsString>,
}

pub fn run(a: CheckConfigArgs) -> anyhow::Result<ExitCode> {
    let argv = std::iter::once(OsString::from("norn")).chain(a.server_args);
    let matches = Args::command().try_get_matches_from(argv).map_err(|e| {
        // clap's message starts with its own "error: ", which `norn tools` adds again.
        let text = e.render().to_string();
        let text = text.strip_prefix("error: ").unwrap_or(&text);
        anyhow::anyhow!("{}", text.trim_end())
    })?;
    let args = Args::from_arg_matches(&matches).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg = Config::load(&args)?;
    let (modules, _) = crate::modules::resolve(&cfg.target).context("--target")?;
    let names: Vec<&str> = modules.iter().map(|m| m.name).collect();
    println!("configuration OK: target {}", names.join(","));
    Ok(ExitCode::SUCCESS)
}
