//! TLS on every connection (rustls, TLS 1.3 only, ring): each end presents a certificate and
//! checks the other's against the deployment's CA, then checks the role the peer's
//! certificate names ([`super::role`]), so the client, the server and the dealer authenticate
//! each other as *what they are* before the veil handshake runs inside the encrypted channel.
//!
//! [`Link`] is one connection, plain or TLS: a blocking byte stream for the handshake, then
//! split into a reading half and a writing half for the two threads of a party transport. The
//! halves share the rustls state behind a mutex held only while bytes are encrypted or
//! decrypted, never across a socket read or write, so a party can send a large message while
//! it receives one. Post-handshake TLS messages are avoided (no session tickets), so the
//! reading half never needs to write.
//!
//! Every socket operation is bounded twice: each system call by the socket's timeout, and a
//! whole message by a deadline ([`Link::set_deadline`]) checked between calls, so a peer that
//! stops reading, or trickles a byte per timeout, ends its session.

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection,
};

use super::role::{self, Role};

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

/// One role's TLS identity and trust: its certificate chain and key, the CA its peers'
/// certificates must chain to, and what else it requires of particular peers.
#[derive(Clone)]
pub struct TlsConfig {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    /// The role this side's own certificate names.
    pub role: Role,
    /// Per peer role, the name to check its certificate against instead of the address
    /// dialled (`--server-name`, `--dealer-name`).
    pub names: Vec<(Role, String)>,
    /// Per peer role, the only public key (DER SubjectPublicKeyInfo) it may present: the
    /// client pins its dealer.
    pub pins: Vec<(Role, Vec<u8>)>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("role", &self.role)
            .field("names", &self.names)
            .field("pins", &self.pins.len())
            .finish_non_exhaustive()
    }
}

fn err(path: &Path, what: impl std::fmt::Display) -> TlsError {
    TlsError { path: path.display().to_string(), what: what.to_string() }
}

/// The role a DER certificate names.
pub fn cert_role(der: &CertificateDer<'_>) -> Result<Role, String> {
    let ee = webpki::EndEntityCert::try_from(der)
        .map_err(|e| format!("unreadable certificate ({e})"))?;
    role::of_uris(ee.valid_uri_names())
}

/// The DER SubjectPublicKeyInfo of a certificate (what a pin compares).
pub fn cert_key(der: &CertificateDer<'_>) -> Result<Vec<u8>, String> {
    let ee = webpki::EndEntityCert::try_from(der)
        .map_err(|e| format!("unreadable certificate ({e})"))?;
    Ok(ee.subject_public_key_info().as_ref().to_vec())
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
        let Some(first) = certs.first() else {
            return Err((0, "no certificate in the file".into()));
        };
        let own_role = cert_role(first).map_err(|e| (0, e))?;
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
        // TLS 1.3 only: every veil build speaks it, and it has no renegotiation or
        // non-forward-secret key exchange to reason about.
        let versions = &[&rustls::version::TLS13];
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| (1, e.to_string()))?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(certs.clone(), key.clone_key())
            .map_err(|e| (1, format!("the key does not fit the certificate ({e})")))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| (2, e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| (1, e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| (1, format!("the key does not fit the certificate ({e})")))?;
        // No post-handshake messages: the reading half of a link never has to write.
        server.send_tls13_tickets = 0;
        Ok(TlsConfig {
            client: Arc::new(client),
            server: Arc::new(server),
            role: own_role,
            names: Vec::new(),
            pins: Vec::new(),
        })
    }

    /// The name to check `peer`'s certificate against, when one was configured.
    pub fn name_for(&self, peer: Role) -> Option<&str> {
        self.names.iter().find(|(r, _)| *r == peer).map(|(_, n)| n.as_str())
    }

    /// Pins `peer` to the public key of the certificate in the PEM file `cert`.
    pub fn pin(&mut self, peer: Role, cert: &Path) -> Result<(), TlsError> {
        let pem = std::fs::read(cert).map_err(|e| err(cert, e))?;
        let der = CertificateDer::from_pem_slice(&pem)
            .map_err(|e| err(cert, format!("not a PEM certificate ({e})")))?;
        let r = cert_role(&der).map_err(|e| err(cert, e))?;
        if r != peer {
            return Err(err(cert, format!("this is the {r}'s certificate, not the {peer}'s")));
        }
        let key = cert_key(&der).map_err(|e| err(cert, e))?;
        self.pins.push((peer, key));
        Ok(())
    }
}

/// One connection, plain TCP or TLS over TCP.
pub struct Link {
    sock: TcpStream,
    tls: Option<Arc<Mutex<Connection>>>,
    /// Decrypted bytes not yet read, from `pos`.
    plain: Vec<u8>,
    pos: usize,
    /// When the current message must be done (checked between system calls).
    deadline: Option<Instant>,
}

fn tls_io(e: rustls::Error) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, format!("TLS: {e}"))
}

fn too_slow() -> io::Error {
    io::Error::new(ErrorKind::TimedOut, "the peer moved too few bytes in the time allowed")
}

/// A socket whose every system call first checks a deadline (the TLS handshake's I/O).
struct Bounded<'a> {
    sock: &'a mut TcpStream,
    deadline: Instant,
}

impl Read for Bounded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if Instant::now() >= self.deadline {
            return Err(too_slow());
        }
        self.sock.read(buf)
    }
}

impl Write for Bounded<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if Instant::now() >= self.deadline {
            return Err(too_slow());
        }
        self.sock.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

impl Link {
    /// A plain TCP connection.
    pub fn plain(sock: TcpStream) -> Link {
        Link { sock, tls: None, plain: Vec::new(), pos: 0, deadline: None }
    }

