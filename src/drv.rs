//! The ATerm `.drv` file parser (pure: bytes in, [`Derivation`] out).
//!
//! A derivation file is one `Derive(...)` term with seven fields: outputs,
//! input derivations, input sources, system, builder, arguments and
//! environment. The parser walks the bytes once with a cursor; strings
//! without escapes are copied straight from the input, so the only
//! allocations are the owned fields themselves.
//!
//! Guix 1.2.0's own `derivation` procedure does not put a `name` variable in
//! the environment (Nix does), so [`Derivation::name`] falls back to the name
//! carried by the output paths, which is what Guix's `derivation-name`
//! amounts to.

use std::fmt;

/// The directory every store path of the test bed lives in.
pub const STORE_DIR: &str = "/gnu/store";

/// Length of the nix-base32 hash at the start of a store path's base name.
const HASH_LEN: usize = 32;

/// One output of a derivation. `hash_algo` and `hash` are empty except for
/// fixed-output derivations (e.g. source downloads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub name: String,
    pub path: String,
    pub hash_algo: String,
    pub hash: String,
}

/// A parsed `.drv` file, fields in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derivation {
    pub outputs: Vec<Output>,
    /// Input `.drv` paths, each with the names of the outputs it needs.
    pub input_drvs: Vec<(String, Vec<String>)>,
    pub input_srcs: Vec<String>,
    pub system: String,
    pub builder: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// Why a `.drv` file was rejected, and at which byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// Offset of the offending byte (the input length for a truncated file).
    pub offset: usize,
    pub kind: ErrorKind,
}

/// The ways a `.drv` file can be malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input ended before the term was complete.
    UnexpectedEnd,
    /// The bytes here are not the given punctuation or keyword
    /// (`Derive(`, `(`, `,`, `"`, ...).
    Expected(&'static str),
    /// Something follows the closing parenthesis of the term.
    TrailingBytes,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::UnexpectedEnd => f.write_str("unexpected end of derivation"),
            ErrorKind::Expected(what) => write!(f, "expected `{what}`"),
            ErrorKind::TrailingBytes => f.write_str("trailing bytes after derivation"),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "byte {}: {}", self.offset, self.kind)
    }
}

impl std::error::Error for Error {}

impl Derivation {
    /// Parses the complete contents of a `.drv` file.
    pub fn parse(bytes: &[u8]) -> Result<Derivation, Error> {
        let mut c = Cursor { bytes, pos: 0 };
        c.expect(b"Derive(", "Derive(")?;
        let outputs = c.list(|c| {
            c.expect(b"(", "(")?;
            let name = c.string()?;
            c.comma()?;
            let path = c.string()?;
            c.comma()?;
            let hash_algo = c.string()?;
            c.comma()?;
            let hash = c.string()?;
            c.expect(b")", ")")?;
            Ok(Output {
                name,
                path,
                hash_algo,
                hash,
            })
        })?;
        c.comma()?;
        let input_drvs = c.list(|c| {
            c.expect(b"(", "(")?;
            let path = c.string()?;
            c.comma()?;
            let outs = c.list(Cursor::string)?;
            c.expect(b")", ")")?;
            Ok((path, outs))
        })?;
        c.comma()?;
        let input_srcs = c.list(Cursor::string)?;
        c.comma()?;
        let system = c.string()?;
        c.comma()?;
        let builder = c.string()?;
        c.comma()?;
        let args = c.list(Cursor::string)?;
        c.comma()?;
        let env = c.list(|c| {
            c.expect(b"(", "(")?;
            let k = c.string()?;
            c.comma()?;
            let v = c.string()?;
            c.expect(b")", ")")?;
            Ok((k, v))
        })?;
        c.expect(b")", ")")?;
        if c.pos != bytes.len() {
            return Err(c.error(ErrorKind::TrailingBytes));
        }
        Ok(Derivation {
            outputs,
            input_drvs,
            input_srcs,
            system,
            builder,
            args,
            env,
        })
    }

    /// The derivation's name (Cuirass's "nix-name"): the `name` environment
    /// variable when there is one, else the name in its output paths.
    pub fn name(&self) -> Option<&str> {
        if let Some(name) = self.env_var("name") {
            return Some(name);
        }
        // Guix names output `out` NAME and any other output NAME-OUTPUT.
        if let Some(out) = self.output_path("out") {
            return store_path_name(out);
        }
        let first = self.outputs.first()?;
        store_path_name(&first.path)?
            .strip_suffix(first.name.as_str())?
            .strip_suffix('-')
    }

    /// The store path of the output called `name`.
    pub fn output_path(&self, name: &str) -> Option<&str> {
        self.outputs
            .iter()
            .find(|o| o.name == name)
            .map(|o| o.path.as_str())
    }

