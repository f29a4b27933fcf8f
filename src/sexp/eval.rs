//! The data forms of Scheme evaluated without Guile: what specification
//! files are made of when they are plain data.

use super::{Datum, Kind, Pos, cons_list};
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum EvalError {
    /// The expression is real code (a variable, a call to something other
    /// than the list builders, a special form); only Guile can evaluate it.
    NeedsScheme { pos: Pos, what: String },
    /// A data form used wrongly, e.g. `(quote)` or `(cons 1)`: Guile would
    /// fail on it too.
    Bad { pos: Pos, message: String },
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalError::NeedsScheme { pos, what } => {
                write!(f, "{pos}: needs Guile to evaluate {what}")
            }
            EvalError::Bad { pos, message } => write!(f, "{pos}: {message}"),
        }
    }
}

impl std::error::Error for EvalError {}

fn bad<T>(pos: Pos, message: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError::Bad {
        pos,
        message: message.into(),
    })
}

/// Evaluates the data-building subset of Scheme: literals, `quote`,
/// `quasiquote`, `list`, `cons`, `cons*` and `append`. These names cannot
/// have been rebound, because any form that could rebind them is itself
/// reported as [`EvalError::NeedsScheme`].
pub fn eval_data(d: &Datum) -> Result<Datum, EvalError> {
    let items = match &d.kind {
        Kind::List(items) => items,
        Kind::Symbol(s) if s == "%default-channels" => {
            return Ok(Datum::new(
                d.pos,
                Kind::List(vec![default_guix_channel(d.pos)]),
            ));
        }
        Kind::Symbol(s) if s == "%default-guix-channel" => return Ok(default_guix_channel(d.pos)),
        Kind::Symbol(s) => {
            return Err(EvalError::NeedsScheme {
                pos: d.pos,
                what: format!("the variable `{s}`"),
            });
        }
        Kind::Dotted(..) => return bad(d.pos, "an improper list cannot be evaluated"),
        _ => return Ok(d.clone()),
    };
    let Some((head, args)) = items.split_first() else {
        return bad(d.pos, "the empty combination () cannot be evaluated");
    };
    let name = match &head.kind {
        Kind::Symbol(s) => s.as_str(),
        Kind::List(_) => {
            return Err(EvalError::NeedsScheme {
                pos: d.pos,
                what: "a computed procedure call".into(),
            });
        }
        _ => return bad(d.pos, format!("wrong type to apply: {head}")),
    };
    let arity = |n: usize| -> Result<(), EvalError> {
        if args.len() == n {
            Ok(())
        } else {
            bad(
                d.pos,
                format!("{name} takes {n} argument(s), not {}", args.len()),
            )
        }
    };
    let evaluated = || args.iter().map(eval_data).collect::<Result<Vec<_>, _>>();
    match name {
        "quote" => {
            arity(1)?;
            Ok(args[0].clone())
        }
        "quasiquote" => {
            arity(1)?;
            quasi(&args[0], 1)
        }
        "list" => Ok(Datum::new(d.pos, Kind::List(evaluated()?))),
        "cons" => {
            arity(2)?;
            let mut v = evaluated()?;
            let tail = v.pop().expect("arity checked");
            Ok(with_pos(cons_list(v, tail), d.pos))
        }
        "cons*" => {
            if args.is_empty() {
                return bad(d.pos, "cons* needs at least one argument");
            }
            let mut v = evaluated()?;
            let tail = v.pop().expect("not empty");
            Ok(with_pos(cons_list(v, tail), d.pos))
        }
        "append" => {
            let mut v = evaluated()?;
            let Some(tail) = v.pop() else {
                return Ok(Datum::new(d.pos, Kind::List(vec![])));
            };
            let mut head = Vec::new();
            for l in v {
                match l.kind {
                    Kind::List(items) => head.extend(items),
                    _ => return bad(l.pos, format!("append: not a proper list: {l}")),
                }
            }
            Ok(with_pos(cons_list(head, tail), d.pos))
        }
        "specification" | "channel" | "build-output" | "email" | "mastodon" => {
            record(d.pos, name, args)
        }
        "make-channel-introduction" => {
            arity(2)?;
            let v = evaluated()?;
            let f = |n: &str, v: &Datum| field(v.pos, n, v.clone());
            Ok(Datum::new(
                d.pos,
                Kind::List(vec![
                    symbol(d.pos, "<channel-introduction>"),
                    f("commit", &v[0]),
                    f("signer", &v[1]),
                ]),
            ))
        }
        // Guix turns the fingerprint into a bytevector; its text is all
        // `guix git authenticate` needs.
        "openpgp-fingerprint" => {
            arity(1)?;
            let v = eval_data(&args[0])?;
            match v.as_str() {
                Some(_) => Ok(v),
                None => bad(
                    v.pos,
                    format!("openpgp-fingerprint takes a string, not {v}"),
                ),
            }
        }
        "unquote" | "unquote-splicing" => bad(d.pos, format!("{name} outside of quasiquote")),
        _ => Err(EvalError::NeedsScheme {
            pos: d.pos,
            what: format!("a call to `{name}`"),
        }),
    }
}

/// The head of the datum a record form evaluates to: `(channel (name
/// 'x))` becomes `(<channel> (name . x))`, fields in source order.  Guile
/// writes the same shape (see src/read-spec.scm), so both readers feed
/// one parser.
pub fn record_tag(record: &str) -> String {
    format!("<{record}>")
}

