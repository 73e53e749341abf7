//! TLS: rustls behind one adapter file, and the session pool.
//!
//! [`adapter`] is the only file of the crate that names `rustls`; everything else uses the sans-IO
//! types re-exported here: a [`TlsServer`] (the shared, immutable server configuration) hands out
//! [`TlsSession`]s, each fed received ciphertext with [`TlsSession::handle_ciphertext`] and drained
//! of records to send with [`TlsSession::poll_ciphertext`]. No sockets, clocks or threads.
//!
//! The client side ([`TlsClient`], issue 8: the engine plays the browser) is the same sans-IO
//! pump: a [`TlsClient`] (shared, immutable: trust store, ALPN, session cache) hands out
//! [`TlsClientSession`]s, one per connection to a server name. Certificate failures are distinct
//! [`TlsError`] variants ([`TlsError::CertificateName`], [`TlsError::UnknownIssuer`], ...).
//!
//! Protocol choices (safe defaults only): TLS 1.3 always, TLS 1.2 when [`TlsConfig::tls12`],
//! never TLS 1.0/1.1 or SSL. The cipher suites are rustls's (aws-lc-rs provider): AEAD only
//! (AES-GCM, ChaCha20-Poly1305) with ephemeral (EC)DHE key exchange; rustls implements no CBC
//! suites and no RSA key exchange, so none can be enabled by mistake.

use std::path::PathBuf;

use serde::Deserialize;

pub mod adapter;

pub use adapter::{
    SessionInfo, TlsClient, TlsClientSession, TlsReload, TlsServer, TlsSession, TlsVersion,
};

/// The largest TLS record on the wire: 5-byte header, 2^14 bytes of plaintext and up to 256 bytes
/// of expansion (RFC 8446 §5.2). [`TlsConfig::buffer_limit`] must hold at least one.
pub const MAX_RECORD_WIRE: usize = 5 + 16_384 + 256;

/// Upper bound of [`TlsConfig::buffer_limit`] (per session, so bounded).
pub const MAX_BUFFER_LIMIT: usize = 16 << 20;

/// Upper bound of [`TlsConfig::session_cache`] (rustls allocates the cache up front).
pub const MAX_SESSION_CACHE: usize = 1 << 20;

/// Upper bound of [`TlsConfig::max_sessions`].
pub const MAX_SESSIONS: usize = 1 << 20;

/// Upper bound of [`TlsConfig::threads`].
pub const MAX_THREADS: usize = 1024;

/// Settings of the TLS service.
///
/// Every field has a default, so an empty `[tls]` table is valid apart from the certificates;
/// unknown keys are rejected.
#[derive(Clone, Debug, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chains and their keys. The first is the default; the others are chosen by the
    /// client's SNI name, matched against each certificate's subjectAltName DNS names.
    pub certs: Vec<CertFiles>,
    /// Offer TLS 1.2 as well as TLS 1.3 (TLS 1.3 is always on; 1.0/1.1 never). Default true.
    pub tls12: bool,
    /// ALPN protocols in order of preference: the first of these that the client offers wins.
    /// Default `["http/1.1"]`; empty disables ALPN.
    /// A client that offers ALPN but none of these gets a `no_application_protocol` alert.
    pub alpn: Vec<String>,
    /// Stateless TLS 1.3 / TLS 1.2 session tickets (keys rotate inside rustls). Default true.
    pub tickets: bool,
    /// Entries of the stateful session cache (TLS 1.2 session IDs, TLS 1.3 stateful tickets when
    /// `tickets` is off); 0 disables it. Default 4096.
    pub session_cache: usize,
    /// Handshake deadline in milliseconds (enforced by the caller; carried here). Default 10 000.
    pub handshake_timeout_ms: u64,
    /// Most concurrent TLS sessions (enforced by the caller). Default 4096.
    pub max_sessions: usize,
    /// Handshake pool threads; 0 runs TLS inline on the packet core (the caller's business).
    /// Default 0.
    pub threads: usize,
    /// Most bytes of pending outgoing data per session: plaintext queued during the handshake,
    /// and encrypted records not yet taken by [`TlsSession::poll_ciphertext`]. Default 64 KiB;
    /// at least [`MAX_RECORD_WIRE`].
    pub buffer_limit: usize,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            certs: Vec::new(),
            tls12: true,
            alpn: vec!["http/1.1".to_string()],
            tickets: true,
            session_cache: 4096,
            handshake_timeout_ms: 10_000,
            max_sessions: 4096,
            threads: 0,
            buffer_limit: 64 * 1024,
        }
    }
}

