//! S-expressions as Guile 2.2 writes and reads them: a reader, a writer, and
//! an evaluator for the few data-building forms found in specification files.
//!
//! Pure: no I/O. The reader never panics and never recurses deeper than
//! [`MAX_DEPTH`], because it reads files and subprocess output that nobody
//! has vetted. Rationals, bignums, bytevectors and `|sym|` are not supported:
//! `1/2` reads as a symbol, an integer outside `i64` is an error.

use std::fmt;

/// Nesting deeper than this is refused rather than risking a stack overflow.
/// A debug build's quasiquote expansion takes about 5 KiB of stack per level,
/// so 256 levels stay inside a test thread's 2 MiB; real files nest ~10 deep.
pub const MAX_DEPTH: usize = 256;

/// A place in the text; both numbers start at 1 and count characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Datum {
    pub pos: Pos,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A proper list; `()` is `List(vec![])`.
    List(Vec<Datum>),
    /// `(a b . c)`: the head is never empty and the tail is never a list.
    Dotted(Vec<Datum>, Box<Datum>),
    Vector(Vec<Datum>),
    Symbol(String),
    /// `#:name`, holding `"name"`.
    Keyword(String),
    Str(String),
    Int(i64),
    Real(f64),
    Bool(bool),
    Char(char),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    pub pos: Pos,
    pub kind: ErrorKind,
}

/// What went wrong. Things left open (lists, strings, comments) are reported
/// where they were opened, everything else where the offending text starts.
#[derive(Debug, Clone, PartialEq)]
pub enum ErrorKind {
    /// A `)` or `]` with no list open.
    UnbalancedClose,
    /// A `)` closing a `[`, or a `]` closing a `(`.
    MismatchedClose,
    /// The text ended inside a list or vector.
    UnterminatedList,
    UnterminatedString,
    /// The text ended inside `#|...|#` or `#!...!#`.
    UnterminatedBlockComment,
    /// The text ended inside `#{...}#`.
    UnterminatedSymbol,
    /// An unknown or malformed `\` escape in a string.
    BadEscape,
    /// `#` followed by something this reader does not know.
    BadHash,
    /// `#\name` with an unknown name.
    BadChar,
    /// A number that does not fit (integers are 64-bit).
    BadNumber,
    /// A `.` outside a list, first in a list, or not followed by one datum and `)`.
    BadDot,
    /// A quote, `#;` or `#:` with nothing to apply to.
    MissingDatum,
    /// Nesting deeper than [`MAX_DEPTH`].
    TooDeep,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let msg = match self.kind {
            ErrorKind::UnbalancedClose => "unbalanced closing parenthesis",
            ErrorKind::MismatchedClose => "closing bracket does not match the opening one",
            ErrorKind::UnterminatedList => "list opened here is never closed",
            ErrorKind::UnterminatedString => "string opened here is never closed",
            ErrorKind::UnterminatedBlockComment => "block comment opened here is never closed",
            ErrorKind::UnterminatedSymbol => "#{ symbol opened here is never closed",
            ErrorKind::BadEscape => "invalid escape sequence in string",
            ErrorKind::BadHash => "unknown # syntax",
            ErrorKind::BadChar => "unknown character name",
            ErrorKind::BadNumber => "number out of range",
            ErrorKind::BadDot => "misplaced dot",
            ErrorKind::MissingDatum => "expected a datum",
            ErrorKind::TooDeep => "nesting too deep",
        };
        write!(f, "{}: {}", self.pos, msg)
    }
}

impl std::error::Error for Error {}

/// Reads every top-level datum of `text`.
pub fn parse_all(text: &str) -> Result<Vec<Datum>, Error> {
    let mut r = Reader {
        chars: text.chars().collect(),
        i: 0,
        line: 1,
        column: 1,
    };
    let mut out = Vec::new();
    loop {
        r.skip_atmosphere(0)?;
        if r.peek().is_none() {
            return Ok(out);
        }
        out.push(r.datum(0)?);
    }
}

// Guile 2.2 writes control characters by their ASCII names (index = code).
const C0_NAMES: &str = "nul soh stx etx eot enq ack alarm backspace tab newline vtab page return \
    so si dle dc1 dc2 dc3 dc4 nak syn etb can em sub esc fs gs rs us space";

// Other names Guile and R7RS accept when reading.
const CHAR_ALIASES: [(&str, char); 11] = [
    ("delete", '\x7f'),
    ("del", '\x7f'),
    ("null", '\0'),
    ("linefeed", '\n'),
    ("escape", '\x1b'),
    ("bel", '\x07'),
    ("bs", '\x08'),
    ("ht", '\t'),
    ("lf", '\n'),
    ("vt", '\x0b'),
    ("ff", '\x0c'),
];

