//! `norn tools …`: operator commands — offline ones that work on Norn's bucket without a
//! running server, `rules`, a client of the ruler's config API, `auth`, which makes
//! entries of the tokens file, `check-config`, which validates a server command line, and
//! `ready`, the container image's health probe.
//!
//! Each tool is a module under `tools/` and takes the server's own flag blocks (and so the
//! same names, config file and `NORN_…` environment variables) for what it shares with it.

mod auth;
mod bucket;
mod check_config;
mod import_blocks;
mod ready;
mod rules;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use auth::AuthArgs;
use bucket::BucketArgs;
use check_config::CheckConfigArgs;
use import_blocks::ImportBlocksArgs;
use ready::ReadyArgs;
use rules::RulesArgs;

/// `norn tools`: offline commands.
#[derive(Debug, Parser)]
#[command(
    name = "norn tools",
    bin_name = "norn tools",
    version,
    about = "Norn operator tools: the blocks bucket (offline) and the ruler's rules API."
)]
pub struct ToolsArgs {
    #[command(subcommand)]
    pub tool: Tool,
}

#[derive(Debug, Subcommand)]
pub enum Tool {
    /// Verify Prometheus TSDB blocks and upload them into a tenant's part of the bucket.
    #[command(
        name = "import-blocks",
        long_about = "Verify Prometheus TSDB blocks and upload them into a tenant's part of the \
                      blocks bucket, where queries find them.\n\n\
                      Each DIR is a block directory (<ULID>/ with meta.json) or a TSDB directory \
                      holding blocks (Prometheus' data dir, a snapshot, `promtool tsdb \
                      create-blocks-from` output). Corrupt blocks are reported and skipped; the \
                      exit code is 1 if any block was not imported. Blocks already in the \
                      bucket are skipped, so re-running is safe."
    )]
    ImportBlocks(ImportBlocksArgs),
    /// See a tenant's blocks in the bucket (ls, inspect) and mark or unmark them by hand.
    #[command(
        name = "bucket",
        long_about = "See a tenant's blocks in the blocks bucket and mark or unmark them by hand.\n\n\
                      ls lists every block (time range, compaction level, series, samples, \
                      size, marks; partial blocks with their age), inspect shows one block's \
                      meta.json, files and marks, mark and unmark write or remove a deletion or \
                      no-compact mark where the compactor and the bucket index read it."
    )]
    Bucket(BucketArgs),
    /// Manage a tenant's rule groups over the ruler's config API (what mimirtool rules does).
    #[command(
        name = "rules",
        long_about = "Manage a tenant's recording and alerting rule groups over the ruler's \
                      config API (/prometheus/config/v1/rules), as mimirtool rules does.\n\n\
                      load uploads files' groups, list/get/delete read and remove them, diff \
                      shows and sync applies what makes the server hold exactly the files' \
                      groups, lint checks files without a server. A file is Prometheus' rule \
                      file with an optional top-level `namespace:` (default: the file name)."
    )]
    Rules(RulesArgs),
    /// Make entries of the --auth.tokens-file: hash a secret, or make a new token.
    #[command(
        name = "auth",
        long_about = "Make entries of the --auth.tokens-file.\n\n\
                      hash reads a secret on stdin and prints sha256:<hex>; token makes a new \
                      random secret (operating-system CSPRNG), prints it once and the YAML \
                      entry that holds only its hash."
    )]
    Auth(AuthArgs),
    /// Check a server command line (flags, environment, config file) without serving.
    #[command(
        name = "check-config",
        long_about = "Check a server command line without serving: the flags that follow (as \
                      they would follow `norn`), their NORN_… environment variables, the YAML \
                      file of --config.file and --target are parsed and validated exactly as \
                      `norn` does before it binds a port. Prints `configuration OK` and exits 0, \
                      or prints the error and exits 1."
    )]
    CheckConfig(CheckConfigArgs),
    /// Exit 0 when a Norn process answers its /ready with 200 (the image's HEALTHCHECK).
    #[command(
        name = "ready",
        long_about = "Probe a Norn process' readiness endpoint: exit 0 when it answers 200, \
                      1 otherwise (printing the status and the reason it gave, or why no \
                      answer came within the timeout). The container image's HEALTHCHECK, so \
                      the image needs no curl."
    )]
    Ready(ReadyArgs),
}

/// Entry point for `norn tools …`; `argv` starts with `tools`. Errors are printed as one
/// `error: …` line (the cause chain, no backtrace) and exit with 1; usage errors with 2.
pub fn main(argv: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args = ToolsArgs::parse_from(argv);
    let result = match args.tool {
        Tool::ImportBlocks(a) => import_blocks::run(a),
        Tool::Bucket(a) => bucket::run(a),
        Tool::Rules(a) => rules::run(a),
        Tool::Auth(a) => auth::run(a),
        Tool::CheckConfig(a) => check_config::run(a),
        Tool::Ready(a) => ready::run(a),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(1)
    })
}