/// One certificate chain and its private key, both PEM files.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    /// PEM certificate chain: the end-entity certificate first, then intermediates.
    pub cert: PathBuf,
    /// PEM private key: PKCS#8, SEC1 (EC) or PKCS#1 (RSA).
    pub key: PathBuf,
}

impl TlsConfig {
    /// Checks the limits and the ALPN list. Does not read the certificate files
    /// ([`TlsServer::new`] does).
    pub fn validate(&self) -> Result<(), TlsError> {
        let bad = |msg: String| Err(TlsError::Config(msg));
        check_buffer_limit(self.buffer_limit, "tls.buffer_limit")?;
        if self.max_sessions == 0 || self.max_sessions > MAX_SESSIONS {
            return bad(format!(
                "tls.max_sessions = {} is out of range: set it between 1 and {}",
                self.max_sessions, MAX_SESSIONS
            ));
        }
        if self.session_cache > MAX_SESSION_CACHE {
            return bad(format!(
                "tls.session_cache = {} is too large: set at most {} entries (0 disables the cache)",
                self.session_cache, MAX_SESSION_CACHE
            ));
        }
        if self.handshake_timeout_ms == 0 {
            return bad(
                "tls.handshake_timeout_ms = 0: set a positive handshake deadline (default 10000)"
                    .to_string(),
            );
        }
        if self.threads > MAX_THREADS {
            return bad(format!(
                "tls.threads = {} is too large: set at most {} (0 runs TLS on the packet cores)",
                self.threads, MAX_THREADS
            ));
        }
        check_alpn(&self.alpn, "tls.alpn")
    }
}

/// Checks a `buffer_limit` setting (named `key` in the message).
fn check_buffer_limit(limit: usize, key: &str) -> Result<(), TlsError> {
    if !(MAX_RECORD_WIRE..=MAX_BUFFER_LIMIT).contains(&limit) {
        return Err(TlsError::Config(format!(
            "{key} = {limit} is out of range: set it between {MAX_RECORD_WIRE} (one full TLS record) and {MAX_BUFFER_LIMIT}"
        )));
    }
    Ok(())
}

/// Checks an ALPN list (named `key` in the message): each protocol 1 to 255 bytes, none twice.
fn check_alpn<P: AsRef<[u8]> + PartialEq>(alpn: &[P], key: &str) -> Result<(), TlsError> {
    for (i, proto) in alpn.iter().enumerate() {
        let shown = String::from_utf8_lossy(proto.as_ref());
        if proto.as_ref().is_empty() || proto.as_ref().len() > 255 {
            return Err(TlsError::Config(format!(
                "{key} entry {shown:?} must be 1 to 255 bytes long (e.g. \"http/1.1\")"
            )));
        }
        if alpn[..i].contains(proto) {
            return Err(TlsError::Config(format!(
                "{key} lists {shown:?} twice: list each protocol once"
            )));
        }
    }
    Ok(())
}

/// Most sessions the TLS client remembers for resumption (rustls's in-memory store, per
/// [`TlsClient`]; the oldest are forgotten first).
pub const CLIENT_SESSION_CACHE: usize = 256;

