//! `bench`: the command line, and the run loop over scenarios × systems × stores.
//!
//! ```text
//! bench [--size smoke|full] [--store memory|redis|both] [--only idle,echo,fanout,churn]
//!       [--systems switchboard,switchboard-wss,nginx-tls,pushpin,nchan,node,floor] [--peers]
//!       [--results FILE] [--svg FILE]
//! bench svg [--results FILE] [--out FILE] [--run RUN_ID]
//! bench worker            (internal: a load-generator subprocess)
//! ```
//!
//! A run first makes its CA and server certificate ([`crate::tls`]). Every combination
//! starts its system fresh, runs one scenario, prints a table row and appends it to the
//! results file (`switchboard-wss` and `nginx-tls` take part in `idle` and `echo` only).
//! The exit status is non-zero when a scenario errored (or, under
//! `SWITCHBOARD_REQUIRE_ALL`, when a requested system could not run); timings never fail a
//! run.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use super::backend::BackendPort;
use super::machine::{FdLimit, Machine, raise_fd_limit, sockets_per_process};
use super::plan::{Scenario, Size, Sizes, StoreChoice, StoreKind, System, parse_list};
use super::procs::Proc;
use super::report::{self, Row};
use super::systems::{Env, START_TIMEOUT, Target, switchboard};
use super::tls::Pki;
use super::{churn, echo, fanout, idle, svg, targets, worker, workspace_root};

/// The benchmark harness.
#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "Switchboard benchmarks: idle memory, echo, fan-out and churn against Pushpin, Nchan, Node ws and bare floors",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run benchmarks (the default).
    Run(RunArgs),
    /// Render the latency chart of a run from the results file.
    Svg(SvgArgs),
    /// Internal: a load-generator subprocess driven over stdin/stdout.
    #[command(hide = true)]
    Worker,
}

/// `bench run` flags.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Sizes: `smoke` (seconds; CI) or `full` (the issue's defaults).
    #[arg(long, value_enum, default_value = "smoke")]
    size: Size,
    /// The gateway's store(s).
    #[arg(long, value_enum, default_value = "both")]
    store: StoreChoice,
    /// Scenarios to run, comma-separated (default: all).
    #[arg(long, value_parser = |s: &str| parse_list::<Scenario>(s).map(List))]
    only: Option<List<Scenario>>,
    /// Systems to run, comma-separated (default: switchboard, switchboard-wss, nginx-tls
    /// and floor at smoke size, all at full size).
    #[arg(long, value_parser = |s: &str| parse_list::<System>(s).map(List))]
    systems: Option<List<System>>,
    /// Add the peers (pushpin, nchan, node) to the default systems (for smoke runs).
    #[arg(long)]
    peers: bool,
    /// The JSONL results file rows are appended to.
    #[arg(long)]
    results: Option<PathBuf>,
    /// Also render the latency chart of this run to this SVG file.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Source addresses for clients: 127.0.0.2 ..= 127.0.0.(1+N).
    #[arg(long, default_value_t = 16)]
    sources: usize,
    /// Override: idle connections.
    #[arg(long)]
    idle_conns: Option<usize>,
    /// Override: echo connections.
    #[arg(long)]
    echo_conns: Option<usize>,
    /// Override: echo messages per connection (instead of a duration).
    #[arg(long)]
    echo_messages: Option<usize>,
    /// Override: echo measured seconds (instead of a message count).
    #[arg(long)]
    echo_secs: Option<f64>,
    /// Override: fan-out members.
    #[arg(long)]
    fanout_members: Option<usize>,
    /// Override: fan-out publishes.
    #[arg(long)]
    fanout_publishes: Option<usize>,
    /// Override: churn cycles.
    #[arg(long)]
    churn_cycles: Option<usize>,
    /// Override: concurrent churning clients.
    #[arg(long)]
    churn_concurrency: Option<usize>,
    /// Override: passthrough-idle connections.
    #[arg(long)]
    passthrough_conns: Option<usize>,
}

/// A comma-separated list given as one flag value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct List<T>(pub Vec<T>);

/// `bench svg` flags.
#[derive(Args, Debug, Clone)]
pub struct SvgArgs {
    /// The JSONL results file.
    #[arg(long)]
    results: Option<PathBuf>,
    /// Where to write the chart.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The run to draw (default: the last one in the file).
    #[arg(long)]
    run: Option<String>,
}

