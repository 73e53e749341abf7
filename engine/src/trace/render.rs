//! Renderings of a trace: a Mermaid `sequenceDiagram` per connection, a plain-text timeline,
//! JSON lines (one [`TraceEvent`] per line, the format `handshake run --trace-file` writes and
//! `handshake trace` reads).

use std::fmt::Write as _;

use super::{Dir, EventKind, TraceEvent};

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Mermaid `sequenceDiagram`, one per connection.
    Mermaid,
    /// Plain-text timeline.
    Text,
    /// JSON lines.
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mermaid" => Ok(Format::Mermaid),
            "text" => Ok(Format::Text),
            "json" | "jsonl" => Ok(Format::Json),
            _ => Err(format!(
                "unknown trace format {s:?}: use mermaid, text or json"
            )),
        }
    }
}

/// One JSON line (no newline).
pub fn json_line(e: &TraceEvent) -> String {
    serde_json::to_string(e).unwrap_or_default()
}

/// Parses JSON lines; blank lines are skipped. Errors name the line.
pub fn parse_json_lines(text: &str) -> Result<Vec<TraceEvent>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("line {}: not a trace event: {e}", i + 1))
        })
        .collect()
}

/// Renders `events` in `format`.
pub fn render(events: &[TraceEvent], format: Format) -> String {
    match format {
        Format::Json => events.iter().fold(String::new(), |mut s, e| {
            s.push_str(&json_line(e));
            s.push('\n');
            s
        }),
        Format::Mermaid => flows(events)
            .iter()
            .map(|f| mermaid(f))
            .collect::<Vec<_>>()
            .join("\n"),
        Format::Text => flows(events)
            .iter()
            .map(|f| text(f))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// One connection's events: its `Flow` header and the rest in time order.
struct FlowStory<'a> {
    id: u32,
    local: &'a str,
    remote: &'a str,
    next_hop: &'a str,
    active: bool,
    events: Vec<&'a TraceEvent>,
}

fn flows(events: &[TraceEvent]) -> Vec<FlowStory<'_>> {
    let mut out: Vec<FlowStory<'_>> = Vec::new();
    for e in events {
        if let EventKind::Flow {
            local,
            remote,
            next_hop,
            active,
        } = &e.kind
        {
            out.push(FlowStory {
                id: e.flow,
                local,
                remote,
                next_hop,
                active: *active,
                events: Vec::new(),
            });
        }
    }
    for e in events {
        if matches!(e.kind, EventKind::Flow { .. }) {
            continue;
        }
        if let Some(f) = out.iter_mut().find(|f| f.id == e.flow) {
            f.events.push(e);
        }
    }
    for f in &mut out {
        // Stable: events at the same microsecond keep the order they happened in.
        f.events.sort_by_key(|e| e.t_us);
    }
    out
}

