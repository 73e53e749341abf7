//! TLS as seen on the wire by the trace: records reassembled from one direction's in-order TCP
//! bytes, handshake messages named, ClientHello and ServerHello parsed. Nothing here decrypts.

use super::{Dir, EventKind};

/// What a ClientHello offered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// Highest version offered (supported_versions if present, else the legacy field).
    pub version: u16,
    /// Cipher suites in the client's order.
    pub suites: Vec<u16>,
    /// server_name (host_name entry).
    pub sni: Option<String>,
    /// application_layer_protocol_negotiation entries.
    pub alpn: Vec<String>,
}

/// What a ServerHello chose.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerHello {
    /// Version chosen (supported_versions if present, else the legacy field).
    pub version: u16,
    /// Cipher suite chosen.
    pub suite: u16,
    /// The random is HelloRetryRequest's (RFC 8446 §4.1.3).
    pub retry: bool,
}

/// SHA-256("HelloRetryRequest"): the ServerHello random of a HelloRetryRequest.
const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];
/// Largest record we accept as TLS (2^14 plus the most expansion RFC 8446 allows).
const MAX_RECORD: usize = (1 << 14) + 2048;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;

/// A cursor over untrusted bytes: every read is checked.
struct Rd<'a>(&'a [u8]);

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()? as usize;
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }
}

fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

/// Extensions as (type, body), until the bytes run out or stop parsing.
fn extensions(mut r: Rd<'_>) -> impl Iterator<Item = (u16, &[u8])> {
    let all = r.vec16().unwrap_or(&[]);
    let mut r = Rd(all);
    std::iter::from_fn(move || {
        let ty = r.u16()?;
        let body = r.vec16()?;
        Some((ty, body))
    })
}

impl ClientHello {
    /// Parses a ClientHello message body (after the 4-byte handshake header).
    pub fn parse(body: &[u8]) -> Option<ClientHello> {
        let mut r = Rd(body);
        let legacy = r.u16()?;
        r.take(32)?;
        r.vec8()?; // legacy_session_id
        let suites = r.vec16()?;
        r.vec8()?; // compression methods
        let mut ch = ClientHello {
            version: legacy,
            suites: suites
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect(),
            ..Default::default()
        };
        for (ty, ext) in extensions(r) {
            let mut e = Rd(ext);
            match ty {
                EXT_SERVER_NAME => {
                    let mut list = Rd(e.vec16().unwrap_or(&[]));
                    while let (Some(kind), Some(name)) = (list.u8(), list.vec16()) {
                        if kind == 0 {
                            ch.sni = Some(String::from_utf8_lossy(name).into_owned());
                            break;
                        }
                    }
                }
                EXT_ALPN => {
                    let mut list = Rd(e.vec16().unwrap_or(&[]));
                    while let Some(p) = list.vec8() {
                        ch.alpn.push(String::from_utf8_lossy(p).into_owned());
                    }
                }
                EXT_SUPPORTED_VERSIONS => {
                    let v = e.vec8().unwrap_or(&[]);
                    if let Some(max) = v
                        .chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .filter(|v| !is_grease(*v))
                        .max()
                    {
                        ch.version = max;
                    }
                }
                _ => {}
            }
        }
        Some(ch)
    }
}

impl ServerHello {
    /// Parses a ServerHello message body (after the 4-byte handshake header).
    pub fn parse(body: &[u8]) -> Option<ServerHello> {
        let mut r = Rd(body);
        let legacy = r.u16()?;
        let random = r.take(32)?;
        r.vec8()?;
        let suite = r.u16()?;
        r.u8()?;
        let mut sh = ServerHello {
            version: legacy,
            suite,
            retry: random == HRR_RANDOM,
        };
        for (ty, ext) in extensions(r) {
            if ty == EXT_SUPPORTED_VERSIONS {
                if let Some(v) = Rd(ext).u16() {
                    sh.version = v;
                }
            }
        }
        Some(sh)
    }
}

/// The name of a protocol version.
pub fn version_name(v: u16) -> String {
    match v {
        0x0304 => "TLS 1.3".into(),
        0x0303 => "TLS 1.2".into(),
        0x0302 => "TLS 1.1".into(),
        0x0301 => "TLS 1.0".into(),
        0x0300 => "SSL 3.0".into(),
        v => format!("0x{v:04x}"),
    }
}

