//! `veil keygen`: TLS certificates for a deployment (a CA, and one certificate per role).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use veil_vm::net::keygen::generate;

/// Arguments of `veil keygen`.
#[derive(clap::Args)]
pub struct Args {
    /// Host names and IP addresses the roles are reached at (every certificate carries them
    /// all); repeatable.
    #[arg(long = "name", value_name = "HOST", default_value = "127.0.0.1")]
    pub names: Vec<String>,
    /// Directory to write ca.pem, ca.key and client/server/dealer .pem and .key into.
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
}

/// Writes `text` to `path` (mode 0600 for keys), refusing to overwrite.
fn write_new(path: &Path, text: &str, secret: bool) -> Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = o.open(path).with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut f, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Generates and writes the files.
pub fn run(a: Args) -> Result<()> {
    let keys = generate(&a.names).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("creating {}", a.output.display()))?;
    let mut files = vec![("ca.pem".to_string(), keys.ca_cert.clone(), false)];
    files.push(("ca.key".into(), keys.ca_key.clone(), true));
    for (role, cert, key) in &keys.roles {
        files.push((format!("{role}.pem"), cert.clone(), false));
        files.push((format!("{role}.key"), key.clone(), true));
    }
    // Check first, so that nothing is half-written when one file exists.
    for (name, _, _) in &files {
        let p = a.output.join(name);
        if p.exists() {
            bail!("{} exists: keygen does not overwrite keys (choose another -o)", p.display());
        }
    }
    for (name, text, secret) in &files {
        write_new(&a.output.join(name), text, *secret)?;
    }
    println!("wrote {} (for hosts {}):", a.output.display(), a.names.join(", "));
    println!("  ca.pem  the CA every role trusts; ca.key  its key (keep offline)");
    println!("  client.pem/.key → the client (`veil connect --tls DIR`)");
    println!("  server.pem/.key → the server (`veil serve --tls DIR`)");
    println!("  dealer.pem/.key → the dealer (`veil dealer --tls DIR`)");
    println!("each machine needs ca.pem and its own pair only");
    Ok(())
}
