//! Process figures for the health frame: RSS and CPU of the job manager and
//! of each worker, host, load average. Read from Linux `/proc` (the only
//! platform the pool supports: it relies on PR_SET_PDEATHSIG).

use emq_protocol::PoolHealth;
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

/// This machine's name, never empty (the router labels an unnamed job
/// manager's metrics `host:pid`).
fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The 1, 5 and 15 minute load averages (empty when unreadable).
fn load_avg() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default()
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

    /// Fills in the state machine's health with this process's pid, the
    /// host, its load average, and the RSS / CPU of this process and of
    /// each worker.
    pub fn fill(&mut self, health: &mut PoolHealth) {
        let me = std::process::id();
        health.pid = me;
        health.host = hostname();
        health.load_avg = load_avg();
        if let Some((rss, cpu)) = self.sample(me) {
            health.rss_bytes = Some(rss);
            health.cpu_percent = Some(cpu);
        }
        let mut seen = vec![me];
        for w in &mut health.workers {
            let Some(pid) = w.pid else { continue };
            seen.push(pid);
            if let Some((rss, cpu)) = self.sample(pid) {
                w.rss_bytes = Some(rss);
                w.cpu_percent = Some(cpu);
            }
        }
        self.last.retain(|pid, _| seen.contains(pid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emq_protocol::WorkerHealth;

    #[test]
    fn fills_process_figures_of_itself_and_its_workers() {
        let me = std::process::id();
        let mut h = PoolHealth {
            name: "jm1".into(),
            workers: vec![
                WorkerHealth { slot: 0, pid: Some(me), ..Default::default() },
                WorkerHealth { slot: 1, pid: None, ..Default::default() },
            ],
            ..Default::default()
        };
        let mut stats = ProcStats::default();
        stats.fill(&mut h);
        assert_eq!((h.pid, h.name.as_str()), (me, "jm1"));
        assert!(!h.host.is_empty());
        assert_eq!(h.load_avg.len(), 3);
        assert!(h.rss_bytes.unwrap() > 0 && h.cpu_percent.is_some());
        assert!(h.workers[0].rss_bytes.unwrap() > 0);
        assert_eq!(h.workers[1].rss_bytes, None);
        // The wire frame keeps today's keys.
        let v: serde_json::Value = serde_json::from_str(&h.to_json()).unwrap();
        for k in ["name", "host", "pid", "queues", "load_avg", "rss_bytes", "cpu_percent", "workers", "in_flight"] {
            assert!(v.get(k).is_some(), "{k} in {v}");
        }
        for k in ["slot", "pid", "state", "jobs", "queued", "spare", "rss_bytes", "cpu_percent"] {
            assert!(v["workers"][0].get(k).is_some(), "{k} in {v}");
        }
    }
}
