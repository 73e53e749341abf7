//! TCP (RFC 9293). (in progress)
