//! The machine a run happens on (recorded with every result) and the open-files limit.
//!
//! A process may hold as many sockets as its `RLIMIT_NOFILE` soft limit allows. The
//! harness raises the soft limit to the hard one ([`raise_fd_limit`]); what it could not
//! get it prints, and the load generator spreads clients over several worker processes
//! when one process's limit is too small ([`sockets_per_process`]).

use std::fs;

use serde::{Deserialize, Serialize};

/// What a result was measured on.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    /// `nproc`.
    pub cpus: usize,
    /// The CPU model from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Total memory in MiB.
    pub mem_total_mib: u64,
    /// `/proc/loadavg` when the run started (other work on the machine skews results).
    pub loadavg_at_start: String,
    /// The kernel release.
    pub kernel: String,
    /// The open-files limit of the harness after raising it.
    pub fd_limit: u64,
}

impl Machine {
    /// Reads the machine's description.
    pub fn describe(fd_limit: u64) -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let mem_total_mib = fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
            mem_total_mib,
            loadavg_at_start: load_average(),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            fd_limit,
        }
    }

    /// One line for the table header and the README.
    pub fn summary(&self) -> String {
        format!(
            "{} CPUs ({}), {:.1} GiB RAM, Linux {}, open-files limit {}, load average at start {}",
            self.cpus,
            self.cpu_model,
            self.mem_total_mib as f64 / 1024.0,
            self.kernel,
            self.fd_limit,
            self.loadavg_at_start
        )
    }
}

/// The first three fields of `/proc/loadavg`.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The open-files limit after trying to raise the soft limit to the hard limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit before.
    pub before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit (the most any process of this user may get without privileges).
    pub hard: u64,
}

/// Raises this process's soft `RLIMIT_NOFILE` as far as the hard limit allows. Children
/// inherit it.
pub fn raise_fd_limit() -> FdLimit {
    let (before, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    let soft = rlimit::increase_nofile_limit(hard).unwrap_or(before);
    FdLimit { before, soft, hard }
}

/// Descriptors a process keeps for everything but client sockets (stdio, the runtime,
/// control connections, a few spare).
pub const FD_RESERVE: u64 = 1_000;

/// How many client sockets one load-generator process may hold under `limit`, capped at
/// 19,000 so that every worker stays well inside a 20,000 limit.
pub fn sockets_per_process(limit: FdLimit) -> usize {
    usize::try_from(limit.soft.saturating_sub(FD_RESERVE).clamp(1, 19_000)).unwrap_or(19_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_this_machine() {
        let m = Machine::describe(1024);
        assert!(m.cpus >= 1);
        assert!(m.mem_total_mib > 0);
        assert!(m.summary().contains("CPUs"));
    }

    #[test]
    fn capacity_follows_the_limit() {
        let l = |soft| FdLimit {
            before: soft,
            soft,
            hard: soft,
        };
        assert_eq!(sockets_per_process(l(20_000)), 19_000);
        assert_eq!(sockets_per_process(l(4_096)), 3_096);
        assert_eq!(sockets_per_process(l(500)), 1);
        let raised = raise_fd_limit();
        assert!(raised.soft >= raised.before && raised.soft <= raised.hard);
    }
}