    /// The value of environment variable `key`.
    pub fn env_var(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The name part of a store path (`hello-2.10` for
/// `/gnu/store/<hash>-hello-2.10`), or `None` if `path` is not a store path
/// with a well-formed hash and name.
pub fn store_path_name(path: &str) -> Option<&str> {
    let base = path.strip_prefix(STORE_DIR)?.strip_prefix('/')?;
    let (hash, name) = (base.get(..HASH_LEN)?, base.get(HASH_LEN..)?);
    let name = name.strip_prefix('-')?;
    let hash_ok = hash
        .bytes()
        .all(|b| BYTE_CLASS[b as usize] & BASE32_DIGIT != 0);
    // A leading dot is refused so that no name can be `.` or `..`.
    let name_ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| BYTE_CLASS[b as usize] & NAME_CHAR != 0);
    (hash_ok && name_ok).then_some(name)
}

const BASE32_DIGIT: u8 = 1;
const NAME_CHAR: u8 = 2;

/// What each byte may be in a store path, looked up rather than searched
/// for: every trace line's derivation passes through here.
const BYTE_CLASS: [u8; 256] = {
    let mut class = [0; 256];
    let mut i = 0;
    while i < NIX_BASE32.len() {
        class[NIX_BASE32[i] as usize] |= BASE32_DIGIT;
        i += 1;
    }
    // The characters the daemon accepts in store path names.
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.' | b'_' | b'?' | b'=') {
            class[b] |= NAME_CHAR;
        }
        b += 1;
    }
    class
};

/// The digits of Nix's base-32 encoding: no `e`, `o`, `u` or `t`.
const NIX_BASE32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn error(&self, kind: ErrorKind) -> Error {
        Error {
            offset: self.pos,
            kind,
        }
    }

    /// Consumes `lit`, or fails with `UnexpectedEnd` when the input stops
    /// inside a possible match (so truncation is reported as such).
    fn expect(&mut self, lit: &[u8], what: &'static str) -> Result<(), Error> {
        let rest = &self.bytes[self.pos..];
        if rest.starts_with(lit) {
            self.pos += lit.len();
            Ok(())
        } else if lit.starts_with(rest) {
            Err(Error {
                offset: self.bytes.len(),
                kind: ErrorKind::UnexpectedEnd,
            })
        } else {
            Err(self.error(ErrorKind::Expected(what)))
        }
    }

    fn comma(&mut self) -> Result<(), Error> {
        self.expect(b",", ",")
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Parses `[item,item,...]`.
    fn list<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, Error>,
    ) -> Result<Vec<T>, Error> {
        self.expect(b"[", "[")?;
        let mut out = Vec::new();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(out);
        }
        loop {
            out.push(item(self)?);
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(_) => return Err(self.error(ErrorKind::Expected("`,` or `]`"))),
                None => return Err(self.error(ErrorKind::UnexpectedEnd)),
            }
        }
    }

    /// Parses a quoted string. Unknown escapes stand for the escaped byte
    /// itself, as in the daemon's own parser.
    fn string(&mut self) -> Result<String, Error> {
        self.expect(b"\"", "\"")?;
        let start = self.pos;
        let rest = &self.bytes[start..];
        let Some(end) = rest.iter().position(|&b| b == b'"' || b == b'\\') else {
            return Err(Error {
                offset: self.bytes.len(),
                kind: ErrorKind::UnexpectedEnd,
            });
        };
        if rest[end] == b'"' {
            // The common case: no escapes, one copy.
            self.pos = start + end + 1;
            return Ok(text_of(rest[..end].to_vec()));
        }
        let mut buf = rest[..end].to_vec();
        self.pos = start + end;
        loop {
            match self.peek() {
                None => return Err(self.error(ErrorKind::UnexpectedEnd)),
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    let Some(&e) = self.bytes.get(self.pos + 1) else {
                        return Err(Error {
                            offset: self.bytes.len(),
                            kind: ErrorKind::UnexpectedEnd,
                        });
                    };
                    buf.push(match e {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        other => other,
                    });
                    self.pos += 2;
                }
                Some(b) => {
                    buf.push(b);
                    self.pos += 1;
                }
            }
        }
        let _ = start;
        Ok(text_of(buf))
    }
}

