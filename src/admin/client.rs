//! `cuirass admin COMMAND ARG…`: the operators' command-line client.  It
//! runs in its own short-lived process, so it may block: one HTTP/1.0
//! request to the server, the answer printed.  Arguments become a
//! [`Call`] without I/O ([`parse`]), tested on their own.

use crate::cli::Env;
use std::io::{Read, Write};
use std::path::Path;

/// The first argument that selects the client.
pub const SUBCOMMAND: &str = "admin";

/// Each command: its name, its argument, the action's path (`{}` is the
/// argument), and what it does, for `--help` and the man page.
pub const COMMANDS: &[(&str, &str, &str, &str)] = &[
    (
        "restart-build",
        "ID",
        "/admin/build/{}/restart",
        "restart a build and those that failed because of it",
    ),
    (
        "cancel-build",
        "ID",
        "/admin/build/{}/cancel",
        "cancel a scheduled build",
    ),
    (
        "restart-evaluation",
        "ID",
        "/admin/evaluation/{}/restart",
        "restart an evaluation's failed builds",
    ),
    (
        "cancel-evaluation",
        "ID",
        "/admin/evaluation/{}/cancel",
        "cancel an evaluation's scheduled builds",
    ),
    (
        "retry-evaluation",
        "ID",
        "/admin/evaluation/{}/retry",
        "evaluate an evaluation's commit again",
    ),
    (
        "trigger",
        "SPEC",
        "/admin/specification/{}/trigger",
        "evaluate a specification now",
    ),
    (
        "deactivate",
        "SPEC",
        "/admin/specification/{}/deactivate",
        "stop polling a specification (its history stays)",
    ),
    (
        "reactivate",
        "SPEC",
        "/admin/specification/{}/reactivate",
        "poll a deactivated specification again",
    ),
    (
        "delete-spec",
        "SPEC",
        "/admin/specification/{}/delete",
        "delete a specification and its history (needs --confirm=SPEC)",
    ),
    (
        "add-spec",
        "FILE",
        "/admin/specification/add",
        "add the specification in FILE (JSON; - for standard input)",
    ),
    (
        "edit-spec",
        "SPEC FILE",
        "/admin/specification/{}/edit",
        "change the fields of SPEC that FILE (JSON) gives",
    ),
];

/// The default server, as `--port` and `--listen` default.
pub const DEFAULT_URL: &str = "http://localhost:8080";

/// One request to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `host:port`.
    pub authority: String,
    /// The path, after the URL's own path prefix.
    pub path: String,
    pub token: String,
    /// JSON, or empty.
    pub body: String,
}

/// The client's part of `--help`.
pub fn usage() -> String {
    let mut out = String::from(
        "\nUsage: cuirass admin COMMAND ARG [--url=URL] [--token-file=FILE] [--confirm=SPEC]\n\
         Ask a running cuirass to act (the token: --token-file, else $CUIRASS_TOKEN;\n\
         the server: --url, else $CUIRASS_URL, else http://localhost:8080):\n",
    );
    for (name, arg, _, what) in COMMANDS {
        out.push_str(&format!("    {:<30} {what}\n", format!("{name} {arg}")));
    }
    out
}

/// `args` (after `admin`) into a call; `read` reads a file (`-`: standard
/// input).  Errors name the argument or option at fault.
pub fn parse(
    args: &[String],
    env: &dyn Env,
    read: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Call, String> {
    let mut url = env.var("CUIRASS_URL");
    let mut token = env.var("CUIRASS_TOKEN");
    let mut confirm = None;
    let mut words = Vec::new();
    for arg in args {
        if let Some(v) = arg.strip_prefix("--url=") {
            url = Some(v.to_string());
        } else if let Some(v) = arg.strip_prefix("--token-file=") {
            token = Some(first_token(&read(v)?).ok_or(format!("--token-file: no token in {v}"))?);
        } else if let Some(v) = arg.strip_prefix("--confirm=") {
            confirm = Some(v.to_string());
        } else if arg.starts_with("--") {
            return Err(format!(
                "admin: unknown option {arg} (options take --name=VALUE)"
            ));
        } else {
            words.push(arg.as_str());
        }
    }
    let Some((&command, args)) = words.split_first() else {
        return Err(format!("admin: a command is required{}", usage()));
    };
    let &(_, arg_names, path, _) = COMMANDS
        .iter()
        .find(|c| c.0 == command)
        .ok_or_else(|| format!("admin: unknown command {command:?}{}", usage()))?;
    let wanted = arg_names.split(' ').count();
    if args.len() != wanted {
        return Err(format!("admin {command}: {arg_names} is required"));
    }
    let token = token.ok_or("admin: no token (--token-file=FILE or $CUIRASS_TOKEN)")?;
    let (path, body) = match command {
        "add-spec" => (path.to_string(), read(args[0])?),
        "edit-spec" => (
            path.replace("{}", &crate::html::url(args[0])),
            read(args[1])?,
        ),
        "delete-spec" if confirm.as_deref() != Some(args[0]) => {
            return Err(format!(
                "admin delete-spec: deletes {:?} and all its history: say --confirm={}",
                args[0], args[0]
            ));
        }
        "delete-spec" => (
            path.replace("{}", &crate::html::url(args[0])),
            serde_json::json!({ "confirm": args[0] }).to_string(),
        ),
        _ => (
            path.replace("{}", &crate::html::url(args[0])),
            String::new(),
        ),
    };
    let url = url.unwrap_or_else(|| DEFAULT_URL.into());
    let rest = url
        .strip_prefix("http://")
        .ok_or(format!("--url: {url:?}: only http:// URLs are supported"))?;
    let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_end_matches('/');
    Ok(Call {
        authority: authority.to_string(),
        path: match prefix.is_empty() {
            true => path,
            false => format!("/{prefix}{path}"),
        },
        token,
        body,
    })
}

/// The first token of a token file (a `LABEL:` before it dropped).
fn first_token(text: &str) -> Option<String> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))?;
    Some(line.rsplit(':').next().unwrap_or(line).trim().to_string())
}

