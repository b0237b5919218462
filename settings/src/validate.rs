//! Pure validators shared by every binary: each takes the key's name and
//! the value as parsed, and returns the typed value the program uses or a
//! [`SettingsError::Invalid`] naming the key, the value and why.
//!
//! Why this exists: a parsed `f64` can still be `inf`, `NaN`, negative or
//! `1e300` (TOML and the environment both accept them), and
//! `Duration::from_secs_f64` panics on every one of those — at start, on a
//! SIGHUP reload (a running server would crash) or in a command-line tool.
//! Every duration, count, multiplier, address and port therefore goes
//! through one of these before it is used, so no setting value can panic a
//! binary. They never panic themselves (they use
//! [`Duration::try_from_secs_f64`], never `from_secs_f64`).

use crate::SettingsError;
use std::fmt::Display;
use std::time::Duration;

/// Longest duration any setting may ask for: ten years, in seconds. Far
/// beyond any sensible timeout, and small enough that `Instant::now() + d`
/// can never overflow (which would panic).
pub const MAX_SECONDS: f64 = 10.0 * 365.0 * 86_400.0;

/// Whether a duration of zero makes sense for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zero {
    /// Zero means "at once" / "none" (a retry delay, a grace period).
    Allowed,
    /// Zero would spin or expire at once (a heartbeat interval, a timeout).
    Refused,
}

/// A float as an operator reads it back: `inf`, `NaN`, `1e300`, `3.0` (the
/// `Debug` form; `Display` would print 1e300 as 301 digits).
fn show(v: f64) -> String {
    format!("{v:?}")
}

/// Seconds → [`Duration`]: a number (not NaN), not negative, more than 0
/// unless `zero` allows it, and at most [`MAX_SECONDS`].
pub fn seconds(key: &str, v: f64, zero: Zero) -> Result<Duration, SettingsError> {
    seconds_at_most(key, v, zero, MAX_SECONDS)
}

/// [`seconds`] with a smaller upper bound than [`MAX_SECONDS`].
pub fn seconds_at_most(key: &str, v: f64, zero: Zero, max: f64) -> Result<Duration, SettingsError> {
    let bad = |why: String| Err(SettingsError::invalid(key, show(v), why));
    let max = max.min(MAX_SECONDS);
    if v.is_nan() {
        return bad("must be a number of seconds, not NaN".into());
    }
    if v < 0.0 {
        return bad("must not be negative".into());
    }
    if v == 0.0 && zero == Zero::Refused {
        return bad("must be more than 0 seconds".into());
    }
    if v.is_infinite() {
        return bad(format!("must be finite (at most {max} seconds)"));
    }
    if v > max {
        return bad(format!("must be at most {max} seconds"));
    }
    // Cannot fail after the checks above; kept fallible so that no input can
    // ever panic here.
    Duration::try_from_secs_f64(v).or_else(|e| bad(format!("is not a duration: {e}")))
}

/// A count within `[min, max]`: `min` is 1 where 0 is meaningless (no
/// workers, an empty buffer), `max` keeps a huge value from allocating or
/// starting without end.
pub fn count<T: PartialOrd + Copy + Display>(key: &str, v: T, min: T, max: T) -> Result<T, SettingsError> {
    if v < min {
        return Err(SettingsError::invalid(key, v, format!("must be at least {min}")));
    }
    if v > max {
        return Err(SettingsError::invalid(key, v, format!("must be at most {max}")));
    }
    Ok(v)
}

/// A growth factor: a number, at least 1 (a factor below 1 would shrink
/// what should grow), at most `max`.
pub fn multiplier(key: &str, v: f64, max: f64) -> Result<f64, SettingsError> {
    let bad = |why: String| Err(SettingsError::invalid(key, show(v), why));
    if v.is_nan() {
        return bad("must be a number, not NaN".into());
    }
    if v < 1.0 {
        return bad("must be at least 1".into());
    }
    if v.is_infinite() {
        return bad(format!("must be finite (at most {max})"));
    }
    if v > max {
        return bad(format!("must be at most {max}"));
    }
    Ok(v)
}

const ENDPOINT_FORMS: &str = "write it like tcp://127.0.0.1:47291, tcp://*:47291, ipc:///tmp/emq.sock or inproc://name";

/// A TCP port as written in an address: 1..=65535. Port 0 and anything
/// larger are refused (ZeroMQ and the OS would bind a random port or wrap).
fn port(key: &str, addr: &str, p: &str, example: &str) -> Result<u16, SettingsError> {
    match p.parse::<u64>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        Ok(_) => Err(SettingsError::invalid(key, addr, format!("port {p} is not in 1..=65535 ({example})"))),
        Err(_) if p.is_empty() => Err(SettingsError::invalid(key, addr, format!("has no port ({example})"))),
        Err(_) => Err(SettingsError::invalid(key, addr, format!("port {p:?} is not a number ({example})"))),
    }
}

