//! The capture filter: a small, documented subset of tcpdump's syntax, matched on the raw frame
//! without allocating.
//!
//! ```text
//! filter := group ("or" group)*        an empty filter matches every frame
//! group  := term ("and" term)*
//! term   := ["not"] primitive
//! primitive := "host" IPv4 | "src" "host" IPv4 | "dst" "host" IPv4
//!            | "port" N | "src" "port" N | "dst" "port" N
//!            | "tcp" | "udp" | "icmp" | "arp" | "ip"
//! ```
//! `and` binds tighter than `or`; there are no parentheses. `host` matches the IPv4 source or
//! destination (and an ARP packet's sender or target address); `port` the TCP or UDP source or
//! destination port. Example: `port 443 and host 198.18.0.2 or icmp`.

use std::net::Ipv4Addr;

/// Which end of a packet a primitive looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Either,
    Src,
    Dst,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prim {
    Host(End, Ipv4Addr),
    Port(End, u16),
    Tcp,
    Udp,
    Icmp,
    Arp,
    Ip,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Term {
    not: bool,
    prim: Prim,
}

/// A parsed filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Disjunction of conjunctions.
    groups: Vec<Vec<Term>>,
}

/// A filter that does not parse, with what to write instead.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("capture filter {filter:?}: {why}; the syntax is `[not] host A | src host A | dst host A | port N | src port N | dst port N | tcp | udp | icmp | arp | ip`, joined with `and` / `or` (no parentheses)")]
pub struct FilterError {
    /// The filter.
    pub filter: String,
    /// What is wrong.
    pub why: String,
}

/// The fields of a frame a filter looks at.
#[derive(Clone, Copy, Debug, Default)]
struct Fields {
    arp: bool,
    ip: bool,
    proto: u8,
    src: Option<Ipv4Addr>,
    dst: Option<Ipv4Addr>,
    sport: Option<u16>,
    dport: Option<u16>,
}

fn fields(frame: &[u8]) -> Fields {
    let mut f = Fields::default();
    if frame.len() < 14 {
        return f;
    }
    let ip4 = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    match [frame[12], frame[13]] {
        [0x08, 0x06] => {
            f.arp = true;
            if frame.len() >= 42 {
                f.src = Some(ip4(&frame[28..32]));
                f.dst = Some(ip4(&frame[38..42]));
            }
        }
        [0x08, 0x00] if frame.len() >= 34 && frame[14] >> 4 == 4 => {
            f.ip = true;
            let ihl = usize::from(frame[14] & 0x0f) * 4;
            f.proto = frame[23];
            f.src = Some(ip4(&frame[26..30]));
            f.dst = Some(ip4(&frame[30..34]));
            let l4 = 14 + ihl;
            let first_fragment = u16::from_be_bytes([frame[20], frame[21]]) & 0x1fff == 0;
            if (f.proto == 6 || f.proto == 17) && first_fragment && frame.len() >= l4 + 4 {
                f.sport = Some(u16::from_be_bytes([frame[l4], frame[l4 + 1]]));
                f.dport = Some(u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]));
            }
        }
        _ => {}
    }
    f
}

fn matches_end<T: PartialEq + Copy>(end: End, src: Option<T>, dst: Option<T>, want: T) -> bool {
    match end {
        End::Either => src == Some(want) || dst == Some(want),
        End::Src => src == Some(want),
        End::Dst => dst == Some(want),
    }
}

impl Prim {
    fn matches(&self, f: &Fields) -> bool {
        match *self {
            Prim::Host(e, a) => matches_end(e, f.src, f.dst, a),
            Prim::Port(e, p) => matches_end(e, f.sport, f.dport, p),
            Prim::Tcp => f.ip && f.proto == 6,
            Prim::Udp => f.ip && f.proto == 17,
            Prim::Icmp => f.ip && f.proto == 1,
            Prim::Arp => f.arp,
            Prim::Ip => f.ip,
        }
    }
}

