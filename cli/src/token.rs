//! `dllm token create`: a JWT for a person, a tool or a worker, signed with the cluster's
//! token key (`jwt-signing.key` from `dllm certs init`). Replicas verify it with the public
//! half; `dllm exec token revoke <jti>` revokes it before it expires.

use std::path::PathBuf;

use anyhow::Context;
use dllm_auth::{token::Signer, Role, DEFAULT_TRUST_DOMAIN};

use crate::{certs::role_parser, commands::Output};

/// `dllm token` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum TokenCmd {
    /// Sign a token and print it (its id and expiry go to stderr).
    Create(CreateArgs),
}

/// Flags of `dllm token create`.
#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// The Ed25519 private key to sign with (`jwt-signing.key` from `dllm certs init`).
    #[arg(long, env = "DLLM_JWT_SIGNING_KEY", value_name = "FILE")]
    pub signing_key: PathBuf,
    /// What the holder may do (replicas use certificates, never tokens).
    #[arg(long, value_parser = role_parser(&["viewer", "operator", "admin", "worker"]))]
    pub role: Role,
    /// Who holds it: a person's or tool's name, or a worker's node id.
    #[arg(long)]
    pub subject: String,
    /// How long it is valid: a number with s, m, h or d (e.g. 90m, 8h, 30d).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: u64,
    /// The cluster's trust domain (the token's audience), as given to `dllm certs init`.
    #[arg(long, env = "DLLM_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
}

/// A time to live in seconds, from `30s`, `15m`, `8h`, `30d` (or bare seconds).
///
/// # Errors
/// A message for clap when it is not a positive whole number with one of those suffixes.
pub fn parse_ttl(value: &str) -> Result<u64, String> {
    let v = value.trim();
    let (number, unit) = match v.char_indices().last() {
        Some((i, 's')) => (&v[..i], 1),
        Some((i, 'm')) => (&v[..i], 60),
        Some((i, 'h')) => (&v[..i], 3600),
        Some((i, 'd')) => (&v[..i], 86_400),
        _ => (v, 1),
    };
    let bad = || format!("{value:?}: give a whole number with s, m, h or d, e.g. 8h");
    let n: u64 = number.parse().map_err(|_| bad())?;
    match n.checked_mul(unit) {
        Some(0) => Err(format!("{value:?}: must be longer than 0")),
        Some(secs) if secs <= 10 * 365 * 86_400 => Ok(secs),
        _ => Err(format!("{value:?}: at most 3650d")),
    }
}

/// Signs a token and prints it: only the token on stdout (so `$(dllm token create ...)`
/// works), its id and expiry on stderr; with `--output json`, all of it as one JSON line.
///
/// # Errors
/// When the signing key cannot be read or is not an Ed25519 private key.
pub fn run(cmd: TokenCmd, output: Output) -> anyhow::Result<()> {
    let TokenCmd::Create(args) = cmd;
    let pem = std::fs::read(&args.signing_key)
        .with_context(|| format!("--signing-key {}", args.signing_key.display()))?;
    let signer = Signer::from_pem(&pem)
        .map_err(|e| anyhow::anyhow!("--signing-key {}: {e}", args.signing_key.display()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    let (token, claims) = signer
        .sign(&args.trust_domain, args.role, &args.subject, now, args.ttl)
        .map_err(anyhow::Error::msg)?;
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "token": token, "jti": claims.jti, "role": claims.role.as_str(),
                "subject": claims.sub, "issued_at": claims.iat, "expires_at": claims.exp,
                "trust_domain": claims.aud,
            })
        ),
        Output::Table => {
            println!("{token}");
            eprintln!(
                "token {} for {}/{} (trust domain {}), valid {} s until unix time {}; revoke with `dllm exec token revoke {}`",
                claims.jti, claims.role, claims.sub, claims.aud, args.ttl, claims.exp, claims.jti
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_take_a_unit() {
        assert_eq!(parse_ttl("45s"), Ok(45));
        assert_eq!(parse_ttl("90m"), Ok(5400));
        assert_eq!(parse_ttl(" 8h "), Ok(8 * 3600));
        assert_eq!(parse_ttl("30d"), Ok(30 * 86_400));
        assert_eq!(parse_ttl("120"), Ok(120), "bare seconds");
        for bad in [
            "",
            "h",
            "0h",
            "1.5h",
            "-1h",
            "8w",
            "1h30m",
            "99999999999999999999d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
        assert!(parse_ttl("3651d").is_err(), "at most ten years");
    }
}