/// A ZeroMQ endpoint: `tcp://HOST:PORT` (PORT 1..=65535, or `*` for any),
/// `ipc://PATH` or `inproc://NAME`. Anything else is refused with an example
/// of the right form. The host is not resolved here: a bad host is a bind or
/// connect error, reported when it is used.
pub fn zmq_endpoint(key: &str, v: &str) -> Result<(), SettingsError> {
    let bad = |why: &str| Err(SettingsError::invalid(key, format!("{v:?}"), why));
    match v.split_once("://") {
        Some(("tcp", rest)) => {
            let Some((host, p)) = rest.rsplit_once(':') else {
                return bad("has no port (write it like tcp://127.0.0.1:47291)");
            };
            if host.is_empty() {
                return bad("has no host (write it like tcp://127.0.0.1:47291, or tcp://*:47291 for every interface)");
            }
            if p != "*" {
                port(key, &format!("{v:?}"), p, "write it like tcp://127.0.0.1:47291")?;
            }
            Ok(())
        }
        Some(("ipc" | "inproc", rest)) if !rest.is_empty() => Ok(()),
        Some(("ipc" | "inproc", _)) => bad(&format!("has an empty path; {ENDPOINT_FORMS}")),
        _ => bad(&format!("is not a ZeroMQ endpoint; {ENDPOINT_FORMS}")),
    }
}

/// An HTTP listen address `HOST:PORT` (PORT 1..=65535). Empty (or blank)
/// means off: `None`. Returns the trimmed address.
pub fn http_addr(key: &str, v: &str) -> Result<Option<String>, SettingsError> {
    let t = v.trim();
    if t.is_empty() {
        return Ok(None);
    }
    let example = "write it like 127.0.0.1:47294, or \"\" for off";
    let Some((host, p)) = t.rsplit_once(':') else {
        return Err(SettingsError::invalid(key, format!("{v:?}"), format!("has no port ({example})")));
    };
    if host.is_empty() || t.contains("://") {
        return Err(SettingsError::invalid(key, format!("{v:?}"), format!("is not HOST:PORT ({example})")));
    }
    port(key, &format!("{v:?}"), p, example)?;
    Ok(Some(t.to_owned()))
}

