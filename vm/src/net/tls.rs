//! TLS on every connection (rustls, TLS 1.3/1.2, ring): each end presents a certificate and
//! checks the other's against the deployment's CA, so the client, the server and the dealer
//! authenticate each other before the veil handshake runs inside the encrypted channel.
//!
//! [`Link`] is one connection, plain or TLS: a blocking byte stream for the handshake, then
//! split into a reading half and a writing half for the two threads of a party transport. The
//! halves share the rustls state behind a mutex held only while bytes are encrypted or
//! decrypted, never across a socket read or write, so a party can send a large message while
//! it receives one. Post-handshake TLS messages are avoided (no session tickets), so the
//! reading half never needs to write.

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection,
};

/// Plaintext is encrypted a record at a time (rustls buffers at most 64 KiB of unsent
/// records), and the records are written to the socket in batches of about `BATCH` bytes.
const CHUNK: usize = 1 << 14;
const BATCH: usize = 1 << 18;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {path}: {what}")]
pub struct TlsError {
    /// The file (or "configuration").
    pub path: String,
    /// What was wrong.
    pub what: String,
}

/// One role's TLS identity and trust: its certificate chain and key, and the CA its peers'
/// certificates must chain to.
#[derive(Clone)]
pub struct TlsConfig {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    /// The name to check the peer's certificate against instead of the host being dialled.
    pub peer_name: Option<String>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig").field("peer_name", &self.peer_name).finish_non_exhaustive()
    }
}

fn err(path: &Path, what: impl std::fmt::Display) -> TlsError {
    TlsError { path: path.display().to_string(), what: what.to_string() }
}

impl TlsConfig {
    /// Reads PEM files: `cert` (this role's certificate chain), `key` (its private key) and
    /// `ca` (the certificate(s) peers must chain to).
    pub fn from_files(cert: &Path, key: &Path, ca: &Path) -> Result<TlsConfig, TlsError> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| err(p, e));
        TlsConfig::from_pem(&read(cert)?, &read(key)?, &read(ca)?)
            .map_err(|(which, what)| err([cert, key, ca][which], what))
    }

    /// As [`Self::from_files`] from PEM bytes; the error says which input (0 cert, 1 key,
    /// 2 CA) was wrong.
    pub fn from_pem(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<TlsConfig, (usize, String)> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<_, _>>()
            .map_err(|e| (0, format!("not a PEM certificate file ({e})")))?;
        if certs.is_empty() {
            return Err((0, "no certificate in the file".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| (1, format!("not a PEM private key ({e})")))?;
        let mut roots = RootCertStore::empty();
        let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca)
            .collect::<Result<_, _>>()
            .map_err(|e| (2, format!("not a PEM certificate file ({e})")))?;
        if cas.is_empty() {
            return Err((2, "no CA certificate in the file".into()));
        }
        for c in cas {
            roots.add(c).map_err(|e| (2, format!("unusable CA certificate ({e})")))?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| (1, e.to_string()))?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(certs.clone(), key.clone_key())
            .map_err(|e| (1, format!("the key does not fit the certificate ({e})")))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| (2, e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| (1, e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| (1, format!("the key does not fit the certificate ({e})")))?;
        // No post-handshake messages: the reading half of a link never has to write.
        server.send_tls13_tickets = 0;
        Ok(TlsConfig { client: Arc::new(client), server: Arc::new(server), peer_name: None })
    }
}

/// One connection, plain TCP or TLS over TCP.
pub struct Link {
    sock: TcpStream,
    tls: Option<Arc<Mutex<Connection>>>,
    /// Decrypted bytes not yet read, from `pos`.
    plain: Vec<u8>,
    pos: usize,
}

fn tls_io(e: rustls::Error) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, format!("TLS: {e}"))
}

impl Link {
    /// A plain TCP connection.
    pub fn plain(sock: TcpStream) -> Link {
        Link { sock, tls: None, plain: Vec::new(), pos: 0 }
    }

