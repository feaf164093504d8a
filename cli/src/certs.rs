//! `dllm certs`: make a cluster's CA, replica certificates and token key pair (`init`), and
//! a certificate for a worker, a person or a tool (`issue`). The work is done by
//! [`dllm_auth::certs`]; this file is the flags and what is printed.

use std::path::{Path, PathBuf};

use anyhow::Context;
use dllm_auth::{certs, Role, DEFAULT_TRUST_DOMAIN};

/// `dllm certs` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum CertsCmd {
    /// Make a new cluster's CA, a certificate per replica and the token signing key pair.
    Init(InitArgs),
    /// Issue a certificate signed by the cluster CA (also renews one).
    Issue(IssueArgs),
}

/// Flags of `dllm certs init`.
#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Folder to write to (created if missing; refused if it already holds a ca.key).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Host names and IP addresses clients reach the replicas by (localhost and 127.0.0.1
    /// are always added).
    #[arg(long, value_delimiter = ',', value_name = "HOST,...")]
    pub hosts: Vec<String>,
    /// Replicas to make certificates for (replica-1 .. replica-N).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub replicas: u32,
    /// The cluster's trust domain (in every certificate's spiffe:// name and every token).
    #[arg(long, env = "DLLM_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
}

/// Flags of `dllm certs issue`.
#[derive(clap::Args, Debug)]
pub struct IssueArgs {
    /// The folder `dllm certs init` wrote (its ca.crt and ca.key sign).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// What the holder may do.
    #[arg(long, value_parser = role_parser(&["viewer", "operator", "admin", "worker", "replica"]))]
    pub role: Role,
    /// Who holds it: a worker's node id, a replica's id, a person's or tool's name. The files
    /// are DIR/NAME.crt and DIR/NAME.key (DIR/replica-NAME.* for a replica).
    #[arg(long)]
    pub name: String,
    /// For a worker or replica (which serve gRPC too): host names and IP addresses it is
    /// reached by (localhost and 127.0.0.1 are always added).
    #[arg(long, value_delimiter = ',', value_name = "HOST,...")]
    pub hosts: Vec<String>,
    /// The cluster's trust domain, as given to `dllm certs init`.
    #[arg(long, env = "DLLM_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
}

/// A `--role` parser that offers `names` (and lists them in `--help`).
pub fn role_parser(
    names: &'static [&'static str],
) -> impl clap::builder::TypedValueParser<Value = Role> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(names)
        .map(|s| Role::parse(&s).unwrap_or_else(|| unreachable!("{s} is one of the roles")))
}

/// Runs a `dllm certs` subcommand and prints what it wrote.
///
/// # Errors
/// What [`certs::init`] or [`certs::issue`] refused.
pub fn run(cmd: CertsCmd) -> anyhow::Result<()> {
    match cmd {
        CertsCmd::Init(args) => {
            certs::init(&args.dir, &args.hosts, args.replicas, &args.trust_domain)?;
            print!("{}", init_report(&args, &absolute(&args.dir)));
        }
        CertsCmd::Issue(args) => {
            let (cert, key) = certs::issue(
                &args.dir,
                args.role,
                &args.name,
                &args.trust_domain,
                &args.hosts,
            )
            .with_context(|| format!("issuing a {} certificate", args.role))?;
            print!("{}", issue_report(&args, &absolute(&cert), &absolute(&key)));
        }
    }
    Ok(())
}

fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `--trust-domain T`, when T is not the default every binary assumes.
fn trust_domain_flag(trust_domain: &str) -> String {
    if trust_domain == DEFAULT_TRUST_DOMAIN {
        String::new()
    } else {
        format!(" --trust-domain {trust_domain}")
    }
}

fn sans(hosts: &[String]) -> String {
    let mut all: Vec<&str> = hosts
        .iter()
        .map(|h| h.trim())
        .filter(|h| !h.is_empty())
        .collect();
    for always in ["localhost", "127.0.0.1"] {
        if !all.contains(&always) {
            all.push(always);
        }
    }
    all.join(", ")
}

fn init_report(args: &InitArgs, dir: &Path) -> String {
    let d = dir.display();
    let td = trust_domain_flag(&args.trust_domain);
    let n = args.replicas;
    format!(
        "wrote to {d} (trust domain {trust_domain}):
  ca.crt, ca.key           the cluster CA; keep ca.key safe, only `dllm certs issue` needs it
  replica-<i>.crt, .key    one per replica, i = 1..{n}; names: {sans}
  jwt-signing.key          signs tokens (`dllm token create`); keep it safe
  jwt-signing.pub          replicas verify tokens with it

next:
  start replica <i> with
    dllm-control-plane --id <i> --tls-ca {d}/ca.crt --tls-cert {d}/replica-<i>.crt --tls-key {d}/replica-<i>.key --jwt-public-key {d}/jwt-signing.pub{td} ...
  give each worker a certificate named after its node id, and start it with it
    dllm certs issue --dir {d} --role worker --name <node-id> --hosts <its address>{td}
    dllm-worker --node-id <node-id> --tls-ca {d}/ca.crt --tls-cert {d}/<node-id>.crt --tls-key {d}/<node-id>.key{td} ...
  give yourself a certificate (roles: viewer, operator, admin)
    dllm certs issue --dir {d} --role admin --name <you>{td}
    export DLLM_TLS_CA={d}/ca.crt DLLM_TLS_CERT={d}/<you>.crt DLLM_TLS_KEY={d}/<you>.key
  or a token, used with --tls-ca (DLLM_TLS_CA) and --token (DLLM_TOKEN)
    dllm token create --signing-key {d}/jwt-signing.key --role operator --subject <name> --ttl 8h{td}
",
        trust_domain = args.trust_domain,
        sans = sans(&args.hosts),
    )
}

fn issue_report(args: &IssueArgs, cert: &Path, key: &Path) -> String {
    let uri = dllm_auth::identity::spiffe_uri(&args.trust_domain, args.role, &args.name);
    let mut out = format!(
        "wrote {} and {}\n  identity  {uri}\n",
        cert.display(),
        key.display()
    );
    let ca = cert.with_file_name(certs::CA_CERT);
    let td = trust_domain_flag(&args.trust_domain);
    let public = cert.with_file_name(certs::JWT_PUBLIC_KEY);
    let (ca, public, cert, key) = (
        ca.display(),
        public.display(),
        cert.display(),
        key.display(),
    );
    match args.role {
        Role::Worker | Role::Replica => {
            out.push_str(&format!("  names     {}\n", sans(&args.hosts)));
            let (start, jwt) = if args.role == Role::Worker {
                (
                    format!("dllm-worker --node-id {}", args.name),
                    String::new(),
                )
            } else {
                (
                    format!("dllm-control-plane --id {}", args.name),
                    format!(" --jwt-public-key {public}"),
                )
            };
            out.push_str(&format!(
                "\nstart it with\n  {start} --tls-ca {ca} --tls-cert {cert} --tls-key {key}{jwt}{td} ...\n"
            ));
        }
        _ => out.push_str(&format!(
            "\nuse it with\n  export DLLM_TLS_CA={ca} DLLM_TLS_CERT={cert} DLLM_TLS_KEY={key}\n"
        )),
    }
    out
}