/// A `tracing` filter (`info`, `warn,emq_router=debug`, ...), as `log_level`
/// takes it. A bad one would otherwise be ignored silently.
pub fn log_filter(key: &str, v: &str) -> Result<(), SettingsError> {
    // A bare word that is not a level parses as a *target* ("verbose"
    // enables only a target named verbose): that silences every log, so
    // each bare directive must be a level.
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for d in v.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !d.contains('=') && !LEVELS.contains(&d.to_ascii_lowercase().as_str()) {
            return Err(SettingsError::invalid(
                key,
                format!("{v:?}"),
                format!("{d:?} is not a log level: use one of {} or target=level", LEVELS.join(", ")),
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(v).map(|_| ()).map_err(|e| {
        SettingsError::invalid(
            key,
            format!("{v:?}"),
            format!("is not a log filter like info or warn,emq_router=debug ({e})"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_must_be_levels() {
        assert!(log_filter("log_level", "verbose").is_err(), "a bare word would silence every log");
        assert!(log_filter("log_level", "info,verbose").is_err());
        for ok in ["info", "WARN", "warn,emq_router=debug", "emq_router=trace", "off"] {
            log_filter("log_level", ok).unwrap();
        }
    }

    fn why(r: Result<impl std::fmt::Debug, SettingsError>) -> String {
        let e = r.expect_err("should be refused");
        assert_eq!(e.key(), Some("k"), "{e}");
        e.to_string()
    }

    #[test]
    fn seconds_refuse_nan_inf_negative_huge_and_zero_when_meaningless() {
        assert_eq!(seconds("k", 3.0, Zero::Refused).unwrap(), Duration::from_secs(3));
        assert_eq!(seconds("k", 0.0, Zero::Allowed).unwrap(), Duration::ZERO);
        assert_eq!(seconds("k", MAX_SECONDS, Zero::Refused).unwrap(), Duration::from_secs(MAX_SECONDS as u64));
        assert!(why(seconds("k", f64::NAN, Zero::Allowed)).contains("NaN"));
        let e = why(seconds("k", f64::INFINITY, Zero::Allowed));
        assert_eq!(e, format!("invalid setting k = inf: must be finite (at most {MAX_SECONDS} seconds)"));
        assert!(why(seconds("k", f64::NEG_INFINITY, Zero::Allowed)).contains("negative"));
        assert!(why(seconds("k", -1.0, Zero::Allowed)).contains("k = -1.0: must not be negative"));
        assert!(why(seconds("k", 1e300, Zero::Allowed)).contains("k = 1e300: must be at most"));
        assert!(why(seconds("k", 0.0, Zero::Refused)).contains("more than 0"));
        assert!(why(seconds_at_most("k", 11.0, Zero::Refused, 10.0)).contains("at most 10 seconds"));
        // The smallest positive float is positive: a (zero) Duration, no panic.
        assert!(seconds("k", f64::MIN_POSITIVE, Zero::Refused).is_ok());
    }

    #[test]
    fn counts_are_bounded() {
        assert_eq!(count("k", 4usize, 1, 1024).unwrap(), 4);
        assert!(why(count("k", 0usize, 1, 1024)).contains("k = 0: must be at least 1"));
        assert!(why(count("k", 1025usize, 1, 1024)).contains("at most 1024"));
        assert!(why(count("k", 0i32, 1, i32::MAX)).contains("at least 1"));
        assert!(why(count("k", -5i32, 1, i32::MAX)).contains("k = -5"));
    }

    #[test]
    fn multipliers_are_finite_and_at_least_one() {
        assert_eq!(multiplier("k", 2.0, 100.0).unwrap(), 2.0);
        assert_eq!(multiplier("k", 1.0, 100.0).unwrap(), 1.0);
        assert!(why(multiplier("k", f64::NAN, 100.0)).contains("NaN"));
        assert!(why(multiplier("k", f64::INFINITY, 100.0)).contains("must be finite (at most 100)"));
        assert!(why(multiplier("k", 1e300, 100.0)).contains("k = 1e300"));
        assert!(why(multiplier("k", 0.5, 100.0)).contains("at least 1"));
        assert!(why(multiplier("k", -1.0, 100.0)).contains("at least 1"));
        assert!(why(multiplier("k", 0.0, 100.0)).contains("at least 1"));
    }

    #[test]
    fn zmq_endpoints() {
        for ok in ["tcp://127.0.0.1:47291", "tcp://*:1", "tcp://localhost:65535", "tcp://[::1]:80", "tcp://*:*"] {
            zmq_endpoint("k", ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        zmq_endpoint("k", "ipc:///tmp/emq.sock").unwrap();
        zmq_endpoint("k", "inproc://router").unwrap();
        assert!(why(zmq_endpoint("k", "tcp://127.0.0.1:99999")).contains("port 99999 is not in 1..=65535"));
        assert!(why(zmq_endpoint("k", "tcp://127.0.0.1:65536")).contains("65536"));
        assert!(why(zmq_endpoint("k", "tcp://127.0.0.1:0")).contains("port 0"));
        assert!(why(zmq_endpoint("k", "tcp://x")).contains("has no port"));
        assert!(why(zmq_endpoint("k", "tcp://127.0.0.1:")).contains("has no port"));
        assert!(why(zmq_endpoint("k", "tcp://:5")).contains("has no host"));
        assert!(why(zmq_endpoint("k", "tcp://h:http")).contains("not a number"));
        assert!(why(zmq_endpoint("k", "ipc://")).contains("empty path"));
        let e = why(zmq_endpoint("k", "127.0.0.1:47291"));
        assert!(e.contains("not a ZeroMQ endpoint") && e.contains("tcp://127.0.0.1:47291"), "{e}");
        assert!(why(zmq_endpoint("k", "udp://h:1")).contains("not a ZeroMQ endpoint"));
        assert!(why(zmq_endpoint("k", "")).contains("not a ZeroMQ endpoint"));
    }

    #[test]
    fn http_addresses() {
        assert_eq!(http_addr("k", "").unwrap(), None);
        assert_eq!(http_addr("k", "  ").unwrap(), None);
        assert_eq!(http_addr("k", " 127.0.0.1:47294 ").unwrap().as_deref(), Some("127.0.0.1:47294"));
        assert!(http_addr("k", "[::1]:8080").is_ok());
        assert!(why(http_addr("k", "127.0.0.1:99999")).contains("99999"));
        assert!(why(http_addr("k", "127.0.0.1:0")).contains("port 0"));
        assert!(why(http_addr("k", "127.0.0.1")).contains("has no port"));
        assert!(why(http_addr("k", ":80")).contains("HOST:PORT"));
        assert!(why(http_addr("k", "http://h:80")).contains("HOST:PORT"));
    }

    #[test]
    fn log_filters() {
        log_filter("k", "info").unwrap();
        log_filter("k", "warn,emq_router=debug").unwrap();
        assert!(why(log_filter("k", "info=bogus[")).contains("log filter"));
    }
}