/// Settings of the TLS client ([`TlsClient`]): whom to trust and what to offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsClientConfig {
    /// PEM bundle of the CA certificates to trust (`--cacert`). `None`: the Mozilla root
    /// program's CAs (compiled in from the `webpki-roots` crate; the system's store is not read).
    pub cacert: Option<PathBuf>,
    /// ALPN protocols to offer, in order of preference. Default `[b"http/1.1"]`; empty sends no
    /// ALPN extension.
    pub alpn: Vec<Vec<u8>>,
    /// Resume sessions (TLS 1.3 tickets, TLS 1.2 tickets or session IDs) with servers seen
    /// before, from an in-memory store of at most [`CLIENT_SESSION_CACHE`] sessions shared by
    /// the clones of one [`TlsClient`]. Default true.
    pub resumption: bool,
    /// Offer TLS 1.2 as well as TLS 1.3 (TLS 1.3 is always on; 1.0/1.1 never). Default true.
    pub tls12: bool,
    /// Most bytes of pending outgoing data per session, as [`TlsConfig::buffer_limit`].
    /// Default 64 KiB; at least [`MAX_RECORD_WIRE`].
    pub buffer_limit: usize,
}

impl Default for TlsClientConfig {
    fn default() -> Self {
        TlsClientConfig {
            cacert: None,
            alpn: vec![b"http/1.1".to_vec()],
            resumption: true,
            tls12: true,
            buffer_limit: 64 * 1024,
        }
    }
}

impl TlsClientConfig {
    /// Checks the buffer limit and the ALPN list. Does not read the CA file ([`TlsClient::new`]
    /// does).
    pub fn validate(&self) -> Result<(), TlsError> {
        check_buffer_limit(self.buffer_limit, "the TLS client's buffer_limit")?;
        check_alpn(&self.alpn, "the TLS client's alpn")
    }
}

/// `" (it is for a, b)"`: the names a certificate presented, for [`TlsError::CertificateName`].
fn presented_names(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!(" (it is for {})", names.join(", "))
    }
}

/// Errors of the TLS layer: loading the configuration, and fatal protocol errors of a session.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read {what} {path}: {source} ({hint})")]
    ReadFile {
        /// "certificate" or "private key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
        /// What the user should pass instead.
        hint: &'static str,
    },
    /// The private key file can be read by every user of the machine: refused, because anyone
    /// could then impersonate the server.
    #[error("private key {path} is readable by every user (mode {mode:04o}): restrict it with `chmod 600 {}` (or 640, group-readable by the daemon's group)", path.display())]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A certificate chain or key was read but is unusable (not PEM, no item, unsupported key,
    /// key not matching the certificate...).
    #[error("{0}")]
    BadCertificate(String),
    /// The configuration is invalid; the message says which setting to change.
    #[error("invalid TLS configuration: {0}")]
    Config(String),
    /// A fatal TLS protocol error in a session, with rustls's description. The alert to send (if
    /// any) is queued in the session; the session is dead.
    #[error(
        "TLS protocol error: {0} (the connection is closed with an alert; if legitimate clients \
         fail, compare their TLS versions, ALPN protocols and server name with the tls settings)"
    )]
    Protocol(String),
    /// Client side: the server's certificate is valid (signed by a trusted CA, in date) but not
    /// for the name connected to. The session is dead; rustls's alert is queued.
    #[error(
        "the server's certificate is not valid for {name}{}: connect with a name it lists, or fix \
         the server's certificate",
        presented_names(.presented)
    )]
    CertificateName {
        /// The name connected to ([`TlsClient::connect`]).
        name: String,
        /// The DNS names and IP addresses the certificate lists (when rustls reports them;
        /// other kinds of name as rustls describes them).
        presented: Vec<String>,
    },
    /// Client side: the server's certificate chain does not lead to a trusted CA (this includes
    /// self-signed certificates). The session is dead; rustls's alert is queued.
    #[error(
        "the server's certificate for {name} is not signed by a trusted CA: pass --cacert with its CA"
    )]
    UnknownIssuer {
        /// The name connected to.
        name: String,
    },
    /// Client side: the server's certificate has expired. The session is dead; rustls's alert
    /// is queued.
    #[error(
        "the server's certificate for {name} has expired: the server must renew it (or this \
         machine's clock is wrong)"
    )]
    CertificateExpired {
        /// The name connected to.
        name: String,
    },
    /// Client side: the server's certificate is not valid yet. The session is dead; rustls's
    /// alert is queued.
    #[error(
        "the server's certificate for {name} is not valid yet: check this machine's clock (or \
         the certificate's start date)"
    )]
    CertificateNotYetValid {
        /// The name connected to.
        name: String,
    },
    /// Client side: the server's certificate is refused for another reason (bad signature,
    /// revoked, wrong key usage, undecodable...), with rustls's description. The session is
    /// dead; rustls's alert is queued.
    #[error("the server's certificate for {name} is refused: {reason}")]
    CertificateOther {
        /// The name connected to.
        name: String,
        /// rustls's description of the problem.
        reason: String,
    },
}

