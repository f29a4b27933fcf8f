//! The end of a log, kept while the whole of it streams past.

/// The last bytes of a stream, at most `2 × keep` of them held at any
/// time, whatever the stream's length; [`Tail::lines`] cuts them to
/// whole lines.
#[derive(Debug, Clone)]
pub struct Tail {
    keep: usize,
    buf: Vec<u8>,
    /// Bytes dropped from the front: the tail is not the whole text.
    dropped: bool,
}

impl Tail {
    /// A tail keeping at least the last `keep` bytes.
    pub fn new(keep: usize) -> Tail {
        Tail {
            keep,
            buf: Vec::new(),
            dropped: false,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if bytes.len() >= self.keep {
            self.dropped |= bytes.len() > self.keep || !self.buf.is_empty();
            self.buf.clear();
            self.buf
                .extend_from_slice(&bytes[bytes.len() - self.keep..]);
            return;
        }
        self.buf.extend_from_slice(bytes);
        // Trimmed only once past twice the size, so that pushing many
        // small pieces does not move the buffer each time.
        if self.buf.len() > 2 * self.keep {
            let cut = self.buf.len() - self.keep;
            self.buf.drain(..cut);
            self.dropped = true;
        }
    }

    /// The last `n` lines held (a final newline does not start an empty
    /// line).  When bytes were dropped, the first, partial, line is left
    /// out unless it is the only one.
    pub fn lines(&self, n: usize) -> &[u8] {
        let text = &self.buf[self.buf.len().saturating_sub(self.keep)..];
        let body = text.strip_suffix(b"\n").unwrap_or(text);
        let mut start = 0;
        let mut seen = 0;
        for (i, &b) in body.iter().enumerate().rev() {
            if b == b'\n' {
                seen += 1;
                if seen == n {
                    start = i + 1;
                    break;
                }
            }
        }
        if start == 0
            && (self.dropped || text.len() < self.buf.len())
            && let Some(nl) = body.iter().position(|&b| b == b'\n')
        {
            start = nl + 1;
        }
        &text[start..]
    }
}
