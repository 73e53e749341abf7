//! `handshake stats`: a per-queue table from two scrapes (rates per second) or one (totals).

use super::parse::Scrape;
use std::fmt::Write as _;
use std::time::Duration;

/// The figures of one queue (or of all of them).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Row {
    /// Frames received.
    pub rx_packets: f64,
    /// Frames sent.
    pub tx_packets: f64,
    /// Bytes received.
    pub rx_bytes: f64,
    /// Bytes sent.
    pub tx_bytes: f64,
    /// Frames dropped (all reasons).
    pub drops: f64,
    /// TCP connections established (passive and active).
    pub conns: f64,
    /// TLS handshakes completed.
    pub tls: f64,
    /// HTTP responses.
    pub http: f64,
    /// TCP retransmissions.
    pub retransmits: f64,
    /// TCP connections open now (every state but TIME_WAIT).
    pub flows: f64,
    /// TCP connections in TIME_WAIT now.
    pub time_wait: f64,
}

impl Row {
    /// The row of `queue` (`None`: summed over the queues).
    pub fn of(s: &Scrape, queue: Option<u32>) -> Row {
        let q = queue.map(|q| q.to_string());
        let with: Vec<(&str, &str)> = q.iter().map(|q| ("queue", q.as_str())).collect();
        let sum = |name: &str| s.sum(name, &with);
        let flows_all = sum("handshake_tcp_flows");
        let mut tw = with.clone();
        tw.push(("state", "time_wait"));
        let time_wait = s.sum("handshake_tcp_flows", &tw);
        Row {
            rx_packets: sum("handshake_rx_packets_total"),
            tx_packets: sum("handshake_tx_packets_total"),
            rx_bytes: sum("handshake_rx_bytes_total"),
            tx_bytes: sum("handshake_tx_bytes_total"),
            drops: sum("handshake_drops_total"),
            conns: sum("handshake_tcp_opens_total"),
            tls: sum("handshake_tls_handshakes_total"),
            http: sum("handshake_http_responses_total"),
            retransmits: sum("handshake_tcp_retransmits_total"),
            flows: flows_all - time_wait,
            time_wait,
        }
    }

    /// Counters per second between `prev` and `self` over `dt` (gauges are taken as they are).
    pub fn rate(&self, prev: &Row, dt: Duration) -> Row {
        let secs = dt.as_secs_f64().max(1e-6);
        let r = |a: f64, b: f64| ((a - b).max(0.0)) / secs;
        Row {
            rx_packets: r(self.rx_packets, prev.rx_packets),
            tx_packets: r(self.tx_packets, prev.tx_packets),
            rx_bytes: r(self.rx_bytes, prev.rx_bytes),
            tx_bytes: r(self.tx_bytes, prev.tx_bytes),
            drops: r(self.drops, prev.drops),
            conns: r(self.conns, prev.conns),
            tls: r(self.tls, prev.tls),
            http: r(self.http, prev.http),
            retransmits: r(self.retransmits, prev.retransmits),
            flows: self.flows,
            time_wait: self.time_wait,
        }
    }
}

fn rows(s: &Scrape) -> Vec<(String, Row)> {
    let mut v: Vec<(String, Row)> = s
        .queues()
        .into_iter()
        .map(|q| (format!("q{q}"), Row::of(s, Some(q))))
        .collect();
    v.push(("total".into(), Row::of(s, None)));
    v
}

/// The table of totals since the daemon started (`handshake stats --once`).
pub fn totals(s: &Scrape) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:>12} {:>12} {:>14} {:>14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9}",
        "queue",
        "rx_packets",
        "tx_packets",
        "rx_bytes",
        "tx_bytes",
        "drops",
        "conns",
        "tls_hs",
        "http",
        "retrans",
        "flows",
        "time_wait"
    );
    for (name, r) in rows(s) {
        let _ = writeln!(
            out,
            "{:<6} {:>12} {:>12} {:>14} {:>14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9}",
            name,
            r.rx_packets,
            r.tx_packets,
            r.rx_bytes,
            r.tx_bytes,
            r.drops,
            r.conns,
            r.tls,
            r.http,
            r.retransmits,
            r.flows,
            r.time_wait
        );
    }
    out.push_str(&footer(s));
    out
}