impl RunArgs {
    /// The sizes after overrides, and the size's name (`custom` if anything was overridden).
    fn sizes(&self) -> (Sizes, String) {
        let mut s = Sizes::preset(self.size);
        let mut custom = false;
        let mut set = |field: &mut usize, v: Option<usize>| {
            if let Some(v) = v {
                *field = v;
                custom = true;
            }
        };
        set(&mut s.idle_conns, self.idle_conns);
        set(&mut s.echo_conns, self.echo_conns);
        set(&mut s.fanout_members, self.fanout_members);
        set(&mut s.fanout_publishes, self.fanout_publishes);
        set(&mut s.churn_cycles, self.churn_cycles);
        set(&mut s.churn_concurrency, self.churn_concurrency);
        set(&mut s.passthrough_conns, self.passthrough_conns);
        if let Some(m) = self.echo_messages {
            s.echo_messages = Some(m);
            custom = true;
        } else if let Some(secs) = self.echo_secs {
            s.echo_messages = None;
            s.echo_secs = secs;
            custom = true;
        }
        if s.echo_messages.is_none() && s.echo_secs <= 0.0 {
            s.echo_secs = 5.0;
        }
        let name = if custom { "custom" } else { self.size.name() };
        (s, name.to_owned())
    }

    fn systems(&self) -> Vec<System> {
        if let Some(List(s)) = &self.systems {
            return s.clone();
        }
        match (self.size, self.peers) {
            (Size::Full, _) | (Size::Smoke, true) => System::ALL.to_vec(),
            (Size::Smoke, false) => SMOKE_SYSTEMS.to_vec(),
        }
    }
}

/// The systems of a smoke run without `--peers`: those that need no peer but nginx (which
/// the tests need too; `nginx-tls` and `nginx` are skipped with a message when it is
/// missing).
pub const SMOKE_SYSTEMS: [System; 5] = [
    System::Switchboard,
    System::SwitchboardWss,
    System::NginxTls,
    System::Nginx,
    System::Floor,
];

/// What every scenario needs.
pub struct Ctx {
    /// Processes, logs, HTTP client.
    pub env: Env,
    /// The sizes.
    pub sizes: Sizes,
    /// Client source addresses.
    pub sources: Vec<Ipv4Addr>,
    /// Client sockets one load-generator process may hold.
    pub per_process: usize,
}

impl Ctx {
    /// A fresh row for `scenario` on `target`.
    pub fn row(&self, scenario: &str, target: &Target) -> Row {
        Row::new(
            scenario,
            target.system.name(),
            target.store.map_or("-", StoreKind::name),
        )
    }

    /// Worker processes needed for `conns` clients.
    pub fn workers_for(&self, conns: usize) -> usize {
        conns.div_ceil(self.per_process).max(1)
    }
}

/// `bench`'s main; returns the process exit code.
pub async fn main(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Some(Command::Worker) => worker::main().await.map(|()| 0),
        Some(Command::Svg(args)) => render_svg(&args).map(|()| 0),
        Some(Command::Run(args)) => run(args).await,
        None => run(cli.run).await,
    }
}

fn default_results() -> PathBuf {
    workspace_root().join("bench-results/results.jsonl")
}

fn render_svg(args: &SvgArgs) -> anyhow::Result<()> {
    let results = args.results.clone().unwrap_or_else(default_results);
    let rows = report::load(&results).with_context(|| format!("reading {}", results.display()))?;
    let rows = svg::run_rows(&rows, args.run.as_deref());
    anyhow::ensure!(
        !rows.is_empty(),
        "no rows for that run in {}",
        results.display()
    );
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| workspace_root().join("tests/bench/latency.svg"));
    write_svg(&rows, &out)?;
    println!("wrote {}", out.display());
    Ok(())
}

fn write_svg(rows: &[Row], out: &std::path::Path) -> anyhow::Result<()> {
    let first = &rows[0];
    let subtitle = format!(
        "run {} ({} size), {}",
        first.run_id,
        first.size,
        first.machine.summary()
    );
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, svg::render(rows, &subtitle))?;
    Ok(())
}

