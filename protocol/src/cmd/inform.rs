//! `INFORM queues kind [features]`: a job manager (kind `worker`, on the
//! backend) or a scheduler (kind `scheduler`, on the frontend) announces
//! itself. Our extension: an optional third frame of comma-separated
//! feature tokens (EventMQ's router reads only the first two frames).

use crate::error::DecodeErrorKind;
use crate::parse::Parse;
use crate::queues::QueueSpec;

/// A peer's introduction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inform {
    /// `(weight, name)` pairs; empty means "the router's default queues".
    pub queues: QueueSpec,
    /// `"worker"` or `"scheduler"`.
    pub kind: String,
    /// Our extension: features of the sender, e.g. `reports-all` (it
    /// sends a REPLY for every job, not only `reply-requested` ones).
    pub features: Option<String>,
}

/// Feature token: the job manager reports every finished job.
pub const FEATURE_REPORTS_ALL: &str = "reports-all";

/// Feature token prefix: the module prefixes the job manager runs (its
/// `allowed_paths`), `|`-separated: `allow=billing|reports.daily`. A router
/// hands such a job manager only the jobs it allows.
pub const FEATURE_ALLOW_PREFIX: &str = "allow=";

/// Most module prefixes a router takes from one INFORM; a longer list is
/// taken as "anything" (the job manager still refuses what it does not
/// allow, as before).
pub const MAX_ALLOWED_PATHS: usize = 1024;

impl Inform {
    /// Whether the sender declared `feature`.
    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.as_deref().is_some_and(|f| f.split(',').any(|t| t.trim() == feature))
    }

    /// The module prefixes the sender says it runs (`allow=` token);
    /// `None` when it did not say (EventMQ's job manager), allows `*`, or
    /// sent more than [`MAX_ALLOWED_PATHS`]: then anything may go to it.
    pub fn allowed_paths(&self) -> Option<Vec<String>> {
        let token =
            self.features.as_deref()?.split(',').map(str::trim).find_map(|t| t.strip_prefix(FEATURE_ALLOW_PREFIX))?;
        let paths: Vec<String> = token.split('|').map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect();
        if paths.is_empty() || paths.len() > MAX_ALLOWED_PATHS || paths.iter().any(|p| p == "*") {
            return None;
        }
        Some(paths)
    }
}

/// Feature token prefix: the job manager's labels, `labels=gpu|eu` (jobs
/// with `requires:` go only to one with them all).
pub const FEATURE_LABELS_PREFIX: &str = "labels=";

/// Feature token prefix: the job manager's name, `name=B` (jobs with
/// `on:B` go only to it).
pub const FEATURE_NAME_PREFIX: &str = "name=";

impl Inform {
    fn feature_value(&self, prefix: &str) -> Option<&str> {
        self.features.as_deref()?.split(',').map(str::trim).find_map(|t| t.strip_prefix(prefix))
    }

    /// The labels the sender says it has (`labels=` token; valid ones, at
    /// most [`crate::MAX_LABELS`]).
    pub fn labels(&self) -> Vec<String> {
        self.feature_value(FEATURE_LABELS_PREFIX)
            .map(|v| {
                v.split('|')
                    .map(str::trim)
                    .filter(|l| crate::valid_label(l))
                    .take(crate::MAX_LABELS)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The name the sender says it has (`name=` token), when valid.
    pub fn name(&self) -> Option<String> {
        self.feature_value(FEATURE_NAME_PREFIX).filter(|n| crate::valid_label(n)).map(str::to_owned)
    }
}

/// The `labels=` and `name=` feature tokens of a job manager (the ones that
/// can be said: valid labels and name).
pub fn placement_features(labels: &[String], name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let labels: Vec<&str> = labels.iter().map(String::as_str).filter(|l| crate::valid_label(l)).collect();
    if !labels.is_empty() {
        out.push(format!("{FEATURE_LABELS_PREFIX}{}", labels.join("|")));
    }
    if crate::valid_label(name) {
        out.push(format!("{FEATURE_NAME_PREFIX}{name}"));
    }
    out
}

/// The `allow=` feature token for `paths`; `None` when they cannot be said
/// in one (a path holding `,` `|` or whitespace, or none at all): the job
/// manager then simply refuses what it does not allow.
pub fn allow_feature(paths: &[String]) -> Option<String> {
    if paths.is_empty()
        || paths.len() > MAX_ALLOWED_PATHS
        || paths.iter().any(|p| p.is_empty() || p.contains([',', '|']) || p.contains(char::is_whitespace))
    {
        return None;
    }
    Some(format!("{FEATURE_ALLOW_PREFIX}{}", paths.join("|")))
}

/// Whether `module` is one of `prefixes` or inside one (`pkg` allows
/// `pkg` and `pkg.mod`, not `pkgx`); `*` allows anything.
pub fn path_allowed<S: AsRef<str>>(prefixes: &[S], module: &str) -> bool {
    prefixes.iter().any(|p| {
        let p = p.as_ref();
        p == "*"
            || module == p
            || (module.len() > p.len() && module.starts_with(p) && module.as_bytes()[p.len()] == b'.')
    })
}

impl Inform {
    pub(crate) fn parse_frames<F: AsRef<[u8]>>(p: &mut Parse<'_, F>) -> Result<Self, DecodeErrorKind> {
        let raw = p.next_string()?;
        let queues = QueueSpec::from_wire(&raw)
            .map_err(|e| DecodeErrorKind::BadJson { field: "queues", reason: e.to_string() })?;
        // EventMQ always sends the kind; a missing one is empty, which no
        // role accepts (a stray frame list must not pass for a job manager).
        let kind = p.next_optional_string()?.unwrap_or_default();
        let features = p.next_optional_string()?;
        Ok(Inform { queues, kind, features })
    }

    pub(crate) fn write_body(&self, out: &mut Vec<Vec<u8>>) {
        out.push(self.queues.to_wire().into_bytes());
        out.push(self.kind.as_bytes().to_vec());
        if let Some(f) = &self.features {
            out.push(f.as_bytes().to_vec());
        }
    }
}

#[cfg(test)]
mod allow_tests {
    use super::*;

    #[test]
    fn allowed_paths_round_trip_and_match_by_module_prefix() {
        let paths = vec!["billing".to_string(), "reports.daily".to_string()];
        let token = allow_feature(&paths).unwrap();
        let inform = Inform {
            queues: QueueSpec::default_queues(),
            kind: "worker".into(),
            features: Some(format!("reports-all,{token},batch")),
        };
        assert_eq!(inform.allowed_paths(), Some(paths.clone()));
        assert!(inform.has_feature("batch"));
        for (module, ok) in [
            ("billing", true),
            ("billing.tasks", true),
            ("billingx", false),
            ("reports", false),
            ("reports.daily.x", true),
        ] {
            assert_eq!(path_allowed(&paths, module), ok, "{module}");
        }
        // Not said, or anything: no restriction.
        let plain = Inform { features: Some("reports-all".into()), ..inform.clone() };
        assert_eq!(plain.allowed_paths(), None);
        let star = Inform { features: Some("allow=a|*".into()), ..inform };
        assert_eq!(star.allowed_paths(), None);
        assert_eq!(allow_feature(&["a,b".to_string()]), None);
        assert_eq!(allow_feature(&[]), None);
    }
}
