//! Build-log decompression as a sans-I/O codec: compressed bytes in,
//! text out, never more than the caller's budget per call, so that one
//! call costs a bounded time and memory however the input expands.
//!
//! Formats: gzip (RFC 1952, what guix-daemon 1.5.0 writes, one member or
//! several), bzip2 (guix-daemon 1.2.0 and the 2018 daemon, one stream or
//! several) and plain text (`--log-compression=none`).  The deflate and
//! bzip2 bodies are flate2's and bzip2's; the gzip framing around the
//! deflate body (header, CRC-32, length) is read here, since flate2's
//! pure-Rust backend has no incremental gzip decoder with a bounded output.

use std::fmt;

/// How a log file is stored, from its name (`….drv.gz`, `….drv.bz2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Plain,
    Gzip,
    Bzip2,
}

impl Compression {
    pub fn of_path(path: &str) -> Compression {
        if path.ends_with(".gz") {
            Compression::Gzip
        } else if path.ends_with(".bz2") {
            Compression::Bzip2
        } else {
            Compression::Plain
        }
    }

    /// The file-name suffix, with its dot; empty for plain text.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::Plain => "",
            Compression::Gzip => ".gz",
            Compression::Bzip2 => ".bz2",
        }
    }
}

/// Why a log cannot be decoded, and where: `offset` counts compressed
/// bytes from the start of the file, up to the start of the piece in
/// which the error was found (a header or trailer split across two
/// calls is reported where its last piece began).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub offset: u64,
    pub kind: ErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// A gzip member does not start with 1f 8b 08.
    NotGzip,
    /// A gzip header with reserved flags set, or longer than
    /// [`MAX_GZIP_HEADER`].
    BadGzipHeader,
    /// The deflate or bzip2 body is corrupt (the library's message).
    Corrupt(String),
    /// A gzip member's CRC-32 or length disagrees with its text.
    Checksum,
    /// The file ends inside a header, body or trailer.
    Truncated,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match &self.kind {
            ErrorKind::NotGzip => write!(f, "not gzip data at byte {}", self.offset),
            ErrorKind::BadGzipHeader => write!(f, "bad gzip header at byte {}", self.offset),
            ErrorKind::Corrupt(why) => {
                write!(
                    f,
                    "corrupt compressed data near byte {}: {why}",
                    self.offset
                )
            }
            ErrorKind::Checksum => write!(
                f,
                "gzip checksum or length mismatch at byte {}",
                self.offset
            ),
            ErrorKind::Truncated => write!(f, "compressed data cut short at byte {}", self.offset),
        }
    }
}

impl std::error::Error for Error {}

/// The longest gzip header accepted (its optional name, comment and extra
/// field are unbounded in the format).
pub const MAX_GZIP_HEADER: usize = 64 * 1024;

enum Gz {
    /// Collecting a member's header; `buf` holds what came so far.
    Header(Vec<u8>),
    Body(Box<flate2::Decompress>, flate2::Crc),
    Trailer(Vec<u8>, flate2::Crc),
    /// Between members: more input starts another one.
    End,
}

enum State {
    Plain,
    Gzip(Gz),
    /// The stream in progress, or None between streams.
    Bzip2(Option<Box<bzip2::Decompress>>),
}

/// An incremental decoder.  [`Decoder::decode`] takes any split of the
/// input; [`Decoder::finish`] says whether what came was complete.
pub struct Decoder {
    state: State,
    /// Compressed bytes consumed so far, for error offsets.
    offset: u64,
    failed: Option<Error>,
}

impl Decoder {
    pub fn new(compression: Compression) -> Decoder {
        let state = match compression {
            Compression::Plain => State::Plain,
            Compression::Gzip => State::Gzip(Gz::End),
            Compression::Bzip2 => State::Bzip2(None),
        };
        Decoder {
            state,
            offset: 0,
            failed: None,
        }
    }

