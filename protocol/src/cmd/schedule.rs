//! `SCHEDULE` / `UNSCHEDULE queue headers interval_secs payload cron`.

use crate::error::DecodeErrorKind;
use crate::parse::Parse;

/// A periodic job order for a scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub queue: String,
    pub headers: String,
    /// Seconds as text; `-1` when `cron` is used.
    pub interval_secs: String,
    pub payload: String,
    pub cron: String,
}

impl Schedule {
    pub(crate) fn parse_frames<F: AsRef<[u8]>>(p: &mut Parse<'_, F>) -> Result<Self, DecodeErrorKind> {
        Ok(Schedule {
            queue: p.next_string()?,
            headers: p.next_string()?,
            interval_secs: p.next_string()?,
            payload: p.next_string()?,
            // Older clients omit the cron frame.
            cron: p.next_optional_string()?.unwrap_or_default(),
        })
    }
    pub(crate) fn write_body(&self, out: &mut Vec<Vec<u8>>) {
        for f in [&self.queue, &self.headers, &self.interval_secs, &self.payload, &self.cron] {
            out.push(f.as_bytes().to_vec());
        }
    }
}

/// What is wrong with a SCHEDULE order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("interval_secs {0:?} is not a whole number of seconds")]
    BadInterval(String),
    #[error("neither a positive interval nor a cron expression")]
    NoTiming,
    #[error("payload is not a run payload: {0}")]
    BadPayload(String),
}

/// When a schedule fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timing {
    /// Every N seconds (EventMQ: a non-negative `interval_secs`; 0 is
    /// taken as 1, so a schedule cannot spin).
    Interval(u64),
    /// A cron expression as EventMQ's croniter reads it (5 fields, or 6
    /// with the seconds last).
    Cron(String),
}

/// What the misfire policy does with runs missed while the router was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Misfire {
    /// Missed runs are dropped; the next run is the next due time from now.
    Skip,
    /// One run at once for any number missed (Celery beat, APScheduler's
    /// `coalesce`).
    #[default]
    Once,
    /// Every missed run, one after another.
    All,
}

impl Misfire {
    pub fn parse(s: &str) -> Option<Misfire> {
        match s {
            "skip" => Some(Misfire::Skip),
            "once" => Some(Misfire::Once),
            "all" => Some(Misfire::All),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Misfire::Skip => "skip",
            Misfire::Once => "once",
            Misfire::All => "all",
        }
    }
}

/// The schedule-only headers of a SCHEDULE order (EventMQ's `nohaste` and
/// `run_count:N`, our `tz:`, `no-overlap`, `misfire:`); the rest are the
/// fired jobs' headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleOptions {
    /// Do not run at once on scheduling (EventMQ's `nohaste`).
    pub nohaste: bool,
    /// Runs left (`run_count:N`); `None` for ever (EventMQ's -1).
    pub run_count: Option<u64>,
    /// IANA time zone name the cron expression is read in (UTC if absent).
    pub tz: Option<String>,
    /// Skip a run while the previous run of the same schedule is unfinished.
    pub no_overlap: bool,
    /// `misfire:skip|once|all`; `None`: the router's setting.
    pub misfire: Option<Misfire>,
    /// The headers the fired jobs carry (schedule-only ones removed).
    pub job_headers: String,
}

impl ScheduleOptions {
    /// Splits a SCHEDULE's header frame. Malformed values of the headers it
    /// knows are treated as absent, as for REQUEST headers.
    pub fn parse(raw: &str) -> ScheduleOptions {
        let mut o = ScheduleOptions::default();
        let mut kept: Vec<&str> = Vec::new();
        for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = match item.split_once(':') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (item, None),
            };
            match name {
                "nohaste" => o.nohaste = true,
                // EventMQ: -1 (or absent) is for ever.
                "run_count" => {
                    o.run_count = value.and_then(|v| v.parse::<i64>().ok()).and_then(|n| u64::try_from(n).ok())
                }
                "tz" => o.tz = value.filter(|v| !v.is_empty() && v.len() <= 64).map(str::to_owned),
                "no-overlap" => o.no_overlap = true,
                "misfire" => o.misfire = value.and_then(Misfire::parse),
                // A fired job runs when it fires.
                "delay" | "eta" => {}
                _ => kept.push(item),
            }
        }
        o.job_headers = kept.join(",");
        o
    }
}

impl Schedule {
    /// Interval or cron, as EventMQ's scheduler decides: a non-negative
    /// `interval_secs` wins; `-1` means cron.
    pub fn timing(&self) -> Result<Timing, ScheduleError> {
        let secs: i64 =
            self.interval_secs.trim().parse().map_err(|_| ScheduleError::BadInterval(self.interval_secs.clone()))?;
        if secs >= 0 {
            return Ok(Timing::Interval(secs.max(1) as u64));
        }
        match self.cron.trim() {
            "" => Err(ScheduleError::NoTiming),
            c => Ok(Timing::Cron(c.to_owned())),
        }
    }

    /// EventMQ's schedule id: the SHA-1 hex of
    /// `json.dumps({args, kwargs, class_args, class_kwargs, path, callable},
    /// sort_keys=True)` of the payload's run message (a missing key counts
    /// as `null`).
    pub fn schedule_id(&self) -> Result<String, ScheduleError> {
        schedule_id_of_payload(&self.payload)
    }
}

/// [`Schedule::schedule_id`] of a `["run", {...}]` payload.
pub fn schedule_id_of_payload(payload: &str) -> Result<String, ScheduleError> {
    use sha1::Digest as _;
    let v: serde_json::Value = serde_json::from_str(payload).map_err(|e| ScheduleError::BadPayload(e.to_string()))?;
    let msg = v
        .as_array()
        .and_then(|a| a.get(1))
        .and_then(|m| m.as_object())
        .ok_or_else(|| ScheduleError::BadPayload("expected [\"run\", {...}]".into()))?;
    let mut keyed = serde_json::Map::new();
    for k in ["args", "kwargs", "class_args", "class_kwargs", "path", "callable"] {
        keyed.insert(k.to_owned(), msg.get(k).cloned().unwrap_or(serde_json::Value::Null));
    }
    let text = crate::pyjson::dumps_sorted(&serde_json::Value::Object(keyed));
    let digest = sha1::Sha1::digest(text.as_bytes());
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}
