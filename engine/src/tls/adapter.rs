//! The rustls adapter: the only file of the crate that names `rustls` (and its `pki_types`).
//!
//! [`TlsServer`] wraps an `Arc<rustls::ServerConfig>` built with the aws-lc-rs provider passed
//! explicitly (never the process-default provider). [`TlsSession`] wraps a
//! `rustls::ServerConnection` behind a sans-IO byte interface: ciphertext in
//! ([`TlsSession::handle_ciphertext`]), plaintext out ([`TlsSession::read_plaintext`]), plaintext
//! in ([`TlsSession::write_plaintext`]), ciphertext out ([`TlsSession::poll_ciphertext`]).
//!
//! The client side mirrors it: [`TlsClient`] wraps an `Arc<rustls::ClientConfig>` (same provider,
//! trust store from `--cacert` or `webpki-roots`, in-memory session store) and hands out
//! [`TlsClientSession`]s around `rustls::ClientConnection`. Both session types share one
//! implementation (the private `Pump`, generic over rustls's `ConnectionCommon`) and one public
//! byte interface; rustls's certificate errors become distinct [`TlsError`] variants.
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
use std::ops::DerefMut;
use std::sync::Arc;

use rustls::client::{
    verify_server_name, ClientConfig, ClientConnection, ClientConnectionData, Resumption,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{
    ClientHello, ParsedCertificate, ResolvesServerCert, ServerConfig, ServerConnection,
    ServerConnectionData, ServerSessionMemoryCache,
};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ConnectionCommon, HandshakeKind, ProtocolVersion, RootCertStore,
    SupportedProtocolVersion,
};

use super::{TlsClientConfig, TlsConfig, TlsError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const CERT_HINT: &str = "pass --cert with a PEM certificate chain";
const KEY_HINT: &str = "pass --key with a PEM private key: PKCS#8, SEC1 or PKCS#1";
const CACERT_HINT: &str = "pass --cacert with a PEM file of the CA certificates to trust";

/// The TLS server configuration shared by all sessions: certificates, protocol versions, ALPN,
/// session resumption. Cheap to clone (one `Arc`); `Send + Sync`.
///
/// Certificates can be replaced while it runs ([`TlsServer::reloadable`]): each clone picks up
/// the newest configuration when its owner calls [`TlsServer::refresh`] (once per batch: one
/// atomic load); sessions already started keep theirs.
#[derive(Clone)]
pub struct TlsServer {
    config: Arc<ServerConfig>,
    buffer_limit: usize,
    /// Where new configurations are published, and the generation this clone has.
    reload: Option<(Arc<ReloadSlot>, u64)>,
}

/// The latest published configuration and its generation.
#[derive(Default)]
struct ReloadSlot {
    generation: AtomicU64,
    latest: Mutex<Option<Arc<ServerConfig>>>,
}

/// Publishes new certificates to every clone of a [`TlsServer`] made reloadable
/// ([`TlsServer::reloadable`]), e.g. on SIGHUP.
#[derive(Clone)]
pub struct TlsReload {
    slot: Arc<ReloadSlot>,
}

impl fmt::Debug for TlsReload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsReload")
            .field("generation", &self.slot.generation.load(Ordering::Relaxed))
            .finish()
    }
}

impl TlsReload {
    /// Makes `server`'s configuration the one new sessions get, on every clone, from their next
    /// [`TlsServer::refresh`]. Returns the new generation.
    pub fn publish(&self, server: &TlsServer) -> u64 {
        let mut latest = self.slot.latest.lock().unwrap_or_else(|e| e.into_inner());
        *latest = Some(Arc::clone(&server.config));
        self.slot.generation.fetch_add(1, Ordering::Release) + 1
    }
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
            refuse_world_readable(&files.key)?;
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
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(protocol_versions(cfg.tls12))
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
            reload: None,
        })
    }

    /// Attaches a reload slot to this server, so that it and the clones made from it from now on
    /// can be given new certificates through the returned handle.
    pub fn reloadable(&mut self) -> TlsReload {
        let slot = Arc::new(ReloadSlot::default());
        self.reload = Some((Arc::clone(&slot), 0));
        TlsReload { slot }
    }

    /// Takes the newest published configuration, if there is one this clone does not have yet
    /// (one atomic load when there is none). Returns whether it changed.
    pub fn refresh(&mut self) -> bool {
        let Some((slot, seen)) = &mut self.reload else {
            return false;
        };
        let generation = slot.generation.load(Ordering::Acquire);
        if generation == *seen {
            return false;
        }
        let latest = slot.latest.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = latest.as_ref() {
            self.config = Arc::clone(c);
        }
        *seen = generation;
        true
    }

    /// Reads `cfg`'s certificates and keys again and builds a server with them, keeping this
    /// one's session ticket keys and session cache (resumption survives a reload). Errors leave
    /// nothing changed: keep serving with `self`.
    pub fn reloaded(&self, cfg: &TlsConfig) -> Result<TlsServer, TlsError> {
        let mut new = TlsServer::new(cfg)?;
        let mut config = (*new.config).clone();
        config.ticketer = Arc::clone(&self.config.ticketer);
        config.session_storage = Arc::clone(&self.config.session_storage);
        new.config = Arc::new(config);
        Ok(new)
    }

    /// A new server session, waiting for a ClientHello.
    pub fn accept(&self) -> Result<TlsSession, TlsError> {
        let conn = ServerConnection::new(self.config.clone())
            .map_err(|e| TlsError::Config(format!("cannot start a TLS session: {e}")))?;
        Ok(TlsSession {
            io: Pump::new(conn, self.buffer_limit, None),
        })
    }
}

/// TLS 1.3, and TLS 1.2 when `tls12`: never anything older (rustls has nothing older).
fn protocol_versions(tls12: bool) -> &'static [&'static SupportedProtocolVersion] {
    static TLS13_AND_12: [&SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    if tls12 {
        &TLS13_AND_12
    } else {
        &TLS13_AND_12[..1]
    }
}

/// A fatal `decode_error` alert in a plaintext record (what we send when rustls refuses input
/// without queuing an alert of its own, before anything else was sent).
const DECODE_ERROR_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 50];