fn char_by_name(name: &str) -> Option<char> {
    if let Some(i) = C0_NAMES.split_whitespace().position(|n| n == name) {
        return char::from_u32(i as u32);
    }
    CHAR_ALIASES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, c)| c)
}

fn char_name(c: char) -> Option<&'static str> {
    match c {
        '\x7f' => Some("delete"),
        c => C0_NAMES.split_whitespace().nth(c as usize),
    }
}

struct Reader {
    chars: Vec<char>,
    i: usize,
    line: u32,
    column: u32,
}

fn is_delimiter(c: char) -> bool {
    c.is_whitespace() || matches!(c, '(' | ')' | '[' | ']' | '"' | ';')
}

impl Reader {
    fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            column: self.column,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).copied()
    }

    fn peek2(&self) -> Option<char> {
        self.chars.get(self.i + 1).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += 1;
        if c == '\n' {
            self.line = self.line.saturating_add(1);
            self.column = 1;
        } else {
            self.column = self.column.saturating_add(1);
        }
        Some(c)
    }

    fn err<T>(pos: Pos, kind: ErrorKind) -> Result<T, Error> {
        Err(Error { pos, kind })
    }

    /// Skips whitespace and all three kinds of comments. `#;` reads (and
    /// drops) a datum, so this needs the depth too.
    fn skip_atmosphere(&mut self, depth: usize) -> Result<(), Error> {
        while let Some(c) = self.peek() {
            if c.is_whitespace() {
                self.next();
            } else if c == ';' {
                while let Some(c) = self.next() {
                    if c == '\n' {
                        break;
                    }
                }
            } else if c == '#' && matches!(self.peek2(), Some('|') | Some('!')) {
                self.block_comment()?;
            } else if c == '#' && self.peek2() == Some(';') {
                let start = self.pos();
                self.next();
                self.next();
                self.required(depth + 1, start)?;
            } else {
                break;
            }
        }
        Ok(())
    }

    /// `#|...|#` nests; Guile's `#!...!#` (script headers) does not.
    fn block_comment(&mut self) -> Result<(), Error> {
        let start = self.pos();
        self.next();
        let bar = self.next() == Some('|');
        let close = if bar { '|' } else { '!' };
        let mut level = 1;
        loop {
            match self.next() {
                None => return Self::err(start, ErrorKind::UnterminatedBlockComment),
                Some(c) if c == close && self.peek() == Some('#') => {
                    self.next();
                    level -= 1;
                    if level == 0 {
                        return Ok(());
                    }
                }
                Some('#') if bar && self.peek() == Some('|') => {
                    self.next();
                    level += 1;
                }
                Some(_) => {}
            }
        }
    }

    /// A datum that must be there: after a quote or `#;`.
    fn required(&mut self, depth: usize, start: Pos) -> Result<Datum, Error> {
        // `#;` recurses here without passing through `datum`, so check too.
        if depth >= MAX_DEPTH {
            return Self::err(start, ErrorKind::TooDeep);
        }
        self.skip_atmosphere(depth)?;
        match self.peek() {
            None | Some(')') | Some(']') => Self::err(start, ErrorKind::MissingDatum),
            Some(_) => self.datum(depth),
        }
    }

    fn token(&mut self) -> String {
        let mut s = String::new();
        while let Some(c) = self.peek() {
            if is_delimiter(c) {
                break;
            }
            s.push(c);
            self.next();
        }
        s
    }

    /// Reads one datum; the caller has skipped the atmosphere before it.
    fn datum(&mut self, depth: usize) -> Result<Datum, Error> {
        let pos = self.pos();
        if depth >= MAX_DEPTH {
            return Self::err(pos, ErrorKind::TooDeep);
        }
        let kind = match self.peek() {
            None => return Self::err(pos, ErrorKind::MissingDatum),
            Some(')') | Some(']') => return Self::err(pos, ErrorKind::UnbalancedClose),
            Some('(') | Some('[') => self.list(depth, pos)?,
            Some('"') => {
                self.next();
                Kind::Str(self.string(pos)?)
            }
            Some(q @ ('\'' | '`' | ',')) => {
                self.next();
                let name = match q {
                    '\'' => "quote",
                    '`' => "quasiquote",
                    _ if self.peek() == Some('@') => {
                        self.next();
                        "unquote-splicing"
                    }
                    _ => "unquote",
                };
                let inner = self.required(depth + 1, pos)?;
                let head = Datum::new(pos, Kind::Symbol(name.into()));
                Kind::List(vec![head, inner])
            }
            Some('#') => self.hash(depth, pos)?,
            Some(_) => {
                let tok = self.token();
                atom(&tok).ok_or(Error {
                    pos,
                    kind: if tok == "." {
                        ErrorKind::BadDot
                    } else {
                        ErrorKind::BadNumber
                    },
                })?
            }
        };
        Ok(Datum { pos, kind })
    }

    fn list(&mut self, depth: usize, open: Pos) -> Result<Kind, Error> {
        let close = if self.next() == Some('[') { ']' } else { ')' };
        let mut items = Vec::new();
        loop {
            self.skip_atmosphere(depth + 1)?;
            let here = self.pos();
            match self.peek() {
                None => return Self::err(open, ErrorKind::UnterminatedList),
                Some(c @ (')' | ']')) => {
                    self.next();
                    if c != close {
                        return Self::err(here, ErrorKind::MismatchedClose);
                    }
                    return Ok(Kind::List(items));
                }
                Some('.') if self.peek2().is_none_or(is_delimiter) => {
                    self.next();
                    if items.is_empty() {
                        return Self::err(here, ErrorKind::BadDot);
                    }
                    self.skip_atmosphere(depth + 1)?;
                    if matches!(self.peek(), Some(')') | Some(']')) {
                        return Self::err(here, ErrorKind::BadDot);
                    }
                    if self.peek().is_none() {
                        return Self::err(open, ErrorKind::UnterminatedList);
                    }
                    let tail = self.datum(depth + 1)?;
                    self.skip_atmosphere(depth + 1)?;
                    match self.next() {
                        None => return Self::err(open, ErrorKind::UnterminatedList),
                        Some(c) if c == close => return Ok(cons_list(items, tail).kind),
                        Some(_) => return Self::err(here, ErrorKind::BadDot),
                    }
                }
                Some(_) => items.push(self.datum(depth + 1)?),
            }
        }
    }

    fn hex_digits(&mut self, count: usize, pos: Pos) -> Result<char, Error> {
        let mut n = 0u32;
        for _ in 0..count {
            let d = self.next().and_then(|c| c.to_digit(16));
            n = n * 16
                + d.ok_or(Error {
                    pos,
                    kind: ErrorKind::BadEscape,
                })?;
        }
        char::from_u32(n).ok_or(Error {
            pos,
            kind: ErrorKind::BadEscape,
        })
    }

    /// The rest of a string after its opening quote. `\xHH` takes exactly two
    /// digits, as in Guile 2.2 (so `"\x41;"` is `A;`), and a backslash-newline
    /// drops only the newline, keeping the next line's indentation as Guile does.
    fn string(&mut self, open: Pos) -> Result<String, Error> {
        let mut s = String::new();
        loop {
            let here = self.pos();
            match self.next() {
                None => return Self::err(open, ErrorKind::UnterminatedString),
                Some('"') => return Ok(s),
                Some('\\') => {
                    let c = match self.next() {
                        None => return Self::err(open, ErrorKind::UnterminatedString),
                        Some('\n') => continue,
                        Some(c @ ('"' | '\\')) => c,
                        Some('n') => '\n',
                        Some('t') => '\t',
                        Some('r') => '\r',
                        Some('a') => '\x07',
                        Some('0') => '\0',
                        Some('v') => '\x0b',
                        Some('f') => '\x0c',
                        Some('b') => '\x08',
                        Some('x') => self.hex_digits(2, here)?,
                        Some('u') => self.hex_digits(4, here)?,
                        Some('U') => self.hex_digits(6, here)?,
                        Some(_) => return Self::err(here, ErrorKind::BadEscape),
                    };
                    s.push(c);
                }
                Some(c) => s.push(c),
            }
        }
    }

    fn hash(&mut self, depth: usize, pos: Pos) -> Result<Kind, Error> {
        self.next();
        match self.peek() {
            Some('(') => {
                let Kind::List(items) = self.list(depth, pos)? else {
                    return Self::err(pos, ErrorKind::BadDot);
                };
                Ok(Kind::Vector(items))
            }
            Some(':') => {
                self.next();
                let name = self.token();
                if name.is_empty() {
                    return Self::err(pos, ErrorKind::MissingDatum);
                }
                Ok(Kind::Keyword(name))
            }
            Some('\\') => {
                self.next();
                let Some(first) = self.next() else {
                    return Self::err(pos, ErrorKind::BadChar);
                };
                let rest = self.token();
                if rest.is_empty() {
                    return Ok(Kind::Char(first));
                }
                let name = format!("{first}{rest}");
                let code = if let Some(c) = char_by_name(&name) {
                    Some(c)
                } else if let Some(hex) = name.strip_prefix('x') {
                    u32::from_str_radix(hex, 16).ok().and_then(char::from_u32)
                } else if name.chars().all(|c| c.is_digit(8)) {
                    // Guile writes non-graphic characters in octal: #\240.
                    u32::from_str_radix(&name, 8).ok().and_then(char::from_u32)
                } else {
                    None
                };
                code.map(Kind::Char).ok_or(Error {
                    pos,
                    kind: ErrorKind::BadChar,
                })
            }
            Some('{') => {
                self.next();
                self.braced_symbol(pos).map(Kind::Symbol)
            }
            _ => {
                let tok = self.token();
                let radix = match tok.chars().next() {
                    Some('x' | 'X') => 16,
                    Some('o' | 'O') => 8,
                    Some('b' | 'B') => 2,
                    Some('d' | 'D') => 10,
                    _ => 0,
                };
                match tok.as_str() {
                    "t" | "true" => Ok(Kind::Bool(true)),
                    "f" | "false" => Ok(Kind::Bool(false)),
                    _ if radix != 0 && tok.len() > 1 => i64::from_str_radix(&tok[1..], radix)
                        .map(Kind::Int)
                        .map_err(|_| Error {
                            pos,
                            kind: ErrorKind::BadNumber,
                        }),
                    _ => Self::err(pos, ErrorKind::BadHash),
                }
            }
        }
    }

    /// Guile's `#{...}#` symbols, which it writes for names that would not
    /// read back as symbols (`#{1}#`, `#{a b}#`); `\xHH;` escapes inside.
    fn braced_symbol(&mut self, open: Pos) -> Result<String, Error> {
        let mut s = String::new();
        loop {
            let here = self.pos();
            match self.next() {
                None => return Self::err(open, ErrorKind::UnterminatedSymbol),
                Some('}') if self.peek() == Some('#') => {
                    self.next();
                    return Ok(s);
                }
                Some('\\') => match self.next() {
                    None => return Self::err(open, ErrorKind::UnterminatedSymbol),
                    Some('x') => {
                        let mut hex = String::new();
                        while let Some(c) = self.next() {
                            if c == ';' {
                                break;
                            }
                            hex.push(c);
                        }
                        let c = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                        s.push(c.ok_or(Error {
                            pos: here,
                            kind: ErrorKind::BadEscape,
                        })?);
                    }
                    Some(c) => s.push(c),
                },
                Some(c) => s.push(c),
            }
        }
    }
}

