//! TLS: rustls behind one adapter file, and the session pool.
//!
//! [`adapter`] is the only file of the crate that names `rustls`; everything else uses the sans-IO
//! types re-exported here: a [`TlsServer`] (the shared, immutable server configuration) hands out
//! [`TlsSession`]s, each fed received ciphertext with [`TlsSession::handle_ciphertext`] and drained
//! of records to send with [`TlsSession::poll_ciphertext`]. No sockets, clocks or threads.
//!
//! Protocol choices (safe defaults only): TLS 1.3 always, TLS 1.2 when [`TlsConfig::tls12`],
//! never TLS 1.0/1.1 or SSL. The cipher suites are rustls's (aws-lc-rs provider): AEAD only
//! (AES-GCM, ChaCha20-Poly1305) with ephemeral (EC)DHE key exchange; rustls implements no CBC
//! suites and no RSA key exchange, so none can be enabled by mistake.

use std::path::PathBuf;

use serde::Deserialize;

pub mod adapter;

pub use adapter::{SessionInfo, TlsReload, TlsServer, TlsSession, TlsVersion};

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
        if self.buffer_limit < MAX_RECORD_WIRE || self.buffer_limit > MAX_BUFFER_LIMIT {
            return bad(format!(
                "tls.buffer_limit = {} is out of range: set it between {} (one full TLS record) and {}",
                self.buffer_limit, MAX_RECORD_WIRE, MAX_BUFFER_LIMIT
            ));
        }
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
        for (i, proto) in self.alpn.iter().enumerate() {
            if proto.is_empty() || proto.len() > 255 {
                return bad(format!(
                    "tls.alpn entry {:?} must be 1 to 255 bytes long (e.g. \"http/1.1\")",
                    proto
                ));
            }
            if self.alpn[..i].contains(proto) {
                return bad(format!(
                    "tls.alpn lists {:?} twice: list each protocol once",
                    proto
                ));
            }
        }
        Ok(())
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
