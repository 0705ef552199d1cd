//! A CPU budget for a process, so that several nodes on one machine each get the share of a
//! core a node of their own would have (`search-shards --node-cpu`): a cgroup of the v1 `cpu`
//! controller whose CFS quota is `cores` × its period. The bench must run as root on a machine
//! that mounts that controller at `/sys/fs/cgroup/cpu` (a cgroup v2 machine is refused with
//! that said).
//!
//! A short period (10 ms) keeps a throttled node's stalls short: a node that spent its budget
//! waits at most the rest of a period.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Where the v1 `cpu` controller is mounted.
const CPU_CONTROLLER: &str = "/sys/fs/cgroup/cpu";
/// The CFS period of every budget, in microseconds.
const PERIOD_MICROS: u64 = 10_000;

/// One cgroup with a CPU budget, removed when dropped (its processes moved back to the root).
pub struct CpuQuota {
    dir: PathBuf,
}

impl CpuQuota {
    /// A new cgroup named `name` whose processes share `cores` cores' worth of CPU time.
    pub fn new(name: &str, cores: f64) -> anyhow::Result<CpuQuota> {
        anyhow::ensure!(
            cores > 0.0 && cores.is_finite(),
            "a CPU budget is a positive number of cores"
        );
        anyhow::ensure!(
            Path::new(CPU_CONTROLLER).join("cpu.cfs_quota_us").exists(),
            "--node-cpu needs the cgroup v1 cpu controller at {CPU_CONTROLLER} (and root)"
        );
        let dir = Path::new(CPU_CONTROLLER).join(name);
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let quota = CpuQuota { dir };
        quota.write("cpu.cfs_period_us", &PERIOD_MICROS.to_string())?;
        let micros = ((cores * PERIOD_MICROS as f64).round() as u64).max(1_000);
        quota.write("cpu.cfs_quota_us", &micros.to_string())?;
        Ok(quota)
    }

    /// Moves process `pid` (every thread, and the threads it starts later) into the budget.
    pub fn add(&self, pid: u32) -> anyhow::Result<()> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// Times the budget's processes were held back, and for how long in all (seconds).
    pub fn throttled(&self) -> anyhow::Result<(u64, f64)> {
        let stat = std::fs::read_to_string(self.dir.join("cpu.stat"))?;
        let field = |name: &str| {
            stat.lines()
                .find_map(|line| line.strip_prefix(name)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok((
            field("nr_throttled "),
            field("throttled_time ") as f64 / 1e9,
        ))
    }

    fn write(&self, file: &str, value: &str) -> anyhow::Result<()> {
        let path = self.dir.join(file);
        std::fs::write(&path, value)
            .with_context(|| format!("writing {value} to {}", path.display()))
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        // a cgroup is removed once empty: what still runs in it goes back to the root
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(Path::new(CPU_CONTROLLER).join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
