//! Wire formats: views over received bytes and in-place builders.
//!
//! Parsing uses etherparse's zero-copy slices where they fit and checks everything a hostile peer
//! can lie about; building writes headers straight into the frame buffer (no intermediate copies).

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod tcp;
pub mod udp;

pub use ethernet::Mac;