/// A line of the story: who sends (`None`: a note on our side) and what.
fn describe(kind: &EventKind) -> Option<(Option<Dir>, String)> {
    Some(match kind {
        EventKind::Flow { .. } => return None,
        EventKind::ArpWhoHas {
            dir,
            target,
            sender,
        } => (Some(*dir), format!("ARP who-has {target}? tell {sender}")),
        EventKind::ArpIsAt { dir, ip, mac } => (Some(*dir), format!("ARP {ip} is-at {mac}")),
        EventKind::Segment {
            dir,
            flags,
            seq,
            ack,
            rel_seq,
            rel_ack,
            win,
            len,
            opts,
        } => {
            let mut s = flags.clone();
            if flags.contains("SYN") {
                let _ = write!(s, " seq={seq}");
                if flags.contains("ACK") {
                    let _ = write!(s, " ack={ack}");
                }
                let _ = write!(s, " win={win}");
                if !opts.is_empty() {
                    let _ = write!(s, " [{opts}]");
                }
            } else {
                let _ = write!(s, " seq={rel_seq}");
                if flags.contains("ACK") {
                    let _ = write!(s, " ack={rel_ack}");
                }
                let _ = write!(s, " win={win}");
            }
            if *len > 0 {
                let _ = write!(s, " len={len}");
            }
            (Some(*dir), s)
        }
        EventKind::State { from, to } => (None, format!("{from} → {to}")),
        EventKind::ClientHello {
            dir,
            version,
            suites,
            sni,
            alpn,
        } => {
            let mut s = format!(
                "Client Hello, {version}, {} cipher suites ({})",
                suites.len(),
                suites
                    .iter()
                    .filter(|s| *s != "GREASE")
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if let Some(n) = sni {
                let _ = write!(s, ", SNI {n}");
            }
            if !alpn.is_empty() {
                let _ = write!(s, ", ALPN {}", alpn.join(" "));
            }
            (Some(*dir), s)
        }
        EventKind::ServerHello {
            dir,
            version,
            suite,
            retry,
        } => {
            let what = if *retry {
                "Hello Retry Request"
            } else {
                "Server Hello"
            };
            (Some(*dir), format!("{what}, {version}, {suite}"))
        }
        EventKind::Tls { dir, what, len } => (Some(*dir), format!("{what} ({len} B)")),
        EventKind::Dns { dir, server, what } => (Some(*dir), format!("DNS {what} ({server})")),
    })
}

/// Mermaid message text must not contain `;` or `#` (statement separator, entity escape).
fn mermaid_safe(s: &str) -> String {
    s.replace(';', ",").replace('#', "no.")
}

fn mermaid(f: &FlowStory<'_>) -> String {
    let (us, peer) = if f.active { ("C", "S") } else { ("S", "C") };
    let (client, server) = if f.active {
        (format!("handshake {}", f.local), f.remote.to_string())
    } else {
        (f.remote.to_string(), format!("handshake {}", f.local))
    };
    let mut s = String::new();
    let _ = writeln!(s, "sequenceDiagram");
    let _ = writeln!(s, "participant C as Client {client}");
    let _ = writeln!(s, "participant S as Server {server}");
    if let Some(dns) = f.events.iter().find_map(|e| match &e.kind {
        EventKind::Dns { server, .. } => Some(server),
        _ => None,
    }) {
        let _ = writeln!(s, "participant D as DNS {dns}");
    }
    for e in &f.events {
        if let EventKind::Dns { dir, what, .. } = &e.kind {
            let msg = mermaid_safe(what);
            let _ = match dir {
                Dir::Out => writeln!(s, "{us} ->> D: DNS {msg}"),
                Dir::In => writeln!(s, "D ->> {us}: DNS {msg}"),
            };
            continue;
        }
        let Some((dir, msg)) = describe(&e.kind) else {
            continue;
        };
        let msg = mermaid_safe(&msg);
        match dir {
            Some(Dir::In) => {
                let _ = writeln!(s, "{peer} ->> {us}: {msg}");
            }
            Some(Dir::Out) => {
                let _ = writeln!(s, "{us} ->> {peer}: {msg}");
            }
            None => {
                let _ = writeln!(s, "Note over {us}: {msg}");
            }
        }
    }
    s
}

fn text(f: &FlowStory<'_>) -> String {
    let t0 = f.events.first().map_or(0, |e| e.t_us);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "connection {}: {} {} {} (next hop {}), engine is the {}",
        f.id,
        f.remote,
        if f.active { "<-" } else { "->" },
        f.local,
        f.next_hop,
        if f.active { "client" } else { "server" }
    );
    for e in &f.events {
        let Some((dir, msg)) = describe(&e.kind) else {
            continue;
        };
        let dt = e.t_us.saturating_sub(t0) as f64 / 1000.0;
        let dns = matches!(e.kind, EventKind::Dns { .. });
        let arrow = match dir {
            Some(Dir::In) if dns => "dns  -> us  ",
            Some(Dir::Out) if dns => "us   -> dns ",
            Some(Dir::In) => "peer -> us  ",
            Some(Dir::Out) => "us   -> peer",
            None => "us  (state) ",
        };
        let _ = writeln!(s, "  +{dt:>10.3} ms  {arrow}  {msg}");
    }
    s
}

/// One event in a few words, `in`/`out` first: `in SYN`, `out SYN,ACK`, `state ESTABLISHED`,
/// `in ClientHello`, `out Application Data`: what [`check_order`] matches against.
pub fn brief(e: &TraceEvent) -> String {
    let d = |d: &Dir| if *d == Dir::In { "in" } else { "out" };
    match &e.kind {
        EventKind::Flow { active, .. } => format!("flow active={active}"),
        EventKind::ArpWhoHas { dir, .. } => format!("{} ARP who-has", d(dir)),
        EventKind::ArpIsAt { dir, .. } => format!("{} ARP is-at", d(dir)),
        EventKind::Segment { dir, flags, .. } => format!("{} {flags}", d(dir)),
        EventKind::State { to, .. } => format!("state {to}"),
        EventKind::ClientHello { dir, .. } => format!("{} ClientHello", d(dir)),
        EventKind::ServerHello { dir, .. } => format!("{} ServerHello", d(dir)),
        EventKind::Tls { dir, what, .. } => format!("{} {what}", d(dir)),
        EventKind::Dns { dir, what, .. } => {
            let first = what.split_whitespace().next().unwrap_or("");
            format!("{} DNS {first}", d(dir))
        }
    }
}

/// Checks that `want` occurs in `events` (as [`brief`] names them) in this order, other events
/// between allowed; a trailing `*` matches any rest (`out FIN*`: the first segment we sent with
/// FIN first among its flags). The error shows the whole story.
pub fn check_order(events: &[TraceEvent], want: &[&str]) -> Result<(), String> {
    let got: Vec<String> = events.iter().map(brief).collect();
    let mut at = 0;
    for w in want {
        let hit = |g: &String| match w.strip_suffix('*') {
            Some(prefix) => g.starts_with(prefix),
            None => g == w,
        };
        match got[at..].iter().position(hit) {
            Some(i) => at += i + 1,
            None => {
                return Err(format!(
                    "{w:?} missing after event {at} of the story:\n  {}",
                    got.join("\n  ")
                ))
            }
        }
    }
    Ok(())
}