/// Prints what the load generator could and could not get.
fn announce_limits(limit: FdLimit, per_process: usize, sizes: &Sizes, sources: usize) {
    println!(
        "open files: soft limit {} (was {}), hard limit {}: each load-generator process holds at most {per_process} sockets",
        limit.soft, limit.before, limit.hard
    );
    if limit.soft < limit.hard {
        println!("  could not raise the soft limit to the hard limit");
    }
    for (what, n) in [
        ("idle", sizes.idle_conns),
        ("fanout", sizes.fanout_members),
        ("passthrough-idle", sizes.passthrough_conns),
    ] {
        println!(
            "  {what}: {n} clients over {} worker process(es), from {sources} source addresses",
            n.div_ceil(per_process).max(1)
        );
    }
    // A proxy holds two descriptors per passthrough connection (client and backend).
    let biggest = sizes
        .idle_conns
        .max(sizes.fanout_members)
        .max(2 * sizes.passthrough_conns) as u64;
    if biggest + super::machine::FD_RESERVE > limit.soft {
        println!(
            "  WARNING: a system under test inherits the limit {}: it cannot hold {biggest} connections plus its own descriptors; expect refused connections",
            limit.soft
        );
    }
}

async fn run_scenario(
    scenario: Scenario,
    target: &mut Target,
    ctx: &Ctx,
) -> anyhow::Result<Vec<Row>> {
    match scenario {
        Scenario::Idle => idle::run(target, ctx).await,
        Scenario::Echo => echo::run(target, ctx).await,
        Scenario::Fanout => fanout::run(target, ctx).await,
        Scenario::Churn => churn::run(target, ctx).await,
        Scenario::PassthroughIdle => idle::run_passthrough(target, ctx).await,
        Scenario::PassthroughEcho => echo::run_passthrough(target, ctx).await,
    }
}

/// Starts the run's one `bench-backend` when a passthrough scenario is on the plan: every
/// proxy of the run goes to it.
async fn start_backend(
    scenarios: &[Scenario],
    systems: &[System],
    log_dir: &std::path::Path,
) -> anyhow::Result<Option<(Proc, u16)>> {
    let needed = scenarios
        .iter()
        .any(|&sc| sc.is_passthrough() && systems.iter().any(|s| s.runs(sc)));
    if !needed {
        return Ok(None);
    }
    let cmd = tokio::process::Command::new(super::sibling("bench-backend")?);
    let mut proc = Proc::spawn("bench-backend", cmd, log_dir)?;
    let BackendPort { port } = proc.read_json_line(START_TIMEOUT).await?;
    Ok(Some((proc, port)))
}

async fn run(args: RunArgs) -> anyhow::Result<i32> {
    let limit = raise_fd_limit();
    let per_process = sockets_per_process(limit);
    let (sizes, size_name) = args.sizes();
    let machine = Machine::describe(limit.soft);
    let started = std::time::SystemTime::now();
    let run_id = humantime::format_rfc3339_seconds(started)
        .to_string()
        .replace([':', '-'], "");
    let results = args.results.clone().unwrap_or_else(default_results);
    let log_dir = workspace_root().join("bench-results/logs").join(&run_id);
    std::fs::create_dir_all(&log_dir)?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()?;
    let scenarios = args
        .only
        .clone()
        .map_or_else(|| Scenario::ALL.to_vec(), |List(s)| s);
    let systems = args.systems();
    let backend = start_backend(&scenarios, &systems, &log_dir)
        .await
        .context("starting bench-backend")?;
    let ctx = Ctx {
        env: Env {
            log_dir: log_dir.clone(),
            node_dir: workspace_root().join("tests/bench/node-ws"),
            http,
            pki: Arc::new(Pki::make().context("making the run's TLS certificates")?),
            backend: backend.as_ref().map(|(_, port)| *port),
        },
        sizes,
        sources: super::client::source_addrs(args.sources),
        per_process,
    };
    println!("run {run_id}, size {size_name}, {}", machine.summary());
    announce_limits(limit, per_process, &ctx.sizes, ctx.sources.len());
    println!(
        "results: {}, logs: {}\n",
        results.display(),
        log_dir.display()
    );
    println!("{}", report::header());

    let mut all = Vec::new();
    let mut failed = false;
    for &scenario in &scenarios {
        for &system in systems.iter().filter(|s| s.runs(scenario)) {
            let stores: Vec<Option<StoreKind>> = if system.on_store() {
                args.store.stores().into_iter().map(Some).collect()
            } else {
                vec![None]
            };
            for store in stores {
                let rows = measure(scenario, system, store, &ctx).await;
                for mut row in rows {
                    row.run_id = run_id.clone();
                    row.size = size_name.clone();
                    row.at =
                        humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
                    row.machine = machine.clone();
                    if !row.ok
                        || (row.skipped.is_some() && !row.not_built && harness::require_all())
                    {
                        failed = true;
                    }
                    println!("{}", report::line(&row));
                    report::append(&results, &row)?;
                    all.push(row);
                }
            }
        }
    }

    if let Some((proc, _)) = backend {
        proc.terminate(Duration::from_secs(5)).await;
    }

    println!("\ntargets (ratios within this run; reported, never asserted):");
    for store in args.store.stores() {
        for v in targets::check(&all, store.name()) {
            println!("  {}", v.line());
        }
    }
    if let Some(path) = &args.svg {
        write_svg(&all, path)?;
        println!("\nchart: {}", path.display());
    }
    for row in all.iter().filter(|r| !r.ok) {
        println!(
            "\nERRORS in {} / {} / {}: {} — {}",
            row.scenario,
            row.system,
            row.store,
            row.errors,
            row.error_samples.join(" | ")
        );
    }
    Ok(if failed { 1 } else { 0 })
}

