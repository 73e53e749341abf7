//! The rustls adapter: the only file of the crate that names `rustls` (and its `pki_types`).
//!
//! [`TlsServer`] wraps an `Arc<rustls::ServerConfig>` built with the aws-lc-rs provider passed
//! explicitly (never the process-default provider). [`TlsSession`] wraps a
//! `rustls::ServerConnection` behind a sans-IO byte interface: ciphertext in
//! ([`TlsSession::handle_ciphertext`]), plaintext out ([`TlsSession::read_plaintext`]), plaintext
//! in ([`TlsSession::write_plaintext`]), ciphertext out ([`TlsSession::poll_ciphertext`]).
//!
//! Buffering is bounded: rustls keeps at most one partial record (or 64 KiB of a handshake
//! message) of received ciphertext and stops taking ciphertext once 16 KiB of received plaintext
//! wait to be read; outgoing plaintext queued during the handshake and encrypted records not yet
//! polled are bounded by [`TlsConfig::buffer_limit`].
//!
//! Cipher suites: rustls's defaults for the aws-lc-rs provider, all AEAD
//! (TLS13_AES_256_GCM_SHA384, TLS13_AES_128_GCM_SHA256, TLS13_CHACHA20_POLY1305_SHA256 and the
//! ECDHE_{ECDSA,RSA} AES-GCM / ChaCha20-Poly1305 suites for TLS 1.2). rustls has no CBC suites, no
//! RSA key exchange, no TLS 1.0/1.1 and no renegotiation, so none can be enabled.

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;

use rustls::client::verify_server_name;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{
    ClientHello, ParsedCertificate, ResolvesServerCert, ServerConfig, ServerConnection,
    ServerSessionMemoryCache,
};
use rustls::sign::CertifiedKey;
use rustls::{HandshakeKind, ProtocolVersion};

use super::{TlsConfig, TlsError};

const CERT_HINT: &str = "pass --cert with a PEM certificate chain";
const KEY_HINT: &str = "pass --key with a PEM private key: PKCS#8, SEC1 or PKCS#1";

/// The TLS server configuration shared by all sessions: certificates, protocol versions, ALPN,
/// session resumption. Cheap to clone (one `Arc`); `Send + Sync`.
#[derive(Clone)]
pub struct TlsServer {
    config: Arc<ServerConfig>,
    buffer_limit: usize,
}

impl fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServer")
            .field("alpn", &self.config.alpn_protocols)
            .field("buffer_limit", &self.buffer_limit)
            .finish_non_exhaustive()
    }
}

