//! Results: one [`Row`] per (scenario, system, store), printed as a fixed-width table row
//! and appended as one JSON object per line to the results file.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::machine::Machine;
use super::stats::Percentiles;

/// Error messages kept per row (the count is always complete).
pub const MAX_ERROR_SAMPLES: usize = 5;

/// One measured (or skipped) combination.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Row {
    /// Identifies the run (all rows of one `bench` invocation share it).
    pub run_id: String,
    /// When the row was measured (RFC 3339, UTC).
    pub at: String,
    /// `smoke`, `full` or `custom`.
    pub size: String,
    /// `idle`, `echo`, `fanout`, `fanout-batch` or `churn`.
    pub scenario: String,
    /// `switchboard`, `switchboard-wss`, `nginx-tls`, `pushpin`, `nchan`, `node`, `floor`
    /// or `floor-http`.
    pub system: String,
    /// `memory`, `redis`, or `-` for systems without a Switchboard store.
    pub store: String,
    /// Completed with no error.
    pub ok: bool,
    /// Errors counted (failed connects, wrong or missing replies, lost deliveries, …).
    pub errors: u64,
    /// The first few error messages.
    pub error_samples: Vec<String>,
    /// Defects seen that did not stop the scenario (shown in the note).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Why the combination was not measured, if it was not.
    pub skipped: Option<String>,
    /// Skipped because the gateway under test was built without the feature the scenario
    /// measures (passthrough, before it landed), not because a tool is missing: such a
    /// row never fails the run, even under `SWITCHBOARD_REQUIRE_ALL`.
    #[serde(default)]
    pub not_built: bool,
    /// Connections (idle: held; echo: clients; fanout: members; churn: concurrency).
    pub conns: usize,
    /// Units done: connections, round trips, deliveries or cycles.
    pub ops: u64,
    /// Units per second.
    pub rate: Option<f64>,
    /// What `rate` counts, e.g. `rt/s`.
    pub rate_unit: String,
    /// Latency: echo round trip, fan-out time to the last member, churn cycle, idle connect.
    pub latency: Option<Percentiles>,
    /// Resident memory of the system under test per held connection, KiB.
    pub rss_kib_per_conn: Option<f64>,
    /// Resident memory of the system under test at the measurement, KiB.
    pub rss_kib: Option<u64>,
    /// CPU of the system under test per unit, µs.
    pub cpu_us_per_op: Option<f64>,
    /// CPU of the benchmark function per unit, µs (gateway, Pushpin and Nchan rows).
    pub fn_cpu_us_per_op: Option<f64>,
    /// Anything else worth keeping (per-process RSS, publish reply times, …).
    pub detail: serde_json::Value,
    /// A scenario's own words for the note column (the wave's memory ratios), shown when
    /// there is no error or warning to show.
    #[serde(default)]
    pub note: Option<String>,
    /// The machine.
    pub machine: Machine,
}

impl Row {
    /// A row for `scenario` × `system` × `store` with nothing measured yet.
    pub fn new(scenario: &str, system: &str, store: &str) -> Self {
        Row {
            scenario: scenario.to_owned(),
            system: system.to_owned(),
            store: store.to_owned(),
            ok: true,
            detail: serde_json::Value::Null,
            ..Row::default()
        }
    }

    /// Counts `n` errors, keeping `sample` if there is room.
    pub fn error(&mut self, n: u64, sample: impl Into<String>) {
        if n == 0 {
            return;
        }
        self.errors += n;
        self.ok = false;
        if self.error_samples.len() < MAX_ERROR_SAMPLES {
            self.error_samples.push(sample.into());
        }
    }

    /// Adds `errors` counted elsewhere with their samples.
    pub fn errors_from(&mut self, n: u64, samples: &[String]) {
        if n == 0 {
            return;
        }
        self.errors += n;
        self.ok = false;
        for s in samples {
            if self.error_samples.len() < MAX_ERROR_SAMPLES {
                self.error_samples.push(s.clone());
            }
        }
    }

