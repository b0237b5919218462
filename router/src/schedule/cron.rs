//! Cron expressions read as EventMQ's scheduler (Python's croniter) reads
//! them, evaluated in a time zone (UTC unless the schedule names one).
//!
//! croniter takes 5 fields (minute hour day-of-month month day-of-week) or
//! 6 with the *seconds last*; croner, which does the evaluation here, wants
//! seconds first, so a 6-field expression is rotated before parsing. A day
//! of month and a day of week both restricted match when either does
//! (Vixie cron, croniter's default). `croniter_table.json` beside this file
//! holds croniter's own answers for the cases we check against.
//!
//! Daylight saving: a wall time that does not exist (02:30 on the night the
//! clocks go forward) fires at the first instant after the gap (03:00), as
//! croniter does. A wall time that happens twice (02:30 on the night they
//! go back) fires once, at its first occurrence — croniter fires it twice;
//! we keep "a daily job runs once a day" (Vixie cron, APScheduler), the one
//! deliberate difference (see the test).

use chrono::{DateTime, TimeZone as _, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// A parsed cron expression and the zone its wall-clock times are in.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    tz: Tz,
}

impl CronSchedule {
    /// Parses `expr` (croniter's field order) for time zone `tz` (an IANA
    /// name; UTC when `None`). The error says what is wrong, for the
    /// client's refusal.
    pub fn parse(expr: &str, tz: Option<&str>) -> Result<Self, String> {
        let tz: Tz = match tz {
            None => Tz::UTC,
            Some(name) => name.parse().map_err(|_| format!("unknown time zone {name:?}"))?,
        };
        let mut fields: Vec<String> = expr.split_whitespace().map(str::to_owned).collect();
        if fields.len() >= 5 {
            fields[4] = croniter_weekdays(&fields[4]);
        }
        let (pattern, seconds) = match fields.len() {
            5 => (fields.join(" "), Seconds::Disallowed),
            // croniter: seconds are the sixth field; croner: the first.
            6 => (format!("{} {}", fields[5], fields[..5].join(" ")), Seconds::Required),
            n => return Err(format!("cron expression {expr:?} has {n} fields; expected 5, or 6 with seconds last")),
        };
        let cron = CronParser::builder()
            .seconds(seconds)
            .year(Year::Disallowed)
            .build()
            .parse(&pattern)
            .map_err(|e| format!("cron expression {expr:?}: {e}"))?;
        Ok(CronSchedule { cron, tz })
    }

    /// The first matching time strictly after `unix` (seconds), as unix
    /// seconds; `None` when the expression never matches again.
    pub fn next_after(&self, unix: f64) -> Option<f64> {
        let secs = unix.floor();
        if !secs.is_finite() || secs.abs() > 1e13 {
            return None;
        }
        let start: DateTime<Tz> =
            self.tz.from_utc_datetime(&DateTime::<Utc>::from_timestamp(secs as i64, 0)?.naive_utc());
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        Some(next.timestamp() as f64)
    }

    /// The zone's name.
    pub fn tz_name(&self) -> &'static str {
        self.tz.name()
    }
}

/// croniter writes "the last Friday of the month" as `L5` in the
/// day-of-week field; croner as `5#L`.
fn croniter_weekdays(field: &str) -> String {
    field
        .split(',')
        .map(|part| match part.strip_prefix('L').or_else(|| part.strip_prefix('l')) {
            Some(day) if !day.is_empty() && day.chars().all(|c| c.is_ascii_digit()) => format!("{day}#L"),
            _ => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every case of croniter's table (scripts/gen_croniter_table.py): the
    /// next six (four around DST changes) times from each start.
    #[test]
    fn agrees_with_croniter() {
        let table: serde_json::Value = serde_json::from_str(include_str!("croniter_table.json")).unwrap();
        let cases = table["cases"].as_array().unwrap();
        assert!(cases.len() >= 50);
        let mut failures = Vec::new();
        for case in cases {
            let expr = case["expr"].as_str().unwrap();
            let tz = case["tz"].as_str();
            let c = CronSchedule::parse(expr, tz).unwrap_or_else(|e| panic!("{expr}: {e}"));
            let mut t = case["start"].as_f64().unwrap();
            let want: Vec<i64> = case["next"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
            let mut got = Vec::new();
            for _ in 0..want.len() {
                t = c.next_after(t).unwrap();
                got.push(t as i64);
            }
            if got != want && repeated_wall_time(&want, &got) {
                continue;
            }
            if got != want {
                failures.push(format!("{expr:?} tz {tz:?} from {}: croniter {want:?}, we {got:?}", case["start"]));
            }
        }
        assert!(failures.is_empty(), "{} of {} differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
    }

    /// croniter's extra run at a repeated wall time (fall-back night): it is
    /// `got` with one extra time exactly an hour after one of ours.
    fn repeated_wall_time(want: &[i64], got: &[i64]) -> bool {
        let extra: Vec<i64> = want.iter().filter(|t| !got.contains(t)).copied().collect();
        extra.len() == 1
            && want.contains(&(extra[0] - 3600))
            && got.starts_with(&want[..want.len() - 1].iter().filter(|t| **t != extra[0]).copied().collect::<Vec<_>>())
    }

    #[test]
    fn repeated_wall_time_fires_once() {
        // 02:30 Europe/Paris on 2024-10-27 happens at 00:30 and 01:30 UTC.
        let c = CronSchedule::parse("30 2 * * *", Some("Europe/Paris")).unwrap();
        let first = c.next_after(1_729_904_400.0).unwrap();
        assert_eq!(first, 1_729_989_000.0);
        assert_eq!(c.next_after(first).unwrap(), 1_730_079_000.0, "next day, not an hour later");
        // The spring-forward gap: 02:30 does not exist on 2024-03-31; 03:00 CEST.
        assert_eq!(c.next_after(1_711_839_600.0 - 3600.0).unwrap(), 1_711_846_800.0);
    }

    #[test]
    fn bad_expressions_are_errors() {
        for bad in ["", "* * * *", "* * * * * * *", "61 * * * *", "* * 32 * *", "x * * * *"] {
            assert!(CronSchedule::parse(bad, None).is_err(), "{bad:?}");
        }
        assert!(CronSchedule::parse("* * * * *", Some("Mars/Olympus")).is_err());
        assert!(CronSchedule::parse("* * * * *", Some("Europe/Paris")).is_ok());
    }
}
