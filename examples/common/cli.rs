//! What every example binary does the same way: parse its flags strictly
//! (clap derive), and end with one readable line and a conventional exit
//! code.
//!
//! - `--help` / `-h`: usage on stdout, exit 0 (clap).
//! - A usage error (unknown flag, missing or malformed value, a value that
//!   the flags' own rules reject): `error: ...`, the usage line, exit 2.
//! - A runtime error (Redis unreachable, a refused operation, ...):
//!   `error: <Display>` on one line of stderr, exit 1 — no usage text, since
//!   the flags were fine.

use std::error::Error;
use std::fmt;

use clap::Parser;

/// A flag value the binary rejected after clap accepted its syntax (say,
/// a lease shorter than the heartbeat allows). [`main`] reports it like a
/// clap error: with the usage line and exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for UsageError {}

/// `Err(UsageError)` boxed, for `return usage(...)` in a `run` function.
pub fn usage<T>(message: impl Into<String>) -> Result<T, Box<dyn Error>> {
    Err(Box::new(UsageError(message.into())))
}

/// The `main` of every example binary: logging (`RUST_LOG`, else
/// `default_log`), flags, then `run`; exits with 0, 1 or 2 as described in
/// the module docs. Never returns.
pub fn main<A: Parser>(default_log: &str, run: fn(A) -> Result<(), Box<dyn Error>>) -> ! {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_log)).init();
    // On a syntax error this prints clap's message and usage and exits 2;
    // on --help it prints the help and exits 0.
    let args = A::parse();
    match run(args) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            if let Some(u) = e.downcast_ref::<UsageError>() {
                A::command()
                    .error(clap::error::ErrorKind::ValueValidation, &u.0)
                    .exit();
            }
            eprintln!("error: {}", one_line(&e.to_string()));
            std::process::exit(1);
        }
    }
}

/// Joins a multi-line message into one line, so every error is one line.
fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// clap value parser for a duration in whole milliseconds, at least 1.
pub fn millis(s: &str) -> Result<std::time::Duration, String> {
    let ms: u64 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number of milliseconds: {e}"))?;
    if ms == 0 {
        return Err("must be at least 1 ms".into());
    }
    Ok(std::time::Duration::from_millis(ms))
}

/// clap value parser for `--payload`-like values: JSON if it parses, else
/// the text as a JSON string.
pub fn json_or_string(s: &str) -> Result<serde_json::Value, String> {
    Ok(serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.to_string())))
}