impl Filter {
    /// Parses `text` (empty: match everything).
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let err = |why: String| FilterError {
            filter: text.to_owned(),
            why,
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        let mut groups = Vec::new();
        if words.is_empty() {
            return Ok(Filter { groups });
        }
        for group in words.split(|w| *w == "or") {
            if group.is_empty() {
                return Err(err("`or` needs a term on each side".into()));
            }
            let mut terms = Vec::new();
            for term in group.split(|w| *w == "and") {
                let (not, rest) = match term.split_first() {
                    Some((&"not", r)) => (true, r),
                    _ => (false, term),
                };
                let (end, rest) = match rest.split_first() {
                    Some((&"src", r)) => (End::Src, r),
                    Some((&"dst", r)) => (End::Dst, r),
                    _ => (End::Either, rest),
                };
                let prim = match rest {
                    ["host", a] => Prim::Host(
                        end,
                        a.parse()
                            .map_err(|_| err(format!("{a:?} is not an IPv4 address")))?,
                    ),
                    ["port", p] => Prim::Port(
                        end,
                        p.parse()
                            .map_err(|_| err(format!("{p:?} is not a port number")))?,
                    ),
                    [w @ ("tcp" | "udp" | "icmp" | "arp" | "ip")] if end == End::Either => match *w
                    {
                        "tcp" => Prim::Tcp,
                        "udp" => Prim::Udp,
                        "icmp" => Prim::Icmp,
                        "arp" => Prim::Arp,
                        _ => Prim::Ip,
                    },
                    [] => return Err(err("`and` needs a term on each side".into())),
                    other => return Err(err(format!("cannot read `{}`", other.join(" ")))),
                };
                terms.push(Term { not, prim });
            }
            groups.push(terms);
        }
        Ok(Filter { groups })
    }

    /// True when the filter matches every frame.
    pub fn is_all(&self) -> bool {
        self.groups.is_empty()
    }

    /// Whether `frame` (an Ethernet frame) passes.
    pub fn matches(&self, frame: &[u8]) -> bool {
        if self.groups.is_empty() {
            return true;
        }
        let f = fields(frame);
        self.groups
            .iter()
            .any(|g| g.iter().all(|t| t.prim.matches(&f) != t.not))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
            .ipv4(src, dst, 64)
            .tcp(sport, dport, 1, 1000)
            .write(&mut v, b"x")
            .unwrap();
        v
    }

    fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
            .ipv4(src, dst, 64)
            .udp(sport, dport)
            .write(&mut v, b"x")
            .unwrap();
        v
    }

    fn ping() -> Vec<u8> {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
            .ipv4([198, 18, 0, 2], [198, 18, 0, 1], 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut v, b"x")
            .unwrap();
        v
    }

    fn arp() -> Vec<u8> {
        let mut v = vec![0xff; 6];
        v.extend_from_slice(&[2, 0, 0, 0, 0, 2, 8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
        v.extend_from_slice(&[2, 0, 0, 0, 0, 2, 198, 18, 0, 2]);
        v.extend_from_slice(&[0; 6]);
        v.extend_from_slice(&[198, 18, 0, 1]);
        v
    }

    #[test]
    fn primitives_and_combinations() {
        let a = tcp([198, 18, 0, 2], [198, 18, 0, 1], 40000, 443);
        let b = tcp([198, 18, 0, 1], [198, 18, 0, 2], 80, 40001);
        let u = udp([198, 18, 0, 2], [198, 18, 0, 1], 5353, 443);
        let (p, r) = (ping(), arp());
        let m = |f: &str, fr: &[u8]| Filter::parse(f).unwrap().matches(fr);
        assert!(m("", &a) && m("  ", &r) && Filter::parse("").unwrap().is_all());
        assert!(m("port 443", &a) && !m("port 443", &b) && m("port 443", &u));
        assert!(m("tcp and port 443", &a) && !m("tcp and port 443", &u));
        assert!(m("src port 80", &b) && !m("dst port 80", &b) && m("dst port 40001", &b));
        assert!(m("host 198.18.0.2", &a) && m("host 198.18.0.2", &b) && !m("host 198.18.0.9", &a));
        assert!(m("src host 198.18.0.2", &a) && !m("src host 198.18.0.2", &b));
        assert!(m("dst host 198.18.0.2", &b));
        assert!(m("icmp", &p) && !m("icmp", &a) && !m("port 443", &p));
        assert!(m("arp", &r) && !m("ip", &r) && m("ip", &p) && m("host 198.18.0.1", &r));
        assert!(m("not port 443", &b) && !m("not port 443", &a));
        assert!(
            m("port 443 or icmp", &p) && m("port 443 or icmp", &a) && !m("port 443 or icmp", &b)
        );
        assert!(m("tcp and not port 443 or arp", &b) && m("tcp and not port 443 or arp", &r));
        assert!(!m("tcp and not port 443 or arp", &a));
        assert!(m("udp", &u) && !m("udp", &a));
        assert!(!m("port 443", &a[..20]), "a truncated frame has no ports");
        assert!(!m("tcp", &[]));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (f, why) in [
            ("port x", "is not a port number"),
            ("host 1.2.3", "is not an IPv4 address"),
            ("port 80 and", "`and` needs a term"),
            ("or tcp", "`or` needs a term"),
            ("portrange 1-2", "cannot read `portrange 1-2`"),
            ("src tcp", "cannot read"),
            ("(tcp)", "cannot read"),
        ] {
            let e = Filter::parse(f).unwrap_err();
            assert!(e.why.contains(why), "{f}: {e}");
            assert!(e.to_string().contains("joined with `and`"));
        }
    }
}