/// Parses one PEM chain and key and checks that they belong together.
/// A private key file every user can read (or write) is refused: checked after it parsed as a
/// key, so that a wrong file gets the more useful message.
fn refuse_world_readable(path: &std::path::Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|source| TlsError::ReadFile {
            what: "private key",
            path: path.to_path_buf(),
            source,
            hint: KEY_HINT,
        })?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o006 != 0 {
        return Err(TlsError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

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

/// What [`Pump`] drives: either side's buffered rustls connection, a `ConnectionCommon`.
trait Conn: DerefMut<Target = ConnectionCommon<Self::Data>> {
    /// rustls's side-specific state.
    type Data;
}

impl Conn for ServerConnection {
    type Data = ServerConnectionData;
}

impl Conn for ClientConnection {
    type Data = ClientConnectionData;
}

/// Why a session died, kept to answer every later call with the same error.
#[derive(Clone, Debug)]
enum Failure {
    /// rustls refused the input.
    Rustls(rustls::Error),
    /// The deframer buffer filled up without a complete message.
    Io(String),
}

/// The sans-IO byte pump around one rustls connection, shared by [`TlsSession`] (server) and
/// [`TlsClientSession`] (client): bounded buffering, error and close_notify bookkeeping.
struct Pump<C> {
    conn: C,
    /// `TlsConfig::buffer_limit` / `TlsClientConfig::buffer_limit`.
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
    error: Option<Failure>,
    /// Some ciphertext was handed out already.
    sent_any: bool,
    /// Bytes of [`DECODE_ERROR_ALERT`] still to hand out (0: none).
    own_alert: usize,
    /// Client side: the name the server's certificate is checked against (certificate errors
    /// name it). `None` on the server side, where certificate errors cannot happen.
    server_name: Option<String>,
}

impl<C: Conn> Pump<C> {
    fn new(mut conn: C, limit: usize, server_name: Option<String>) -> Self {
        conn.set_buffer_limit(Some(limit));
        Pump {
            conn,
            limit,
            tls_queued: 0,
            handshake_plaintext: 0,
            plaintext_pending: 0,
            close_notify: false,
            closed: false,
            error: None,
            sent_any: false,
            own_alert: 0,
            server_name,
        }
    }

    fn debug(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(name)
            .field("handshaking", &self.conn.is_handshaking())
            .field("tls_queued", &self.tls_queued)
            .field("plaintext_pending", &self.plaintext_pending)
            .field("close_notify", &self.close_notify)
            .field("closed", &self.closed)
            .field("error", &self.error.as_ref().map(|e| self.error_of(e)))
            .finish_non_exhaustive()
    }

    /// The [`TlsError`] of a failure: certificate problems get their own variants on the client
    /// side; everything else is a protocol error with rustls's description.
    fn error_of(&self, failure: &Failure) -> TlsError {
        let e = match failure {
            Failure::Io(msg) => return TlsError::Protocol(msg.clone()),
            Failure::Rustls(e) => e,
        };
        let (Some(name), rustls::Error::InvalidCertificate(cert)) = (&self.server_name, e) else {
            return TlsError::Protocol(e.to_string());
        };
        let name = name.clone();
        match cert {
            CertificateError::NotValidForName => TlsError::CertificateName {
                name,
                presented: Vec::new(),
            },
            CertificateError::NotValidForNameContext { presented, .. } => {
                TlsError::CertificateName {
                    name,
                    presented: presented.iter().map(|n| plain_name(n)).collect(),
                }
            }
            CertificateError::UnknownIssuer => TlsError::UnknownIssuer { name },
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                TlsError::CertificateExpired { name }
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                TlsError::CertificateNotYetValid { name }
            }
            other => TlsError::CertificateOther {
                name,
                reason: rustls::Error::InvalidCertificate(other.clone()).to_string(),
            },
        }
    }

    fn handle_ciphertext(&mut self, data: &[u8]) -> Result<usize, TlsError> {
        if let Some(e) = &self.error {
            return Err(self.error_of(e));
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
                Err(e) => return Err(self.fail(Failure::Io(e.to_string()))),
            }
            match self.conn.process_new_packets() {
                Ok(io) => {
                    self.tls_queued = io.tls_bytes_to_write();
                    self.plaintext_pending = io.plaintext_bytes_to_read();
                    self.close_notify = io.peer_has_closed();
                }
                Err(e) => return Err(self.fail(Failure::Rustls(e))),
            }
        }
        Ok(used)
    }

    fn fail(&mut self, failure: Failure) -> TlsError {
        if !self.conn.wants_write() && !self.sent_any && self.error.is_none() {
            // rustls refused without an alert (e.g. an oversized handshake message): still tell
            // the peer, in the clear, as nothing was encrypted yet.
            self.own_alert = DECODE_ERROR_ALERT.len();
        }
        let e = self.error_of(&failure);
        self.error = Some(failure);
        e
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

    fn read_plaintext(&mut self, buf: &mut [u8]) -> usize {
        if buf.is_empty() {
            return 0;
        }
        // Err is WouldBlock (nothing received yet); rustls is never told of an EOF.
        let n = self.conn.reader().read(buf).unwrap_or(0);
        self.plaintext_pending = self.plaintext_pending.saturating_sub(n);
        n
    }

    fn write_plaintext(&mut self, data: &[u8]) -> usize {
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

    fn write_capacity(&self) -> usize {
        if self.error.is_some() || self.closed {
            0
        } else if self.conn.is_handshaking() {
            self.limit.saturating_sub(self.handshake_plaintext)
        } else {
            self.limit.saturating_sub(self.tls_queued)
        }
    }

    fn poll_ciphertext(&mut self, buf: &mut [u8]) -> usize {
        if buf.is_empty() {
            return 0;
        }
        if self.own_alert > 0 {
            let from = DECODE_ERROR_ALERT.len() - self.own_alert;
            let n = self.own_alert.min(buf.len());
            buf[..n].copy_from_slice(&DECODE_ERROR_ALERT[from..from + n]);
            self.own_alert -= n;
            self.sent_any = true;
            return n;
        }
        // Writing into a slice never fails; it stops when the slice is full.
        let n = self.conn.write_tls(&mut &mut buf[..]).unwrap_or(0);
        self.tls_queued = self.tls_queued.saturating_sub(n);
        self.sent_any |= n > 0;
        n
    }

    fn has_ciphertext(&self) -> bool {
        self.own_alert > 0 || self.conn.wants_write()
    }

    fn peer_closed(&self) -> bool {
        self.close_notify && self.plaintext_pending == 0
    }

    fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            self.conn.send_close_notify();
            self.refresh();
        }
    }

    fn is_resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(HandshakeKind::Resumed)
    }

    fn info(&self, sni: Option<&str>) -> Option<SessionInfo> {
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
            resumed: self.is_resumed(),
            sni: sni.map(str::to_owned),
            alpn: self.conn.alpn_protocol().map(<[u8]>::to_vec),
        })
    }
}

/// A name webpki reports a certificate presents, `DnsName("a.test")` or `IpAddress(198.18.0.1)`,
/// as the user wrote it: `a.test`, `198.18.0.1` (other kinds as they are).
fn plain_name(presented: &str) -> String {
    let dns = presented
        .strip_prefix("DnsName(\"")
        .and_then(|r| r.strip_suffix("\")"));
    let ip = presented
        .strip_prefix("IpAddress(")
        .and_then(|r| r.strip_suffix(')'));
    dns.or(ip).unwrap_or(presented).to_string()
}

/// The public sans-IO byte interface of a session type holding a [`Pump`] in its `io` field:
/// written once for [`TlsSession`] and [`TlsClientSession`].
macro_rules! byte_interface {
    ($session:ident) => {
        impl crate::tls::CipherSession for $session {
            fn handle_ciphertext(&mut self, data: &[u8]) -> Result<usize, TlsError> {
                self.io.handle_ciphertext(data)
            }
            fn poll_ciphertext(&mut self, buf: &mut [u8]) -> usize {
                self.io.poll_ciphertext(buf)
            }
            fn has_ciphertext(&self) -> bool {
                self.io.has_ciphertext()
            }
        }

        impl $session {
            /// Feeds received ciphertext. Returns the bytes consumed: fewer than `data.len()`
            /// when rustls's received-plaintext buffer is full (read plaintext, then call again
            /// with the rest). Bytes after the peer's close_notify are consumed and ignored
            /// (RFC 8446 §6.1). On a fatal error returns it ([`TlsError::Protocol`], or on the
            /// client side a certificate error such as [`TlsError::UnknownIssuer`]); the alert
            /// rustls wants to send (if any) is then available from
            /// [`poll_ciphertext`](Self::poll_ciphertext) and [`is_dead`](Self::is_dead) is
            /// true; later calls return the same error. Never panics on any input.
            pub fn handle_ciphertext(&mut self, data: &[u8]) -> Result<usize, TlsError> {
                self.io.handle_ciphertext(data)
            }

            /// Copies decrypted application bytes into `buf`; 0 when there are none (then check
            /// [`peer_closed`](Self::peer_closed)).
            pub fn read_plaintext(&mut self, buf: &mut [u8]) -> usize {
                self.io.read_plaintext(buf)
            }

            /// Queues application bytes to encrypt; returns how many were accepted (bounded by
            /// `buffer_limit`). Allowed during the handshake: the bytes are sent once it
            /// completes. Accepts nothing after [`close`](Self::close) or a fatal error.
            pub fn write_plaintext(&mut self, data: &[u8]) -> usize {
                self.io.write_plaintext(data)
            }

            /// How many more plaintext bytes [`write_plaintext`](Self::write_plaintext) would
            /// accept now.
            pub fn write_capacity(&self) -> usize {
                self.io.write_capacity()
            }

            /// Copies pending outgoing TLS records into `buf` (whole or in part); returns the
            /// bytes written, 0 when there are none.
            pub fn poll_ciphertext(&mut self, buf: &mut [u8]) -> usize {
                self.io.poll_ciphertext(buf)
            }

            /// There are TLS records to send ([`poll_ciphertext`](Self::poll_ciphertext) would
            /// return bytes).
            pub fn has_ciphertext(&self) -> bool {
                self.io.has_ciphertext()
            }

            /// The handshake is not over yet (also true of a session that failed during it).
            pub fn is_handshaking(&self) -> bool {
                self.io.conn.is_handshaking()
            }

            /// The peer sent close_notify and all plaintext received before it has been read.
            pub fn peer_closed(&self) -> bool {
                self.io.peer_closed()
            }

            /// A fatal error happened: only the queued alert (if any) remains to send.
            pub fn is_dead(&self) -> bool {
                self.io.error.is_some()
            }

            /// Queues a close_notify alert (once; nothing after a fatal alert). Plaintext
            /// accepted before is sent first; nothing more is accepted.
            pub fn close(&mut self) {
                self.io.close()
            }
        }

        impl fmt::Debug for $session {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.io.debug(stringify!($session), f)
            }
        }
    };
}

/// One server-side TLS session: a sans-IO byte pump around `rustls::ServerConnection`.
pub struct TlsSession {
    io: Pump<ServerConnection>,
}

byte_interface!(TlsSession);

impl TlsSession {
    /// What was negotiated; `None` while handshaking (or after a failed handshake).
    /// [`SessionInfo::sni`] is the name the client sent.
    pub fn info(&self) -> Option<SessionInfo> {
        self.io.info(self.io.conn.server_name())
    }
}