    /// Decodes from `input`, appending at most `max` bytes of text to
    /// `out`; returns how many input bytes were consumed.  Call again with
    /// the rest of the input once `out` has been emptied: fewer bytes
    /// consumed than given means the budget ran out.  After an error every
    /// call returns that error.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>, max: usize) -> Result<usize, Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut used = 0;
        let limit = out.len() + max;
        while used < input.len() && out.len() < limit {
            match self.step(&input[used..], out, limit) {
                Ok((n, progressed)) => {
                    used += n;
                    self.offset += n as u64;
                    if n == 0 && !progressed {
                        break;
                    }
                }
                Err(kind) => {
                    let e = Error {
                        offset: self.offset,
                        kind,
                    };
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(used)
    }

    /// At the end of the input: an error if it stopped inside a header,
    /// a compressed body or a trailer, or if decoding had failed.
    pub fn finish(&self) -> Result<(), Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let complete = match &self.state {
            State::Plain | State::Gzip(Gz::End) | State::Bzip2(None) => true,
            // An empty file is an empty log, not a truncated one.
            State::Gzip(Gz::Header(buf)) => buf.is_empty() && self.offset == 0,
            _ => false,
        };
        match complete {
            true => Ok(()),
            false => Err(Error {
                offset: self.offset,
                kind: ErrorKind::Truncated,
            }),
        }
    }

    /// One step of progress on a non-empty input: the bytes consumed,
    /// and whether text came out or the state moved on.
    fn step(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(usize, bool), ErrorKind> {
        match &mut self.state {
            State::Plain => {
                let n = input.len().min(limit - out.len());
                out.extend_from_slice(&input[..n]);
                Ok((n, n > 0))
            }
            State::Gzip(gz) => gzip_step(gz, input, out, limit),
            State::Bzip2(stream) => {
                let d = stream.get_or_insert_with(|| Box::new(bzip2::Decompress::new(false)));
                let (before_in, before_out) = (d.total_in(), d.total_out());
                let start = out.len();
                out.resize(limit, 0);
                let status = d.decompress(input, &mut out[start..]);
                let made = (d.total_out() - before_out) as usize;
                out.truncate(start + made);
                let used = (d.total_in() - before_in) as usize;
                match status {
                    Ok(bzip2::Status::StreamEnd) => {
                        *stream = None;
                        Ok((used, true))
                    }
                    Ok(_) => Ok((used, made > 0)),
                    Err(e) => Err(ErrorKind::Corrupt(e.to_string())),
                }
            }
        }
    }
}

fn gzip_step(
    gz: &mut Gz,
    input: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(usize, bool), ErrorKind> {
    match gz {
        Gz::End => {
            *gz = Gz::Header(Vec::new());
            Ok((0, true))
        }
        Gz::Header(buf) => {
            let before = buf.len();
            let take = input.len().min(MAX_GZIP_HEADER + 1 - before);
            buf.extend_from_slice(&input[..take]);
            match gzip_header_len(buf)? {
                Some(len) => {
                    let inflate = Box::new(flate2::Decompress::new(false));
                    *gz = Gz::Body(inflate, flate2::Crc::new());
                    Ok((len - before, true))
                }
                None if buf.len() > MAX_GZIP_HEADER => Err(ErrorKind::BadGzipHeader),
                None => Ok((take, take > 0)),
            }
        }
        Gz::Body(inflate, crc) => {
            let (before_in, before_out) = (inflate.total_in(), inflate.total_out());
            let start = out.len();
            out.resize(limit, 0);
            let status =
                inflate.decompress(input, &mut out[start..], flate2::FlushDecompress::None);
            let made = (inflate.total_out() - before_out) as usize;
            out.truncate(start + made);
            crc.update(&out[start..]);
            let used = (inflate.total_in() - before_in) as usize;
            match status.map_err(|e| ErrorKind::Corrupt(e.to_string()))? {
                flate2::Status::StreamEnd => {
                    let crc = std::mem::replace(crc, flate2::Crc::new());
                    *gz = Gz::Trailer(Vec::with_capacity(8), crc);
                    Ok((used, true))
                }
                _ => Ok((used, made > 0)),
            }
        }
        Gz::Trailer(buf, crc) => {
            let take = input.len().min(8 - buf.len());
            buf.extend_from_slice(&input[..take]);
            if buf.len() == 8 {
                let want_crc = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                let want_len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
                // ISIZE is the length modulo 2^32, as is Crc::amount.
                if want_crc != crc.sum() || want_len != crc.amount() {
                    return Err(ErrorKind::Checksum);
                }
                *gz = Gz::End;
            }
            Ok((take, true))
        }
    }
}

/// The length of the gzip header at the start of `buf`, None if more bytes
/// are needed (RFC 1952 section 2.3).
pub fn gzip_header_len(buf: &[u8]) -> Result<Option<usize>, ErrorKind> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    let magic = [0x1f, 0x8b, 8];
    let n = buf.len().min(3);
    if buf[..n] != magic[..n] {
        return Err(ErrorKind::NotGzip);
    }
    if buf.len() < 10 {
        return Ok(None);
    }
    let flags = buf[3];
    if flags & 0xe0 != 0 {
        return Err(ErrorKind::BadGzipHeader);
    }
    let mut at = 10;
    if flags & FEXTRA != 0 {
        let Some(len) = buf.get(at..at + 2) else {
            return Ok(None);
        };
        at += 2 + u16::from_le_bytes([len[0], len[1]]) as usize;
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            match buf
                .get(at..)
                .and_then(|rest| rest.iter().position(|&b| b == 0))
            {
                Some(nul) => at += nul + 1,
                None => return Ok(None),
            }
        }
    }
    if flags & FHCRC != 0 {
        at += 2;
    }
    Ok((buf.len() >= at).then_some(at))
}