/// Classifies a bare token; `None` means it looked numeric but does not fit
/// (or is a lone dot).
fn atom(tok: &str) -> Option<Kind> {
    if tok == "." {
        return None;
    }
    let digits = tok.strip_prefix(['+', '-']).unwrap_or(tok);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return tok.parse().ok().map(Kind::Int);
    }
    match tok {
        "+inf.0" => return Some(Kind::Real(f64::INFINITY)),
        "-inf.0" => return Some(Kind::Real(f64::NEG_INFINITY)),
        "+nan.0" | "-nan.0" => return Some(Kind::Real(f64::NAN)),
        _ => {}
    }
    // Rust's float syntax accepts "inf" and "NaN", which are symbols to Scheme.
    let real_chars = tok
        .bytes()
        .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
    if real_chars
        && tok.bytes().any(|b| b.is_ascii_digit())
        && let Ok(x) = tok.parse::<f64>()
    {
        return Some(Kind::Real(x));
    }
    Some(Kind::Symbol(tok.to_string()))
}

/// Joins a head and a tail as `cons*` would, keeping the invariants of
/// [`Kind::Dotted`]; the result takes the position of the first element.
pub fn cons_list(mut head: Vec<Datum>, tail: Datum) -> Datum {
    let pos = head.first().map_or(tail.pos, |d| d.pos);
    let kind = match tail.kind {
        Kind::List(rest) => {
            head.extend(rest);
            Kind::List(head)
        }
        Kind::Dotted(rest, t) => {
            head.extend(rest);
            Kind::Dotted(head, t)
        }
        _ if head.is_empty() => return tail,
        _ => Kind::Dotted(head, Box::new(tail)),
    };
    Datum { pos, kind }
}

