//! `norn tools auth hash|token`: make the entries of the `--auth.tokens-file`.
//!
//! - `hash` reads a secret on stdin (one trailing newline dropped) and prints `sha256:<hex>`,
//!   the form the file stores, so an operator can bring a secret of their own.
//! - `token --name N --tenant T --scope S…` makes a new secret from the operating system's
//!   CSPRNG and prints it once, followed by the YAML entry (which holds only its hash).

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::Subcommand;
use norn_server::auth::{Scope, TokenSet, hash_secret, new_secret};

/// `norn tools auth`.
#[derive(Debug, clap::Args)]
pub struct AuthArgs {
    #[command(subcommand)]
    pub command: AuthCommand,
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Read a secret on stdin, print its `sha256:<hex>` for the tokens file.
    Hash,
    /// Make a new random secret; print it and its tokens-file entry.
    Token {
        /// Name of the token (shown in logs and metrics).
        #[arg(long)]
        name: String,
        /// Tenant the token may act for (repeat for several; none for an admin-only token).
        #[arg(long = "tenant")]
        tenants: Vec<String>,
        /// Scope: write, read, rules or admin (repeat for several).
        #[arg(long = "scope", required = true, value_parser = parse_scope)]
        scopes: Vec<Scope>,
    },
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    serde_yaml::from_str::<Scope>(s)
        .map_err(|_| format!("unknown scope {s:?}: write, read, rules or admin"))
}

pub fn run(a: AuthArgs) -> anyhow::Result<ExitCode> {
    match a.command {
        AuthCommand::Hash => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the secret from stdin")?;
            let secret = text
                .strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(&text);
            if secret.is_empty() {
                bail!("no secret on stdin");
            }
            println!("{}", hash_secret(secret));
        }
        AuthCommand::Token {
            name,
            tenants,
            scopes,
        } => {
            let secret = new_secret().map_err(|_| anyhow!("the system CSPRNG failed"))?;
            let entry = entry(&name, &hash_secret(&secret), &tenants, &scopes);
            // The same checks the server makes when it loads the file.
            TokenSet::parse(&format!("tokens:\n{entry}"))?;
            println!("# secret (shown once; give it to the client, keep only the hash):");
            println!("{secret}");
            println!("# entry for the tokens file, under `tokens:`");
            print!("{entry}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One entry of the tokens file, indented under `tokens:`.
fn entry(name: &str, hash: &str, tenants: &[String], scopes: &[Scope]) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let tenants: Vec<String> = tenants.iter().map(|t| quote(t)).collect();
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    format!(
        "  - name: {}\n    hash: \"{hash}\"\n    tenants: [{}]\n    scopes: [{}]\n",
        quote(name),
        tenants.join(", "),
        scopes.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_parses_back() {
        let e = entry(
            "team-a agent",
            &hash_secret("s"),
            &["team-a".into()],
            &[Scope::Write, Scope::Read],
        );
        let set = TokenSet::parse(&format!("tokens:\n{e}")).unwrap();
        let t = set.lookup(b"s").unwrap();
        assert_eq!(&*t.name, "team-a agent");
        assert!(t.allows_tenant("team-a"));
        assert!(t.has_any(&[Scope::Write]) && !t.has_any(&[Scope::Admin]));
        assert!(parse_scope("admin").is_ok() && parse_scope("root").is_err());
    }
}
