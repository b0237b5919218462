//! Queue lists: `(weight, name)` pairs. On the wire (INFORM) they are JSON
//! `[[10, "default"]]`; on a command line `a,b`, `20:heavy,10:default`, or
//! the same JSON.

use thiserror::Error;

/// The queue a REQUEST for an unserved queue falls back to.
pub const DEFAULT_QUEUE: &str = "default";
/// The weight of a queue given without one.
pub const DEFAULT_WEIGHT: u32 = 10;

/// Weighted queue names, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSpec(pub Vec<(u32, String)>);

/// Why a queue list is unreadable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QueueSpecError {
    #[error("queue list is not JSON: {0}")]
    NotJson(String),
    #[error("queue entry {0} must be [weight, \"name\"] or \"name\"")]
    BadEntry(String),
    #[error("bad weight {0:?}: must be a non-negative integer")]
    BadWeight(String),
    #[error("empty queue name")]
    EmptyName,
}

impl QueueSpec {
    /// The router's own default: `[[10, "default"]]`.
    pub fn default_queues() -> Self {
        QueueSpec(vec![(DEFAULT_WEIGHT, DEFAULT_QUEUE.to_owned())])
    }

    /// Reads an INFORM `queues` frame: JSON, or `""` for none.
    pub fn from_wire(raw: &str) -> Result<Self, QueueSpecError> {
        if raw.trim().is_empty() {
            return Ok(QueueSpec::default());
        }
        let v: serde_json::Value = serde_json::from_str(raw).map_err(|e| QueueSpecError::NotJson(e.to_string()))?;
        let serde_json::Value::Array(items) = v else {
            return Err(QueueSpecError::BadEntry(v.to_string()));
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match &item {
                serde_json::Value::String(name) if !name.is_empty() => out.push((DEFAULT_WEIGHT, name.clone())),
                serde_json::Value::Array(pair) if pair.len() == 2 => {
                    let weight = pair[0]
                        .as_u64()
                        .or_else(|| pair[0].as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                        .or_else(|| pair[0].as_str().and_then(|s| s.trim().parse().ok()))
                        .ok_or_else(|| QueueSpecError::BadWeight(pair[0].to_string()))?;
                    let name = pair[1].as_str().ok_or_else(|| QueueSpecError::BadEntry(item.to_string()))?;
                    if name.is_empty() {
                        return Err(QueueSpecError::EmptyName);
                    }
                    out.push((weight.min(u32::MAX as u64) as u32, name.to_owned()));
                }
                _ => return Err(QueueSpecError::BadEntry(item.to_string())),
            }
        }
        Ok(QueueSpec(out))
    }

    /// Reads a command-line / settings form: JSON (`[[20,"heavy"]]`),
    /// `20:heavy,10:default`, or `a,b` (weight 10 each).
    pub fn parse_cli(raw: &str) -> Result<Self, QueueSpecError> {
        let raw = raw.trim();
        if raw.starts_with('[') {
            return Self::from_wire(raw);
        }
        let mut out = Vec::new();
        for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (weight, name) = match item.split_once(':') {
                Some((w, n)) => {
                    (w.trim().parse::<u32>().map_err(|_| QueueSpecError::BadWeight(w.to_owned()))?, n.trim())
                }
                None => (DEFAULT_WEIGHT, item),
            };
            if name.is_empty() {
                return Err(QueueSpecError::EmptyName);
            }
            out.push((weight, name.to_owned()));
        }
        Ok(QueueSpec(out))
    }

    /// The INFORM frame: `[[10,"default"]]`, or `""` when empty.
    pub fn to_wire(&self) -> String {
        if self.0.is_empty() {
            return String::new();
        }
        serde_json::to_string(&self.0).expect("queue list serialises")
    }

    /// True when no queue is listed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The queue names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(_, n)| n.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(v: &[(u32, &str)]) -> QueueSpec {
        QueueSpec(v.iter().map(|(w, n)| (*w, n.to_string())).collect())
    }

    #[test]
    fn cli_forms() {
        assert_eq!(QueueSpec::parse_cli("a,b").unwrap(), q(&[(10, "a"), (10, "b")]));
        assert_eq!(QueueSpec::parse_cli("20:heavy, 10:default").unwrap(), q(&[(20, "heavy"), (10, "default")]));
        assert_eq!(
            QueueSpec::parse_cli(r#"[[20,"heavy"],[10,"default"]]"#).unwrap(),
            q(&[(20, "heavy"), (10, "default")])
        );
        assert!(QueueSpec::parse_cli("x:heavy").is_err());
        assert!(QueueSpec::parse_cli("20:").is_err());
    }

    #[test]
    fn wire_forms() {
        assert_eq!(QueueSpec::from_wire("").unwrap(), QueueSpec::default());
        assert_eq!(QueueSpec::from_wire(r#"[[10, "default"]]"#).unwrap(), QueueSpec::default_queues());
        assert_eq!(QueueSpec::from_wire(r#"["a"]"#).unwrap(), q(&[(10, "a")]));
        assert!(QueueSpec::from_wire("[[10]]").is_err());
        assert!(QueueSpec::from_wire("{").is_err());
        assert!(QueueSpec::from_wire(r#"[[-1, "x"]]"#).is_err());
        let s = q(&[(20, "heavy"), (10, "default")]);
        assert_eq!(QueueSpec::from_wire(&s.to_wire()).unwrap(), s);
    }
}