/// A `.drv` string as text: UTF-8 when it is, else Latin-1, byte for
/// character.  Guix writes a non-ASCII character of a builder's script or
/// environment as its Latin-1 byte (`\351` for `é`), and the daemon
/// builds such derivations; store paths, the parts cuirass reads, are
/// ASCII either way.
fn text_of(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => e.into_bytes().iter().map(|&b| b as char).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE_A: &[u8] =
        include_bytes!("../fixtures/drv/axsa2j6r5dw6snj74b5ii0xnj73chc6a-fixture-a.drv");
    const FIXTURE_B: &[u8] =
        include_bytes!("../fixtures/drv/my13jx1ck7gc9k6dzp6lfmvz7fl4vpsj-fixture-b.drv");
    const MULTI: &[u8] =
        include_bytes!("../fixtures/drv/r43gl698hlk8h32820f701ck7kijp1ai-fixture-multi.drv");
    const FIXED: &[u8] =
        include_bytes!("../fixtures/drv/ndhdpsg3p89z7b3b69fwi5qhr6bjvjiq-fixture-fixed.drv");
    const HELLO: &[u8] =
        include_bytes!("../fixtures/drv/mfg2kx200kw1wdk3kmxlp32x6ay7fjmb-hello-2.10.drv");
    const HELLO_TARBALL: &[u8] =
        include_bytes!("../fixtures/drv/zbfwhx7zbhk5cvjm2h7lz99hkxl0cf0m-hello-2.10.tar.gz.drv");
    const GLIBC: &[u8] =
        include_bytes!("../fixtures/drv/0j6gi10v9hz2s2413nhwbzihrydafgvj-glibc-2.31.drv");

    const ALL: &[&[u8]] = &[
        FIXTURE_A,
        FIXTURE_B,
        MULTI,
        FIXED,
        HELLO,
        HELLO_TARBALL,
        GLIBC,
    ];

    /// Parses `input` and compares the outcome's debug form with `expect`,
    /// so a new case is one line.
    fn check(input: &str, expect: &str) {
        let got = match Derivation::parse(input.as_bytes()) {
            Ok(d) => format!("{d:?}"),
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(got, expect, "input: {input:?}");
    }

    fn parse(bytes: &[u8]) -> Derivation {
        Derivation::parse(bytes).unwrap_or_else(|e| panic!("fixture: {e}"))
    }

    #[test]
    fn simple_fixture() {
        let d = parse(FIXTURE_A);
        let out = "/gnu/store/lxayr5h7nvvm5g8rzyg9d27wglzidmva-fixture-a";
        assert_eq!(
            d.outputs,
            vec![Output {
                name: "out".into(),
                path: out.into(),
                hash_algo: String::new(),
                hash: String::new(),
            }]
        );
        assert!(d.input_drvs.is_empty() && d.input_srcs.is_empty());
        assert_eq!(d.system, "x86_64-linux");
        assert_eq!(d.builder, "/bin/sh");
        assert_eq!(d.args, ["-c", "echo \"a\" > $out"]);
        assert_eq!(d.env, [("out".to_owned(), out.to_owned())]);
        assert_eq!(d.output_path("out"), Some(out));
        assert_eq!(d.output_path("lib"), None);
        assert_eq!(d.name(), Some("fixture-a"));
    }

    #[test]
    fn escapes_and_inputs() {
        let d = parse(FIXTURE_B);
        assert_eq!(
            d.input_drvs,
            [(
                "/gnu/store/axsa2j6r5dw6snj74b5ii0xnj73chc6a-fixture-a.drv".to_owned(),
                vec!["out".to_owned()]
            )]
        );
        assert_eq!(
            d.env_var("weird"),
            Some("tab\there\nnewline \\ \"q\" cr\r end")
        );
        assert_eq!(d.name(), Some("fixture-b"));
    }

    #[test]
    fn multiple_outputs() {
        let d = parse(MULTI);
        let names: Vec<_> = d.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["lib", "out"]);
        assert_eq!(
            d.output_path("lib"),
            Some("/gnu/store/2d3masgdj8skfz4qb1xr640f4fbrjsqn-fixture-multi-lib")
        );
        assert_eq!(d.name(), Some("fixture-multi"));
        assert_eq!(d.input_drvs.len(), 2);

        let g = parse(GLIBC);
        let names: Vec<_> = g.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["debug", "out", "static"]);
        assert_eq!(g.name(), Some("glibc-2.31"));
    }

    #[test]
    fn fixed_output_and_sources() {
        let d = parse(FIXED);
        assert_eq!(d.outputs[0].hash_algo, "sha256");
        assert_eq!(
            d.outputs[0].hash,
            "3031323334353637383961626364656630313233343536373839616263646566"
        );
        assert_eq!(
            d.input_srcs,
            ["/gnu/store/wj98n19mb7qp7389x74fc31c13bmr7vm-fixture-src.sh"]
        );
        assert_eq!(d.input_drvs[1].1, ["lib"]);

        let t = parse(HELLO_TARBALL);
        assert_eq!(t.builder, "builtin:download");
        assert!(t.args.is_empty());
        assert_eq!(
            t.env_var("url"),
            Some("\"mirror://gnu/hello/hello-2.10.tar.gz\"")
        );
        assert_eq!(t.name(), Some("hello-2.10.tar.gz"));
    }

    #[test]
    fn real_package() {
        let d = parse(HELLO);
        assert_eq!(d.name(), Some("hello-2.10"));
        assert_eq!(d.input_drvs.len(), 23);
        assert_eq!(d.input_drvs[0].1, ["out", "static"]);
        assert_eq!(d.args[0], "--no-auto-compile");
        assert!(d.builder.ends_with("/bin/guile"));
    }

    #[test]
    fn name_prefers_env() {
        let d = Derivation::parse(
            br#"Derive([("out","/gnu/store/lxayr5h7nvvm5g8rzyg9d27wglzidmva-x","","")],[],[],"s","b",[],[("name","from-env")])"#,
        )
        .unwrap();
        assert_eq!(d.name(), Some("from-env"));
    }

    #[test]
    fn every_truncation_is_an_error() {
        for &bytes in ALL {
            for len in 0..bytes.len() {
                let err = Derivation::parse(&bytes[..len]).unwrap_err();
                assert_eq!(err.kind, ErrorKind::UnexpectedEnd, "len {len}");
                assert_eq!(err.offset, len);
            }
        }
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        for &bytes in ALL {
            let mut v = bytes.to_vec();
            for i in 0..v.len() {
                for b in [b'"', b'\\', b',', b']', b')', 0xff, b'x'] {
                    let old = v[i];
                    v[i] = b;
                    let _ = Derivation::parse(&v);
                    v[i] = old;
                }
            }
        }
    }

    #[test]
    fn malformed() {
        check("", "error: byte 0: unexpected end of derivation");
        check("Derive", "error: byte 6: unexpected end of derivation");
        check("garbage", "error: byte 0: expected `Derive(`");
        check("Derive([]", "error: byte 9: unexpected end of derivation");
        check(
            "Derive([],[],[],\"s\",\"b\",[],[]) ",
            "error: byte 30: trailing bytes after derivation",
        );
        check(
            "Derive([],[],[],\"s\",\"b\",[],[]",
            "error: byte 29: unexpected end of derivation",
        );
        check(
            "Derive([],[],[],\"s\",\"b\",[],[]]",
            "error: byte 29: expected `)`",
        );
        check("Derive([(\"out\"]", "error: byte 14: expected `,`");
        check("Derive([],[],[],s", "error: byte 16: expected `\"`");
        check(
            "Derive([],[],[\"a\" \"b\"]",
            "error: byte 17: expected ``,` or `]``",
        );
        check(
            "Derive([],[],[],\"\u{0}\\",
            "error: byte 19: unexpected end of derivation",
        );
        // Latin-1 bytes, as Guix writes `é` in a builder's script, are read
        // as Latin-1: the derivation is valid.
        let latin1 = Derivation::parse(b"Derive([],[],[],\"a\xe9\",\"b\",[],[])").unwrap();
        assert_eq!(latin1.system, "a\u{e9}");
        let escaped = Derivation::parse(b"Derive([],[],[],\"\\n\xff\",\"b\",[],[])").unwrap();
        assert_eq!(escaped.system, "\n\u{ff}");
    }

    #[test]
    fn minimal_and_escapes() {
        check(
            r#"Derive([],[],[],"s","b",["\q\\\"\n\r\t"],[])"#,
            r#"Derivation { outputs: [], input_drvs: [], input_srcs: [], system: "s", builder: "b", args: ["q\\\"\n\r\t"], env: [] }"#,
        );
    }

    #[test]
    fn store_path_names() {
        let h = "lxayr5h7nvvm5g8rzyg9d27wglzidmva";
        assert_eq!(
            store_path_name(&format!("/gnu/store/{h}-a-1.0")),
            Some("a-1.0")
        );
        assert_eq!(store_path_name(&format!("/gnu/store/{h}-")), None);
        assert_eq!(store_path_name(&format!("/gnu/store/{h}-.x")), None);
        assert_eq!(store_path_name(&format!("/gnu/store/{h}-a/b")), None);
        assert_eq!(store_path_name(&format!("/gnu/store/{h}a")), None);
        assert_eq!(
            store_path_name("/gnu/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-a"),
            None
        );
        assert_eq!(store_path_name(&format!("/nix/store/{h}-a")), None);
        assert_eq!(store_path_name("/gnu/store/é"), None);
        assert_eq!(
            store_path_name(&format!("/gnu/store/{h}-Ab9+-._?=")),
            Some("Ab9+-._?=")
        );
        for bad in [" ", "~", "@", ":", "\\", "\0", "é"] {
            assert_eq!(
                store_path_name(&format!("/gnu/store/{h}-a{bad}")),
                None,
                "{bad:?}"
            );
        }
        let upper = h.to_uppercase();
        assert_eq!(store_path_name(&format!("/gnu/store/{upper}-a")), None);
    }
}