impl Datum {
    pub fn new(pos: Pos, kind: Kind) -> Datum {
        Datum { pos, kind }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_symbol(&self) -> Option<&str> {
        match &self.kind {
            Kind::Symbol(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_keyword(&self) -> Option<&str> {
        match &self.kind {
            Kind::Keyword(s) => Some(s),
            _ => None,
        }
    }

    /// The elements of a proper list.
    pub fn as_list(&self) -> Option<&[Datum]> {
        match &self.kind {
            Kind::List(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self.kind {
            Kind::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self.kind {
            Kind::Int(n) => Some(n),
            _ => None,
        }
    }

    /// The car and cdr of a pair, as Scheme sees it: `(a b)` is `a` and `(b)`.
    pub fn as_pair(&self) -> Option<(&Datum, Datum)> {
        match &self.kind {
            Kind::List(items) if !items.is_empty() => {
                let pos = items.get(1).map_or(self.pos, |d| d.pos);
                Some((&items[0], Datum::new(pos, Kind::List(items[1..].to_vec()))))
            }
            Kind::Dotted(head, tail) => {
                let (first, rest) = head.split_first()?;
                Some((first, cons_list(rest.to_vec(), (**tail).clone())))
            }
            _ => None,
        }
    }
}

fn write_seq(f: &mut fmt::Formatter<'_>, items: &[Datum]) -> fmt::Result {
    for (i, d) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(" ")?;
        }
        write!(f, "{d}")?;
    }
    Ok(())
}

/// Writes a string or symbol body's character the way Guile's reader wants it.
fn write_string_char(f: &mut fmt::Formatter<'_>, c: char) -> fmt::Result {
    match c {
        '"' => f.write_str("\\\""),
        '\\' => f.write_str("\\\\"),
        '\n' => f.write_str("\\n"),
        '\t' => f.write_str("\\t"),
        '\r' => f.write_str("\\r"),
        c if c.is_control() && (c as u32) < 0x100 => write!(f, "\\x{:02x}", c as u32),
        c if c.is_control() => write!(f, "\\U{:06x}", c as u32),
        c => write!(f, "{c}"),
    }
}

/// Whether a symbol must be written as `#{...}#` to read back as itself.
fn needs_braces(s: &str) -> bool {
    s.is_empty()
        || s.starts_with(['#', '\'', '`', ','])
        || s.chars()
            .any(|c| is_delimiter(c) || c.is_control() || c == '{' || c == '}')
        || !matches!(atom(s), Some(Kind::Symbol(_)))
}

impl fmt::Display for Datum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::List(items) => {
                f.write_str("(")?;
                write_seq(f, items)?;
                f.write_str(")")
            }
            Kind::Dotted(items, tail) => {
                f.write_str("(")?;
                write_seq(f, items)?;
                write!(f, " . {tail})")
            }
            Kind::Vector(items) => {
                f.write_str("#(")?;
                write_seq(f, items)?;
                f.write_str(")")
            }
            Kind::Symbol(s) if needs_braces(s) => {
                f.write_str("#{")?;
                for c in s.chars() {
                    if c.is_alphanumeric() || "-_+*/<>=!?.:$%&^~@".contains(c) {
                        write!(f, "{c}")?;
                    } else {
                        write!(f, "\\x{:x};", c as u32)?;
                    }
                }
                f.write_str("}#")
            }
            Kind::Symbol(s) => f.write_str(s),
            Kind::Keyword(s) => write!(f, "#:{s}"),
            Kind::Str(s) => {
                f.write_str("\"")?;
                for c in s.chars() {
                    write_string_char(f, c)?;
                }
                f.write_str("\"")
            }
            Kind::Int(n) => write!(f, "{n}"),
            Kind::Real(x) if x.is_nan() => f.write_str("+nan.0"),
            Kind::Real(x) if x.is_infinite() => {
                f.write_str(if *x > 0.0 { "+inf.0" } else { "-inf.0" })
            }
            // Debug always keeps a '.' or an exponent, so the text reads back as a real.
            Kind::Real(x) => write!(f, "{x:?}"),
            Kind::Bool(b) => f.write_str(if *b { "#t" } else { "#f" }),
            Kind::Char(c) => match char_name(*c) {
                Some(name) => write!(f, "#\\{name}"),
                None if c.is_control() || c.is_whitespace() => write!(f, "#\\x{:x}", *c as u32),
                None => write!(f, "#\\{c}"),
            },
        }
    }
}

mod eval;
pub use eval::{EvalError, eval_data, record_tag};

#[cfg(test)]
mod tests;