    /// Opens TLS as the connecting side, checking the peer's certificate against `host` (or
    /// the name configured for `peer`), presenting this side's, and requiring the peer's
    /// certificate to name `peer`'s role (and key, when pinned). The handshake must finish
    /// within `timeout`.
    pub fn connect(
        sock: TcpStream,
        cfg: &TlsConfig,
        host: &str,
        peer: Role,
        timeout: Duration,
    ) -> io::Result<Link> {
        let name = cfg.name_for(peer).unwrap_or(host).to_string();
        let name = ServerName::try_from(name.clone()).map_err(|_| {
            io::Error::new(
                ErrorKind::InvalidInput,
                format!("`{name}` is not a host name or address"),
            )
        })?;
        let conn = ClientConnection::new(cfg.client.clone(), name).map_err(tls_io)?;
        let link = Link::handshake(sock, conn.into(), timeout)?;
        link.check_peer(cfg, &[peer])?;
        Ok(link)
    }

    /// Opens TLS as the accepting side, requiring a certificate from the peer that names one
    /// of the roles in `peers`. The handshake must finish within `timeout`.
    pub fn accept(
        sock: TcpStream,
        cfg: &TlsConfig,
        peers: &[Role],
        timeout: Duration,
    ) -> io::Result<Link> {
        let conn = ServerConnection::new(cfg.server.clone()).map_err(tls_io)?;
        let link = Link::handshake(sock, conn.into(), timeout)?;
        link.check_peer(cfg, peers)?;
        Ok(link)
    }

    fn handshake(mut sock: TcpStream, mut conn: Connection, timeout: Duration) -> io::Result<Link> {
        let deadline = Instant::now() + timeout;
        {
            let mut b = Bounded { sock: &mut sock, deadline };
            while conn.is_handshaking() {
                conn.complete_io(&mut b)?;
            }
            while conn.wants_write() {
                conn.write_tls(&mut b)?;
            }
        }
        // The peer may have sent data right behind its last handshake message, and the
        // handshake's socket reads already decrypted it: keep it for the first read.
        let k = conn.process_new_packets().map_err(tls_io)?.plaintext_bytes_to_read();
        let mut plain = vec![0u8; k];
        conn.reader().read_exact(&mut plain)?;
        Ok(Link { sock, tls: Some(Arc::new(Mutex::new(conn))), plain, pos: 0, deadline: None })
    }

    /// The role the peer's certificate names (`None` on a plain link).
    pub fn peer_role(&self) -> Option<Result<Role, String>> {
        let tls = self.tls.as_ref()?;
        let c = tls.lock().expect("TLS state");
        Some(match c.peer_certificates().and_then(|c| c.first()) {
            Some(der) => cert_role(der),
            None => Err("the peer presented no certificate".into()),
        })
    }

    /// Refuses a peer whose certificate names a role outside `peers`, or whose key differs
    /// from the one pinned for its role.
    fn check_peer(&self, cfg: &TlsConfig, peers: &[Role]) -> io::Result<()> {
        let denied = |what: String| io::Error::new(ErrorKind::PermissionDenied, what);
        let tls = self.tls.as_ref().expect("a TLS link");
        let c = tls.lock().expect("TLS state");
        let der = c
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| denied("the peer presented no certificate".into()))?;
        let theirs = cert_role(der).map_err(|e| denied(format!("the peer's certificate: {e}")))?;
        if !peers.contains(&theirs) {
            let want: Vec<&str> = peers.iter().map(|r| r.name()).collect();
            return Err(denied(format!(
                "the peer presented the {theirs}'s certificate where the {}'s was due",
                want.join("'s or the ")
            )));
        }
        for (r, key) in &cfg.pins {
            if *r == theirs && cert_key(der).map_err(denied)? != *key {
                return Err(denied(format!(
                    "the {theirs}'s certificate is not the pinned one (another key)"
                )));
            }
        }
        Ok(())
    }

    /// The underlying socket (timeouts, no-delay, shutdown).
    pub fn socket(&self) -> &TcpStream {
        &self.sock
    }

    /// Sets the read and write timeouts of the socket (each system call).
    pub fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        self.sock.set_read_timeout(Some(t))?;
        self.sock.set_write_timeout(Some(t))
    }

    /// Sets when the current message must be done: a read or write after it fails with
    /// `TimedOut` (`None`: only the socket's per-call timeouts apply).
    pub fn set_deadline(&mut self, d: Option<Instant>) {
        self.deadline = d;
    }

    fn check(&self) -> io::Result<()> {
        match self.deadline {
            Some(d) if Instant::now() >= d => Err(too_slow()),
            _ => Ok(()),
        }
    }

    fn sock_write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            self.check()?;
            match self.sock.write(buf) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn sock_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.check()?;
            match self.sock.read(buf) {
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }

    /// Splits into a reading half (this one, keeping any buffered plaintext) and a writing
    /// half, for two threads.
    pub fn split(self) -> io::Result<(Link, Link)> {
        let w = Link {
            sock: self.sock.try_clone()?,
            tls: self.tls.clone(),
            plain: Vec::new(),
            pos: 0,
            deadline: None,
        };
        Ok((self, w))
    }

    /// Reads one socket chunk and decrypts it into `plain`; false at end of stream.
    fn fill(&mut self) -> io::Result<bool> {
        let tls = self.tls.clone().expect("fill is for TLS links");
        let mut buf = [0u8; 1 << 14];
        let n = self.sock_read(&mut buf)?;
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
            return self.sock_read(out);
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
        let Some(tls) = self.tls.clone() else {
            self.sock_write_all(data)?;
            return Ok(data.len());
        };
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
                self.sock_write_all(&wire)?;
                wire.clear();
            }
        }
        self.sock_write_all(&wire)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}
