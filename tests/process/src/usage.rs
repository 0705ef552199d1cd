//! What a process costs, read from Linux's `/proc`: resident memory, CPU time and writes of one
//! process, and the busy and total CPU time of the whole machine. Times are in seconds, from clock
//! ticks of 10 ms (`USER_HZ` = 100).

use std::num::ParseIntError;

/// Clock ticks per second in `/proc` (`USER_HZ`).
const TICKS_PER_SECOND: f64 = 100.0;

/// Why a `/proc` file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has no {field}")]
    Missing { path: String, field: &'static str },
    #[error("{path}: {field} is not a number")]
    NotANumber {
        path: String,
        field: &'static str,
        #[source]
        source: ParseIntError,
    },
}

fn read(path: &str) -> Result<String, UsageError> {
    std::fs::read_to_string(path).map_err(|source| UsageError::Read {
        path: path.to_owned(),
        source,
    })
}

fn number(path: &str, field: &'static str, text: Option<&str>) -> Result<u64, UsageError> {
    let text = text.ok_or_else(|| UsageError::Missing {
        path: path.to_owned(),
        field,
    })?;
    text.parse().map_err(|source| UsageError::NotANumber {
        path: path.to_owned(),
        field,
        source,
    })
}

/// Resident memory of a process, in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn resident_bytes(pid: u32) -> Result<u64, UsageError> {
    let path = format!("/proc/{pid}/status");
    let status = read(&path)?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .ok_or_else(|| UsageError::Missing {
            path: path.clone(),
            field: "VmRSS",
        })?;
    let kib = number(&path, "VmRSS value", line.split_whitespace().nth(1))?;
    Ok(kib * 1024)
}

/// User + system CPU time of a process so far, in seconds (`/proc/<pid>/stat`).
pub fn cpu_seconds(pid: u32) -> Result<f64, UsageError> {
    let path = format!("/proc/{pid}/stat");
    let stat = read(&path)?;
    // fields after the command name (which may hold spaces) start after the last ')'
    let after_command = stat.rfind(')').ok_or_else(|| UsageError::Missing {
        path: path.clone(),
        field: "command name",
    })?;
    let fields: Vec<&str> = stat
        .get(after_command + 2..)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let user = number(&path, "utime", fields.get(11).copied())?;
    let system = number(&path, "stime", fields.get(12).copied())?;
    Ok((user + system) as f64 / TICKS_PER_SECOND)
}

/// What a process has written so far (`/proc/<pid>/io`, every thread of the process included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Bytes the process caused to be sent to a block device (`write_bytes`): file data it
    /// dirtied, counted when written, whether or not it reached the disk yet. Writes to tmpfs and
    /// to sockets do not count.
    pub storage_bytes: u64,
    /// Write-family system calls (`syscw`: `write`, `writev`, `pwrite`… on any descriptor, so
    /// socket and eventfd writes count too; `sendto`/`sendmsg` and `fsync` do not).
    pub write_syscalls: u64,
}

/// What process `pid` has written so far (`/proc/<pid>/io`; readable for the caller's own
/// children).
pub fn written(pid: u32) -> Result<Written, UsageError> {
    let path = format!("/proc/{pid}/io");
    let io = read(&path)?;
    let field = |name: &'static str| {
        let value = io
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim);
        number(&path, name, value)
    };
    Ok(Written {
        storage_bytes: field("write_bytes")?,
        write_syscalls: field("syscw")?,
    })
}

/// The machine's CPU ticks so far, every core summed (`/proc/stat`'s `cpu` line: user, nice,
/// system, idle, iowait, irq, softirq, steal, …).
fn machine_ticks() -> Result<Vec<u64>, UsageError> {
    let path = "/proc/stat";
    let stat = read(path)?;
    let line = stat.lines().next().ok_or_else(|| UsageError::Missing {
        path: path.to_owned(),
        field: "cpu line",
    })?;
    line.split_whitespace()
        .skip(1)
        .map(|field| number(path, "cpu ticks", Some(field)))
        .collect()
}

/// CPU time of the whole machine so far, in seconds: (busy, total) over every core
/// (`/proc/stat`), so a run can report how much of the machine was busy.
pub fn machine_cpu_seconds() -> Result<(f64, f64), UsageError> {
    let ticks = machine_ticks()?;
    let total: u64 = ticks.iter().sum();
    // idle and iowait
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Ok((
        (total - idle) as f64 / TICKS_PER_SECOND,
        total as f64 / TICKS_PER_SECOND,
    ))
}

/// CPU time the hypervisor gave other guests while this machine's cores wanted to run, so far,
/// in seconds (`/proc/stat`'s steal): on a shared host, the share of a run's machine time
/// stolen says how far its timings are from a quiet machine's.
pub fn machine_stolen_seconds() -> Result<f64, UsageError> {
    Ok(machine_ticks()?.get(7).copied().unwrap_or(0) as f64 / TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let pid = std::process::id();
        assert!(resident_bytes(pid).unwrap() > 0);
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(0u64);
        }
        assert!(cpu_seconds(pid).unwrap() > 0.0);
        let (busy, total) = machine_cpu_seconds().unwrap();
        assert!(busy > 0.0 && total >= busy);
    }

    #[test]
    fn a_write_to_a_file_counts_as_a_write_syscall() {
        let pid = std::process::id();
        let file = std::env::temp_dir().join(format!("chorus-process-usage-{pid}"));
        let before = written(pid).unwrap();
        std::fs::write(&file, b"x").unwrap();
        let after = written(pid).unwrap();
        std::fs::remove_file(&file).unwrap();
        assert!(after.write_syscalls > before.write_syscalls);
    }
}
