use super::*;

/// Reads `input` (one datum) and compares its written form.
fn check(input: &str, expect: &str) {
    let ds = parse_all(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
    assert_eq!(ds.len(), 1, "{input:?}");
    assert_eq!(ds[0].to_string(), expect, "{input:?}");
    let again = parse_all(expect).unwrap();
    assert_eq!(again[0].to_string(), expect, "written form must read back");
}

/// Evaluates `input` with eval_data and compares the written result.
fn check_eval(input: &str, expect: &str) {
    let d = &parse_all(input).unwrap()[0];
    let v = eval_data(d).unwrap_or_else(|e| panic!("{input:?}: {e}"));
    assert_eq!(v.to_string(), expect, "{input:?}");
}

fn error(input: &str) -> (u32, u32, ErrorKind) {
    let e = parse_all(input).expect_err(input);
    (e.pos.line, e.pos.column, e.kind)
}

fn eval_error(input: &str) -> EvalError {
    eval_data(&parse_all(input).unwrap()[0]).expect_err(input)
}

#[test]
fn atoms() {
    check("hello", "hello");
    check("hydra-jobs", "hydra-jobs");
    check("->", "->");
    check("1+", "1+");
    check("-", "-");
    check("...", "...");
    check("a.b", "a.b");
    check("42", "42");
    check("-17", "-17");
    check("+5", "5");
    check("1.5", "1.5");
    check("-0.25", "-0.25");
    check("1e3", "1000.0");
    check(".5", "0.5");
    check("+inf.0", "+inf.0");
    check("-inf.0", "-inf.0");
    check("+nan.0", "+nan.0");
    check("inf", "inf");
    check("nan", "nan");
    check("#t", "#t");
    check("#true", "#t");
    check("#f", "#f");
    check("#false", "#f");
    check("#:name", "#:name");
    check("#:no-compile?", "#:no-compile?");
    check("#xff", "255");
    check("#b101", "5");
    check("1/2", "1/2");
}

#[test]
fn chars() {
    check(r"#\a", r"#\a");
    check(r"#\space", r"#\space");
    check(r"#\newline", r"#\newline");
    check(r"#\(", r"#\(");
    check(r"#\x", r"#\x");
    check(r"#\x41", r"#\A");
    check(r"#\240", r"#\xa0");
    check(r"#\nul", r"#\nul");
    check(r"#\null", r"#\nul");
    check(r"#\delete", r"#\delete");
    check(r"#\esc", r"#\esc");
    check(r"#\λ", r"#\λ");
    check(r"#\0", r"#\0");
    check("(#\\) 1)", "(#\\) 1)");
}

#[test]
fn strings() {
    check(r#""plain""#, r#""plain""#);
    check(r#""q\"b\\s""#, r#""q\"b\\s""#);
    check(r#""\n\t\r""#, r#""\n\t\r""#);
    check(r#""\a\0\v\f\b""#, r#""\x07\x00\x0b\x0c\x08""#);
    check(r#""\x41;""#, r#""A;""#);
    check(r#""\u03bb\U01F600""#, r#""λ😀""#);
    check("\"a\\\n  b\"", r#""a  b""#);
    check("\"two\nlines\"", r#""two\nlines""#);
    check(r#""é""#, r#""é""#);
}

#[test]
fn lists_and_quotes() {
    check("()", "()");
    check("[a b]", "(a b)");
    check("(a (b c) d)", "(a (b c) d)");
    check("(a . b)", "(a . b)");
    check("(a b . c)", "(a b . c)");
    check("(a . (b c))", "(a b c)");
    check("(a . (b . c))", "(a b . c)");
    check("(a . ())", "(a)");
    check("(#:name . \"x\")", "(#:name . \"x\")");
    check("#(1 \"a\" #(b))", "#(1 \"a\" #(b))");
    check("#()", "#()");
    check("'x", "(quote x)");
    check(
        "`(a ,b ,@c)",
        "(quasiquote (a (unquote b) (unquote-splicing c)))",
    );
    check("' x", "(quote x)");
    check("(a .b)", "(a .b)");
}

#[test]
fn symbols_that_need_braces_round_trip() {
    for name in [
        "1", "+1", "#a", "", "a b", "a(b", "1.5", ".", "'x", "a;b", "x}#y",
    ] {
        let d = Datum::new(Pos { line: 1, column: 1 }, Kind::Symbol(name.into()));
        let text = d.to_string();
        let back = parse_all(&text).unwrap();
        assert_eq!(back[0].as_symbol(), Some(name), "{text}");
    }
    check("#{a\\x28;b}#", "#{a\\x28;b}#");
    check("#{1}#", "#{1}#");
}

#[test]
fn comments() {
    check("; c\n(a ; inner\n b)", "(a b)");
    check("#| block #| nested |# |# x", "x");
    check("#!/usr/bin/guile\n!# x", "x");
    check("(a #;(ignored (deep)) b)", "(a b)");
    check("#; #;a b c", "c");
    check("(a #;b)", "(a)");
    assert_eq!(parse_all("; only a comment\n").unwrap(), vec![]);
    assert_eq!(parse_all("1 2 x").unwrap().len(), 3);
}

#[test]
fn positions() {
    let ds = parse_all("a\n  (b\n\tc)").unwrap();
    assert_eq!(ds[0].pos, Pos { line: 1, column: 1 });
    assert_eq!(ds[1].pos, Pos { line: 2, column: 3 });
    let items = ds[1].as_list().unwrap();
    assert_eq!(items[0].pos, Pos { line: 2, column: 4 });
    assert_eq!(items[1].pos, Pos { line: 3, column: 2 });
}

#[test]
fn errors_point_at_the_problem() {
    use ErrorKind::*;
    assert_eq!(error("(a b"), (1, 1, UnterminatedList));
    assert_eq!(error("x\n  (a (b)"), (2, 3, UnterminatedList));
    assert_eq!(error("a )"), (1, 3, UnbalancedClose));
    assert_eq!(error("(a ]"), (1, 4, MismatchedClose));
    assert_eq!(error("  \"abc"), (1, 3, UnterminatedString));
    assert_eq!(error(r#""a\qb""#), (1, 3, BadEscape));
    assert_eq!(error(r#""\x4""#), (1, 2, BadEscape));
    assert_eq!(error("#| never"), (1, 1, UnterminatedBlockComment));
    assert_eq!(error("#| #| |#"), (1, 1, UnterminatedBlockComment));
    assert_eq!(error("#{abc"), (1, 1, UnterminatedSymbol));
    assert_eq!(error("#<procedure>"), (1, 1, BadHash));
    assert_eq!(error("#vu8(1)"), (1, 1, BadHash));
    assert_eq!(error(r"#\bogus"), (1, 1, BadChar));
    assert_eq!(error("99999999999999999999"), (1, 1, BadNumber));
    assert_eq!(error("."), (1, 1, BadDot));
    assert_eq!(error("( . a)"), (1, 3, BadDot));
    assert_eq!(error("(a . b c)"), (1, 4, BadDot));
    assert_eq!(error("(a . )"), (1, 4, BadDot));
    assert_eq!(error("#(a . b)"), (1, 1, BadDot));
    assert_eq!(error("'"), (1, 1, MissingDatum));
    assert_eq!(error("(a ')"), (1, 4, MissingDatum));
    assert_eq!(error("#;"), (1, 1, MissingDatum));
    assert_eq!(error("#:"), (1, 1, MissingDatum));
}

#[test]
fn depth_is_limited() {
    let ok = format!("{}{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
    let d = &parse_all(&ok).unwrap()[0];
    assert_eq!(d.to_string(), ok);
    let inner = format!("{}{}", "(".repeat(MAX_DEPTH - 1), ")".repeat(MAX_DEPTH - 1));
    let quoted = eval_data(&parse_all(&format!("'{inner}")).unwrap()[0]).unwrap();
    assert_eq!(quoted.to_string(), inner);
    let qq = eval_data(&parse_all(&format!("`{inner}")).unwrap()[0]).unwrap();
    assert_eq!(qq.to_string(), inner);
    let deep = format!("{}{}", "(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
    assert_eq!(parse_all(&deep).unwrap_err().kind, ErrorKind::TooDeep);
    assert_eq!(
        parse_all(&"'".repeat(100_000)).unwrap_err().kind,
        ErrorKind::TooDeep
    );
    assert_eq!(
        parse_all(&"#(".repeat(100_000)).unwrap_err().kind,
        ErrorKind::TooDeep
    );
    assert_eq!(
        parse_all(&"#;".repeat(100_000)).unwrap_err().kind,
        ErrorKind::TooDeep
    );
}

#[test]
fn never_panics_on_truncated_or_garbled_input() {
    let samples = [
        "(list `((#:name . \"hello\") (#:url . \"https://x\") (#:arguments (subset . \"hi\"))))",
        "#(a #\\x41 #\\space #{a b}# #| c |# #;(d) 1.5e3 -7 #:k \"\\x41\\u03bb\\\n\")",
        "'(a . b) `(,@c . ,d) [x] #t #false #xff #!x!#",
    ];
    let garbage = [
        '(', ')', '"', '\\', '#', '|', ';', '.', '\'', ',', '@', '{', '}', 'x', '\n',
    ];
    let mut count = 0;
    for s in samples {
        let chars: Vec<char> = s.chars().collect();
        for cut in 0..=chars.len() {
            let prefix: String = chars[..cut].iter().collect();
            let _ = parse_all(&prefix);
            for (i, g) in garbage.iter().enumerate() {
                let mut t = chars.clone();
                let at = cut.min(t.len() - 1);
                t[at] = *g;
                t.insert((cut * 7 + i) % t.len(), garbage[(i + cut) % garbage.len()]);
                let text: String = t.iter().collect();
                if let Ok(ds) = parse_all(&text) {
                    // Whatever reads must write back to something that reads equal.
                    for d in ds {
                        let again = parse_all(&d.to_string()).unwrap();
                        assert_eq!(again[0].to_string(), d.to_string());
                        let _ = eval_data(&d);
                    }
                }
                count += 1;
            }
        }
    }
    assert!(count > 1000);
}

#[test]
fn eval_literals_and_quote() {
    check_eval("\"s\"", "\"s\"");
    check_eval("42", "42");
    check_eval("#:k", "#:k");
    check_eval("#(a b)", "#(a b)");
    check_eval(r"#\a", r"#\a");
    check_eval("'sym", "sym");
    check_eval("'(a . b)", "(a . b)");
    check_eval("''a", "(quote a)");
}

#[test]
fn eval_list_builders() {
    check_eval("(list 1 \"a\" 'b)", "(1 \"a\" b)");
    check_eval("(list)", "()");
    check_eval("(list (list 1) '(2))", "((1) (2))");
    check_eval("(cons 1 '(2 3))", "(1 2 3)");
    check_eval("(cons 1 2)", "(1 . 2)");
    check_eval("(cons 1 '(2 . 3))", "(1 2 . 3)");
    check_eval("(cons* 1 2 '(3))", "(1 2 3)");
    check_eval("(cons* 1 2 3)", "(1 2 . 3)");
    check_eval("(cons* 1)", "1");
    check_eval("(append '(1) (list 2) '())", "(1 2)");
    check_eval("(append '(1) 2)", "(1 . 2)");
    check_eval("(append)", "()");
}

#[test]
fn eval_quasiquote() {
    check_eval("`(a ,(list 1 2) ,\"s\")", "(a (1 2) \"s\")");
    check_eval("`(a ,@(list 1 2) b)", "(a 1 2 b)");
    check_eval("`(a ,@'())", "(a)");
    check_eval("`(a . ,(list 1))", "(a 1)");
    check_eval("`(a . ,'b)", "(a . b)");
    check_eval("`(a ,@'b)", "(a . b)");
    check_eval("`(x . y)", "(x . y)");
    check_eval("`#(1 ,@(list 2 3))", "#(1 2 3)");
    check_eval(
        "`(1 `(2 ,(3 ,(list 4))))",
        "(1 (quasiquote (2 (unquote (3 (4))))))",
    );
    check_eval("`,'x", "x");
    check_eval(
        "`((#:name . \"hello\") (#:arguments (subset . ,(cons \"a\" '()))))",
        "((#:name . \"hello\") (#:arguments (subset \"a\")))",
    );
}

#[test]
fn eval_needs_scheme() {
    for (input, what) in [
        ("x", "the variable `x`"),
        ("(string-append \"a\" \"b\")", "a call to `string-append`"),
        ("(let ((x 1)) x)", "a call to `let`"),
        ("`(a ,(getenv \"HOME\"))", "a call to `getenv`"),
        ("(list (current-filename))", "a call to `current-filename`"),
        ("((lambda () 1))", "a computed procedure call"),
        ("`(a ,@x)", "the variable `x`"),
    ] {
        match eval_error(input) {
            EvalError::NeedsScheme { what: w, .. } => assert_eq!(w, what, "{input}"),
            e => panic!("{input}: {e:?}"),
        }
    }
    let EvalError::NeedsScheme { pos, .. } = eval_error("(list 1\n  (f))") else {
        panic!()
    };
    assert_eq!(pos, Pos { line: 2, column: 3 });
}

#[test]
fn eval_bad_forms() {
    for input in [
        "(quote)",
        "(quote a b)",
        "(cons 1)",
        "(cons* )",
        "()",
        "(1 2)",
        "(list . x)",
        "(append 1 '(2))",
        "`(a ,@'b c)",
        "`(,@1 . x)",
        "`(unquote)",
        "`#(,@'a)",
        ",x",
    ] {
        assert!(
            matches!(eval_error(input), EvalError::Bad { .. }),
            "{input}"
        );
    }
}

#[test]
fn accessors_and_error_display() {
    let d = &parse_all("(#:arguments (subset . \"hello\"))").unwrap()[0];
    let (car, cdr) = d.as_pair().unwrap();
    assert_eq!(car.as_keyword(), Some("arguments"));
    assert_eq!(cdr.to_string(), "((subset . \"hello\"))");
    let d = &parse_all("(#:name . \"x\")").unwrap()[0];
    assert_eq!(d.as_pair().unwrap().1.as_str(), Some("x"));
    let d = &parse_all("(a b . c)").unwrap()[0];
    assert_eq!(d.as_pair().unwrap().1.to_string(), "(b . c)");
    assert_eq!(parse_all("#t").unwrap()[0].as_bool(), Some(true));
    assert_eq!(parse_all("7").unwrap()[0].as_int(), Some(7));
    assert!(parse_all("7").unwrap()[0].as_pair().is_none());
    let e = parse_all("\n  (a").unwrap_err();
    assert_eq!(
        e.to_string(),
        "line 2, column 3: list opened here is never closed"
    );
}
