//! What else the host did while a burst ran, from `/proc`: CPU taken by
//! this process, the daemon's threads and everyone else, free and dirty
//! memory, page reclaim.

use std::path::{Path, PathBuf};
use std::time::Instant;

/// What else happened on the host while a burst ran, from `/proc`
/// (zeros where unreadable). The machine may be shared: this tells a slow
/// repetition caused by a neighbour (CPU taken by other processes, page
/// reclaim, dirty-page throttling) from one caused by the daemon.
#[derive(Clone, Debug, Default)]
pub struct HostSample {
    /// Free and dirty memory at the start, MiB.
    pub free_mib: u64,
    pub dirty_mib: u64,
    /// Pages scanned for reclaim during the burst, by allocating tasks
    /// (direct) and by kswapd.
    pub scan_direct: u64,
    pub scan_kswapd: u64,
    /// CPUs busy (all processes, user + system + irq), this process, the
    /// daemon (by thread name, busiest first), everything else, and steal
    /// time: in CPUs, i.e. CPU-seconds per second of the burst.
    pub cpus_busy: f64,
    pub cpus_bench: f64,
    pub cpus_daemon: Vec<(String, f64)>,
    pub cpus_other: f64,
    pub cpus_steal: f64,
}

impl HostSample {
    pub fn describe(&self) -> String {
        let daemon: f64 = self.cpus_daemon.iter().map(|(_, c)| c).sum();
        let threads: Vec<String> = self
            .cpus_daemon
            .iter()
            .filter(|(_, c)| *c >= 0.05)
            .map(|(name, c)| format!("{name} {c:.2}"))
            .collect();
        format!(
            "cpus busy {:.2} (bench {:.2}, daemon {daemon:.2} [{}], other {:.2}), steal {:.2}; \
             free {} MiB, dirty {} MiB; reclaim scan {} direct, {} kswapd",
            self.cpus_busy,
            self.cpus_bench,
            threads.join(", "),
            self.cpus_other,
            self.cpus_steal,
            self.free_mib,
            self.dirty_mib,
            self.scan_direct,
            self.scan_kswapd
        )
    }
}

/// Counters read at the start of a burst; [`HostProbe::finish`] turns them
/// into a [`HostSample`].
pub struct HostProbe {
    pub at: Instant,
    pub daemon_pid: Option<u32>,
    pub free_mib: u64,
    pub dirty_mib: u64,
    pub scan_direct: u64,
    pub scan_kswapd: u64,
    /// (busy, steal) clock ticks of all CPUs.
    pub cpu: (u64, u64),
    pub bench_ticks: u64,
    pub daemon_ticks: Vec<(u32, String, u64)>,
}

impl HostProbe {
    pub fn start(daemon_pid: Option<u32>) -> Self {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let vmstat = std::fs::read_to_string("/proc/vmstat").unwrap_or_default();
        let field = |text: &str, key: &str| -> u64 {
            text.lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        HostProbe {
            free_mib: field(&meminfo, "MemFree:") >> 10,
            dirty_mib: field(&meminfo, "Dirty:") >> 10,
            scan_direct: field(&vmstat, "pgscan_direct "),
            scan_kswapd: field(&vmstat, "pgscan_kswapd "),
            cpu: cpu_ticks(),
            bench_ticks: task_ticks(Path::new("/proc/self/stat")).map_or(0, |(_, t)| t),
            daemon_ticks: daemon_pid.map_or_else(Vec::new, thread_ticks),
            daemon_pid,
            at: Instant::now(),
        }
    }

    pub fn finish(self) -> HostSample {
        let seconds = self.at.elapsed().as_secs_f64().max(1e-9);
        // SAFETY: sysconf has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let cpus = |ticks: u64| ticks as f64 / hz / seconds;
        let end = HostProbe::start(self.daemon_pid);
        let mut daemon: Vec<(String, f64)> = Vec::new();
        for (tid, name, ticks) in &end.daemon_ticks {
            let before = self
                .daemon_ticks
                .iter()
                .find(|(t, _, _)| t == tid)
                .map_or(0, |(_, _, b)| *b);
            let used = cpus(ticks.saturating_sub(before));
            match daemon.iter_mut().find(|(n, _)| n == name) {
                Some((_, total)) => *total += used,
                None => daemon.push((name.clone(), used)),
            }
        }
        daemon.sort_by(|a, b| b.1.total_cmp(&a.1));
        let busy = cpus(end.cpu.0.saturating_sub(self.cpu.0));
        let bench = cpus(end.bench_ticks.saturating_sub(self.bench_ticks));
        let daemon_total: f64 = daemon.iter().map(|(_, c)| c).sum();
        HostSample {
            free_mib: self.free_mib,
            dirty_mib: self.dirty_mib,
            scan_direct: end.scan_direct.saturating_sub(self.scan_direct),
            scan_kswapd: end.scan_kswapd.saturating_sub(self.scan_kswapd),
            cpus_busy: busy,
            cpus_bench: bench,
            cpus_other: (busy - bench - daemon_total).max(0.0),
            cpus_daemon: daemon,
            cpus_steal: cpus(end.cpu.1.saturating_sub(self.cpu.1)),
        }
    }
}

/// (busy, steal) ticks of all CPUs from the first line of `/proc/stat`.
pub fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let values: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let at = |i: usize| values.get(i).copied().unwrap_or(0);
    (at(0) + at(1) + at(2) + at(5) + at(6), at(7))
}

/// (name, user + system ticks) of the task whose `stat` file is `path`.
pub fn task_ticks(path: &Path) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    // pid (comm) state ...: comm may hold spaces, so split at the last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // After the comm: state is field 0, utime field 11, stime field 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// (tid, name, ticks) of every thread of process `pid`.
pub fn thread_ticks(pid: u32) -> Vec<(u32, String, u64)> {
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let tid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let (name, ticks) = task_ticks(&entry.path().join("stat"))?;
            Some((tid, name, ticks))
        })
        .collect()
}