impl TlsServer {
    /// Builds the server from `cfg`, reading each certificate chain and key from its PEM files.
    pub fn new(cfg: &TlsConfig) -> Result<TlsServer, TlsError> {
        cfg.validate()?;
        if cfg.certs.is_empty() {
            return Err(TlsError::Config(
                "no certificate configured: pass --cert and --key (PEM files)".to_string(),
            ));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut keys = Vec::with_capacity(cfg.certs.len());
        for files in &cfg.certs {
            let cert = std::fs::read(&files.cert).map_err(|source| TlsError::ReadFile {
                what: "certificate",
                path: files.cert.clone(),
                source,
                hint: CERT_HINT,
            })?;
            let key = std::fs::read(&files.key).map_err(|source| TlsError::ReadFile {
                what: "private key",
                path: files.key.clone(),
                source,
                hint: KEY_HINT,
            })?;
            keys.push(load_key(
                &cert,
                &key,
                &files.cert.display().to_string(),
                &files.key.display().to_string(),
                &provider,
            )?);
        }
        Self::build(keys, provider, cfg)
    }

    /// Builds the server from in-memory PEM `(certificate chain, private key)` pairs, the first
    /// being the default; `cfg.certs` is ignored.
    pub fn from_pem(chains: &[(&[u8], &[u8])], cfg: &TlsConfig) -> Result<TlsServer, TlsError> {
        cfg.validate()?;
        if chains.is_empty() {
            return Err(TlsError::Config(
                "no certificate given: pass at least one PEM certificate chain and key".to_string(),
            ));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut keys = Vec::with_capacity(chains.len());
        for (i, (cert, key)) in chains.iter().enumerate() {
            keys.push(load_key(
                cert,
                key,
                &format!("certificate chain #{i}"),
                &format!("private key #{i}"),
                &provider,
            )?);
        }
        Self::build(keys, provider, cfg)
    }

    fn build(
        keys: Vec<Arc<CertifiedKey>>,
        provider: Arc<CryptoProvider>,
        cfg: &TlsConfig,
    ) -> Result<TlsServer, TlsError> {
        let versions: &[&'static rustls::SupportedProtocolVersion] = if cfg.tls12 {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| TlsError::Config(format!("cannot set up the TLS versions: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SniResolver { keys }));
        config.alpn_protocols = cfg.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        config.ignore_client_order = false;
        config.session_storage = if cfg.session_cache > 0 {
            ServerSessionMemoryCache::new(cfg.session_cache)
        } else {
            Arc::new(rustls::server::NoServerSessionStorage {})
        };
        if cfg.tickets {
            config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| {
                TlsError::Config(format!(
                    "cannot create the session ticket keys: {e} (set tls.tickets = false)"
                ))
            })?;
        }
        Ok(TlsServer {
            config: Arc::new(config),
            buffer_limit: cfg.buffer_limit,
        })
    }

    /// A new server session, waiting for a ClientHello.
    pub fn accept(&self) -> Result<TlsSession, TlsError> {
        let mut conn = ServerConnection::new(self.config.clone())
            .map_err(|e| TlsError::Config(format!("cannot start a TLS session: {e}")))?;
        conn.set_buffer_limit(Some(self.buffer_limit));
        Ok(TlsSession {
            conn,
            limit: self.buffer_limit,
            tls_queued: 0,
            handshake_plaintext: 0,
            plaintext_pending: 0,
            close_notify: false,
            closed: false,
            error: None,
        })
    }
}

/// Parses one PEM chain and key and checks that they belong together.
fn load_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_label: &str,
    key_label: &str,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let bad = |msg: String| TlsError::BadCertificate(msg);
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("{cert_label} is not valid PEM: {e} ({CERT_HINT})")))?;
    let Some(end_entity) = chain.first() else {
        return Err(bad(format!(
            "no certificate in {cert_label} (expected PEM 'CERTIFICATE' blocks; {CERT_HINT})"
        )));
    };
    ParsedCertificate::try_from(end_entity).map_err(|e| {
        bad(format!(
            "the first certificate of {cert_label} cannot be parsed: {e} ({CERT_HINT})"
        ))
    })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => bad(format!(
            "no private key in {key_label} (expected a PEM 'PRIVATE KEY', 'EC PRIVATE KEY' or \
             'RSA PRIVATE KEY' block; {KEY_HINT})"
        )),
        e => bad(format!("{key_label} is not valid PEM: {e} ({KEY_HINT})")),
    })?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        bad(format!(
            "{key_label} cannot be used with {cert_label}: {e} (give the key of that certificate)"
        ))
    })?;
    Ok(Arc::new(key))
}

/// Picks the certificate whose subjectAltName DNS names (wildcards included, as webpki checks
/// them) match the client's SNI name; otherwise, or without SNI, the first one.
#[derive(Debug)]
struct SniResolver {
    keys: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let default = self.keys.first();
        if self.keys.len() > 1 {
            if let Some(name) = hello
                .server_name()
                .and_then(|n| ServerName::try_from(n).ok())
            {
                // Parsing a certificate is a walk over its DER (no crypto): cheap next to the
                // handshake's signatures, and there are only a few certificates.
                let matching = self.keys.iter().find(|key| {
                    key.cert.first().is_some_and(|ee| {
                        ParsedCertificate::try_from(ee)
                            .is_ok_and(|cert| verify_server_name(&cert, &name).is_ok())
                    })
                });
                if let Some(key) = matching {
                    return Some(key.clone());
                }
            }
        }
        default.cloned()
    }
}

