//! Command-line flag parsing shared by `emq-send` and `emq-cli`: numeric
//! flags go through the same validators as the servers' settings
//! ([`emq_settings::validate`]), so `--deadline inf`, `NaN`, `-1` or `1e300`
//! is one line on stderr naming the flag, exit code 2 — never a panic
//! (`Duration::from_secs_f64` panics on all of them).

use clap::error::ErrorKind;
use clap::Parser;
use emq_settings::validate::{self as v, Zero};
use emq_settings::SettingsError;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

/// Why a validator refused a value, for clap's "invalid value" message
/// (which already names the flag and the value).
fn why(e: SettingsError) -> String {
    match e {
        SettingsError::Invalid { why, .. } => why,
        other => other.to_string(),
    }
}

/// `--deadline`-style seconds: a number, 0 or more (0 = do not wait), at
/// most ten years ([`v::MAX_SECONDS`]).
pub fn seconds(s: &str) -> Result<Duration, String> {
    let x: f64 = s.trim().parse().map_err(|_| "is not a number of seconds".to_string())?;
    v::seconds("", x, Zero::Allowed).map_err(why)
}

/// `--delay`-style durations: plain seconds (`30`, `1.5`) or units
/// (`250ms`, `30s`, `5m`, `2h`, `1d`, `1h30m`), at most ten years.
pub fn duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(x) = t.parse::<f64>() {
        return v::seconds("", x, Zero::Allowed).map_err(why);
    }
    let bad = || format!("{t:?} is not a duration (e.g. 30s, 5m, 1h30m, 250ms, or seconds)");
    if t.is_empty() {
        return Err(bad());
    }
    let mut total = 0.0;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += n * unit;
    }
    v::seconds("", total, Zero::Allowed).map_err(why)
}

/// `--at`: an RFC 3339 time (`2026-12-01T10:00:00Z`, `...+01:00`) or unix
/// seconds.
pub fn time(s: &str) -> Result<std::time::SystemTime, String> {
    let t = s.trim();
    let secs = match t.parse::<f64>() {
        Ok(x) => x,
        Err(_) => {
            chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|e| {
                    format!("{t:?} is not an RFC 3339 time like 2026-12-01T10:00:00Z, nor unix seconds ({e})")
                })?
                .timestamp_millis() as f64
                / 1000.0
        }
    };
    if !(0.0..=1e11).contains(&secs) {
        return Err(format!("{t:?} is out of range"));
    }
    Ok(std::time::UNIX_EPOCH + Duration::from_secs_f64(secs))
}

/// A whole number within `[min, max]`.
fn whole<T: FromStr + PartialOrd + Copy + std::fmt::Display>(s: &str, min: T, max: T) -> Result<T, String> {
    let n: T = s.trim().parse().map_err(|_| format!("is not a whole number from {min} to {max}"))?;
    v::count("", n, min, max).map_err(why)
}

/// `--timeout`: whole seconds, 0 (= the job manager's global timeout) up to
/// the longest timeout the protocol honours.
pub fn timeout_secs(s: &str) -> Result<u64, String> {
    whole(s, 0, emq_protocol::MAX_TIMEOUT_SECS)
}

/// `--retry`: retries allowed.
pub fn retries(s: &str) -> Result<u32, String> {
    whole(s, 0, u32::MAX)
}

/// `--limit`: `NAME` or `NAME/PARTITION` (see [`crate::check_limit`]).
pub fn limit(s: &str) -> Result<String, String> {
    crate::check_limit(s).map(|()| s.to_owned())
}

/// `--count`: jobs to send, at least 1.
pub fn job_count(s: &str) -> Result<u64, String> {
    whole(s, 1, u64::MAX)
}

/// Most jobs outstanding at once (`--window`): at least 1; at most a
/// million, since the client tracks each one.
pub fn window(s: &str) -> Result<usize, String> {
    whole(s, 1, 1_000_000)
}

/// A ZeroMQ endpoint from a flag or a setting, checked before connecting:
/// ZeroMQ connects to a bad one without complaint and waits forever.
pub fn endpoint(key: &str, addr: &str) -> Result<(), SettingsError> {
    // `A,B`: a router and its standbys, each a valid endpoint.
    for a in addr.split(',').map(str::trim) {
        v::zmq_endpoint(key, a)?;
    }
    Ok(())
}

/// Parses the command line. A bad value is one line on stderr (clap's
/// first line, which names the flag, the value and why) and exit code 2;
/// `--help`, `--version` and usage errors are clap's usual output.
pub fn parse<T: Parser>(prog: &str) -> Result<T, ExitCode> {
    match T::try_parse() {
        Ok(a) => Ok(a),
        Err(e) if matches!(e.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            eprintln!("{prog}: {}", first.strip_prefix("error: ").unwrap_or(first));
            Err(ExitCode::from(2))
        }
        Err(e) => e.exit(),
    }
}

/// CURVE client keys from `--curve-server-key FILE` (the router's `.pub`)
/// and `--curve-key FILE` (this client's `.key`, its `.pub` beside it);
/// both or neither.
pub fn curve_keys(
    server_key: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
) -> anyhow::Result<Option<emq_sender::CurveClientKeys>> {
    match (server_key, key) {
        (None, None) => Ok(None),
        (Some(server), Some(secret)) => {
            let public = secret.with_extension("pub");
            Ok(Some(emq_sender::CurveClientKeys::from_files(server, &public, secret)?))
        }
        _ => anyhow::bail!("--curve-server-key and --curve-key go together"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times() {
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(duration("1d"), Ok(Duration::from_secs(86_400)));
        for bad in ["", "s", "5x", "-1", "inf", "1e300", "m5", "NaN", "99999999999d"] {
            assert!(duration(bad).is_err(), "{bad:?}");
        }
        let t = time("2026-12-01T10:00:00Z").unwrap();
        assert_eq!(t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(), 1_796_119_200);
        assert_eq!(time("2026-12-01T11:00:00+01:00").unwrap(), t);
        assert_eq!(time("1796119200").unwrap(), t);
        assert!(time("tomorrow").is_err() && time("-5").is_err());
    }

    #[test]
    fn seconds_refuse_what_would_panic() {
        assert_eq!(seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(seconds("0"), Ok(Duration::ZERO));
        for bad in ["inf", "NaN", "-1", "1e300", "-inf", "soon", ""] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
        assert!(seconds("-1").unwrap_err().contains("negative"));
    }

    #[test]
    fn whole_numbers_are_bounded() {
        assert_eq!(timeout_secs("30"), Ok(30));
        assert!(timeout_secs("-1").is_err());
        assert!(timeout_secs("1e300").is_err());
        assert!(timeout_secs(&(emq_protocol::MAX_TIMEOUT_SECS + 1).to_string()).unwrap_err().contains("at most"));
        assert!(job_count("0").unwrap_err().contains("at least 1"));
        assert!(window("0").is_err());
        assert!(window("1000001").is_err());
        assert_eq!(retries("3"), Ok(3));
        assert!(retries("-1").is_err());
    }
}
