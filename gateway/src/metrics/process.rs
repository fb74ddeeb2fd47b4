//! The process figures every Prometheus client exposes under the standard names
//! (`process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`,
//! `process_max_fds`, `process_cpu_seconds_total`, `process_start_time_seconds`), read
//! from `/proc/self` at each scrape. Where `/proc` is missing (not Linux) or a file cannot
//! be read, the figures it gives are left out, and the rest still served.

use std::fs;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second of the times in `/proc/<pid>/stat` (`USER_HZ`): 100 on every
/// Linux architecture the gateway builds for (the kernel converts to it for userspace,
/// whatever its own tick rate).
const TICKS_PER_SECOND: f64 = 100.0;

/// Reads the process figures at each scrape.
#[derive(Debug)]
pub(crate) struct ProcessCollector;

/// What one scrape found; `None` where a file could not be read or parsed.
#[derive(Debug, Default, PartialEq)]
struct Figures {
    cpu_seconds: Option<f64>,
    start_time_seconds: Option<f64>,
    virtual_bytes: Option<u64>,
    resident_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

impl Figures {
    fn read() -> Self {
        let stat = fs::read_to_string("/proc/self/stat").ok();
        let stat = stat.as_deref().and_then(Stat::parse);
        let boot_time = fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| boot_time(&text));
        let resident_bytes = fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|text| resident_bytes(&text));
        let open_fds = fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| entries.count() as u64);
        let max_fds = fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|text| max_open_files(&text));
        Figures {
            cpu_seconds: stat
                .as_ref()
                .map(|s| (s.utime + s.stime) as f64 / TICKS_PER_SECOND),
            start_time_seconds: stat
                .as_ref()
                .zip(boot_time)
                .map(|(s, boot)| boot as f64 + s.start_ticks as f64 / TICKS_PER_SECOND),
            virtual_bytes: stat.as_ref().map(|s| s.vsize),
            resident_bytes,
            open_fds,
            max_fds,
        }
    }
}

/// The fields of `/proc/self/stat` used here.
#[derive(Debug)]
struct Stat {
    utime: u64,
    stime: u64,
    start_ticks: u64,
    vsize: u64,
}

impl Stat {
    /// Parses `/proc/<pid>/stat`: the command name (field 2) is in parentheses and may hold
    /// spaces and parentheses itself, so the fields are counted from its last `)`.
    fn parse(text: &str) -> Option<Stat> {
        let after_name = &text[text.rfind(')')? + 1..];
        // Field 3 (the state) is the first here.
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Stat {
            utime: field(14)?,
            stime: field(15)?,
            start_ticks: field(22)?,
            vsize: field(23)?,
        })
    }
}

/// `btime` of `/proc/stat`: the boot time in seconds since the Unix epoch.
fn boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// `VmRSS` of `/proc/self/status` (in kB there), in bytes.
fn resident_bytes(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().next()?.parse().ok()?;
    kb.checked_mul(1024)
}

/// The soft limit on open files in `/proc/self/limits` (`None` when unlimited).
fn max_open_files(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let figures = Figures::read();
        if let Some(v) = figures.cpu_seconds {
            let metric = ConstCounter::new(v);
            let help = "Total user and system CPU time spent in seconds.";
            metric.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                help,
                None,
                metric.metric_type(),
            )?)?;
        }
        if let Some(v) = figures.start_time_seconds {
            let metric = ConstGauge::new(v);
            let help = "Start time of the process since unix epoch in seconds.";
            metric.encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                help,
                None,
                metric.metric_type(),
            )?)?;
        }
        let whole = [
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                figures.virtual_bytes,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                figures.resident_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                figures.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                figures.max_fds,
            ),
        ];
        for (name, help, value) in whole {
            if let Some(v) = value {
                let metric = ConstGauge::new(v);
                metric.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    metric.metric_type(),
                )?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis, as a process may call itself.
        let text = "4242 (sw (x) y) S 1 4242 4242 0 -1 4194304 1000 0 0 0 250 50 0 0 20 0 \
                    9 0 12345 987654321 2048 18446744073709551615";
        let stat = Stat::parse(text).expect("parsed");
        assert_eq!((stat.utime, stat.stime), (250, 50));
        assert_eq!(stat.start_ticks, 12345);
        assert_eq!(stat.vsize, 987_654_321);
    }

    #[test]
    fn status_limits_and_boot_time_are_read() {
        assert_eq!(
            resident_bytes("Name:\tswitchboard\nVmRSS:\t    1234 kB\nThreads:\t3\n"),
            Some(1234 * 1024)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            20000                524288               files\n";
        assert_eq!(max_open_files(limits), Some(20000));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(max_open_files(unlimited), None);
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_its_figures() {
        let figures = Figures::read();
        assert!(figures.open_fds.is_some_and(|n| n > 0), "{figures:?}");
        assert!(figures.resident_bytes.is_some_and(|n| n > 0), "{figures:?}");
        assert!(
            figures.start_time_seconds.is_some_and(|t| t > 1.0e9),
            "{figures:?}"
        );
        assert!(figures.cpu_seconds.is_some(), "{figures:?}");
    }
}