/// The TLS protocol version of an established session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 (RFC 5246).
    Tls12,
    /// TLS 1.3 (RFC 8446).
    Tls13,
}

/// What was negotiated, once the handshake is over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// Protocol version.
    pub version: TlsVersion,
    /// Cipher suite, IANA-style name, e.g. `"TLS13_AES_128_GCM_SHA256"`.
    pub suite: &'static str,
    /// The session was resumed (ticket or session ID), not a full handshake.
    pub resumed: bool,
    /// The SNI name the client sent.
    pub sni: Option<String>,
    /// The ALPN protocol agreed, if any.
    pub alpn: Option<Vec<u8>>,
}

/// One server-side TLS session: a sans-IO byte pump around `rustls::ServerConnection`.
pub struct TlsSession {
    conn: ServerConnection,
    /// `TlsConfig::buffer_limit`.
    limit: usize,
    /// Bytes of encrypted records waiting for `poll_ciphertext` (as of the last update).
    tls_queued: usize,
    /// Plaintext accepted while handshaking (rustls holds it until the handshake ends).
    handshake_plaintext: usize,
    /// Decrypted bytes waiting for `read_plaintext`.
    plaintext_pending: usize,
    /// The peer's close_notify arrived.
    close_notify: bool,
    /// We queued our close_notify.
    closed: bool,
    /// The fatal error, once one happened.
    error: Option<String>,
}