fn symbol(pos: Pos, s: &str) -> Datum {
    Datum::new(pos, Kind::Symbol(s.into()))
}

fn field(pos: Pos, name: &str, value: Datum) -> Datum {
    cons_list(vec![symbol(pos, name)], value).with(pos)
}

/// A record constructor of Guix or Cuirass: `(NAME (FIELD EXPR) ...)`.
/// Field names are checked by the parser of the record, which knows them.
fn record(pos: Pos, name: &str, args: &[Datum]) -> Result<Datum, EvalError> {
    let mut out = vec![symbol(pos, &record_tag(name))];
    for arg in args {
        match arg.as_list() {
            Some([f, value]) if f.as_symbol().is_some() => out.push(field(
                arg.pos,
                f.as_symbol().unwrap_or_default(),
                eval_data(value)?,
            )),
            _ => {
                return bad(
                    arg.pos,
                    format!("{name}: a field is (NAME VALUE), not {arg}"),
                );
            }
        }
    }
    Ok(Datum::new(pos, Kind::List(out)))
}

/// Guix's `%default-guix-channel`, with the introduction Guix's own
/// `(guix channels)` gives it.
fn default_guix_channel(pos: Pos) -> Datum {
    let s = |v: &str| Datum::new(pos, Kind::Str(v.into()));
    let intro = Datum::new(
        pos,
        Kind::List(vec![
            symbol(pos, "<channel-introduction>"),
            field(pos, "commit", s("9edb3f66fd807b096b48283debdcddccfea34bad")),
            field(
                pos,
                "signer",
                s("BBB0 2DDF 2CEA F6A8 0D1D  E643 A2A0 6DF2 A33A 54FA"),
            ),
        ]),
    );
    Datum::new(
        pos,
        Kind::List(vec![
            symbol(pos, "<channel>"),
            field(pos, "name", symbol(pos, "guix")),
            field(pos, "url", s("https://git.guix.gnu.org/guix.git")),
            field(pos, "branch", s("master")),
            field(pos, "introduction", intro),
        ]),
    )
}

impl Datum {
    fn with(mut self, pos: Pos) -> Datum {
        self.pos = pos;
        self
    }
}

fn with_pos(mut d: Datum, pos: Pos) -> Datum {
    d.pos = pos;
    d
}

/// `(name x)` when `d` is exactly that form.
fn form<'a>(d: &'a Datum, name: &str) -> Option<Result<&'a Datum, EvalError>> {
    let items = d.as_list()?;
    if items.first()?.as_symbol()? != name {
        return None;
    }
    Some(match items {
        [_, x] => Ok(x),
        _ => bad(d.pos, format!("{name} takes exactly one operand")),
    })
}

/// Expands a quasiquoted template at nesting `level` (1 = outermost).
fn quasi(d: &Datum, level: usize) -> Result<Datum, EvalError> {
    if let Some(x) = form(d, "unquote") {
        let x = x?;
        return if level == 1 {
            eval_data(x)
        } else {
            rewrap(d, "unquote", quasi(x, level - 1)?)
        };
    }
    if let Some(x) = form(d, "quasiquote") {
        return rewrap(d, "quasiquote", quasi(x?, level + 1)?);
    }
    match &d.kind {
        Kind::List(items) => quasi_seq(d.pos, items, None, level),
        Kind::Dotted(items, tail) => quasi_seq(d.pos, items, Some(tail), level),
        Kind::Vector(items) => match quasi_seq(d.pos, items, None, level)?.kind {
            Kind::List(v) => Ok(Datum::new(d.pos, Kind::Vector(v))),
            _ => bad(d.pos, "unquote-splicing of a non-list inside a vector"),
        },
        _ => Ok(d.clone()),
    }
}

fn rewrap(d: &Datum, name: &str, inner: Datum) -> Result<Datum, EvalError> {
    let head = Datum::new(d.pos, Kind::Symbol(name.into()));
    Ok(Datum::new(d.pos, Kind::List(vec![head, inner])))
}

fn quasi_seq(
    pos: Pos,
    items: &[Datum],
    tail: Option<&Datum>,
    level: usize,
) -> Result<Datum, EvalError> {
    let mut out = Vec::new();
    let mut rest = None;
    for (i, item) in items.iter().enumerate() {
        // `(a . ,b)` reads as `(a unquote b)`: the unquote is in tail position.
        if i > 0 && item.as_symbol() == Some("unquote") && items.len() - i == 2 && tail.is_none() {
            let tail_form = Datum::new(item.pos, Kind::List(items[i..].to_vec()));
            rest = Some(quasi(&tail_form, level)?);
            break;
        }
        match form(item, "unquote-splicing") {
            Some(x) if level == 1 => {
                let v = eval_data(x?)?;
                match v.kind {
                    Kind::List(vs) => out.extend(vs),
                    _ if i + 1 == items.len() && tail.is_none() => rest = Some(v),
                    _ => return bad(v.pos, format!("unquote-splicing of a non-list: {v}")),
                }
            }
            Some(x) => out.push(rewrap(item, "unquote-splicing", quasi(x?, level - 1)?)?),
            None => out.push(quasi(item, level)?),
        }
    }
    let rest = match (rest, tail) {
        (Some(r), _) => r,
        (None, Some(t)) => quasi(t, level)?,
        (None, None) => Datum::new(pos, Kind::List(vec![])),
    };
    Ok(with_pos(cons_list(out, rest), pos))
}
