//! REQUEST headers: a comma-separated list in one frame, e.g.
//! `reply-requested,guarantee,retry-count:2,timeout:5`. Unknown headers are
//! ignored, never rejected (newer clients may send more).

/// Longest timeout honoured (ten years): a larger value would overflow
/// time arithmetic; no real job needs more.
pub const MAX_TIMEOUT_SECS: u64 = 10 * 365 * 24 * 3600;

/// The headers this project understands.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Headers {
    /// The client wants the job's result forwarded to it.
    pub reply_requested: bool,
    /// The job must survive a lost job manager (requeued, not dropped).
    pub guarantee: bool,
    /// How many times the job may be re-dispatched after a failure.
    pub retry_count: Option<u32>,
    /// Seconds; `None` when absent or 0 (the job manager's global timeout).
    pub timeout_secs: Option<u64>,
    /// Our extension, added by the router on a re-run: which attempt this
    /// is (1 = first run; absent = first run).
    pub attempt: Option<u32>,
    /// Our extension, `owner:TOKEN`: a secret the sending client chose. A
    /// JOB_STATUS that presents it sees the job's result, from any
    /// connection (the client reconnects under a new identity).
    pub owner: Option<String>,
    /// Our extension, `delay:SECONDS`: run the job no sooner than this many
    /// seconds after the router accepts it.
    pub delay_secs: Option<f64>,
    /// Our extension, `eta:UNIX_SECONDS`: run the job no sooner than this
    /// wall-clock time.
    pub eta: Option<f64>,
    /// Our extension, set by the router on a job a schedule fired:
    /// `schedule:ID` (EventMQ's schedule id) ...
    pub schedule_id: Option<String>,
    /// ... and `fired:UNIX_SECONDS`, the time the run was due.
    pub fired_at: Option<f64>,
    /// Our extension, `unique:KEY`: while a job with this key in this
    /// queue is not final, another send gets that job instead of a new one.
    pub unique: Option<String>,
    /// Our extension, `depends_on:ID;ID`: the job runs once these jobs are
    /// done (at most [`MAX_DEPENDS_ON`]).
    pub depends_on: Vec<String>,
    /// Our extension, `on_dependency_failure:run`: run even when a
    /// dependency failed for good (else the job is cancelled).
    pub run_on_dependency_failure: bool,
    /// Our extension, `limit:NAME` or `limit:NAME/PARTITION`: the router
    /// starts the job only within that limit (issue 26).
    pub limit: Option<String>,
    /// Our extension, added by the router on a retried attempt:
    /// `checkpoint:JSON` (`%` and `,` escaped), the last checkpoint an
    /// earlier attempt kept (issue 26).
    pub checkpoint: Option<String>,
    /// Our extension, `requires:gpu;eu`: only a job manager with all these
    /// labels (its `labels` setting, said at INFORM) receives the job.
    pub requires: Vec<String>,
    /// Our extension, `on:NAME`: only the job manager of that name.
    pub on: Option<String>,
}

/// Where a job may run (`requires:` / `on:`): see [`Headers::requires`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    pub requires: Vec<String>,
    pub on: Option<String>,
}

impl Placement {
    /// The placement a header frame asks for; `None` when it asks none
    /// (the common case, told without parsing the headers).
    pub fn of(raw: &str) -> Option<Placement> {
        if !raw.contains("requires:") && !raw.contains("on:") {
            return None;
        }
        let h = Headers::parse(raw);
        (!h.requires.is_empty() || h.on.is_some()).then_some(Placement { requires: h.requires, on: h.on })
    }

    /// Whether a job manager named `name` with `labels` may run it.
    pub fn fits<S: AsRef<str>>(&self, name: Option<&str>, labels: &[S]) -> bool {
        self.on.as_deref().is_none_or(|on| name == Some(on))
            && self.requires.iter().all(|r| labels.iter().any(|l| l.as_ref() == r))
    }

    /// `requires:gpu;eu` / `on:B` as `emq-cli status` shows what a job waits for.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.requires.is_empty() {
            parts.push(format!("requires:{}", self.requires.join(";")));
        }
        if let Some(on) = &self.on {
            parts.push(format!("on:{on}"));
        }
        parts.join(",")
    }
}

/// A label or job manager name: 1 to 64 of `A-Z a-z 0-9 _ - . :`.
pub fn valid_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
}

/// Most labels a job may require (and a job manager may have).
pub const MAX_LABELS: usize = 32;

/// Most jobs one job may depend on.
pub const MAX_DEPENDS_ON: usize = 1000;

/// Longest delay honoured (ten years), as for timeouts.
pub const MAX_DELAY_SECS: f64 = MAX_TIMEOUT_SECS as f64;