    /// Opens TLS as the connecting side, checking the peer's certificate against `host` (or
    /// the configured peer name) and presenting this side's.
    pub fn connect(sock: TcpStream, cfg: &TlsConfig, host: &str) -> io::Result<Link> {
        let name = cfg.peer_name.as_deref().unwrap_or(host).to_string();
        let name = ServerName::try_from(name.clone()).map_err(|_| {
            io::Error::new(
                ErrorKind::InvalidInput,
                format!("`{name}` is not a host name or address"),
            )
        })?;
        let conn = ClientConnection::new(cfg.client.clone(), name).map_err(tls_io)?;
        Link::handshake(sock, conn.into())
    }

    /// Opens TLS as the accepting side, requiring a certificate from the peer.
    pub fn accept(sock: TcpStream, cfg: &TlsConfig) -> io::Result<Link> {
        let conn = ServerConnection::new(cfg.server.clone()).map_err(tls_io)?;
        Link::handshake(sock, conn.into())
    }

    fn handshake(mut sock: TcpStream, mut conn: Connection) -> io::Result<Link> {
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        while conn.wants_write() {
            conn.write_tls(&mut sock)?;
        }
        // The peer may have sent data right behind its last handshake message, and the
        // handshake's socket reads already decrypted it: keep it for the first read.
        let k = conn.process_new_packets().map_err(tls_io)?.plaintext_bytes_to_read();
        let mut plain = vec![0u8; k];
        conn.reader().read_exact(&mut plain)?;
        Ok(Link { sock, tls: Some(Arc::new(Mutex::new(conn))), plain, pos: 0 })
    }

    /// The underlying socket (timeouts, no-delay).
    pub fn socket(&self) -> &TcpStream {
        &self.sock
    }

    /// Sets the read timeout of the socket.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(t)
    }

    /// Splits into a reading half (this one, keeping any buffered plaintext) and a writing
    /// half, for two threads.
    pub fn split(self) -> io::Result<(Link, Link)> {
        let w =
            Link { sock: self.sock.try_clone()?, tls: self.tls.clone(), plain: Vec::new(), pos: 0 };
        Ok((self, w))
    }

    /// Reads one socket chunk and decrypts it into `plain`; false at end of stream.
    fn fill(&mut self) -> io::Result<bool> {
        let tls = self.tls.clone().expect("fill is for TLS links");
        let mut buf = [0u8; 1 << 14];
        let n = self.sock.read(&mut buf)?;
        if n == 0 {
            return Ok(false);
        }
        self.plain.drain(..self.pos);
        self.pos = 0;
        let mut slice = &buf[..n];
        let mut c = tls.lock().expect("TLS state");
        while !slice.is_empty() {
            c.read_tls(&mut slice)?;
            let st = c.process_new_packets().map_err(tls_io)?;
            let k = st.plaintext_bytes_to_read();
            if k > 0 {
                let old = self.plain.len();
                self.plain.resize(old + k, 0);
                c.reader().read_exact(&mut self.plain[old..])?;
            }
        }
        Ok(true)
    }
}

impl Read for Link {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.tls.is_none() {
            return self.sock.read(out);
        }
        while self.pos == self.plain.len() {
            if !self.fill()? {
                return Ok(0);
            }
        }
        let n = out.len().min(self.plain.len() - self.pos);
        out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Link {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some(tls) = &self.tls else { return self.sock.write(data) };
        let mut wire = Vec::with_capacity(data.len().min(BATCH) + CHUNK);
        for piece in data.chunks(CHUNK) {
            {
                let mut c = tls.lock().expect("TLS state");
                c.writer().write_all(piece)?;
                while c.wants_write() {
                    c.write_tls(&mut wire)?;
                }
            }
            if wire.len() >= BATCH {
                self.sock.write_all(&wire)?;
                wire.clear();
            }
        }
        self.sock.write_all(&wire)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}
