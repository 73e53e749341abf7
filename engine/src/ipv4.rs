//! IPv4 above the wire format: our addresses, the routing decision, and ICMP policy.

use crate::time::Instant;
use crate::wire::ipv4::on_link;
use core::fmt;
use core::net::Ipv4Addr;
use core::str::FromStr;
use serde::Deserialize;

/// An address with its prefix length, e.g. `198.18.0.1/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// True when `ip` is in this subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        on_link(self.addr, self.prefix, ip)
    }
    /// The subnet's broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        let host = if self.prefix >= 32 {
            0
        } else {
            u32::MAX >> self.prefix
        };
        Ipv4Addr::from(u32::from(self.addr) | host)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Error parsing an address with prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address {0:?}: expected an IPv4 address with a prefix length, like 198.18.0.1/24")]
pub struct CidrParseError(pub String);

impl FromStr for Ipv4Cidr {
    type Err = CidrParseError;
    fn from_str(s: &str) -> Result<Self, CidrParseError> {
        let err = || CidrParseError(s.to_string());
        let (a, p) = s.split_once('/').ok_or_else(err)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| err())?;
        let prefix: u8 = p.parse().map_err(|_| err())?;
        if prefix > 32 {
            return Err(err());
        }
        Ok(Ipv4Cidr { addr, prefix })
    }
}

impl serde::Serialize for Ipv4Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}/{}", self.addr, self.prefix))
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Our addresses on one interface and the default gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct Routes {
    addrs: Vec<Ipv4Cidr>,
    gateway: Option<Ipv4Addr>,
}

/// Error in the addressing configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No address given.
    #[error("no address configured: give one with --addr 198.18.0.1/24")]
    NoAddress,
    /// The gateway is not on any of our subnets.
    #[error("gateway {0} is not on any configured subnet: it must be reachable on-link")]
    GatewayOffLink(Ipv4Addr),
}

impl Routes {
    /// Routes for `addrs` with an optional default `gateway` (which must be on-link).
    pub fn new(addrs: Vec<Ipv4Cidr>, gateway: Option<Ipv4Addr>) -> Result<Self, RouteError> {
        if addrs.is_empty() {
            return Err(RouteError::NoAddress);
        }
        if let Some(g) = gateway {
            if !addrs.iter().any(|a| a.contains(g)) {
                return Err(RouteError::GatewayOffLink(g));
            }
        }
        Ok(Routes { addrs, gateway })
    }

    /// Our addresses.
    pub fn addrs(&self) -> &[Ipv4Cidr] {
        &self.addrs
    }

    /// The default gateway.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.gateway
    }

    /// True when `ip` is one of our addresses.
    #[inline]
    pub fn is_ours(&self, ip: Ipv4Addr) -> bool {
        self.addrs.iter().any(|a| a.addr == ip)
    }

    /// True when `ip` can never be the source of a packet we answer: zero, limited or subnet
    /// broadcast, multicast/reserved class D/E, loopback, or one of our own addresses.
    pub fn is_bad_source(&self, ip: Ipv4Addr) -> bool {
        ip.is_unspecified()
            || ip.is_broadcast()
            || ip.is_multicast()
            || ip.is_loopback()
            || u32::from(ip) >> 28 == 0xf
            || self.is_ours(ip)
            || self
                .addrs
                .iter()
                .any(|a| a.prefix < 31 && a.broadcast() == ip)
    }

    /// The routing decision (seed 003): the next hop for `dst` — `dst` itself when it is on one
    /// of our subnets, else the default gateway; `None` when there is no route.
    #[inline]
    pub fn next_hop(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        if self.addrs.iter().any(|a| a.contains(dst)) {
            Some(dst)
        } else {
            self.gateway
        }
    }

    /// The source address to use towards `dst`: the address whose subnet holds the next hop.
    pub fn source_for(&self, dst: Ipv4Addr) -> Ipv4Addr {
        let hop = self.next_hop(dst).unwrap_or(dst);
        self.addrs
            .iter()
            .find(|a| a.contains(hop))
            .unwrap_or(&self.addrs[0])
            .addr
    }
}

/// ICMP policy.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IcmpConfig {
    /// Echo replies per second per worker (0: unlimited).
    pub echo_rate: u32,
    /// Echo replies allowed in a burst.
    pub echo_burst: u32,
    /// ICMP errors (destination unreachable) per second per worker (0: never send them).
    pub error_rate: u32,
    /// ICMP errors allowed in a burst.
    pub error_burst: u32,
}