impl Headers {
    /// Parses a header frame. Never fails: malformed values of known headers
    /// are treated as absent.
    pub fn parse(raw: &str) -> Headers {
        let mut h = Headers::default();
        for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = match item.split_once(':') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (item, None),
            };
            match name {
                "reply-requested" => h.reply_requested = true,
                "guarantee" => h.guarantee = true,
                "retry-count" => h.retry_count = value.and_then(|v| v.parse().ok()),
                "attempt" => h.attempt = value.and_then(|v| v.parse().ok()),
                "owner" => h.owner = value.filter(|v| !v.is_empty() && v.len() <= 128).map(str::to_owned),
                "delay" => {
                    h.delay_secs = value
                        .and_then(|v| v.parse::<f64>().ok())
                        .filter(|t| t.is_finite() && *t > 0.0)
                        .map(|t| t.min(MAX_DELAY_SECS))
                }
                "schedule" => h.schedule_id = value.filter(|v| !v.is_empty() && v.len() <= 64).map(str::to_owned),
                "fired" => h.fired_at = value.and_then(|v| v.parse::<f64>().ok()).filter(|t| t.is_finite()),
                "unique" => h.unique = value.filter(|v| !v.is_empty() && v.len() <= 200).map(str::to_owned),
                "depends_on" => {
                    h.depends_on = value
                        .map(|v| v.split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
                        .unwrap_or_default()
                }
                "on_dependency_failure" => h.run_on_dependency_failure = value == Some("run"),
                "limit" => h.limit = value.filter(|v| !v.is_empty() && v.len() <= 400).map(str::to_owned),
                "requires" => {
                    // All or nothing: a malformed list must not widen where
                    // the job may run.
                    let labels: Vec<String> = value
                        .map(|v| v.split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
                        .unwrap_or_default();
                    h.requires = if labels.len() <= MAX_LABELS && labels.iter().all(|l| valid_label(l)) {
                        labels
                    } else {
                        vec!["(invalid requires: header)".into()]
                    };
                }
                "on" => {
                    h.on = value.filter(|v| !v.is_empty()).map(|v| {
                        if valid_label(v) {
                            v.to_owned()
                        } else {
                            "(invalid on: header)".into()
                        }
                    })
                }
                "checkpoint" => {
                    h.checkpoint = value.filter(|v| !v.is_empty()).map(crate::cmd::decode_checkpoint_header)
                }
                "eta" => h.eta = value.and_then(|v| v.parse::<f64>().ok()).filter(|t| t.is_finite() && *t > 0.0),
                "timeout" => {
                    h.timeout_secs = value
                        .and_then(|v| v.parse::<f64>().ok())
                        .filter(|t| t.is_finite() && *t > 0.0)
                        .map(|t| (t.ceil() as u64).min(MAX_TIMEOUT_SECS))
                }
                _ => {}
            }
        }
        h
    }

    /// Writes headers in EventMQ's client order.
    pub fn to_wire(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if self.reply_requested {
            parts.push("reply-requested".into());
        }
        if self.guarantee {
            parts.push("guarantee".into());
        }
        if let Some(n) = self.retry_count {
            parts.push(format!("retry-count:{n}"));
        }
        if let Some(t) = self.timeout_secs {
            parts.push(format!("timeout:{t}"));
        }
        if let Some(a) = self.attempt {
            parts.push(format!("attempt:{a}"));
        }
        if let Some(o) = &self.owner {
            parts.push(format!("owner:{o}"));
        }
        if let Some(d) = self.delay_secs {
            parts.push(format!("delay:{d}"));
        }
        if let Some(t) = self.eta {
            parts.push(format!("eta:{t}"));
        }
        if let Some(id) = &self.schedule_id {
            parts.push(format!("schedule:{id}"));
        }
        if let Some(t) = self.fired_at {
            parts.push(format!("fired:{t}"));
        }
        if let Some(k) = &self.unique {
            parts.push(format!("unique:{k}"));
        }
        if !self.depends_on.is_empty() {
            parts.push(format!("depends_on:{}", self.depends_on.join(";")));
        }
        if self.run_on_dependency_failure {
            parts.push("on_dependency_failure:run".into());
        }
        if let Some(l) = &self.limit {
            parts.push(format!("limit:{l}"));
        }
        if !self.requires.is_empty() {
            parts.push(format!("requires:{}", self.requires.join(";")));
        }
        if let Some(on) = &self.on {
            parts.push(format!("on:{on}"));
        }
        if let Some(c) = &self.checkpoint {
            parts.push(format!("checkpoint:{}", crate::cmd::encode_checkpoint_header(c)));
        }
        parts.join(",")
    }