    /// Marks the whole row as failed with `why`.
    pub fn fail(&mut self, why: impl Into<String>) {
        self.error(1, why);
    }

    /// A row that was not measured.
    pub fn skip(mut self, why: impl Into<String>) -> Self {
        self.skipped = Some(why.into());
        self
    }

    /// A row not measured because the gateway lacks the feature (see [`Row::not_built`]).
    pub fn not_built(mut self, why: impl Into<String>) -> Self {
        self.skipped = Some(why.into());
        self.not_built = true;
        self
    }
}

/// The table's header line.
pub fn header() -> String {
    format!(
        "{:<16} {:<15} {:<6} {:>6} {:>12} {:<8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>6}  {}",
        "scenario",
        "system",
        "store",
        "conns",
        "rate",
        "unit",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "KiB/conn",
        "cpu µs/op",
        "errors",
        "note"
    )
}

/// `row` as one table line.
pub fn line(row: &Row) -> String {
    let f = |v: Option<f64>, prec: usize| v.map_or("-".to_owned(), |v| format!("{v:.prec$}"));
    let lat = row.latency.as_ref();
    let note = if let (Some(why), true) = (&row.skipped, row.not_built) {
        format!("NOT MEASURED: {why}")
    } else if let Some(why) = &row.skipped {
        format!("SKIPPED: {why}")
    } else if let Some(first) = row.error_samples.first() {
        format!("ERROR: {first}")
    } else if let Some(first) = row.warnings.first() {
        format!("WARNING: {first}")
    } else if let Some(note) = &row.note {
        note.clone()
    } else if let Some(fn_cpu) = row.fn_cpu_us_per_op {
        format!("function {fn_cpu:.1} µs/op")
    } else {
        String::new()
    };
    format!(
        "{:<16} {:<15} {:<6} {:>6} {:>12} {:<8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>6}  {}",
        row.scenario,
        row.system,
        row.store,
        row.conns,
        f(row.rate, 0),
        row.rate_unit,
        f(lat.map(|l| l.p50_ms), 2),
        f(lat.map(|l| l.p99_ms), 2),
        f(lat.map(|l| l.p999_ms), 2),
        f(row.rss_kib_per_conn, 2),
        f(row.cpu_us_per_op, 1),
        row.errors,
        note
    )
}

/// Appends `row` to the JSONL file at `path` (creating its directory).
pub fn append(path: &Path, row: &Row) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(file, "{}", serde_json::to_string(row)?)?;
    Ok(())
}

/// Every row in the JSONL file at `path` (lines that do not parse are skipped).
pub fn load(path: &Path) -> anyhow::Result<Vec<Row>> {
    let text = fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_print_and_round_trip() {
        let mut row = Row::new("echo", "switchboard", "memory");
        row.rate = Some(12345.6);
        row.rate_unit = "rt/s".into();
        row.latency = Some(Percentiles {
            count: 3,
            p50_ms: 1.0,
            p99_ms: 2.0,
            p999_ms: 3.0,
            max_ms: 3.0,
            mean_ms: 2.0,
        });
        let l = line(&row);
        assert!(l.contains("12346") && l.contains("switchboard"), "{l}");
        assert!(
            l.starts_with("echo             switchboard     memory"),
            "{l}"
        );
        row.error(2, "boom");
        assert!(!row.ok && line(&row).contains("ERROR: boom"));

        let dir = std::env::temp_dir().join(format!("bench-report-{}", uuid::Uuid::new_v4()));
        let path = dir.join("r.jsonl");
        append(&path, &row).unwrap();
        append(&path, &Row::new("idle", "node", "-").skip("not installed")).unwrap();
        let rows = load(&path).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].errors, 2);
        assert_eq!(rows[1].skipped.as_deref(), Some("not installed"));
        assert!(!rows[1].not_built);
        let pending = Row::new("passthrough-idle", "switchboard", "memory").not_built("no");
        assert!(
            line(&pending).contains("NOT MEASURED: no"),
            "{}",
            line(&pending)
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