/// The ciphertext side of a TLS session, server or client: what moves bytes between a session
/// and its transport ([`crate::https::CipherInput`]).
pub trait CipherSession {
    /// See [`TlsSession::handle_ciphertext`].
    fn handle_ciphertext(&mut self, data: &[u8]) -> Result<usize, TlsError>;
    /// See [`TlsSession::poll_ciphertext`].
    fn poll_ciphertext(&mut self, buf: &mut [u8]) -> usize;
    /// See [`TlsSession::has_ciphertext`].
    fn has_ciphertext(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_defaults_and_fields() {
        let cfg: TlsConfig = toml::from_str("").unwrap();
        assert_eq!(cfg, TlsConfig::default());
        assert!(cfg.tls12 && cfg.tickets);
        assert_eq!(cfg.alpn, ["http/1.1"]);
        assert_eq!(
            (cfg.session_cache, cfg.max_sessions, cfg.threads),
            (4096, 4096, 0)
        );
        assert_eq!(
            (cfg.handshake_timeout_ms, cfg.buffer_limit),
            (10_000, 65_536)
        );
        cfg.validate().unwrap();

        let cfg: TlsConfig = toml::from_str(
            r#"
            certs = [
                { cert = "/etc/h/a.pem", key = "/etc/h/a.key" },
                { cert = "/etc/h/b.pem", key = "/etc/h/b.key" },
            ]
            tls12 = false
            alpn = ["h2", "http/1.1"]
            tickets = false
            session_cache = 0
            handshake_timeout_ms = 3000
            max_sessions = 100
            threads = 2
            buffer_limit = 32768
            "#,
        )
        .unwrap();
        assert_eq!(
            cfg,
            TlsConfig {
                certs: vec![
                    CertFiles {
                        cert: "/etc/h/a.pem".into(),
                        key: "/etc/h/a.key".into()
                    },
                    CertFiles {
                        cert: "/etc/h/b.pem".into(),
                        key: "/etc/h/b.key".into()
                    },
                ],
                tls12: false,
                alpn: vec!["h2".into(), "http/1.1".into()],
                tickets: false,
                session_cache: 0,
                handshake_timeout_ms: 3000,
                max_sessions: 100,
                threads: 2,
                buffer_limit: 32768,
            }
        );
        cfg.validate().unwrap();
    }

    #[test]
    fn toml_rejects_unknown_fields() {
        let e = toml::from_str::<TlsConfig>("tls13 = true").unwrap_err();
        assert!(e.to_string().contains("unknown field `tls13`"), "{e}");
        let e =
            toml::from_str::<TlsConfig>("certs = [{ cert = \"a\", key = \"b\", pass = \"x\" }]")
                .unwrap_err();
        assert!(e.to_string().contains("unknown field `pass`"), "{e}");
        let e = toml::from_str::<TlsConfig>("certs = [{ cert = \"a\" }]").unwrap_err();
        assert!(e.to_string().contains("missing field `key`"), "{e}");
    }

    #[test]
    fn validate_names_the_setting() {
        let check = |cfg: TlsConfig, needle: &str| {
            let e = cfg.validate().unwrap_err();
            assert!(matches!(e, TlsError::Config(_)));
            assert!(e.to_string().contains(needle), "{e}");
        };
        let d = TlsConfig::default;
        check(
            TlsConfig {
                buffer_limit: MAX_RECORD_WIRE - 1,
                ..d()
            },
            "tls.buffer_limit = 16644",
        );
        check(
            TlsConfig {
                buffer_limit: MAX_BUFFER_LIMIT + 1,
                ..d()
            },
            "tls.buffer_limit",
        );
        check(
            TlsConfig {
                max_sessions: 0,
                ..d()
            },
            "tls.max_sessions = 0",
        );
        check(
            TlsConfig {
                session_cache: MAX_SESSION_CACHE + 1,
                ..d()
            },
            "tls.session_cache",
        );
        check(
            TlsConfig {
                handshake_timeout_ms: 0,
                ..d()
            },
            "tls.handshake_timeout_ms",
        );
        check(
            TlsConfig {
                threads: MAX_THREADS + 1,
                ..d()
            },
            "tls.threads",
        );
        check(
            TlsConfig {
                alpn: vec![String::new()],
                ..d()
            },
            "1 to 255 bytes",
        );
        check(
            TlsConfig {
                alpn: vec!["x".repeat(256)],
                ..d()
            },
            "1 to 255 bytes",
        );
        check(
            TlsConfig {
                alpn: vec!["h2".into(), "h2".into()],
                ..d()
            },
            "twice",
        );
        // The edges that are allowed.
        let ok = TlsConfig {
            buffer_limit: MAX_RECORD_WIRE,
            alpn: vec!["x".repeat(255)],
            session_cache: 0,
            max_sessions: 1,
            ..d()
        };
        ok.validate().unwrap();
        TlsConfig {
            alpn: vec![],
            ..d()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn missing_files_are_named() {
        let dir = std::env::temp_dir().join(format!("handshake-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (dir.join("a.pem"), dir.join("a.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let mode = |p: &std::path::Path, m: u32| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        mode(&key_path, 0o600);
        let with = |cert: &std::path::Path, key: &std::path::Path| TlsConfig {
            certs: vec![CertFiles {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            }],
            ..TlsConfig::default()
        };

        let server = TlsServer::new(&with(&cert_path, &key_path)).unwrap();
        let session = server.accept().unwrap();
        assert!(session.is_handshaking() && !session.has_ciphertext());

        let missing = dir.join("missing.pem");
        let e = TlsServer::new(&with(&missing, &key_path)).unwrap_err();
        assert!(matches!(e, TlsError::ReadFile { .. }));
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("cannot read certificate {}: ", missing.display()))
                && msg.ends_with("(pass --cert with a PEM certificate chain)"),
            "{msg}"
        );
        let e = TlsServer::new(&with(&cert_path, &missing))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("cannot read private key {}: ", missing.display()))
                && e.contains("pass --key"),
            "{e}"
        );
        // The key file holds a certificate, not a key.
        let e = TlsServer::new(&with(&cert_path, &cert_path))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("no private key in {}", cert_path.display())),
            "{e}"
        );
        let e = TlsServer::new(&TlsConfig::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no certificate configured"), "{e}");
        // A key every user can read is refused, saying how to fix it; group-readable is fine.
        mode(&key_path, 0o644);
        let e = TlsServer::new(&with(&cert_path, &key_path)).unwrap_err();
        assert!(
            matches!(e, TlsError::KeyPermissions { mode: 0o644, .. }),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("chmod 600 {}", key_path.display())),
            "{msg}"
        );
        mode(&key_path, 0o640);
        TlsServer::new(&with(&cert_path, &key_path)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