/// The IANA name of a cipher suite, for the common ones.
pub fn suite_name(s: u16) -> String {
    let n = match s {
        0x1301 => "TLS_AES_128_GCM_SHA256",
        0x1302 => "TLS_AES_256_GCM_SHA384",
        0x1303 => "TLS_CHACHA20_POLY1305_SHA256",
        0xc02b => "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        0xc02c => "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        0xc02f => "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        0xc030 => "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        0xcca8 => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        0xcca9 => "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        0x009e => "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
        0x009f => "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
        0x00ff => "TLS_EMPTY_RENEGOTIATION_INFO_SCSV",
        s if is_grease(s) => "GREASE",
        s => return format!("0x{s:04x}"),
    };
    n.into()
}

fn handshake_name(t: u8) -> String {
    match t {
        0 => "HelloRequest".into(),
        4 => "NewSessionTicket".into(),
        5 => "EndOfEarlyData".into(),
        8 => "EncryptedExtensions".into(),
        11 => "Certificate".into(),
        12 => "Server Key Exchange".into(),
        13 => "CertificateRequest".into(),
        14 => "Server Hello Done".into(),
        15 => "CertificateVerify".into(),
        16 => "Client Key Exchange".into(),
        20 => "Finished".into(),
        24 => "KeyUpdate".into(),
        t => format!("handshake type {t}"),
    }
}

fn alert_name(level: u8, desc: u8) -> String {
    let d = match desc {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        40 => "handshake_failure",
        42 => "bad_certificate",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        109 => "missing_extension",
        112 => "unrecognized_name",
        120 => "no_application_protocol",
        _ => return format!("Alert ({}, {desc})", level_name(level)),
    };
    format!("Alert ({}, {d})", level_name(level))
}

fn level_name(l: u8) -> &'static str {
    match l {
        1 => "warning",
        2 => "fatal",
        _ => "level ?",
    }
}

/// What a record stream yields.
#[derive(Debug)]
pub(super) enum TlsEv {
    Client(ClientHello),
    Server(ServerHello),
    Record { what: String, len: usize },
}

impl TlsEv {
    pub(super) fn into_event(self, dir: Dir) -> EventKind {
        match self {
            TlsEv::Client(ch) => EventKind::ClientHello {
                dir,
                version: version_name(ch.version),
                suites: ch.suites.iter().map(|s| suite_name(*s)).collect(),
                sni: ch.sni,
                alpn: ch.alpn,
            },
            TlsEv::Server(sh) => EventKind::ServerHello {
                dir,
                version: version_name(sh.version),
                suite: suite_name(sh.suite),
                retry: sh.retry,
            },
            TlsEv::Record { what, len } => EventKind::Tls { dir, what, len },
        }
    }
}

/// One direction of a traced connection's bytes, as TLS records.
#[derive(Debug, Default)]
pub(super) struct Stream {
    /// Relative sequence number of the next byte expected (0: nothing seen yet, the first data
    /// byte after the SYN is 1).
    next: u32,
    /// Not TLS, or a record header we could not follow: stop looking.
    lost: bool,
    hdr: [u8; 5],
    hdr_len: usize,
    /// Body bytes still to come of the current record.
    want: usize,
    ct: u8,
    len: usize,
    /// Body of the current record, kept only for plaintext handshake and alert records.
    keep: bool,
    body: Vec<u8>,
    /// This side sent ChangeCipherSpec (TLS 1.2: what follows is encrypted).
    ccs: bool,
    /// This side sent a ClientHello / a ServerHello.
    is_client: bool,
    is_server: bool,
    /// The ServerHello chose TLS 1.3 (set on both directions).
    v13: bool,
    /// This side sent an encrypted record (TLS 1.3).
    sent_encrypted: bool,
}