/// The table of rates between two scrapes `dt` apart, with the totals of the latest.
pub fn rates(prev: &Scrape, cur: &Scrape, dt: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7} {:>9}",
        "queue",
        "rx pkt/s",
        "tx pkt/s",
        "rx Mbit/s",
        "tx Mbit/s",
        "drops/s",
        "conn/s",
        "tls/s",
        "http/s",
        "retrans/s",
        "flows",
        "time_wait"
    );
    let before = rows(prev);
    for (name, r) in rows(cur) {
        let p = before
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| *r)
            .unwrap_or_default();
        let x = r.rate(&p, dt);
        let _ = writeln!(
            out,
            "{:<6} {:>10.0} {:>10.0} {:>10.2} {:>10.2} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>9.0} {:>7} {:>9}",
            name,
            x.rx_packets,
            x.tx_packets,
            x.rx_bytes * 8.0 / 1e6,
            x.tx_bytes * 8.0 / 1e6,
            x.drops,
            x.conns,
            x.tls,
            x.http,
            x.retransmits,
            x.flows,
            x.time_wait
        );
    }
    out.push('\n');
    out.push_str(&totals(cur));
    out
}

fn footer(s: &Scrape) -> String {
    let mut out = String::new();
    let xdp: Vec<String> = handshake_common::counter::NAMES
        .iter()
        .map(|a| {
            format!(
                "{a} {}",
                s.sum("handshake_xdp_packets_total", &[("action", a)])
            )
        })
        .collect();
    let _ = writeln!(out, "xdp: {}", xdp.join(", "));
    let cap = s.sum("handshake_capture_frames_total", &[]);
    let lost = s.sum("handshake_capture_dropped_total", &[]);
    if cap + lost > 0.0 {
        let _ = writeln!(out, "capture: {cap} frames, {lost} dropped (ring full)");
    }
    let mut drops: Vec<(String, f64)> = Vec::new();
    for d in s.of("handshake_drops_total") {
        if d.value > 0.0 {
            let r = d.label("reason").unwrap_or("?").to_owned();
            match drops.iter_mut().find(|(n, _)| *n == r) {
                Some(e) => e.1 += d.value,
                None => drops.push((r, d.value)),
            }
        }
    }
    if !drops.is_empty() {
        let d: Vec<String> = drops.iter().map(|(r, n)| format!("{r} {n}")).collect();
        let _ = writeln!(out, "drops: {}", d.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse;
    use super::*;

    const A: &str = "handshake_rx_packets_total{queue=\"0\"} 10\n\
        handshake_rx_packets_total{queue=\"1\"} 20\n\
        handshake_rx_bytes_total{queue=\"0\"} 1000\n\
        handshake_tcp_flows{queue=\"0\",state=\"established\"} 3\n\
        handshake_tcp_flows{queue=\"0\",state=\"time_wait\"} 2\n\
        handshake_drops_total{queue=\"1\",reason=\"ipv4_bad_checksum\"} 4\n\
        handshake_xdp_packets_total{action=\"redirected\"} 30\n";
    const B: &str = "handshake_rx_packets_total{queue=\"0\"} 110\n\
        handshake_rx_packets_total{queue=\"1\"} 20\n\
        handshake_rx_bytes_total{queue=\"0\"} 126000\n\
        handshake_tcp_flows{queue=\"0\",state=\"established\"} 1\n\
        handshake_tcp_flows{queue=\"0\",state=\"time_wait\"} 2\n\
        handshake_drops_total{queue=\"1\",reason=\"ipv4_bad_checksum\"} 6\n\
        handshake_xdp_packets_total{action=\"redirected\"} 130\n";

    #[test]
    fn totals_per_queue_and_summed() {
        let s = parse(A).unwrap();
        let t = totals(&s);
        let lines: Vec<&str> = t.lines().collect();
        let q0: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(q0[..2], ["q0", "10"]);
        assert_eq!(q0[10..12], ["3", "2"], "{t}");
        let q1: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!((q1[0], q1[1], q1[5]), ("q1", "20", "4"));
        let tot: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!((tot[0], tot[1]), ("total", "30"));
        assert!(t.contains("xdp: redirected 30, passed 0"), "{t}");
        assert!(t.contains("drops: ipv4_bad_checksum 4"), "{t}");
    }

    #[test]
    fn rates_over_the_interval() {
        let (a, b) = (parse(A).unwrap(), parse(B).unwrap());
        let t = rates(&a, &b, Duration::from_secs(2));
        let q0: Vec<&str> = t.lines().nth(1).unwrap().split_whitespace().collect();
        // 100 frames and 125,000 bytes (1 Mbit) in 2 s.
        assert_eq!(q0[..4], ["q0", "50", "0", "0.50"], "{t}");
        assert_eq!(q0[10..], ["1", "2"], "{t}");
        let q1: Vec<&str> = t.lines().nth(2).unwrap().split_whitespace().collect();
        assert_eq!((q1[1], q1[5]), ("0", "1"), "{t}");
        let tot: Vec<&str> = t.lines().nth(3).unwrap().split_whitespace().collect();
        assert_eq!((tot[0], tot[1]), ("total", "50"));
    }
}
