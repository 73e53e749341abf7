//! An incremental HTTP/1.1 response parser for the client: status line, headers, then the body
//! delimited by `Content-Length`, `Transfer-Encoding: chunked` or the end of the stream.
//!
//! Bytes may arrive split anywhere (one at a time is the same as all at once). Every part is
//! bounded: the head by [`ResponseLimits::max_head`], the body by [`ResponseLimits::max_body`];
//! anything malformed or over a limit is an error, never a panic.

use thiserror::Error;

/// Bounds of a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseLimits {
    /// Most bytes of status line and headers.
    pub max_head: usize,
    /// Most bytes of body kept.
    pub max_body: usize,
}

impl Default for ResponseLimits {
    fn default() -> Self {
        ResponseLimits {
            max_head: 16 * 1024,
            max_body: 64 * 1024 * 1024,
        }
    }
}

/// Why a response could not be read.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponseError {
    /// The status line is not `HTTP/1.x NNN reason`.
    #[error("the server's status line is not HTTP/1.x: {0:?}")]
    BadStatusLine(String),
    /// A header line has no colon, or a length or chunk size does not parse.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    /// The head is longer than the limit.
    #[error("the response head exceeds {0} bytes")]
    HeadTooLong(usize),
    /// The body is longer than the limit.
    #[error("the response body exceeds {0} bytes (raise --max-body)")]
    BodyTooLong(usize),
    /// The stream ended before the response did.
    #[error("the connection closed before the response was complete ({0})")]
    Truncated(&'static str),
}

/// A complete response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The head as received: status line and headers, up to and including the empty line.
    pub head: Vec<u8>,
    /// Headers in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
    /// The server asked to close the connection (`Connection: close` or HTTP/1.0).
    pub close: bool,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    /// This many bytes still to come.
    Length(u64),
    /// Inside chunked framing.
    Chunked(Chunk),
    /// Until the stream ends.
    UntilClose,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Reading a size line.
    Size,
    /// This many data bytes of the current chunk still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines after the last (zero) chunk, until an empty line.
    Trailer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Head,
    Body(Body),
    Done,
}

/// Parses one response. Feed bytes with [`ResponseParser::feed`]; tell it the stream ended
/// with [`ResponseParser::finish`].
#[derive(Debug)]
pub struct ResponseParser {
    limits: ResponseLimits,
    /// Whether the request was HEAD (no body whatever the headers say).
    head_request: bool,
    phase: Phase,
    /// Current line being assembled (head, chunk size, trailer).
    line: Vec<u8>,
    resp: Response,
}

impl ResponseParser {
    /// A parser for the response to a GET (`head_request` false) or HEAD request.
    pub fn new(limits: ResponseLimits, head_request: bool) -> Self {
        ResponseParser {
            limits,
            head_request,
            phase: Phase::Head,
            line: Vec::new(),
            resp: Response::default(),
        }
    }

    /// True once the whole response was read.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The status, once the head was read.
    pub fn status(&self) -> Option<u16> {
        (self.resp.status != 0 && !matches!(self.phase, Phase::Head)).then_some(self.resp.status)
    }

    /// Takes the response (complete once [`ResponseParser::is_done`]).
    pub fn take(&mut self) -> Response {
        std::mem::take(&mut self.resp)
    }

    /// Consumes bytes; returns how many were taken (fewer than given only once the response is
    /// complete: the rest belongs to whatever follows).
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, ResponseError> {
        let mut i = 0;
        while i < data.len() {
            match self.phase {
                Phase::Done => break,
                Phase::Head => {
                    let b = data[i];
                    i += 1;
                    self.resp.head.push(b);
                    if self.resp.head.len() > self.limits.max_head {
                        return Err(ResponseError::HeadTooLong(self.limits.max_head));
                    }
                    if b == b'\n' {
                        let line = std::mem::take(&mut self.line);
                        self.head_line(&line)?;
                    } else {
                        self.line.push(b);
                    }
                }
                Phase::Body(Body::Length(left)) => {
                    let n = (left.min((data.len() - i) as u64)) as usize;
                    self.body(&data[i..i + n])?;
                    i += n;
                    let left = left - n as u64;
                    self.phase = if left == 0 {
                        Phase::Done
                    } else {
                        Phase::Body(Body::Length(left))
                    };
                }
                Phase::Body(Body::UntilClose) => {
                    self.body(&data[i..])?;
                    i = data.len();
                }
                Phase::Body(Body::Chunked(c)) => {
                    i += self.chunked(c, &data[i..])?;
                }
            }
        }
        Ok(i)
    }

    /// The stream ended: completes a body delimited by the close, or fails.
    pub fn finish(&mut self) -> Result<(), ResponseError> {
        match self.phase {
            Phase::Done => Ok(()),
            Phase::Body(Body::UntilClose) => {
                self.phase = Phase::Done;
                Ok(())
            }
            Phase::Head => Err(ResponseError::Truncated(if self.resp.head.is_empty() {
                "no response at all"
            } else {
                "inside the head"
            })),
            Phase::Body(_) => Err(ResponseError::Truncated("inside the body")),
        }
    }

