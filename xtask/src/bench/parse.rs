//! Reading what the load generators print: wrk, ping, and the `key=value` lines of sbs-peer and
//! the ARP sender. Every parser fails (with what it missed) rather than guess.

use std::collections::HashMap;

use anyhow::{bail, Context as _, Result};

/// What one `wrk --latency` run reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Wrk {
    pub requests: u64,
    pub requests_per_sec: f64,
    /// Latency percentiles in microseconds (present with `--latency`).
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    /// connect + read + write + timeout socket errors.
    pub socket_errors: u64,
    /// "Non-2xx or 3xx responses" (0 when wrk does not print the line).
    pub non_2xx: u64,
}

/// `318.97us`, `1.20ms`, `2.00s` → microseconds.
fn duration_us(text: &str) -> Result<f64> {
    let t = text.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1e6)
    } else {
        bail!("{t}: not a wrk duration (us, ms, s, m)");
    };
    let v: f64 = num
        .parse()
        .with_context(|| format!("{t}: not a wrk duration"))?;
    Ok(v * mult)
}

pub fn wrk(text: &str) -> Result<Wrk> {
    let mut out = Wrk {
        requests: 0,
        requests_per_sec: f64::NAN,
        p50_us: None,
        p99_us: None,
        socket_errors: 0,
        non_2xx: 0,
    };
    let mut saw_requests = false;
    let mut in_distribution = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            if let Some((pct, value)) = l.split_once("% ") {
                match pct.trim() {
                    "50" => out.p50_us = Some(duration_us(value)?),
                    "99" => out.p99_us = Some(duration_us(value)?),
                    _ => {}
                }
                continue;
            }
            in_distribution = false;
        }
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            out.requests_per_sec = v
                .trim()
                .parse()
                .with_context(|| format!("wrk Requests/sec: {v}"))?;
        } else if let Some(v) = l.strip_prefix("Socket errors:") {
            // connect 0, read 0, write 0, timeout 0
            for part in v.split(',') {
                let n = part
                    .split_whitespace()
                    .nth(1)
                    .with_context(|| format!("wrk socket errors: {v}"))?;
                out.socket_errors += n.parse::<u64>().context("wrk socket errors")?;
            }
        } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            out.non_2xx = v.trim().parse().context("wrk Non-2xx count")?;
        } else if l.contains(" requests in ") {
            let n = l.split_whitespace().next().unwrap_or_default();
            out.requests = n
                .parse()
                .with_context(|| format!("wrk request count in {l:?}"))?;
            saw_requests = true;
        }
    }
    if !saw_requests || !out.requests_per_sec.is_finite() {
        bail!("wrk printed no request count or Requests/sec:\n{text}");
    }
    Ok(out)
}

/// The summary of `ping -q`.
#[derive(Debug, Clone, PartialEq)]
pub struct Ping {
    pub transmitted: u64,
    pub received: u64,
    pub time_ms: f64,
}

pub fn ping(text: &str) -> Result<Ping> {
    // "2000 packets transmitted, 2000 received, 0% packet loss, time 123ms"
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .with_context(|| format!("no ping summary in:\n{text}"))?;
    let mut transmitted = None;
    let mut received = None;
    let mut time_ms = None;
    for part in line.split(',') {
        let p = part.trim();
        if let Some(n) = p.strip_suffix(" packets transmitted") {
            transmitted = n.parse().ok();
        } else if let Some(n) = p.strip_suffix(" received") {
            received = n.parse().ok();
        } else if let Some(t) = p.strip_prefix("time ") {
            time_ms = t.strip_suffix("ms").and_then(|t| t.parse().ok());
        }
    }
    match (transmitted, received, time_ms) {
        (Some(transmitted), Some(received), Some(time_ms)) => Ok(Ping {
            transmitted,
            received,
            time_ms,
        }),
        _ => bail!("cannot read the ping summary {line:?}"),
    }
}

/// The last line holding `key=value` pairs (`ops=12 secs=1.0 errors=0`), as numbers.
pub fn key_values(text: &str) -> Result<HashMap<String, f64>> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with("ops=") || l.starts_with("sent="))
        .with_context(|| format!("no result line (ops=… / sent=…) in:\n{text}"))?;
    let mut map = HashMap::new();
    for pair in line.split_whitespace() {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("{pair:?} in {line:?} is not key=value"))?;
        let v: f64 = v
            .parse()
            .with_context(|| format!("{pair:?} in {line:?}: not a number"))?;
        map.insert(k.to_owned(), v);
    }
    Ok(map)
}

/// What `handshake load` reports on its summary line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Requests started.
    pub started: f64,
    /// Complete responses.
    pub ok: f64,
    /// Failed requests.
    pub failed: f64,
    /// Bodies unlike the expected one.
    pub differ: f64,
    /// Complete responses per second.
    pub rate: f64,
    /// Connections opened.
    pub connections: f64,
    /// Connections whose TLS session was resumed.
    pub resumed: f64,
    /// Open loop: connections skipped.
    pub late: f64,
}