    /// When a job with these headers, accepted at `now` (unix seconds), is
    /// due: the later of `eta` and `now + delay`; `None` when it is due at
    /// once (no such header, or the time has passed).
    pub fn due_at(&self, now: f64) -> Option<f64> {
        let due = [self.eta, self.delay_secs.map(|d| now + d)].into_iter().flatten().fold(f64::NAN, f64::max);
        (due > now).then_some(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_headers_parse_match_and_refuse_what_is_malformed() {
        assert_eq!(Placement::of("guarantee,limit:api"), None, "no placement asked: not even parsed");
        let p = Placement::of("guarantee,requires:gpu;eu,on:B").unwrap();
        assert_eq!((p.requires.clone(), p.on.clone()), (vec!["gpu".to_owned(), "eu".to_owned()], Some("B".to_owned())));
        assert!(p.fits(Some("B"), &["eu", "gpu", "x"]));
        assert!(!p.fits(Some("B"), &["gpu"]), "every label is needed");
        assert!(!p.fits(Some("A"), &["gpu", "eu"]), "only the named job manager");
        assert!(!p.fits(None, &["gpu", "eu"]));
        assert_eq!(p.describe(), "requires:gpu;eu,on:B");
        assert!(Placement::of("requires:gpu").unwrap().fits(None, &["gpu"]));
        // Round trip through the wire form.
        let h = Headers { requires: vec!["gpu".into()], on: Some("B".into()), ..Default::default() };
        assert_eq!(Headers::parse(&h.to_wire()).requires, vec!["gpu"]);
        assert_eq!(Headers::parse(&h.to_wire()).on.as_deref(), Some("B"));
        // Malformed: never widened to "anywhere" (the router refuses them).
        let bad = Headers::parse("requires:gpu;not a label");
        assert!(bad.requires.iter().any(|l| !valid_label(l)));
        assert!(Headers::parse("on:a b").on.is_some_and(|o| !valid_label(&o)));
        // A limit partition ending in "on" is not a placement.
        assert_eq!(Placement::of("limit:api/region:eu"), None);
    }

    #[test]
    fn parses_eventmq_order() {
        let h = Headers::parse("reply-requested,guarantee,retry-count:2,timeout:5");
        assert_eq!(
            h,
            Headers {
                reply_requested: true,
                guarantee: true,
                retry_count: Some(2),
                timeout_secs: Some(5),
                attempt: None,
                owner: None,
                delay_secs: None,
                eta: None,
                schedule_id: None,
                fired_at: None,
                ..Default::default()
            }
        );
        assert_eq!(Headers::parse(&h.to_wire()), h);
    }

    #[test]
    fn unique_and_depends_on() {
        let h = Headers::parse("reply-requested,unique:report-42,depends_on:a1;b2;;c3,on_dependency_failure:run");
        assert_eq!(h.unique.as_deref(), Some("report-42"));
        assert_eq!(h.depends_on, ["a1", "b2", "c3"]);
        assert!(h.run_on_dependency_failure);
        assert_eq!(Headers::parse(&h.to_wire()), h);
        assert_eq!(Headers::parse("unique:").unique, None);
        assert!(!Headers::parse("on_dependency_failure:cancel").run_on_dependency_failure);
        let h = Headers::parse("reply-requested,limit:api/customer-7");
        assert_eq!(h.limit.as_deref(), Some("api/customer-7"));
        assert_eq!(Headers::parse(&h.to_wire()), h);
    }

    #[test]
    fn delay_and_eta() {
        let h = Headers::parse("guarantee,delay:30");
        assert_eq!(h.due_at(1000.0), Some(1030.0));
        assert_eq!(Headers::parse("eta:2000").due_at(1000.0), Some(2000.0));
        assert_eq!(Headers::parse("eta:500").due_at(1000.0), None, "past eta: at once");
        assert_eq!(Headers::parse("eta:1010,delay:30").due_at(1000.0), Some(1030.0), "the later wins");
        for bad in ["delay:-1", "delay:x", "delay:inf", "delay:NaN", "eta:nan", "eta:-5", "delay:0"] {
            assert_eq!(Headers::parse(bad).due_at(1000.0), None, "{bad}");
        }
        assert_eq!(Headers::parse("delay:1e300").delay_secs, Some(MAX_DELAY_SECS), "clamped");
        let h = Headers::parse("delay:2.5,eta:7");
        assert_eq!(Headers::parse(&h.to_wire()), h);
    }

    #[test]
    fn empty_and_unknown_headers() {
        assert_eq!(Headers::parse(""), Headers::default());
        let h = Headers::parse("x-trace:abc, reply-requested ,,weird");
        assert!(h.reply_requested);
        assert!(!h.guarantee);
    }

    #[test]
    fn zero_or_bad_timeout_means_global() {
        assert_eq!(Headers::parse("timeout:0").timeout_secs, None);
        assert_eq!(Headers::parse("timeout:abc").timeout_secs, None);
        assert_eq!(Headers::parse("timeout:-3").timeout_secs, None);
        assert_eq!(Headers::parse("timeout:1.5").timeout_secs, Some(2));
        assert_eq!(Headers::parse("retry-count:x").retry_count, None);
        assert_eq!(Headers::parse("timeout:1e19").timeout_secs, Some(MAX_TIMEOUT_SECS), "clamped, no overflow");
    }
}