    fn body(&mut self, data: &[u8]) -> Result<(), ResponseError> {
        if self.resp.body.len() + data.len() > self.limits.max_body {
            return Err(ResponseError::BodyTooLong(self.limits.max_body));
        }
        self.resp.body.extend_from_slice(data);
        Ok(())
    }

    /// One line of the head (without its `\n`).
    fn head_line(&mut self, line: &[u8]) -> Result<(), ResponseError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if self.resp.status == 0 {
            return self.status_line(line);
        }
        if line.is_empty() {
            return self.end_of_head();
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(ResponseError::Malformed("a header line without a colon"));
        };
        let name = std::str::from_utf8(&line[..colon])
            .map_err(|_| ResponseError::Malformed("a header name is not text"))?;
        if name.is_empty() || name.bytes().any(|b| b <= b' ' || b >= 0x7f) {
            return Err(ResponseError::Malformed("an invalid header name"));
        }
        let value = String::from_utf8_lossy(&line[colon + 1..])
            .trim()
            .to_string();
        self.resp.headers.push((name.to_string(), value));
        Ok(())
    }

    fn status_line(&mut self, line: &[u8]) -> Result<(), ResponseError> {
        let bad = || ResponseError::BadStatusLine(String::from_utf8_lossy(line).into_owned());
        let rest = line.strip_prefix(b"HTTP/1.").ok_or_else(bad)?;
        let (minor, rest) = rest.split_first().ok_or_else(bad)?;
        if !matches!(minor, b'0' | b'1') || rest.first() != Some(&b' ') || rest.len() < 4 {
            return Err(bad());
        }
        let code = &rest[1..4];
        if !code.iter().all(u8::is_ascii_digit) || rest.get(4).is_some_and(|&b| b != b' ') {
            return Err(bad());
        }
        self.resp.status = code.iter().fold(0u16, |a, &d| a * 10 + u16::from(d - b'0'));
        if self.resp.status < 100 {
            return Err(bad());
        }
        self.resp.close = *minor == b'0';
        Ok(())
    }

    fn end_of_head(&mut self) -> Result<(), ResponseError> {
        let status = self.resp.status;
        if (100..200).contains(&status) {
            // An interim response (100 Continue): the real one follows.
            self.resp.status = 0;
            self.resp.headers.clear();
            self.resp.head.clear();
            return Ok(());
        }
        let mut length = None;
        let mut chunked = false;
        for (n, v) in &self.resp.headers {
            if n.eq_ignore_ascii_case("content-length") {
                let l: u64 = v
                    .parse()
                    .map_err(|_| ResponseError::Malformed("Content-Length is not a number"))?;
                if length.is_some_and(|p| p != l) {
                    return Err(ResponseError::Malformed("two different Content-Lengths"));
                }
                length = Some(l);
            } else if n.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v
                    .rsplit(',')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
            } else if n.eq_ignore_ascii_case("connection") {
                for t in v.split(',') {
                    let t = t.trim();
                    if t.eq_ignore_ascii_case("close") {
                        self.resp.close = true;
                    } else if t.eq_ignore_ascii_case("keep-alive") {
                        self.resp.close = false;
                    }
                }
            }
        }
        self.phase = if self.head_request || status == 204 || status == 304 {
            Phase::Done
        } else if chunked {
            // RFC 9112 §6.3: chunked wins over Content-Length.
            Phase::Body(Body::Chunked(Chunk::Size))
        } else {
            match length {
                Some(0) => Phase::Done,
                Some(l) => {
                    if l > self.limits.max_body as u64 {
                        return Err(ResponseError::BodyTooLong(self.limits.max_body));
                    }
                    self.resp.body.reserve(l as usize);
                    Phase::Body(Body::Length(l))
                }
                None => {
                    self.resp.close = true;
                    Phase::Body(Body::UntilClose)
                }
            }
        };
        Ok(())
    }

    /// Chunked framing; returns the bytes of `data` consumed.
    fn chunked(&mut self, c: Chunk, data: &[u8]) -> Result<usize, ResponseError> {
        match c {
            Chunk::Data(left) => {
                let n = (left.min(data.len() as u64)) as usize;
                self.body(&data[..n])?;
                let left = left - n as u64;
                self.phase = Phase::Body(Body::Chunked(if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                }));
                Ok(n)
            }
            Chunk::Size | Chunk::DataEnd | Chunk::Trailer => {
                let b = data[0];
                if b != b'\n' {
                    self.line.push(b);
                    if self.line.len() > 1024 {
                        return Err(ResponseError::Malformed("a chunk line over 1 KiB"));
                    }
                    return Ok(1);
                }
                let line = std::mem::take(&mut self.line);
                let line = line.strip_suffix(b"\r").unwrap_or(&line);
                self.phase = match c {
                    Chunk::DataEnd if line.is_empty() => Phase::Body(Body::Chunked(Chunk::Size)),
                    Chunk::DataEnd => {
                        return Err(ResponseError::Malformed("chunk data longer than its size"))
                    }
                    Chunk::Trailer if line.is_empty() => Phase::Done,
                    Chunk::Trailer => Phase::Body(Body::Chunked(Chunk::Trailer)),
                    _ => {
                        let hex = line.split(|&b| b == b';').next().unwrap_or(&[]);
                        let hex = std::str::from_utf8(hex)
                            .ok()
                            .map(str::trim)
                            .filter(|h| !h.is_empty() && h.len() <= 15)
                            .ok_or(ResponseError::Malformed("a chunk size is not hex"))?;
                        let size = u64::from_str_radix(hex, 16)
                            .map_err(|_| ResponseError::Malformed("a chunk size is not hex"))?;
                        Phase::Body(Body::Chunked(if size == 0 {
                            Chunk::Trailer
                        } else {
                            Chunk::Data(size)
                        }))
                    }
                };
                Ok(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(data: &[u8], step: usize) -> Result<(Response, usize), ResponseError> {
        let mut p = ResponseParser::new(ResponseLimits::default(), false);
        let mut used = 0;
        for c in data.chunks(step.max(1)) {
            used += p.feed(c)?;
            if p.is_done() {
                break;
            }
        }
        if !p.is_done() {
            p.finish()?;
        }
        Ok((p.take(), used))
    }

    #[test]
    fn content_length_any_split() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhelloEXTRA";
        for step in [1, 2, 3, 7, 100] {
            let (resp, used) = parse_all(r, step).unwrap();
            assert_eq!(resp.status, 200);
            assert_eq!(resp.body, b"hello");
            assert_eq!(resp.header("server"), Some("x"));
            assert!(!resp.close);
            assert_eq!(&resp.head[..], &r[..r.len() - 10]);
            assert!(
                used <= r.len() - 5,
                "the bytes after the body are not taken"
            );
        }
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\nA\r\n0123456789\r\n0\r\nT: v\r\n\r\n";
        for step in [1, 4, 1000] {
            let (resp, _) = parse_all(r, step).unwrap();
            assert_eq!(resp.body, b"hello0123456789");
        }
    }

    #[test]
    fn until_close_http10_head_and_204() {
        let (r, _) = parse_all(b"HTTP/1.0 200 OK\r\n\r\nabc", 2).unwrap();
        assert_eq!((r.body.as_slice(), r.close), (&b"abc"[..], true));
        let mut p = ResponseParser::new(ResponseLimits::default(), true);
        p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
            .unwrap();
        assert!(p.is_done() && p.take().body.is_empty());
        let (r, _) = parse_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n", 1).unwrap();
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
    }

    #[test]
    fn interim_100_is_skipped() {
        let (r, _) = parse_all(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno",
            3,
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"no"[..]));
    }

    #[test]
    fn errors_are_errors() {
        let cases: [(&[u8], &str); 9] = [
            (b"HTTP/2 200 OK\r\n\r\n", "status"),
            (b"HTTP/1.1 2x0 OK\r\n\r\n", "status"),
            (b"HTTP/1.1 099 X\r\n\r\n", "status"),
            (b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n", "colon"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                "Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "two",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "hex",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
                "longer",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
                "closed before",
            ),
        ];
        for (input, want) in cases {
            let e = parse_all(input, 1).unwrap_err().to_string();
            assert!(e.contains(want), "{input:?}: {e}");
        }
        assert!(parse_all(b"", 1)
            .unwrap_err()
            .to_string()
            .contains("no response"));
    }

    #[test]
    fn limits_hold() {
        let limits = ResponseLimits {
            max_head: 48,
            max_body: 4,
        };
        let mut p = ResponseParser::new(limits, false);
        let e = p
            .feed(b"HTTP/1.1 200 OK\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaa\r\n\r\n")
            .unwrap_err();
        assert_eq!(e, ResponseError::HeadTooLong(48));
        let mut p = ResponseParser::new(limits, false);
        let e = p
            .feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
            .unwrap_err();
        assert_eq!(e, ResponseError::BodyTooLong(4));
        let mut p = ResponseParser::new(limits, false);
        let e = p.feed(b"HTTP/1.1 200 OK\r\n\r\n12345").unwrap_err();
        assert_eq!(e, ResponseError::BodyTooLong(4));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let base = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        for _ in 0..20_000 {
            let mut m = base.to_vec();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % m.len();
                m[i] = (x >> 32) as u8;
            }
            let _ = parse_all(&m, 1 + (x as usize % 5));
        }
    }
}