impl Stream {
    /// In-order bytes starting at relative sequence `rel_seq`; `other` is the opposite direction.
    pub(super) fn on_bytes(
        &mut self,
        rel_seq: u32,
        payload: &[u8],
        other: &mut Stream,
        out: &mut Vec<TlsEv>,
    ) {
        if self.lost {
            return;
        }
        if self.next == 0 {
            self.next = 1;
        }
        let end = rel_seq.wrapping_add(payload.len() as u32);
        // Retransmitted bytes are skipped; bytes after a gap wait for the gap to fill (their
        // records are not reported if the retransmission arrives later).
        let skip = self.next.wrapping_sub(rel_seq);
        if (skip as i32) < 0 || (end.wrapping_sub(self.next) as i32) <= 0 {
            return;
        }
        let mut data = &payload[skip as usize..];
        self.next = end;
        while !data.is_empty() {
            if self.want == 0 && self.hdr_len < 5 {
                let n = (5 - self.hdr_len).min(data.len());
                self.hdr[self.hdr_len..self.hdr_len + n].copy_from_slice(&data[..n]);
                self.hdr_len += n;
                data = &data[n..];
                if self.hdr_len < 5 {
                    break;
                }
                let [ct, major, _, hi, lo] = self.hdr;
                let len = usize::from(u16::from_be_bytes([hi, lo]));
                if !(20..=24).contains(&ct) || major != 3 || len > MAX_RECORD {
                    self.lost = true;
                    return;
                }
                self.ct = ct;
                self.len = len;
                self.want = len;
                self.keep = (ct == 22 && !self.ccs) || ct == 21;
                self.body.clear();
                if len == 0 {
                    self.finish(other, out);
                }
                continue;
            }
            let n = self.want.min(data.len());
            if self.keep {
                self.body.extend_from_slice(&data[..n]);
            }
            self.want -= n;
            data = &data[n..];
            if self.want == 0 {
                self.finish(other, out);
            }
        }
    }

    /// A whole record arrived.
    fn finish(&mut self, other: &mut Stream, out: &mut Vec<TlsEv>) {
        self.hdr_len = 0;
        let len = self.len;
        let rec = |what: &str| TlsEv::Record {
            what: what.into(),
            len,
        };
        match self.ct {
            20 => {
                self.ccs = true;
                out.push(rec("Change Cipher Spec"));
            }
            21 => {
                let encrypted = self.ccs && !self.v13;
                match (encrypted, self.body.as_slice()) {
                    (false, [level, desc, ..]) => out.push(rec(&alert_name(*level, *desc))),
                    _ => out.push(rec("Alert (encrypted)")),
                }
            }
            22 if self.ccs => out.push(rec("Encrypted Handshake Message (Finished)")),
            22 => {
                let body = std::mem::take(&mut self.body);
                let mut r = Rd(&body);
                while let (Some(t), Some(l)) = (r.u8(), r.take(3)) {
                    let n = usize::from(l[0]) << 16 | usize::from(l[1]) << 8 | usize::from(l[2]);
                    let Some(m) = r.take(n) else {
                        out.push(rec(&format!("{} (truncated)", handshake_name(t))));
                        break;
                    };
                    match t {
                        1 => {
                            self.is_client = true;
                            match ClientHello::parse(m) {
                                Some(ch) => out.push(TlsEv::Client(ch)),
                                None => out.push(rec("Client Hello (malformed)")),
                            }
                        }
                        2 => match ServerHello::parse(m) {
                            Some(sh) => {
                                self.is_server = true;
                                if sh.version == 0x0304 && !sh.retry {
                                    self.v13 = true;
                                    other.v13 = true;
                                }
                                out.push(TlsEv::Server(sh));
                            }
                            None => out.push(rec("Server Hello (malformed)")),
                        },
                        t => out.push(rec(&handshake_name(t))),
                    }
                }
                self.body = body;
            }
            23 if self.v13 && self.is_server && !other.sent_encrypted => {
                self.sent_encrypted = true;
                out.push(rec(
                    "Encrypted Handshake Message (EncryptedExtensions … Finished)",
                ));
            }
            23 if self.v13 && self.is_client && !self.sent_encrypted => {
                self.sent_encrypted = true;
                out.push(rec("Encrypted Handshake Message (Finished)"));
            }
            23 => out.push(rec("Application Data")),
            _ => out.push(rec("Heartbeat")),
        }
    }
}