/// `handshake load`'s summary: `N requests: A ok, B failed, C bodies differ; R req/s; latency
/// …; K connections (x/s), M TLS-resumed, L late`.
pub fn handshake_load(text: &str) -> Result<Load> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains(" requests: ") && l.contains(" TLS-resumed, "))
        .with_context(|| format!("no `handshake load` summary line in:\n{text}"))?;
    let num = |after: &str, what: &str| -> Result<f64> {
        let tail = &line[line
            .find(after)
            .with_context(|| format!("no {what:?} in {line:?}"))?
            + after.len()..];
        let v: String = tail
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        v.parse()
            .with_context(|| format!("{what} in {line:?} is not a number"))
    };
    let before = |word: &str| -> Result<f64> {
        // The last one: " late" is also the start of " latency".
        let end = line
            .rfind(word)
            .with_context(|| format!("no {word:?} in {line:?}"))?;
        let v = line[..end]
            .trim_end()
            .rsplit([' ', '('])
            .next()
            .unwrap_or("");
        v.parse()
            .with_context(|| format!("the number before {word:?} in {line:?}"))
    };
    Ok(Load {
        started: num("", "requests")?,
        ok: before(" ok,")?,
        failed: before(" failed,")?,
        differ: before(" bodies differ")?,
        rate: before(" req/s")?,
        connections: before(" connections (")?,
        resumed: before(" TLS-resumed")?,
        late: before(" late")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_load_summary() {
        let out = "2026-12-04T15:52:30.653940Z  INFO handshake::client::run: resolver stats=…
4000 requests: 4000 ok, 0 failed, 0 bodies differ; 3291.7 req/s; latency p50 4.515 ms p90 5.336 ms p99 8.587 ms; 4000 connections (3291.7/s), 2114 TLS-resumed, 0 late
";
        let l = handshake_load(out).unwrap();
        assert_eq!(
            l,
            Load {
                started: 4000.0,
                ok: 4000.0,
                failed: 0.0,
                differ: 0.0,
                rate: 3291.7,
                connections: 4000.0,
                resumed: 2114.0,
                late: 0.0,
            }
        );
        assert!(handshake_load("nothing").is_err());
    }

    /// Captured from a run (target/bench/raw/): wrk against the engine over veth.
    const WRK_HTTP: &str = "Running 5s test @ http://198.18.0.1/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.79ms    2.22ms  18.38ms   83.76%
    Req/Sec    24.40k     3.38k   31.35k    66.00%
  Latency Distribution
     50%  353.00us
     75%    2.98ms
     90%    4.98ms
     99%    8.77ms
  122577 requests in 5.05s, 129.64MB read
Requests/sec:  24258.87
Transfer/sec:     25.66MB
";

    /// A run with errors and non-2xx answers, and no --latency (wrk's own line formats).
    const WRK_ERRORS: &str = "Running 1s test @ https://198.18.0.3/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.50ms    2.10ms  40.00ms   95.00%
    Req/Sec    20.01k     1.00k   22.00k    70.00%
  20010 requests in 1.00s, 25.00MB read
  Socket errors: connect 0, read 3, write 1, timeout 2
  Non-2xx or 3xx responses: 17
Requests/sec:  20005.50
Transfer/sec:     24.99MB
";

    #[test]
    fn wrk_clean_run() {
        let w = wrk(WRK_HTTP).unwrap();
        assert_eq!(w.requests, 122_577);
        assert!((w.requests_per_sec - 24_258.87).abs() < 1e-6);
        assert_eq!(w.p50_us, Some(353.0));
        assert_eq!(w.p99_us, Some(8770.0));
        assert_eq!(w.socket_errors, 0);
        assert_eq!(w.non_2xx, 0);
    }

    #[test]
    fn wrk_errors_are_counted() {
        let w = wrk(WRK_ERRORS).unwrap();
        assert_eq!(w.requests, 20_010);
        assert_eq!(w.socket_errors, 6);
        assert_eq!(w.non_2xx, 17);
        assert_eq!(w.p50_us, None);
    }

    #[test]
    fn wrk_failure_is_an_error() {
        let e = wrk("unable to connect to 198.18.0.1:80 Connection refused\n").unwrap_err();
        assert!(e.to_string().contains("no request count"), "{e}");
        assert!(duration_us("12parsecs").is_err());
        assert_eq!(duration_us("2.00s").unwrap(), 2e6);
    }

    #[test]
    fn ping_summary() {
        // Captured (ping -f -q -l 32 -w 5), with one reply taken away to see the count.
        let text = "PING 198.18.0.1 (198.18.0.1) 56(84) bytes of data.

--- 198.18.0.1 ping statistics ---
159782 packets transmitted, 159781 received, 0.000626% packet loss, time 4993ms
rtt min/avg/max/mdev = 0.005/0.385/13.395/1.077 ms, pipe 32, ipg/ewma 0.031/3.973 ms
";
        let p = ping(text).unwrap();
        assert_eq!(
            p,
            Ping {
                transmitted: 159_782,
                received: 159_781,
                time_ms: 4993.0
            }
        );
        assert!(ping("ping: connect: Network is unreachable\n").is_err());
    }

    #[test]
    fn key_value_lines() {
        let kv = key_values("warming up\nops=1200 secs=1.0012 errors=0 resumed=1199\n").unwrap();
        assert_eq!(kv["ops"], 1200.0);
        assert_eq!(kv["resumed"], 1199.0);
        assert_eq!(kv["secs"], 1.0012);
        assert!(key_values("nothing here").is_err());
        assert!(key_values("ops=12 secs=x").is_err());
    }
}
