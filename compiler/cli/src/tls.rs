//! TLS flags shared by `serve`, `dealer` and `connect`: certificates from `veil keygen` (or
//! any PEM files that name their role), or `--insecure` for plain TCP.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use veil_vm::net::role::Role;
use veil_vm::net::tls::TlsConfig;

/// The flags.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// A directory written by `veil keygen`: uses ca.pem and this role's ROLE.pem and ROLE.key.
    #[arg(long, value_name = "DIR")]
    pub tls: Option<PathBuf>,
    /// This role's certificate chain (PEM; overrides --tls). It must name the role
    /// (subjectAltName URI urn:veil:role:client|server|dealer; `veil keygen` writes it).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// This role's private key (PEM; overrides --tls).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// The CA that peers' certificates must chain to (PEM; overrides --tls).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Check the server's certificate against this name instead of the address dialled.
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// Check the dealer's certificate against this name instead of the address dialled.
    #[arg(long, value_name = "NAME")]
    pub dealer_name: Option<String>,
    /// Accept only the dealer whose certificate (its public key) is in this PEM file: a client
    /// that pins its dealer trusts no other certificate the CA may sign for that role.
    #[arg(long, value_name = "DEALER.pem")]
    pub pin_dealer: Option<PathBuf>,
    /// Plain TCP, no encryption or authentication: only on a network you trust (local tests).
    #[arg(long, conflicts_with_all = ["tls", "tls_cert", "tls_key", "tls_ca", "pin_dealer"])]
    pub insecure: bool,
}

impl TlsArgs {
    /// The configuration of `role`, or `None` with `--insecure`. The certificate must be
    /// `role`'s.
    pub fn config(&self, role: Role) -> Result<Option<TlsConfig>> {
        if self.insecure {
            return Ok(None);
        }
        let pick = |given: &Option<PathBuf>, file: String, flag: &str| -> Result<PathBuf> {
            match (given, &self.tls) {
                (Some(p), _) => Ok(p.clone()),
                (None, Some(dir)) => Ok(dir.join(file)),
                (None, None) => bail!(
                    "connections are TLS: give --tls DIR (from `veil keygen`) or {flag} and the \
                     other --tls-* files; --insecure for plain TCP on a trusted network"
                ),
            }
        };
        let cert = pick(&self.tls_cert, format!("{role}.pem"), "--tls-cert")?;
        let key = pick(&self.tls_key, format!("{role}.key"), "--tls-key")?;
        let ca = pick(&self.tls_ca, "ca.pem".into(), "--tls-ca")?;
        let mut c = TlsConfig::from_files(&cert, &key, &ca)?;
        if c.role != role {
            bail!(
                "{}: this is the {}'s certificate (urn:veil:role:{}); the {role} needs its own \
                 (--tls-cert/--tls-key, or {role}.pem in the --tls directory)",
                cert.display(),
                c.role,
                c.role
            );
        }
        if let Some(n) = &self.server_name {
            c.names.push((Role::Server, n.clone()));
        }
        if let Some(n) = &self.dealer_name {
            c.names.push((Role::Dealer, n.clone()));
        }
        if let Some(p) = &self.pin_dealer {
            c.pin(Role::Dealer, p)?;
        }
        Ok(Some(c))
    }

    /// The flags that give a child process the same TLS setting (for `veil run`).
    pub fn child_flags(dir: Option<&Path>) -> Vec<String> {
        match dir {
            Some(d) => vec!["--tls".into(), d.display().to_string()],
            None => vec!["--insecure".into()],
        }
    }
}