/// The TLS client configuration shared by all client sessions: trusted CAs, protocol versions,
/// ALPN, and the store of sessions to resume. Cheap to clone (one `Arc`; clones share the
/// session store); `Send + Sync`.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    buffer_limit: usize,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("alpn", &self.config.alpn_protocols)
            .field("buffer_limit", &self.buffer_limit)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// Builds the client from `cfg`: trusting the CAs of the PEM file `cfg.cacert`, or without
    /// one the Mozilla root program's CAs (`webpki-roots`).
    pub fn new(cfg: &TlsClientConfig) -> Result<TlsClient, TlsError> {
        cfg.validate()?;
        let roots = match &cfg.cacert {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| TlsError::ReadFile {
                    what: "CA certificates",
                    path: path.clone(),
                    source,
                    hint: CACERT_HINT,
                })?;
                root_store(&pem, &format!("--cacert {}", path.display()))?
            }
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        Self::build(roots, cfg)
    }

    /// Builds the client trusting exactly the CA certificates of the in-memory PEM bundle `pem`;
    /// `cfg.cacert` is ignored.
    pub fn from_pem_roots(pem: &[u8], cfg: &TlsClientConfig) -> Result<TlsClient, TlsError> {
        cfg.validate()?;
        Self::build(root_store(pem, "the PEM roots")?, cfg)
    }

    fn build(roots: RootCertStore, cfg: &TlsClientConfig) -> Result<TlsClient, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(protocol_versions(cfg.tls12))
            .map_err(|e| TlsError::Config(format!("cannot set up the TLS versions: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = cfg.alpn.clone();
        config.resumption = if cfg.resumption {
            Resumption::in_memory_sessions(super::CLIENT_SESSION_CACHE)
        } else {
            Resumption::disabled()
        };
        Ok(TlsClient {
            config: Arc::new(config),
            buffer_limit: cfg.buffer_limit,
        })
    }

    /// A new session to `server_name`, its ClientHello already queued for
    /// [`TlsClientSession::poll_ciphertext`] (resuming a stored session for that name, if any).
    /// A DNS name is sent as SNI and checked against the certificate; an IP address literal
    /// (`198.18.0.1`, `2001:db8::1`) is checked against the certificate's IP addresses and sends
    /// no SNI.
    pub fn connect(&self, server_name: &str) -> Result<TlsClientSession, TlsError> {
        let name = ServerName::try_from(server_name.to_string()).map_err(|_| {
            TlsError::Config(format!(
                "{server_name:?} is not a valid server name: give a DNS name or an IP address"
            ))
        })?;
        let sni = matches!(name, ServerName::DnsName(_)).then(|| server_name.to_string());
        let conn = ClientConnection::new(self.config.clone(), name)
            .map_err(|e| TlsError::Config(format!("cannot start a TLS session: {e}")))?;
        Ok(TlsClientSession {
            io: Pump::new(conn, self.buffer_limit, Some(server_name.to_string())),
            sni,
        })
    }
}

/// One client-side TLS session: a sans-IO byte pump around `rustls::ClientConnection`, with the
/// same interface as [`TlsSession`].
pub struct TlsClientSession {
    io: Pump<ClientConnection>,
    /// The SNI name sent (none for an IP address).
    sni: Option<String>,
}

byte_interface!(TlsClientSession);

impl TlsClientSession {
    /// The handshake resumed an earlier session (TLS 1.3 ticket, TLS 1.2 ticket or session ID)
    /// instead of a full handshake with the server's certificate. False while handshaking.
    pub fn is_resumed(&self) -> bool {
        self.io.is_resumed()
    }

    /// What was negotiated; `None` while handshaking (or after a failed handshake).
    /// [`SessionInfo::sni`] is the name this client sent (none for an IP address).
    pub fn info(&self) -> Option<SessionInfo> {
        self.io.info(self.sni.as_deref())
    }
}

/// Parses a PEM bundle of CA certificates (`label` names it in errors) into a trust store.
fn root_store(pem: &[u8], label: &str) -> Result<RootCertStore, TlsError> {
    let bad = |msg: String| TlsError::BadCertificate(msg);
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("{label} is not valid PEM: {e} ({CACERT_HINT})")))?;
    if certs.is_empty() {
        return Err(bad(format!(
            "no certificate in {label} (expected PEM 'CERTIFICATE' blocks; {CACERT_HINT})"
        )));
    }
    let mut store = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        store.add(cert).map_err(|e| {
            bad(format!(
                "certificate #{i} of {label} cannot be used as a CA: {e} ({CACERT_HINT})"
            ))
        })?;
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory rustls client and the byte pump between it and a [`TlsSession`].
    mod client {
        use std::io::{Read, Write};
        use std::sync::Arc;

        use rustls::pki_types::{CertificateDer, ServerName};
        use rustls::{ClientConfig, ClientConnection, RootCertStore};

        use crate::tls::{TlsError, TlsSession};

        /// A client configuration trusting exactly `roots`.
        pub fn config(
            roots: &[&CertificateDer<'static>],
            alpn: &[&str],
            tls12: bool,
        ) -> ClientConfig {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut store = RootCertStore::empty();
            for root in roots {
                store.add((*root).clone()).unwrap();
            }
            let versions: &[&'static rustls::SupportedProtocolVersion] = if tls12 {
                &[&rustls::version::TLS12]
            } else {
                &[&rustls::version::TLS13]
            };
            let mut cfg = ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(store)
                .with_no_client_auth();
            cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
            cfg
        }

        /// Who failed first while pumping.
        #[derive(Debug)]
        pub enum Failed {
            Server(TlsError),
            Client(rustls::Error),
        }

        /// A rustls client connection and the plaintext it received.
        pub struct Client {
            pub conn: ClientConnection,
            rx: Vec<u8>,
        }

        impl Client {
            pub fn new(cfg: &Arc<ClientConfig>, name: &str) -> Client {
                let name = ServerName::try_from(name.to_string()).unwrap();
                let mut conn = ClientConnection::new(cfg.clone(), name).unwrap();
                conn.set_buffer_limit(None);
                Client {
                    conn,
                    rx: Vec::new(),
                }
            }

            /// Feeds server ciphertext to the client.
            pub fn feed(&mut self, mut data: &[u8]) -> Result<(), rustls::Error> {
                while !data.is_empty() {
                    if self.conn.read_tls(&mut data).is_err() {
                        self.drain(); // received-plaintext buffer full
                        continue;
                    }
                    self.conn.process_new_packets()?;
                }
                self.drain();
                Ok(())
            }

            fn drain(&mut self) {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = self.conn.reader().read(&mut buf) {
                    self.rx.extend_from_slice(&buf[..n]);
                }
            }

            /// The plaintext received so far (taken).
            pub fn recv(&mut self) -> Vec<u8> {
                std::mem::take(&mut self.rx)
            }

            /// Everything the client wants to send now.
            pub fn flight(&mut self) -> Vec<u8> {
                let mut wire = Vec::new();
                while self.conn.wants_write() {
                    self.conn.write_tls(&mut wire).unwrap();
                }
                wire
            }

            pub fn send(&mut self, data: &[u8]) {
                self.conn.writer().write_all(data).unwrap();
            }

            /// Moves bytes both ways until neither side has anything to send. Plaintext the
            /// server receives is appended to `server_rx` (read whenever the server pushes back).
            pub fn pump(
                &mut self,
                server: &mut TlsSession,
                server_rx: &mut Vec<u8>,
            ) -> Result<(), Failed> {
                let mut buf = vec![0u8; 4096];
                loop {
                    let mut progress = false;
                    let wire = self.flight();
                    let mut off = 0;
                    while off < wire.len() {
                        progress = true;
                        let n = server
                            .handle_ciphertext(&wire[off..])
                            .map_err(Failed::Server)?;
                        off += n;
                        drain_server(server, server_rx);
                    }
                    drain_server(server, server_rx);
                    loop {
                        let n = server.poll_ciphertext(&mut buf);
                        if n == 0 {
                            break;
                        }
                        progress = true;
                        self.feed(&buf[..n]).map_err(Failed::Client)?;
                    }
                    if !progress {
                        return Ok(());
                    }
                }
            }
        }

        fn drain_server(server: &mut TlsSession, server_rx: &mut Vec<u8>) {
            let mut buf = [0u8; 1000];
            loop {
                let n = server.read_plaintext(&mut buf);
                if n == 0 {
                    return;
                }
                server_rx.extend_from_slice(&buf[..n]);
            }
        }
    }

    use client::{Client, Failed};

    struct TestCert {
        cert_pem: String,
        key_pem: String,
        der: CertificateDer<'static>,
    }

    fn make_cert(names: &[&str]) -> TestCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        // Distinct subjects, so a client trusting one certificate cannot mistake the other's
        // issuer for it.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        let cert = params.self_signed(&key).unwrap();
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn server(certs: &[&TestCert], cfg: &TlsConfig) -> TlsServer {
        let pairs: Vec<(&[u8], &[u8])> = certs
            .iter()
            .map(|c| (c.cert_pem.as_bytes(), c.key_pem.as_bytes()))
            .collect();
        TlsServer::from_pem(&pairs, cfg).unwrap()
    }

    /// Full handshake with a client for `name` trusting `root`; returns the established pair.
    fn establish(
        srv: &TlsServer,
        ccfg: &Arc<rustls::ClientConfig>,
        name: &str,
    ) -> (Client, TlsSession) {
        let mut c = Client::new(ccfg, name);
        let mut s = srv.accept().unwrap();
        let mut rx = Vec::new();
        c.pump(&mut s, &mut rx).unwrap();
        assert!(!s.is_handshaking() && !c.conn.is_handshaking());
        assert!(rx.is_empty());
        (c, s)
    }

    /// An alert record as rustls sends it before encryption: fatal (2) `desc`.
    fn plain_fatal_alert(desc: u8) -> [u8; 7] {
        [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, desc]
    }

    fn drain(s: &mut TlsSession) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 1500];
        loop {
            let n = s.poll_ciphertext(&mut buf);
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn server_and_session_are_shareable() {
        fn send_sync_clone<T: Send + Sync + Clone>() {}
        fn send<T: Send>() {}
        send_sync_clone::<TlsServer>();
        send::<TlsSession>();
    }

    fn round_trip(tls12: bool, suite: &'static str, version: TlsVersion) {
        let cert = make_cert(&["a.test"]);
        let srv = server(&[&cert], &TlsConfig::default());
        let ccfg = Arc::new(client::config(&[&cert.der], &["http/1.1"], tls12));
        let mut c = Client::new(&ccfg, "a.test");
        let mut s = srv.accept().unwrap();
        assert!(s.is_handshaking());
        assert_eq!(s.info(), None);
        let mut rx = Vec::new();
        c.pump(&mut s, &mut rx).unwrap();
        assert!(!s.is_handshaking());
        assert_eq!(
            s.info(),
            Some(SessionInfo {
                version,
                suite,
                resumed: false,
                sni: Some("a.test".to_string()),
                alpn: Some(b"http/1.1".to_vec()),
            })
        );
        let request = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
        c.send(request);
        c.pump(&mut s, &mut rx).unwrap();
        assert_eq!(rx, request);
        let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
        assert_eq!(s.write_plaintext(response), response.len());
        assert!(s.has_ciphertext());
        c.pump(&mut s, &mut rx).unwrap();
        assert!(!s.has_ciphertext());
        assert_eq!(c.recv(), response);
        assert!(!s.peer_closed() && !s.is_dead());
    }

    #[test]
    fn tls13_handshake_and_round_trip() {
        round_trip(false, "TLS13_AES_256_GCM_SHA384", TlsVersion::Tls13);
    }

    #[test]
    fn tls12_handshake_and_round_trip() {
        round_trip(
            true,
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            TlsVersion::Tls12,
        );
    }

    #[test]
    fn tls12_refused_when_disabled() {
        let cert = make_cert(&["a.test"]);
        let cfg = TlsConfig {
            tls12: false,
            ..TlsConfig::default()
        };
        let srv = server(&[&cert], &cfg);
        let ccfg = Arc::new(client::config(&[&cert.der], &["http/1.1"], true));
        let mut c = Client::new(&ccfg, "a.test");
        let mut s = srv.accept().unwrap();
        match c.pump(&mut s, &mut Vec::new()) {
            Err(Failed::Server(e @ TlsError::Protocol(_))) => {
                assert!(
                    e.to_string()
                        .starts_with("TLS protocol error: peer is incompatible: Tls12NotOffered"),
                    "{e}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(s.is_dead());
        assert_eq!(drain(&mut s), plain_fatal_alert(70)); // protocol_version
    }

    #[test]
    fn alpn_mismatch_sends_no_application_protocol() {
        let cert = make_cert(&["a.test"]);
        let srv = server(&[&cert], &TlsConfig::default());

        // TLS 1.2: ALPN is settled before the ServerHello, so the alert is the only record.
        let ccfg = Arc::new(client::config(&[&cert.der], &["h2"], true));
        let mut c = Client::new(&ccfg, "a.test");
        let mut s = srv.accept().unwrap();
        let hello = c.flight();
        let err = s.handle_ciphertext(&hello).unwrap_err();
        assert!(matches!(err, TlsError::Protocol(_)), "{err}");
        assert!(s.is_dead());
        assert!(s.has_ciphertext());
        let alert = drain(&mut s);
        assert_eq!(alert, plain_fatal_alert(120)); // no_application_protocol
        assert!(!s.has_ciphertext());
        // The session stays dead and says so again.
        assert!(matches!(
            s.handle_ciphertext(&hello),
            Err(TlsError::Protocol(_))
        ));
        assert_eq!(s.write_plaintext(b"x"), 0);
        assert_eq!(s.write_capacity(), 0);
        assert_eq!(s.info(), None);
        assert_eq!(
            c.feed(&alert).unwrap_err(),
            rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)
        );

        // TLS 1.3: ALPN goes in EncryptedExtensions, after the ServerHello, so the alert follows
        // the ServerHello (and a compatibility ChangeCipherSpec), encrypted: an application_data
        // record of 2 + 1 + 16 bytes. The client decrypts it.
        let ccfg = Arc::new(client::config(&[&cert.der], &["h2"], false));
        let mut c = Client::new(&ccfg, "a.test");
        let mut s = srv.accept().unwrap();
        assert!(matches!(
            s.handle_ciphertext(&c.flight()),
            Err(TlsError::Protocol(_))
        ));
        assert!(s.is_dead());
        let out = drain(&mut s);
        assert_eq!(out[0], 0x16, "ServerHello first");
        assert_eq!(
            out[out.len() - 24..out.len() - 19],
            [0x17, 0x03, 0x03, 0x00, 0x13]
        );
        assert_eq!(
            c.feed(&out).unwrap_err(),
            rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)
        );
    }

    #[test]
    fn a_reload_reaches_every_clone_for_new_sessions_only() {
        let a = make_cert(&["a.test"]);
        let b = make_cert(&["b.test"]);
        let cfg = TlsConfig::default();
        let mut srv = server(&[&a], &cfg);
        let reload = srv.reloadable();
        let mut worker = srv.clone();
        let trusts_a = Arc::new(client::config(&[&a.der], &["http/1.1"], false));
        let trusts_b = Arc::new(client::config(&[&b.der], &["http/1.1"], false));
        // Before: a is served; an established session outlives the reload.
        let (mut old_client, mut old_session) = establish(&worker, &trusts_a, "a.test");
        assert!(!worker.refresh(), "nothing published yet");
        let new = server(&[&b], &cfg);
        let new = TlsServer {
            config: {
                let mut c = (*new.config).clone();
                c.ticketer = Arc::clone(&srv.config.ticketer);
                Arc::new(c)
            },
            ..new
        };
        assert_eq!(reload.publish(&new), 1);
        assert!(worker.refresh());
        assert!(!worker.refresh(), "taken once");
        let (_c, _s) = establish(&worker, &trusts_b, "b.test");
        let mut rx = Vec::new();
        // A client with no session to resume (a resumed session skips the certificate: the
        // ticket keys survive the reload on purpose).
        let fresh_a = Arc::new(client::config(&[&a.der], &["http/1.1"], false));
        let mut c = Client::new(&fresh_a, "a.test");
        let mut s = worker.accept().unwrap();
        assert!(
            matches!(
                c.pump(&mut s, &mut rx),
                Err(Failed::Client(rustls::Error::InvalidCertificate(_)))
            ),
            "a is no longer served"
        );
        // The old session still moves data.
        old_client.send(b"still here");
        let mut got = Vec::new();
        old_client.pump(&mut old_session, &mut got).unwrap();
        assert_eq!(got, b"still here");
        // The client that knew a resumes on the new configuration: same ticket keys.
        let (_c, s) = establish(&worker, &trusts_a, "a.test");
        assert!(s.info().unwrap().resumed, "resumption survives the reload");
    }

    #[test]
    fn sni_picks_the_matching_certificate() {
        let a = make_cert(&["a.test"]);
        let b = make_cert(&["b.test", "*.b.test"]);
        let srv = server(&[&a, &b], &TlsConfig::default());

        // Only b's certificate is trusted: the handshake succeeds only if b is served.
        let only_b = Arc::new(client::config(&[&b.der], &["http/1.1"], false));
        for name in ["b.test", "www.b.test"] {
            let (_c, s) = establish(&srv, &only_b, name);
            assert_eq!(s.info().unwrap().sni.as_deref(), Some(name));
        }
        let only_a = Arc::new(client::config(&[&a.der], &["http/1.1"], false));
        let (_c, s) = establish(&srv, &only_a, "a.test");
        assert_eq!(s.info().unwrap().sni.as_deref(), Some("a.test"));

        // An unknown name gets the default (first) certificate: trusted by a client trusting a,
        // but not valid for the name; a client trusting only b does not know its issuer.
        let run = |ccfg: &Arc<rustls::ClientConfig>| {
            let mut c = Client::new(ccfg, "c.test");
            let mut s = srv.accept().unwrap();
            match c.pump(&mut s, &mut Vec::new()) {
                Err(Failed::Client(rustls::Error::InvalidCertificate(e))) => e,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert!(matches!(
            run(&only_a),
            rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. }
        ));
        assert_eq!(run(&only_b), rustls::CertificateError::UnknownIssuer);

        // No SNI at all: the default certificate.
        let mut no_sni = client::config(&[&a.der], &["http/1.1"], false);
        no_sni.enable_sni = false;
        let (_c, s) = establish(&srv, &Arc::new(no_sni), "a.test");
        assert_eq!(s.info().unwrap().sni, None);
    }

    fn resumes(cfg: &TlsConfig, tls12: bool) -> (bool, bool) {
        let cert = make_cert(&["a.test"]);
        let srv = server(&[&cert], cfg);
        let ccfg = Arc::new(client::config(&[&cert.der], &["http/1.1"], tls12));
        let (_c1, s1) = establish(&srv, &ccfg, "a.test");
        let (_c2, s2) = establish(&srv, &ccfg, "a.test");
        let (i1, i2) = (s1.info().unwrap(), s2.info().unwrap());
        assert_eq!(i2.alpn.as_deref(), Some(&b"http/1.1"[..]));
        (i1.resumed, i2.resumed)
    }

    #[test]
    fn tls13_resumes_with_tickets() {
        assert_eq!(resumes(&TlsConfig::default(), false), (false, true));
    }

    #[test]
    fn tls13_resumes_with_the_stateful_cache() {
        let cfg = TlsConfig {
            tickets: false,
            ..TlsConfig::default()
        };
        assert_eq!(resumes(&cfg, false), (false, true));
    }

    #[test]
    fn tls12_resumes_with_session_ids() {
        let cfg = TlsConfig {
            tickets: false,
            ..TlsConfig::default()
        };
        assert_eq!(resumes(&cfg, true), (false, true));
    }

    #[test]
    fn no_resumption_without_cache_or_tickets() {
        let cfg = TlsConfig {
            tickets: false,
            session_cache: 0,
            ..TlsConfig::default()
        };
        assert_eq!(resumes(&cfg, true), (false, false));
        assert_eq!(resumes(&cfg, false), (false, false));
    }

    /// xorshift64*: a seeded generator, so failures replay.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn garbage_is_refused_with_an_alert() {
        let cert = make_cert(&["a.test"]);
        let srv = server(&[&cert], &TlsConfig::default());
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut refused = 0;
        for _ in 0..200 {
            let len = 1 + (rng.next() % 3000) as usize;
            let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let mut s = srv.accept().unwrap();
            match s.handle_ciphertext(&data) {
                Err(TlsError::Protocol(_)) => {
                    refused += 1;
                    assert!(s.is_dead());
                    let alert = drain(&mut s);
                    assert_eq!(alert.len(), 7, "{alert:02x?}");
                    assert_eq!(alert[..6], plain_fatal_alert(0)[..6]);
                }
                other => panic!("garbage {:02x?} accepted: {other:?}", &data[..len.min(8)]),
            }
        }
        assert_eq!(refused, 200);
    }

    #[test]
    fn oversized_handshake_message_is_refused() {
        let cert = make_cert(&["a.test"]);
        let srv = server(&[&cert], &TlsConfig::default());
        // A handshake record whose ClientHello claims 0x010000 bytes (over rustls's 64 KiB cap),
        // followed by 16 KiB records continuing it: refused as soon as the length is seen.
        // rustls queues no alert for this one: the adapter sends a plaintext decode_error.
        let mut wire = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x01, 0x00, 0x00];
        wire.resize(5 + 0x4000, 0x41);
        for _ in 0..5 {
            wire.extend_from_slice(&[0x16, 0x03, 0x03, 0x40, 0x00]);
            wire.resize(wire.len() + 0x4000, 0x41);
        }
        let mut s = srv.accept().unwrap();
        let e = s.handle_ciphertext(&wire).unwrap_err();
        assert!(matches!(e, TlsError::Protocol(_)), "{e}");
        assert!(s.is_dead());
        assert!(e.to_string().contains("HandshakePayloadTooLarge"), "{e}");
        assert!(s.has_ciphertext());
        let mut out = [0u8; 64];
        let n = s.poll_ciphertext(&mut out);
        assert_eq!(out[..n], DECODE_ERROR_ALERT);
        assert!(!s.has_ciphertext());
        assert_eq!(
            s.handle_ciphertext(b"x").unwrap_err().to_string(),
            e.to_string()
        );
    }

    #[test]
    fn truncated_client_hello_waits_for_more() {
        let cert = make_cert(&["a.test"]);
        let srv = server(&[&cert], &TlsConfig::default());
        let ccfg = Arc::new(client::config(&[&cert.der], &["http/1.1"], false));
        let mut c = Client::new(&ccfg, "a.test");
        let hello = c.flight();
        assert!(hello.len() > 50);
        let mut s = srv.accept().unwrap();
        assert_eq!(s.handle_ciphertext(&hello[..50]).unwrap(), 50);
        assert!(s.is_handshaking() && !s.is_dead());
        assert!(!s.has_ciphertext());
        assert_eq!(s.poll_ciphertext(&mut [0u8; 100]), 0);
        // The rest completes the flight: the server answers.
        assert_eq!(s.handle_ciphertext(&hello[50..]).unwrap(), hello.len() - 50);
        assert!(s.has_ciphertext());
        c.pump(&mut s, &mut Vec::new()).unwrap();
        assert!(!s.is_handshaking());
    }

    /// A ClientHello of a TLS 1.1-only client (no supported_versions extension), by hand:
    ///
    /// ```text
    /// record:    16 | 03 01 | len16           handshake, record version TLS 1.0
    /// handshake: 01 | len24                   client_hello
    /// body:      03 02                        legacy_version TLS 1.1
    ///            42 * 32                      random
    ///            00                           empty session id
    ///            00 04 c0 13 00 2f            two CBC suites (ECDHE_RSA / RSA, AES_128_CBC_SHA)
    ///            01 00                        compression: null
    ///            len16 extensions:
    ///              00 00 00 0b 00 09 00 00 06 "a.test"    server_name
    ///              00 0d 00 04 00 02 04 03                signature_algorithms (optional)
    /// ```
    ///
    /// rustls checks for signature_algorithms before the version: without it (as real TLS 1.1
    /// clients send) the answer is handshake_failure (40), with it protocol_version (70).
    fn tls11_client_hello(with_sig_algs: bool) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&[0x03, 0x02]);
        body.extend_from_slice(&[0x42; 32]);
        body.push(0);
        body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]);
        body.extend_from_slice(&[0x01, 0x00]);
        let mut ext = vec![
            0x00, 0x00, 0x00, 0x0b, 0x00, 0x09, 0x00, 0x00, 0x06, b'a', b'.', b't', b'e', b's',
            b't',
        ];
        if with_sig_algs {
            ext.extend_from_slice(&[0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03]);
        }
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![0x01, 0x00];
        hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn tls11_client_hello_is_refused() {
        let cert = make_cert(&["a.test"]);
        let srv = server(&[&cert], &TlsConfig::default());
        for (with_sig_algs, alert) in [(true, 70), (false, 40)] {
            let hello = tls11_client_hello(with_sig_algs);
            let ext_len = if with_sig_algs { 23 } else { 15 };
            assert_eq!(hello.len(), 5 + 4 + 2 + 32 + 1 + 6 + 2 + 2 + ext_len);
            let mut s = srv.accept().unwrap();
            let err = s.handle_ciphertext(&hello).unwrap_err();
            assert!(matches!(err, TlsError::Protocol(_)), "{err}");
            assert!(s.is_dead());
            assert_eq!(drain(&mut s), plain_fatal_alert(alert));
        }
    }

    #[test]
    fn write_backpressure_is_bounded_by_buffer_limit() {
        let cert = make_cert(&["a.test"]);
        let srv = server(&[&cert], &TlsConfig::default());
        let ccfg = Arc::new(client::config(&[&cert.der], &["http/1.1"], false));
        let limit = 64 * 1024;
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();

        // During the handshake the plaintext waits, bounded.
        let mut c = Client::new(&ccfg, "a.test");
        let mut s = srv.accept().unwrap();
        assert_eq!(s.write_capacity(), limit);
        assert_eq!(s.write_plaintext(&data[..1000]), 1000);
        assert_eq!(s.write_capacity(), limit - 1000);
        assert_eq!(s.write_plaintext(&data[1000..]), limit - 1000);
        assert_eq!(s.write_capacity(), 0);
        assert_eq!(s.write_plaintext(&data[limit..]), 0);
        c.pump(&mut s, &mut Vec::new()).unwrap();
        let early = c.recv();
        assert!(early == data[..limit], "received {} bytes", early.len());

        // Established: the encrypted records wait for poll_ciphertext, bounded.
        assert_eq!(s.write_capacity(), limit);
        assert_eq!(s.write_plaintext(&data), limit);
        assert_eq!(s.write_capacity(), 0);
        assert_eq!(s.write_plaintext(&data[limit..]), 0);
        let mut sent = limit;
        let mut wire = vec![0u8; 10_000];
        let mut received = Vec::new();
        while sent < data.len() {
            let n = s.poll_ciphertext(&mut wire);
            assert!(n > 0);
            c.feed(&wire[..n]).unwrap();
            received.extend(c.recv());
            let cap = s.write_capacity();
            let took = s.write_plaintext(&data[sent..]);
            assert_eq!(took, cap.min(data.len() - sent));
            sent += took;
        }
        c.pump(&mut s, &mut Vec::new()).unwrap();
        received.extend(c.recv());
        assert!(received == data, "received {} bytes", received.len());
    }

    #[test]
    fn read_backpressure_until_plaintext_is_read() {
        let cert = make_cert(&["a.test"]);
        let srv = server(&[&cert], &TlsConfig::default());
        let ccfg = Arc::new(client::config(&[&cert.der], &["http/1.1"], false));
        let (mut c, mut s) = establish(&srv, &ccfg, "a.test");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
        c.send(&data);
        let wire = c.flight();
        assert!(wire.len() > data.len());
        let first = s.handle_ciphertext(&wire).unwrap();
        assert!(first < wire.len(), "all {first} bytes taken");
        // Without reading plaintext, nothing more is taken.
        assert_eq!(s.handle_ciphertext(&wire[first..]).unwrap(), 0);
        let mut got = Vec::new();
        let mut off = first;
        let mut buf = vec![0u8; 3000];
        loop {
            loop {
                let n = s.read_plaintext(&mut buf);
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            if off == wire.len() {
                break;
            }
            let n = s.handle_ciphertext(&wire[off..]).unwrap();
            assert!(n > 0);
            off += n;
        }
        assert!(got == data, "received {} bytes", got.len());
    }

    #[test]
    fn close_notify_both_ways() {
        let cert = make_cert(&["a.test"]);
        let srv = server(&[&cert], &TlsConfig::default());
        let ccfg = Arc::new(client::config(&[&cert.der], &["http/1.1"], false));
        let (mut c, mut s) = establish(&srv, &ccfg, "a.test");
        c.send(b"bye");
        c.conn.send_close_notify();
        let mut wire = c.flight();
        wire.extend_from_slice(b"ignored after close_notify");
        assert_eq!(s.handle_ciphertext(&wire).unwrap(), wire.len());
        assert!(!s.peer_closed(), "plaintext before close_notify is unread");
        let mut buf = [0u8; 16];
        assert_eq!(s.read_plaintext(&mut buf), 3);
        assert_eq!(&buf[..3], b"bye");
        assert_eq!(s.read_plaintext(&mut buf), 0);
        assert!(s.peer_closed() && !s.is_dead());
        assert_eq!(s.handle_ciphertext(b"more").unwrap(), 4);

        assert_eq!(s.write_plaintext(b"last"), 4);
        s.close();
        assert_eq!(s.write_plaintext(b"late"), 0);
        assert_eq!(s.write_capacity(), 0);
        let out = drain(&mut s);
        c.feed(&out).unwrap();
        assert_eq!(c.recv(), b"last");
        assert!(c.conn.process_new_packets().unwrap().peer_has_closed());
    }

    #[test]
    fn bad_pem_is_explained() {
        let a = make_cert(&["a.test"]);
        let b = make_cert(&["b.test"]);
        let cfg = TlsConfig::default();
        let err = |chains: &[(&[u8], &[u8])]| TlsServer::from_pem(chains, &cfg).unwrap_err();
        let e = err(&[(b"not pem", a.key_pem.as_bytes())]).to_string();
        assert!(e.contains("no certificate in certificate chain #0"), "{e}");
        let e = err(&[(a.cert_pem.as_bytes(), a.cert_pem.as_bytes())]).to_string();
        assert!(e.contains("no private key in private key #0"), "{e}");
        let e = err(&[(a.cert_pem.as_bytes(), b.key_pem.as_bytes())]).to_string();
        assert!(
            e.contains("private key #0 cannot be used with certificate chain #0"),
            "{e}"
        );
        let e = err(&[]).to_string();
        assert!(e.contains("no certificate given"), "{e}");
        let bad = TlsConfig {
            buffer_limit: 100,
            ..TlsConfig::default()
        };
        let pair: (&[u8], &[u8]) = (a.cert_pem.as_bytes(), a.key_pem.as_bytes());
        assert!(matches!(
            TlsServer::from_pem(&[pair], &bad),
            Err(TlsError::Config(_))
        ));
    }

    /// The client side ([`TlsClient`], [`TlsClientSession`]) against the crate's own server, in
    /// memory.
    mod client_side {
        use super::super::*;
        use super::Rng;
        use crate::tls::{TlsClientConfig, MAX_RECORD_WIRE};

        const NAME: &str = "www.example.test";

        /// A CA and certificates made with rcgen.
        struct Pki {
            ca_key: rcgen::KeyPair,
            ca: rcgen::Certificate,
        }

        /// A leaf certificate and its key, PEM.
        struct Leaf {
            cert_pem: String,
            key_pem: String,
        }

        impl Pki {
            fn new(cn: &str) -> Pki {
                let ca_key = rcgen::KeyPair::generate().unwrap();
                let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
                params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
                params.key_usages = vec![
                    rcgen::KeyUsagePurpose::KeyCertSign,
                    rcgen::KeyUsagePurpose::CrlSign,
                    rcgen::KeyUsagePurpose::DigitalSignature,
                ];
                params.distinguished_name = rcgen::DistinguishedName::new();
                params
                    .distinguished_name
                    .push(rcgen::DnType::CommonName, cn);
                let ca = params.self_signed(&ca_key).unwrap();
                Pki { ca_key, ca }
            }

            fn ca_pem(&self) -> String {
                self.ca.pem()
            }

            /// A leaf for `names` valid from `from` to `until` (years), signed by this CA.
            fn leaf_dated(&self, names: &[&str], from: i32, until: i32) -> Leaf {
                let key = rcgen::KeyPair::generate().unwrap();
                let mut params = leaf_params(names);
                params.not_before = rcgen::date_time_ymd(from, 1, 1);
                params.not_after = rcgen::date_time_ymd(until, 1, 1);
                let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
                Leaf {
                    cert_pem: cert.pem(),
                    key_pem: key.serialize_pem(),
                }
            }

            fn leaf(&self, names: &[&str]) -> Leaf {
                self.leaf_dated(names, 2020, 4000)
            }
        }

        fn leaf_params(names: &[&str]) -> rcgen::CertificateParams {
            let mut params = rcgen::CertificateParams::new(
                names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            )
            .unwrap();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, names[0]);
            params
        }

        /// A self-signed leaf for `names` (no CA).
        fn self_signed(names: &[&str]) -> Leaf {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = leaf_params(names).self_signed(&key).unwrap();
            Leaf {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            }
        }

        fn server_for(leaf: &Leaf) -> TlsServer {
            let pair: (&[u8], &[u8]) = (leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes());
            TlsServer::from_pem(&[pair], &TlsConfig::default()).unwrap()
        }

        fn client_trusting(pki: &Pki, cfg: &TlsClientConfig) -> TlsClient {
            TlsClient::from_pem_roots(pki.ca_pem().as_bytes(), cfg).unwrap()
        }

        /// A copy of `srv` that speaks TLS 1.2 only (the server's settings cannot ask for that:
        /// TLS 1.3 is always on), same certificates, ALPN, tickets and cache.
        fn tls12_only(srv: &TlsServer) -> TlsServer {
            let base = &srv.config;
            let mut c = ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(base.cert_resolver.clone());
            c.alpn_protocols = base.alpn_protocols.clone();
            c.session_storage = base.session_storage.clone();
            c.ticketer = base.ticketer.clone();
            TlsServer {
                config: Arc::new(c),
                ..srv.clone()
            }
        }

        /// Either end of a connection, as the pump sees it.
        trait End {
            fn poll(&mut self, buf: &mut [u8]) -> usize;
            fn feed(&mut self, data: &[u8]) -> Result<usize, TlsError>;
            fn read(&mut self, buf: &mut [u8]) -> usize;
        }

        macro_rules! end {
            ($t:ty) => {
                impl End for $t {
                    fn poll(&mut self, buf: &mut [u8]) -> usize {
                        self.poll_ciphertext(buf)
                    }
                    fn feed(&mut self, data: &[u8]) -> Result<usize, TlsError> {
                        self.handle_ciphertext(data)
                    }
                    fn read(&mut self, buf: &mut [u8]) -> usize {
                        self.read_plaintext(buf)
                    }
                }
            };
        }
        end!(TlsSession);
        end!(TlsClientSession);

        /// Moves everything `from` wants to send into `to`, reading `to`'s plaintext into `rx`
        /// whenever it pushes back. Returns whether any byte moved.
        fn transfer(
            from: &mut impl End,
            to: &mut impl End,
            rx: &mut Vec<u8>,
        ) -> Result<bool, TlsError> {
            let mut wire = [0u8; 4096];
            let mut plain = [0u8; 4096];
            let mut moved = false;
            loop {
                let n = from.poll(&mut wire);
                if n == 0 {
                    return Ok(moved);
                }
                moved = true;
                let mut off = 0;
                while off < n {
                    off += to.feed(&wire[off..n])?;
                    loop {
                        let got = to.read(&mut plain);
                        if got == 0 {
                            break;
                        }
                        rx.extend_from_slice(&plain[..got]);
                    }
                }
            }
        }

        /// Who failed while pumping, and how.
        #[derive(Debug)]
        enum Failed {
            Client(TlsError),
            Server(TlsError),
        }

        /// The plaintext each end received.
        #[derive(Default)]
        struct Rx {
            client: Vec<u8>,
            server: Vec<u8>,
        }

        /// Moves bytes both ways until neither end has anything to send.
        fn pump(c: &mut TlsClientSession, s: &mut TlsSession, rx: &mut Rx) -> Result<(), Failed> {
            loop {
                let up = transfer(c, s, &mut rx.server).map_err(Failed::Server)?;
                let down = transfer(s, c, &mut rx.client).map_err(Failed::Client)?;
                if !(up || down) {
                    return Ok(());
                }
            }
        }

        fn connect(
            client: &TlsClient,
            srv: &TlsServer,
            name: &str,
        ) -> (TlsClientSession, TlsSession) {
            let mut c = client.connect(name).unwrap();
            let mut s = srv.accept().unwrap();
            let mut rx = Rx::default();
            pump(&mut c, &mut s, &mut rx).unwrap();
            assert!(!c.is_handshaking() && !s.is_handshaking());
            assert!(rx.client.is_empty() && rx.server.is_empty());
            (c, s)
        }

        #[test]
        fn client_and_session_are_shareable() {
            fn send_sync_clone<T: Send + Sync + Clone>() {}
            fn send<T: Send>() {}
            send_sync_clone::<TlsClient>();
            send::<TlsClientSession>();
        }

        fn full_handshake(tls12: bool) {
            let pki = Pki::new("Handshake Test CA");
            let mut srv = server_for(&pki.leaf(&[NAME]));
            if tls12 {
                srv = tls12_only(&srv);
            }
            let client = client_trusting(&pki, &TlsClientConfig::default());
            let mut c = client.connect(NAME).unwrap();
            let mut s = srv.accept().unwrap();
            assert!(
                c.is_handshaking() && c.has_ciphertext(),
                "ClientHello queued"
            );
            assert_eq!(c.info(), None);
            assert!(!c.is_resumed());
            // The request may be written before the handshake: it leaves once it is over.
            let request = b"GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n";
            assert_eq!(c.write_plaintext(request), request.len());
            let mut rx = Rx::default();
            pump(&mut c, &mut s, &mut rx).unwrap();
            assert!(!c.is_handshaking() && !s.is_handshaking());
            let (version, suite) = if tls12 {
                (TlsVersion::Tls12, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384")
            } else {
                (TlsVersion::Tls13, "TLS13_AES_256_GCM_SHA384")
            };
            let expected = SessionInfo {
                version,
                suite,
                resumed: false,
                sni: Some(NAME.to_string()),
                alpn: Some(b"http/1.1".to_vec()),
            };
            assert_eq!(c.info(), Some(expected.clone()));
            assert_eq!(s.info(), Some(expected));
            assert!(!c.is_resumed());
            assert_eq!(rx.server, request);

            let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
            assert_eq!(s.write_plaintext(response), response.len());
            pump(&mut c, &mut s, &mut rx).unwrap();
            assert_eq!(rx.client, response);

            // close_notify from the client, then from the server.
            c.close();
            assert_eq!(c.write_plaintext(b"late"), 0);
            assert_eq!(c.write_capacity(), 0);
            pump(&mut c, &mut s, &mut rx).unwrap();
            assert!(s.peer_closed() && !s.is_dead());
            assert!(!c.peer_closed());
            assert_eq!(s.write_plaintext(b"bye"), 3);
            s.close();
            pump(&mut c, &mut s, &mut rx).unwrap();
            assert_eq!(&rx.client[response.len()..], b"bye");
            assert!(c.peer_closed() && !c.is_dead());
            assert!(!c.has_ciphertext() && !s.has_ciphertext());
        }

        #[test]
        fn tls13_full_handshake_round_trip_and_close() {
            full_handshake(false);
        }

        #[test]
        fn tls12_full_handshake_round_trip_and_close() {
            full_handshake(true);
        }

        /// Three connections of one client (the third through a clone): whether each resumed,
        /// as the client and the server see it.
        fn resumptions(srv: &TlsServer, cfg: &TlsClientConfig) -> Vec<(bool, bool)> {
            let pki = Pki::new("Handshake Test CA");
            let srv = {
                let leaf = pki.leaf(&[NAME]);
                let fresh = server_for(&leaf);
                // The caller's server settings, this PKI's certificate.
                let mut config = (*srv.config).clone();
                config.cert_resolver = fresh.config.cert_resolver.clone();
                TlsServer {
                    config: Arc::new(config),
                    ..srv.clone()
                }
            };
            let client = client_trusting(&pki, cfg);
            let clone = client.clone();
            [&client, &client, &clone]
                .iter()
                .map(|cl| {
                    let (c, s) = connect(cl, &srv, NAME);
                    let (ci, si) = (c.info().unwrap(), s.info().unwrap());
                    assert_eq!(ci.resumed, c.is_resumed());
                    assert_eq!(ci.alpn.as_deref(), Some(&b"http/1.1"[..]));
                    (c.is_resumed(), si.resumed)
                })
                .collect()
        }

        fn any_server() -> TlsServer {
            server_for(&self_signed(&["placeholder.test"]))
        }

        #[test]
        fn tls13_second_connection_resumes_with_a_ticket() {
            let got = resumptions(&any_server(), &TlsClientConfig::default());
            assert_eq!(got, [(false, false), (true, true), (true, true)]);
        }

        #[test]
        fn tls12_second_connection_resumes() {
            let srv = tls12_only(&any_server());
            let got = resumptions(&srv, &TlsClientConfig::default());
            assert_eq!(got, [(false, false), (true, true), (true, true)]);
        }

        #[test]
        fn no_resumption_when_disabled() {
            let cfg = TlsClientConfig {
                resumption: false,
                ..TlsClientConfig::default()
            };
            assert_eq!(resumptions(&any_server(), &cfg), [(false, false); 3]);
            let srv = tls12_only(&any_server());
            assert_eq!(resumptions(&srv, &cfg), [(false, false); 3]);
        }

        /// Connects `client` to `srv` as `name`: the client must refuse the certificate. Checks
        /// the session is dead, stays so, and that its alert reaches the server; returns the
        /// error and the alert the server received.
        fn refused(client: &TlsClient, srv: &TlsServer, name: &str) -> (TlsError, String) {
            let mut c = client.connect(name).unwrap();
            let mut s = srv.accept().unwrap();
            let e = match pump(&mut c, &mut s, &mut Rx::default()) {
                Err(Failed::Client(e)) => e,
                other => panic!("certificate accepted: {other:?}"),
            };
            assert!(c.is_dead() && c.is_handshaking());
            assert_eq!(c.info(), None);
            assert_eq!(c.write_plaintext(b"x"), 0);
            assert_eq!(c.write_capacity(), 0);
            assert_eq!(
                c.handle_ciphertext(b"more").unwrap_err().to_string(),
                e.to_string()
            );
            assert!(c.has_ciphertext(), "an alert for the server");
            let alert = match transfer(&mut c, &mut s, &mut Vec::new()) {
                Err(TlsError::Protocol(m)) => m,
                other => panic!("the server did not get an alert: {other:?}"),
            };
            assert!(s.is_dead() && !c.has_ciphertext());
            (e, alert)
        }

        #[test]
        fn wrong_name_is_certificate_name() {
            let pki = Pki::new("Handshake Test CA");
            let client = client_trusting(&pki, &TlsClientConfig::default());
            let srv = server_for(&pki.leaf(&["api.other.test"]));
            let (e, alert) = refused(&client, &srv, NAME);
            match &e {
                TlsError::CertificateName { name, presented } => {
                    assert_eq!(name, NAME);
                    assert_eq!(presented, &["api.other.test".to_string()]);
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(
                e.to_string(),
                "the server's certificate is not valid for www.example.test (it is for \
                 api.other.test): connect with a name it lists, or fix the server's certificate"
            );
            assert!(alert.contains("BadCertificate"), "{alert}");
            // The same server, asked for the name it has: fine.
            connect(&client, &srv, "api.other.test");
        }

        #[test]
        fn unknown_ca_and_self_signed_are_unknown_issuer() {
            let pki = Pki::new("Handshake Test CA");
            let other = Pki::new("Another CA");
            let client = client_trusting(&pki, &TlsClientConfig::default());
            for srv in [
                server_for(&other.leaf(&[NAME])),
                server_for(&self_signed(&[NAME])),
            ] {
                let (e, alert) = refused(&client, &srv, NAME);
                assert!(
                    matches!(&e, TlsError::UnknownIssuer { name } if name == NAME),
                    "{e:?}"
                );
                assert_eq!(
                    e.to_string(),
                    "the server's certificate for www.example.test is not signed by a trusted \
                     CA: pass --cacert with its CA"
                );
                assert!(alert.contains("UnknownCA"), "{alert}");
            }
        }

        #[test]
        fn expired_and_not_yet_valid_certificates() {
            let pki = Pki::new("Handshake Test CA");
            let client = client_trusting(&pki, &TlsClientConfig::default());
            let (e, alert) = refused(
                &client,
                &server_for(&pki.leaf_dated(&[NAME], 2000, 2001)),
                NAME,
            );
            assert!(
                matches!(&e, TlsError::CertificateExpired { name } if name == NAME),
                "{e:?}"
            );
            assert!(e.to_string().contains("has expired"), "{e}");
            assert!(alert.contains("CertificateExpired"), "{alert}");
            let (e, _) = refused(
                &client,
                &server_for(&pki.leaf_dated(&[NAME], 3000, 3001)),
                NAME,
            );
            assert!(
                matches!(&e, TlsError::CertificateNotYetValid { name } if name == NAME),
                "{e:?}"
            );
        }

        #[test]
        fn ip_literal_is_checked_without_sni() {
            let pki = Pki::new("Handshake Test CA");
            let client = client_trusting(&pki, &TlsClientConfig::default());
            let srv = server_for(&pki.leaf(&["127.0.0.1"]));
            let (c, s) = connect(&client, &srv, "127.0.0.1");
            assert_eq!(c.info().unwrap().sni, None);
            assert_eq!(s.info().unwrap().sni, None);
            let (e, _) = refused(&client, &srv, "127.0.0.2");
            assert!(
                e.to_string().starts_with(
                    "the server's certificate is not valid for 127.0.0.2 (it is for 127.0.0.1)"
                ),
                "{e}"
            );
            let e = client.connect("not a name!").unwrap_err();
            assert!(matches!(e, TlsError::Config(_)), "{e:?}");
            assert!(
                e.to_string().contains("give a DNS name or an IP address"),
                "{e}"
            );
        }

        #[test]
        fn write_plaintext_is_bounded_by_buffer_limit() {
            let pki = Pki::new("Handshake Test CA");
            let srv = server_for(&pki.leaf(&[NAME]));
            let limit = 2 * MAX_RECORD_WIRE;
            let cfg = TlsClientConfig {
                buffer_limit: limit,
                ..TlsClientConfig::default()
            };
            let client = client_trusting(&pki, &cfg);
            let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();

            // During the handshake the plaintext waits, bounded.
            let mut c = client.connect(NAME).unwrap();
            let mut s = srv.accept().unwrap();
            assert_eq!(c.write_capacity(), limit);
            assert_eq!(c.write_plaintext(&data[..1000]), 1000);
            assert_eq!(c.write_plaintext(&data[1000..]), limit - 1000);
            assert_eq!(c.write_capacity(), 0);
            assert_eq!(c.write_plaintext(&data[limit..]), 0);
            let mut rx = Rx::default();
            pump(&mut c, &mut s, &mut rx).unwrap();
            assert!(rx.server == data[..limit], "{} bytes", rx.server.len());

            // Established: encrypted records wait for poll_ciphertext, bounded.
            let mut sent = limit;
            let first = c.write_plaintext(&data[sent..]);
            assert_eq!(first, limit);
            assert_eq!(c.write_plaintext(&data[sent + first..]), 0, "short count");
            sent += first;
            while sent < data.len() {
                pump(&mut c, &mut s, &mut rx).unwrap();
                let cap = c.write_capacity();
                assert_eq!(c.write_plaintext(&data[sent..]), cap.min(data.len() - sent));
                sent += cap.min(data.len() - sent);
            }
            pump(&mut c, &mut s, &mut rx).unwrap();
            assert!(rx.server == data, "{} bytes", rx.server.len());
        }

        #[test]
        fn garbage_from_the_server_is_a_protocol_error() {
            let pki = Pki::new("Handshake Test CA");
            let srv = server_for(&pki.leaf(&[NAME]));
            let client = client_trusting(&pki, &TlsClientConfig::default());
            let mut rng = Rng(0x5eed_c11e_0000_0008);
            let mut refused = 0;
            for round in 0..200 {
                // Half the rounds while handshaking, half on an established session.
                let mut c = if round % 2 == 0 {
                    let mut c = client.connect(NAME).unwrap();
                    while c.poll_ciphertext(&mut [0u8; 4096]) > 0 {}
                    c
                } else {
                    connect(&client, &srv, NAME).0
                };
                let len = 1 + (rng.next() % 3000) as usize;
                let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                match c.handle_ciphertext(&data) {
                    Err(TlsError::Protocol(_)) => {
                        refused += 1;
                        assert!(c.is_dead());
                    }
                    // A record header announcing more than was sent: rustls waits for the rest.
                    Ok(n) => assert!(n == len && !c.is_dead()),
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
            assert!(refused >= 190, "{refused} of 200 refused");
        }

        #[test]
        fn system_roots_build_and_refuse_a_private_ca() {
            let client = TlsClient::new(&TlsClientConfig::default()).unwrap();
            let pki = Pki::new("Handshake Test CA");
            let srv = server_for(&pki.leaf(&[NAME]));
            let (e, _) = refused(&client, &srv, NAME);
            assert!(matches!(e, TlsError::UnknownIssuer { .. }), "{e:?}");
        }

        #[test]
        fn cacert_file_is_read_and_errors_name_it() {
            let dir = std::env::temp_dir()
                .join(format!("handshake-tlsclient-test-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let pki = Pki::new("Handshake Test CA");
            let leaf = pki.leaf(&[NAME]);
            let with = |path: &std::path::Path| TlsClientConfig {
                cacert: Some(path.to_path_buf()),
                ..TlsClientConfig::default()
            };
            let ca = dir.join("ca.pem");
            std::fs::write(&ca, pki.ca_pem()).unwrap();
            let client = TlsClient::new(&with(&ca)).unwrap();
            connect(&client, &server_for(&leaf), NAME);

            let missing = dir.join("missing.pem");
            let e = TlsClient::new(&with(&missing)).unwrap_err();
            assert!(matches!(e, TlsError::ReadFile { .. }), "{e:?}");
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!(
                    "cannot read CA certificates {}: ",
                    missing.display()
                )) && msg
                    .ends_with("(pass --cacert with a PEM file of the CA certificates to trust)"),
                "{msg}"
            );
            let key = dir.join("key.pem");
            std::fs::write(&key, &leaf.key_pem).unwrap();
            let e = TlsClient::new(&with(&key)).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("no certificate in --cacert {}", key.display())),
                "{e}"
            );
            std::fs::remove_dir_all(&dir).unwrap();

            let e = TlsClient::from_pem_roots(b"", &TlsClientConfig::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("no certificate in the PEM roots"), "{e}");
            let bad = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
            let e = TlsClient::from_pem_roots(bad.as_bytes(), &TlsClientConfig::default())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("certificate #0 of the PEM roots cannot be used as a CA"),
                "{e}"
            );
        }

        #[test]
        fn client_config_is_validated() {
            let d = TlsClientConfig::default;
            assert_eq!(d().alpn, [b"http/1.1".to_vec()]);
            assert!(d().resumption && d().tls12 && d().cacert.is_none());
            let check = |cfg: TlsClientConfig, needle: &str| {
                let e = TlsClient::from_pem_roots(b"", &cfg).unwrap_err();
                assert!(matches!(e, TlsError::Config(_)), "{e:?}");
                assert!(e.to_string().contains(needle), "{e}");
            };
            check(
                TlsClientConfig {
                    buffer_limit: 100,
                    ..d()
                },
                "the TLS client's buffer_limit = 100 is out of range",
            );
            check(
                TlsClientConfig {
                    alpn: vec![b"h2".to_vec(), b"h2".to_vec()],
                    ..d()
                },
                "the TLS client's alpn lists \"h2\" twice",
            );
            check(
                TlsClientConfig {
                    alpn: vec![Vec::new()],
                    ..d()
                },
                "1 to 255 bytes",
            );
        }

        #[test]
        fn alpn_mismatch_is_refused_by_the_server() {
            let pki = Pki::new("Handshake Test CA");
            let srv = server_for(&pki.leaf(&[NAME]));
            let cfg = TlsClientConfig {
                alpn: vec![b"h2".to_vec()],
                ..TlsClientConfig::default()
            };
            let client = client_trusting(&pki, &cfg);
            let mut c = client.connect(NAME).unwrap();
            let mut s = srv.accept().unwrap();
            match pump(&mut c, &mut s, &mut Rx::default()) {
                Err(Failed::Server(TlsError::Protocol(_))) => {}
                other => panic!("unexpected {other:?}"),
            }
            match transfer(&mut s, &mut c, &mut Vec::new()) {
                Err(TlsError::Protocol(m)) => assert!(m.contains("NoApplicationProtocol"), "{m}"),
                other => panic!("unexpected {other:?}"),
            }
            assert!(c.is_dead());
        }
    }
}
