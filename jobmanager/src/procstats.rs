//! Process figures for the health frame: RSS and CPU of the job manager and
//! of each worker, host, load average. Read from Linux `/proc` (the only
//! platform the pool supports: it relies on PR_SET_PDEATHSIG).

use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Instant;

/// Previous CPU-time samples, to turn cumulative CPU time into a percentage.
#[derive(Default)]
pub struct ProcStats {
    last: HashMap<u32, (u64, Instant)>,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// (rss bytes, cumulative CPU ticks) of `pid`.
fn read(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the command: state is field 3; utime 14 and stime 15 (1-based).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((rss_kb * 1024, utime + stime))
}

impl ProcStats {
    /// RSS and CPU % since the previous sample of this pid.
    fn sample(&mut self, pid: u32) -> Option<(u64, f64)> {
        let (rss, ticks) = read(pid)?;
        let now = Instant::now();
        let cpu = match self.last.insert(pid, (ticks, now)) {
            Some((t0, at)) => {
                let secs = now.duration_since(at).as_secs_f64().max(1e-3);
                100.0 * (ticks.saturating_sub(t0) as f64 / clock_ticks()) / secs
            }
            None => 0.0,
        };
        Some((rss, cpu))
    }

    /// Adds name, host, pid, queues, load average and per-process RSS / CPU
    /// to the state machine's health JSON.
    pub fn enrich(&mut self, health: &str, name: &str, queues: &str) -> String {
        let Ok(mut v) = serde_json::from_str::<Value>(health) else { return health.to_owned() };
        let me = std::process::id();
        if let Some((rss, cpu)) = self.sample(me) {
            v["rss_bytes"] = json!(rss);
            v["cpu_percent"] = json!(cpu);
        }
        v["pid"] = json!(me);
        v["name"] = json!(name);
        v["host"] = json!(nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default());
        v["queues"] = serde_json::from_str(queues).unwrap_or(Value::Null);
        if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
            let parts: Vec<f64> = l.split_whitespace().take(3).filter_map(|x| x.parse().ok()).collect();
            v["load_avg"] = json!(parts);
        }
        let mut seen = Vec::new();
        if let Some(workers) = v["workers"].as_array_mut() {
            for w in workers {
                let Some(pid) = w["pid"].as_u64() else { continue };
                seen.push(pid as u32);
                if let Some((rss, cpu)) = self.sample(pid as u32) {
                    w["rss_bytes"] = json!(rss);
                    w["cpu_percent"] = json!(cpu);
                }
            }
        }
        seen.push(me);
        self.last.retain(|pid, _| seen.contains(pid));
        v.to_string()
    }
}