/// Sends `call`; the status and body of the answer.
pub fn send(call: &Call) -> Result<(u16, String), String> {
    let mut s = std::net::TcpStream::connect(&call.authority)
        .map_err(|e| format!("cannot connect to {}: {e}", call.authority))?;
    let request = format!(
        "POST {} HTTP/1.0\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        call.path,
        call.authority,
        call.token,
        call.body.len(),
        call.body
    );
    s.write_all(request.as_bytes())
        .map_err(|e| format!("{}: {e}", call.authority))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .map_err(|e| format!("{}: {e}", call.authority))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{}: not an HTTP answer", call.authority))?;
    Ok((status, body.to_string()))
}

/// The client's main: 0 when the server did it, 1 when it refused, 2 for
/// bad arguments.
pub fn main(args: &[String], env: &dyn Env) -> i32 {
    let read = |path: &str| -> Result<String, String> {
        let mut text = String::new();
        let result = match path {
            "-" => std::io::stdin().read_to_string(&mut text).map(drop),
            _ => std::fs::File::open(Path::new(path))
                .and_then(|mut f| f.read_to_string(&mut text).map(drop)),
        };
        result.map(|()| text).map_err(|e| format!("{path}: {e}"))
    };
    let call = match parse(args, env, &read) {
        Ok(call) => call,
        Err(e) => {
            eprintln!("cuirass {e}");
            return 2;
        }
    };
    match send(&call) {
        Ok((status, body)) if (200..300).contains(&status) => {
            println!("{body}");
            0
        }
        Ok((status, body)) => {
            eprintln!("cuirass admin: HTTP {status}: {body}");
            1
        }
        Err(e) => {
            eprintln!("cuirass admin: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct FakeEnv(HashMap<&'static str, &'static str>);

    impl Env for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
        fn is_root(&self) -> bool {
            false
        }
    }

    fn call(args: &[&str], env: &[(&'static str, &'static str)]) -> Result<Call, String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let read = |path: &str| match path {
            "tokens" => Ok("# ops\nops:file-token-0123456789\n".to_string()),
            "spec.json" => Ok("{\"name\": \"x\"}".to_string()),
            _ => Err(format!("{path}: no such file")),
        };
        parse(&args, &FakeEnv(env.iter().copied().collect()), &read)
    }

    #[test]
    fn commands_become_requests() {
        let env = [
            ("CUIRASS_TOKEN", "env-token"),
            ("CUIRASS_URL", "http://ci.example:9000/cuirass/"),
        ];
        let c = call(&["restart-build", "42"], &env).unwrap();
        assert_eq!(
            c,
            Call {
                authority: "ci.example:9000".into(),
                path: "/cuirass/admin/build/42/restart".into(),
                token: "env-token".into(),
                body: String::new(),
            }
        );
        let c = call(
            &[
                "cancel-evaluation",
                "7",
                "--url=http://h:1",
                "--token-file=tokens",
            ],
            &env,
        )
        .unwrap();
        assert_eq!(
            (c.authority.as_str(), c.path.as_str()),
            ("h:1", "/admin/evaluation/7/cancel")
        );
        assert_eq!(c.token, "file-token-0123456789");
        let c = call(&["add-spec", "spec.json"], &env).unwrap();
        assert_eq!(
            (c.path.as_str(), c.body.as_str()),
            ("/cuirass/admin/specification/add", "{\"name\": \"x\"}")
        );
        let c = call(&["trigger", "a b"], &env).unwrap();
        assert_eq!(c.path, "/cuirass/admin/specification/a%20b/trigger");
        let c = call(&["delete-spec", "old", "--confirm=old"], &env).unwrap();
        assert_eq!(c.body, "{\"confirm\":\"old\"}");
        assert_eq!(
            call(&["trigger", "x"], &[("CUIRASS_TOKEN", "t")])
                .unwrap()
                .authority,
            "localhost:8080"
        );
    }

    #[test]
    fn mistakes_are_named() {
        let env = [("CUIRASS_TOKEN", "t")];
        let err =
            |args: &[&str], env: &[(&'static str, &'static str)]| call(args, env).unwrap_err();
        assert!(err(&[], &env).contains("a command is required"));
        assert!(err(&["reboot"], &env).contains("unknown command \"reboot\""));
        assert!(err(&["restart-build"], &env).contains("ID is required"));
        assert!(err(&["restart-build", "1"], &[]).contains("no token"));
        assert!(err(&["delete-spec", "x"], &env).contains("--confirm=x"));
        assert!(err(&["delete-spec", "x", "--confirm=y"], &env).contains("--confirm=x"));
        assert!(err(&["add-spec", "nope"], &env).contains("nope: no such file"));
        assert!(err(&["trigger", "x", "--url=https://h"], &env).contains("only http://"));
        assert!(err(&["trigger", "x", "--url", "h"], &env).contains("unknown option --url"));
    }
}
