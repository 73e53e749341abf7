//! A strict reader of the Prometheus text format subset [`super::render`] writes (for
//! `handshake stats`): `# HELP` / `# TYPE` comments, samples `name{k="v",…} value` without
//! timestamps. Anything else is an error naming the line, rather than a silently skipped line.

use std::collections::BTreeMap;

/// One sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels, sorted by name.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

impl Sample {
    /// The value of label `k`.
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels.get(k).map(String::as_str)
    }
}

/// A line that is not valid exposition text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("metrics text, line {line}: {why}: {text:?}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub why: &'static str,
    /// The line.
    pub text: String,
}

/// A parsed scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    /// Samples, in order.
    pub samples: Vec<Sample>,
    /// `# TYPE` of each family.
    pub types: BTreeMap<String, String>,
}

impl Scrape {
    /// The samples of `name`.
    pub fn of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// Sum of `name` over the samples whose labels include every `(k, v)` of `with`.
    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.of(name)
            .filter(|s| with.iter().all(|(k, v)| s.label(k) == Some(v)))
            .fold(0.0, |a, s| a + s.value)
    }

    /// The queue numbers present (`queue` label values), sorted.
    pub fn queues(&self) -> Vec<u32> {
        let mut q: Vec<u32> = self
            .samples
            .iter()
            .filter_map(|s| s.label("queue")?.parse().ok())
            .collect();
        q.sort_unstable();
        q.dedup();
        q
    }
}

fn is_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// Parses exposition text.
pub fn parse(text: &str) -> Result<Scrape, ParseError> {
    let mut out = Scrape::default();
    for (i, raw) in text.lines().enumerate() {
        let err = |why| ParseError {
            line: i + 1,
            why,
            text: raw.to_owned(),
        };
        let line = raw.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            let c = c.trim_start();
            if let Some(r) = c.strip_prefix("TYPE ") {
                let (name, t) = r
                    .split_once(' ')
                    .ok_or_else(|| err("TYPE without a type"))?;
                if !is_name(name) {
                    return Err(err("bad metric name"));
                }
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                    return Err(err("unknown type"));
                }
                if out.types.insert(name.to_owned(), t.to_owned()).is_some() {
                    return Err(err("second TYPE for one family"));
                }
            } else if let Some(r) = c.strip_prefix("HELP ") {
                let name = r.split(' ').next().unwrap_or("");
                if !is_name(name) {
                    return Err(err("bad metric name"));
                }
            }
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(p) => line.split_at(p),
            None => return Err(err("sample without a value")),
        };
        if !is_name(name) {
            return Err(err("bad metric name"));
        }
        let mut labels = BTreeMap::new();
        let rest = if let Some(mut r) = rest.strip_prefix('{') {
            loop {
                r = r.trim_start_matches([' ', ',']);
                if let Some(after) = r.strip_prefix('}') {
                    break after;
                }
                let (k, after) = r.split_once('=').ok_or_else(|| err("label without ="))?;
                if !is_name(k.trim()) {
                    return Err(err("bad label name"));
                }
                let after = after
                    .strip_prefix('"')
                    .ok_or_else(|| err("label value not quoted"))?;
                let mut v = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => v.push('\n'),
                            Some((_, c)) => v.push(c),
                            None => return Err(err("unterminated label value")),
                        },
                        Some((j, '"')) => break j,
                        Some((_, c)) => v.push(c),
                        None => return Err(err("unterminated label value")),
                    }
                };
                if labels.insert(k.trim().to_owned(), v).is_some() {
                    return Err(err("duplicate label"));
                }
                r = &after[end + 1..];
            }
        } else {
            rest
        };
        let mut words = rest.split_whitespace();
        let value = words.next().ok_or_else(|| err("sample without a value"))?;
        if words.next().is_some() {
            return Err(err("timestamps and trailing text are not supported"));
        }
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().map_err(|_| err("value is not a number"))?,
        };
        out.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_render_writes() {
        let reg = super::super::Registry::new(2, 1);
        let mut v = super::super::QueueValues::default();
        v.0[0] = 42;
        reg.queues[1].publish(&v);
        let mut text = String::new();
        reg.render(&mut text);
        let s = parse(&text).unwrap();
        assert_eq!(s.queues(), vec![0, 1]);
        assert_eq!(s.sum("handshake_rx_packets_total", &[("queue", "1")]), 42.0);
        assert_eq!(s.sum("handshake_rx_packets_total", &[]), 42.0);
        assert_eq!(s.types["handshake_tcp_flows"], "gauge");
        assert_eq!(s.types["handshake_rx_packets_total"], "counter");
        assert_eq!(
            s.sum("handshake_tls_pool_queue_depth", &[("thread", "0")]),
            0.0
        );
        assert_eq!(s.of("handshake_tls_pool_queue_depth").count(), 1);
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(s.samples.len(), samples);
        assert_eq!(
            s.of("handshake_tcp_flows")
                .find(|x| x.label("queue") == Some("0") && x.label("state") == Some("time_wait"))
                .map(|x| x.value),
            Some(0.0)
        );
    }

    #[test]
    fn labels_values_and_errors() {
        let s = parse("a{x=\"1\",y=\"q\\\"\\n\"} 2.5\nb 3\nc{} NaN\n").unwrap();
        assert_eq!(s.samples[0].label("y"), Some("q\"\n"));
        assert_eq!(s.samples[0].value, 2.5);
        assert_eq!(s.samples[1].name, "b");
        assert!(s.samples[2].value.is_nan());
        for (bad, why) in [
            ("a", "sample without a value"),
            ("a{x=1} 2", "label value not quoted"),
            ("a{x=\"1} 2", "unterminated label value"),
            ("a 1 2", "timestamps and trailing text are not supported"),
            ("a x", "value is not a number"),
            ("9a 1", "bad metric name"),
            (
                "# TYPE a counter\n# TYPE a gauge",
                "second TYPE for one family",
            ),
            ("# TYPE a bogus", "unknown type"),
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.why, why, "{bad}");
        }
        assert_eq!(parse("b 1\n\na x").unwrap_err().line, 3);
    }
}