impl Default for IcmpConfig {
    fn default() -> Self {
        IcmpConfig {
            echo_rate: 100_000,
            echo_burst: 1_000,
            error_rate: 100,
            error_burst: 50,
        }
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up. Time is passed in.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    rate: u32,
    burst: u32,
    /// Tokens in millionths, so sub-token refills accumulate exactly.
    micro_tokens: u64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `rate` per second (`rate` 0: the burst only).
    pub fn new(rate: u32, burst: u32) -> Self {
        TokenBucket {
            rate,
            burst: burst.max(1),
            micro_tokens: burst.max(1) as u64 * 1_000_000,
            last: Instant::ZERO,
        }
    }

    /// Takes a token if one is available at `now`.
    #[inline]
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.as_micros().saturating_sub(self.last.as_micros());
        self.last = self.last.max(now);
        let cap = self.burst as u64 * 1_000_000;
        self.micro_tokens = (self.micro_tokens + elapsed.saturating_mul(self.rate as u64)).min(cap);
        if self.micro_tokens >= 1_000_000 {
            self.micro_tokens -= 1_000_000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes {
        Routes::new(
            vec!["198.18.0.1/24".parse().unwrap()],
            Some(Ipv4Addr::new(198, 18, 0, 254)),
        )
        .unwrap()
    }

    #[test]
    fn parse_cidr() {
        let c: Ipv4Cidr = "198.18.0.1/24".parse().unwrap();
        assert_eq!(c.addr, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(c.prefix, 24);
        assert_eq!(c.broadcast(), Ipv4Addr::new(198, 18, 0, 255));
        assert!("198.18.0.1".parse::<Ipv4Cidr>().is_err());
        assert!("198.18.0.1/33".parse::<Ipv4Cidr>().is_err());
        assert!("198.18.0/24".parse::<Ipv4Cidr>().is_err());
        assert_eq!(c.to_string(), "198.18.0.1/24");
    }

    #[test]
    fn routing_decision_on_link_or_gateway() {
        let r = routes();
        assert_eq!(
            r.next_hop(Ipv4Addr::new(198, 18, 0, 2)),
            Some(Ipv4Addr::new(198, 18, 0, 2))
        );
        assert_eq!(
            r.next_hop(Ipv4Addr::new(198, 19, 0, 7)),
            Some(Ipv4Addr::new(198, 18, 0, 254))
        );
        let no_gw = Routes::new(vec!["198.18.0.1/24".parse().unwrap()], None).unwrap();
        assert_eq!(no_gw.next_hop(Ipv4Addr::new(198, 19, 0, 7)), None);
        assert_eq!(
            r.source_for(Ipv4Addr::new(198, 19, 0, 7)),
            Ipv4Addr::new(198, 18, 0, 1)
        );
    }

    #[test]
    fn config_errors_are_actionable() {
        assert_eq!(Routes::new(vec![], None), Err(RouteError::NoAddress));
        let e = Routes::new(
            vec!["198.18.0.1/24".parse().unwrap()],
            Some(Ipv4Addr::new(198, 19, 0, 1)),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not on any configured subnet"));
    }

    #[test]
    fn bad_sources() {
        let r = routes();
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "127.0.0.1",
            "198.18.0.1",
            "198.18.0.255",
            "240.0.0.1",
        ] {
            assert!(r.is_bad_source(ip.parse().unwrap()), "{ip}");
        }
        assert!(!r.is_bad_source(Ipv4Addr::new(198, 18, 0, 2)));
    }

    #[test]
    fn token_bucket_rate_and_burst() {
        let mut b = TokenBucket::new(10, 3);
        let t0 = Instant::from_secs(1);
        assert!(b.allow(t0) && b.allow(t0) && b.allow(t0));
        assert!(!b.allow(t0), "burst spent");
        assert!(!b.allow(t0 + core::time::Duration::from_millis(99)));
        assert!(
            b.allow(t0 + core::time::Duration::from_millis(100)),
            "one token per 100 ms"
        );
        // A long pause refills only up to the burst.
        let later = t0 + core::time::Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.allow(later)).count(), 3);
        let mut never = TokenBucket::new(0, 1);
        assert!(never.allow(t0), "the initial burst");
        assert!(!never.allow(later));
    }
}