/// Starts the system, runs the scenario, stops the system; never fails (errors are rows).
async fn measure(
    scenario: Scenario,
    system: System,
    store: Option<StoreKind>,
    ctx: &Ctx,
) -> Vec<Row> {
    let blank = || {
        Row::new(
            scenario.name(),
            system.name(),
            store.map_or("-", StoreKind::name),
        )
    };
    if scenario.is_passthrough()
        && system == System::Switchboard
        && let Some(why) = switchboard::passthrough_unavailable(&ctx.env).await
    {
        return vec![blank().not_built(why)];
    }
    if let Some(why) = Target::unavailable(system, store, &ctx.env) {
        return vec![blank().skip(why)];
    }
    let mut target = match Target::start(system, store, scenario, &ctx.env).await {
        Ok(t) => t,
        Err(e) => {
            let mut row = blank();
            row.fail(format!("starting {system}: {e:#}"));
            return vec![row];
        }
    };
    let mut rows = match run_scenario(scenario, &mut target, ctx).await {
        Ok(rows) => rows,
        Err(e) => {
            let mut row = blank();
            row.fail(format!("{e:#}"));
            vec![row]
        }
    };
    if let Err(e) = target.check_alive() {
        for row in &mut rows {
            row.fail(format!("{e:#}"));
        }
    }
    target.stop().await;
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_overrides_make_a_custom_size() {
        let cli = Cli::try_parse_from([
            "bench",
            "--size",
            "full",
            "--store",
            "memory",
            "--only",
            "idle,echo",
            "--idle-conns",
            "100",
        ])
        .unwrap();
        let (sizes, name) = cli.run.sizes();
        assert_eq!(name, "custom");
        assert_eq!(sizes.idle_conns, 100);
        assert_eq!(
            cli.run.only,
            Some(List(vec![Scenario::Idle, Scenario::Echo]))
        );
        assert_eq!(cli.run.systems(), System::ALL.to_vec());

        let smoke = Cli::try_parse_from(["bench"]).unwrap();
        assert_eq!(smoke.run.sizes().1, "smoke");
        assert_eq!(
            smoke.run.systems(),
            vec![
                System::Switchboard,
                System::SwitchboardWss,
                System::NginxTls,
                System::Nginx,
                System::Floor
            ]
        );
        let pt = Cli::try_parse_from(["bench", "--passthrough-conns", "50"]).unwrap();
        assert_eq!(
            pt.run.sizes(),
            (
                Sizes {
                    passthrough_conns: 50,
                    ..Sizes::preset(Size::Smoke)
                },
                "custom".to_owned()
            )
        );
        let peers = Cli::try_parse_from(["bench", "--peers"]).unwrap();
        assert_eq!(peers.run.systems(), System::ALL.to_vec());
        assert!(Cli::try_parse_from(["bench", "--only", "nope"]).is_err());
        assert!(matches!(
            Cli::try_parse_from(["bench", "svg", "--run", "x"])
                .unwrap()
                .command,
            Some(Command::Svg(_))
        ));
    }
}