impl fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.conn.is_handshaking())
            .field("tls_queued", &self.tls_queued)
            .field("plaintext_pending", &self.plaintext_pending)
            .field("close_notify", &self.close_notify)
            .field("closed", &self.closed)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl TlsSession {
    /// Feeds received ciphertext. Returns the bytes consumed: fewer than `data.len()` when rustls's
    /// received-plaintext buffer is full (read plaintext, then call again with the rest). Bytes
    /// after the peer's close_notify are consumed and ignored (RFC 8446 §6.1). On a protocol error
    /// returns [`TlsError::Protocol`]; the alert rustls wants to send (if any) is then available
    /// from [`poll_ciphertext`](Self::poll_ciphertext) and [`is_dead`](Self::is_dead) is true;
    /// later calls return the same error. Never panics on any input.
    pub fn handle_ciphertext(&mut self, data: &[u8]) -> Result<usize, TlsError> {
        if let Some(e) = &self.error {
            return Err(TlsError::Protocol(e.clone()));
        }
        let mut used = 0;
        while used < data.len() {
            if self.close_notify {
                return Ok(data.len());
            }
            let mut rest = &data[used..];
            match self.conn.read_tls(&mut rest) {
                // Only after close_notify (the input is never empty).
                Ok(0) => return Ok(data.len()),
                Ok(n) => used += n,
                // The received-plaintext buffer is full: backpressure.
                Err(e) if e.kind() == ErrorKind::Other => break,
                // The deframer buffer is full without a complete message.
                Err(e) => return Err(self.fail(e.to_string())),
            }
            match self.conn.process_new_packets() {
                Ok(io) => {
                    self.tls_queued = io.tls_bytes_to_write();
                    self.plaintext_pending = io.plaintext_bytes_to_read();
                    self.close_notify = io.peer_has_closed();
                }
                Err(e) => return Err(self.fail(e.to_string())),
            }
        }
        Ok(used)
    }

    fn fail(&mut self, msg: String) -> TlsError {
        self.error = Some(msg.clone());
        TlsError::Protocol(msg)
    }

    /// Re-reads rustls's buffer levels (no input is pending, so this processes nothing).
    fn refresh(&mut self) {
        if self.error.is_none() {
            if let Ok(io) = self.conn.process_new_packets() {
                self.tls_queued = io.tls_bytes_to_write();
                self.plaintext_pending = io.plaintext_bytes_to_read();
                self.close_notify = io.peer_has_closed();
            }
        }
    }

    /// Copies decrypted application bytes into `buf`; 0 when there are none (then check
    /// [`peer_closed`](Self::peer_closed)).
    pub fn read_plaintext(&mut self, buf: &mut [u8]) -> usize {
        if buf.is_empty() {
            return 0;
        }
        // Err is WouldBlock (nothing received yet); rustls is never told of an EOF.
        let n = self.conn.reader().read(buf).unwrap_or(0);
        self.plaintext_pending = self.plaintext_pending.saturating_sub(n);
        n
    }

    /// Queues application bytes to encrypt; returns how many were accepted (bounded by
    /// `buffer_limit`). Allowed during the handshake: the bytes are sent once it completes.
    /// Accepts nothing after [`close`](Self::close) or a fatal error.
    pub fn write_plaintext(&mut self, data: &[u8]) -> usize {
        if self.error.is_some() || self.closed || data.is_empty() {
            return 0;
        }
        let handshaking = self.conn.is_handshaking();
        let n = self.conn.writer().write(data).unwrap_or(0);
        if handshaking {
            self.handshake_plaintext += n;
        }
        self.refresh();
        n
    }

    /// How many more plaintext bytes [`write_plaintext`](Self::write_plaintext) would accept now.
    pub fn write_capacity(&self) -> usize {
        if self.error.is_some() || self.closed {
            0
        } else if self.conn.is_handshaking() {
            self.limit.saturating_sub(self.handshake_plaintext)
        } else {
            self.limit.saturating_sub(self.tls_queued)
        }
    }

    /// Copies pending outgoing TLS records into `buf` (whole or in part); returns the bytes
    /// written, 0 when there are none.
    pub fn poll_ciphertext(&mut self, buf: &mut [u8]) -> usize {
        if buf.is_empty() {
            return 0;
        }
        // Writing into a slice never fails; it stops when the slice is full.
        let n = self.conn.write_tls(&mut &mut buf[..]).unwrap_or(0);
        self.tls_queued = self.tls_queued.saturating_sub(n);
        n
    }

    /// There are TLS records to send ([`poll_ciphertext`](Self::poll_ciphertext) would return
    /// bytes).
    pub fn has_ciphertext(&self) -> bool {
        self.conn.wants_write()
    }

    /// The handshake is not over yet (also true of a session that failed during it).
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The peer sent close_notify and all plaintext received before it has been read.
    pub fn peer_closed(&self) -> bool {
        self.close_notify && self.plaintext_pending == 0
    }

    /// A fatal error happened: only the queued alert (if any) remains to send.
    pub fn is_dead(&self) -> bool {
        self.error.is_some()
    }

    /// Queues a close_notify alert (once; nothing after a fatal alert). Plaintext accepted
    /// before is sent first; nothing more is accepted.
    pub fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            self.conn.send_close_notify();
            self.refresh();
        }
    }

    /// What was negotiated; `None` while handshaking (or after a failed handshake).
    pub fn info(&self) -> Option<SessionInfo> {
        if self.conn.is_handshaking() {
            return None;
        }
        let version = match self.conn.protocol_version()? {
            ProtocolVersion::TLSv1_3 => TlsVersion::Tls13,
            ProtocolVersion::TLSv1_2 => TlsVersion::Tls12,
            _ => return None,
        };
        let suite = self
            .conn
            .negotiated_cipher_suite()?
            .suite()
            .as_str()
            .unwrap_or("unknown");
        Some(SessionInfo {
            version,
            suite,
            resumed: self.conn.handshake_kind() == Some(HandshakeKind::Resumed),
            sni: self.conn.server_name().map(str::to_owned),
            alpn: self.conn.alpn_protocol().map(<[u8]>::to_vec),
        })
    }
}
