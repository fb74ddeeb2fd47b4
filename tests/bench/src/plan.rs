//! What a run measures: the scenarios, the systems, the stores, and the sizes.
//!
//! `--size smoke` is seconds (CI runs it so the harness never rots), `--size full` the
//! issue's defaults. Every size can be overridden one by one on the command line.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A benchmark scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Open C connections through the full register path and hold them: RSS per connection.
    Idle,
    /// N connections each sending sequential messages through transport: round trips/s.
    Echo,
    /// C members in one room, one publish each: time until the last member has it.
    Fanout,
    /// connect + register + message + disconnect + cleanup cycles per second.
    Churn,
    /// C idle connections through a WebSocket proxy to the echo backend (`bench-backend`):
    /// the proxy's RSS per connection.
    PassthroughIdle,
    /// N connections each sending sequential messages through a WebSocket proxy to the
    /// echo backend: round trips/s and the proxy's CPU per message.
    PassthroughEcho,
}

impl Scenario {
    /// Every scenario, in run order.
    pub const ALL: [Scenario; 6] = [
        Scenario::Idle,
        Scenario::Echo,
        Scenario::Fanout,
        Scenario::Churn,
        Scenario::PassthroughIdle,
        Scenario::PassthroughEcho,
    ];

    /// The name used on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::Echo => "echo",
            Scenario::Fanout => "fanout",
            Scenario::Churn => "churn",
            Scenario::PassthroughIdle => "passthrough-idle",
            Scenario::PassthroughEcho => "passthrough-echo",
        }
    }

    /// Whether clients go through a WebSocket proxy to `bench-backend` (no function).
    pub fn is_passthrough(self) -> bool {
        matches!(self, Scenario::PassthroughIdle | Scenario::PassthroughEcho)
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scenario::ALL
            .into_iter()
            .find(|sc| sc.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Scenario::ALL.iter().map(|sc| sc.name()).collect();
                format!("unknown scenario `{s}` ({})", names.join(", "))
            })
    }
}

/// A system under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// The gateway (`switchboard`) with `bench-function`; in the passthrough scenarios, one
    /// `[[passthrough]]` route to `bench-backend` and no function.
    Switchboard,
    /// The same gateway serving `wss://` itself (`[public.tls]`); clients connect over TLS.
    SwitchboardWss,
    /// nginx terminating TLS in front of the plain gateway, proxying WebSocket upgrades:
    /// what a user does instead of built-in `wss://`.
    NginxTls,
    /// Pushpin in WebSocket-over-HTTP mode with `bench-function`; in the passthrough
    /// scenarios, its plain WebSocket proxy mode in front of `bench-backend`.
    Pushpin,
    /// Debian's nginx proxying WebSocket upgrades (`proxy_pass`) to `bench-backend`: the
    /// passthrough scenarios only.
    Nginx,
    /// nginx with the Nchan module, its WebSocket opens, messages and closes going to
    /// `bench-function`.
    Nchan,
    /// A hand-written Node.js `ws` server doing the same in-process.
    Node,
    /// The bare floors of `bench-floor`.
    Floor,
}

impl System {
    /// Every system, in run order (the TLS variants right after the plain gateway, so the
    /// three are measured minutes apart).
    pub const ALL: [System; 8] = [
        System::Switchboard,
        System::SwitchboardWss,
        System::NginxTls,
        System::Pushpin,
        System::Nginx,
        System::Nchan,
        System::Node,
        System::Floor,
    ];

    /// The name used on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            System::Switchboard => "switchboard",
            System::SwitchboardWss => "switchboard-wss",
            System::NginxTls => "nginx-tls",
            System::Pushpin => "pushpin",
            System::Nginx => "nginx",
            System::Nchan => "nchan",
            System::Node => "node",
            System::Floor => "floor",
        }
    }

    /// Whether it runs the gateway, so once per store of `--store`.
    pub fn on_store(self) -> bool {
        matches!(
            self,
            System::Switchboard | System::SwitchboardWss | System::NginxTls
        )
    }

    /// Whether it takes part in `scenario`: the TLS systems compare idle memory and echo
    /// only; the passthrough scenarios compare the gateway, nginx and Pushpin as WebSocket
    /// proxies, and nginx takes part in nothing else.
    pub fn runs(self, scenario: Scenario) -> bool {
        match self {
            System::SwitchboardWss | System::NginxTls => {
                matches!(scenario, Scenario::Idle | Scenario::Echo)
            }
            System::Switchboard | System::Pushpin => true,
            System::Nginx => scenario.is_passthrough(),
            System::Nchan | System::Node | System::Floor => !scenario.is_passthrough(),
        }
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for System {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        System::ALL
            .into_iter()
            .find(|sy| sy.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = System::ALL.iter().map(|sy| sy.name()).collect();
                format!("unknown system `{s}` ({})", names.join(", "))
            })
    }
}

/// The gateway's store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// The embedded in-memory store.
    Memory,
    /// A private `redis-server` started for the run.
    Redis,
}

impl StoreKind {
    /// `memory` or `redis`.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Redis => "redis",
        }
    }
}

/// `--store`: which stores the gateway runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreChoice {
    /// The embedded store only.
    Memory,
    /// Redis only.
    Redis,
    /// Both, one after the other.
    Both,
}

impl StoreChoice {
    /// The stores to run, in order.
    pub fn stores(self) -> Vec<StoreKind> {
        match self {
            StoreChoice::Memory => vec![StoreKind::Memory],
            StoreChoice::Redis => vec![StoreKind::Redis],
            StoreChoice::Both => vec![StoreKind::Memory, StoreKind::Redis],
        }
    }
}

/// `--size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Size {
    /// Seconds: what CI runs.
    Smoke,
    /// The issue's defaults: minutes.
    Full,
}

impl Size {
    /// `smoke` or `full`.
    pub fn name(self) -> &'static str {
        match self {
            Size::Smoke => "smoke",
            Size::Full => "full",
        }
    }
}

/// passthrough-idle's connections at full size: 9,000, not the idle scenario's 15,000.
/// The gateway proxies in one process, and each proxied connection holds two descriptors
/// there (client and backend): 15,000 would need 30,000 under the machine's open-files
/// limit of 20,000 per process. nginx and Pushpin, whose processes split the sockets, are
/// measured at the same count.
pub const PASSTHROUGH_FULL_CONNS: usize = 9_000;

/// The sizes of every scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sizes {
    /// idle: connections held (per gateway process).
    pub idle_conns: usize,
    /// echo: concurrent connections.
    pub echo_conns: usize,
    /// echo: messages per connection (`None`: run for `echo_secs`).
    pub echo_messages: Option<usize>,
    /// echo: measured seconds when not counting messages.
    pub echo_secs: f64,
    /// echo: seconds of warm-up excluded from the measurement.
    pub echo_warmup_secs: f64,
    /// fanout: members of the room.
    pub fanout_members: usize,
    /// fanout: measured publishes.
    pub fanout_publishes: usize,
    /// churn: cycles.
    pub churn_cycles: usize,
    /// churn: concurrent cycling clients.
    pub churn_concurrency: usize,
    /// passthrough-idle: connections held through the proxy (each costs a one-process
    /// proxy two descriptors: the client's and the backend's).
    pub passthrough_conns: usize,
    /// Connections opened concurrently while filling idle and fanout.
    pub connect_concurrency: usize,
}

impl Sizes {
    /// The preset of `size`.
    pub fn preset(size: Size) -> Self {
        match size {
            Size::Smoke => Sizes {
                idle_conns: 200,
                echo_conns: 10,
                echo_messages: Some(200),
                echo_secs: 0.0,
                echo_warmup_secs: 0.0,
                fanout_members: 200,
                fanout_publishes: 5,
                churn_cycles: 200,
                churn_concurrency: 8,
                passthrough_conns: 200,
                connect_concurrency: 64,
            },
            Size::Full => Sizes {
                idle_conns: 15_000,
                echo_conns: 100,
                echo_messages: None,
                echo_secs: 10.0,
                echo_warmup_secs: 2.0,
                fanout_members: 10_000,
                fanout_publishes: 50,
                churn_cycles: 20_000,
                churn_concurrency: 64,
                passthrough_conns: PASSTHROUGH_FULL_CONNS,
                connect_concurrency: 128,
            },
        }
    }

    /// The echo measurement window (after warm-up), when running for a time.
    pub fn echo_window(&self) -> Duration {
        Duration::from_secs_f64(self.echo_secs)
    }
}

/// Parses a comma-separated list (`idle,echo`) of `T`.
pub fn parse_list<T: FromStr<Err = String>>(s: &str) -> Result<Vec<T>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        out.push(part.parse()?);
    }
    if out.is_empty() {
        return Err("empty list".to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_reject_unknown_names() {
        assert_eq!(
            parse_list::<Scenario>("idle, fanout").unwrap(),
            vec![Scenario::Idle, Scenario::Fanout]
        );
        assert_eq!(
            parse_list::<System>("pushpin,nchan,floor").unwrap(),
            vec![System::Pushpin, System::Nchan, System::Floor]
        );
        assert!(parse_list::<Scenario>("idle,nope").is_err());
        assert!(parse_list::<System>("").is_err());
        assert_eq!(
            parse_list::<System>("switchboard-wss,nginx-tls").unwrap(),
            vec![System::SwitchboardWss, System::NginxTls]
        );
        let err = "wss".parse::<System>().unwrap_err();
        assert!(err.contains("switchboard-wss, nginx-tls"), "{err}");
    }

    #[test]
    fn tls_systems_run_on_each_store_and_only_idle_and_echo() {
        for system in [System::SwitchboardWss, System::NginxTls] {
            assert!(system.on_store());
            let scenarios: Vec<Scenario> = Scenario::ALL
                .into_iter()
                .filter(|&sc| system.runs(sc))
                .collect();
            assert_eq!(scenarios, vec![Scenario::Idle, Scenario::Echo]);
        }
        assert!(System::Switchboard.on_store() && !System::Nchan.on_store());
        assert!(!System::Nginx.on_store());
        assert!(
            Scenario::ALL
                .into_iter()
                .all(|sc| System::Switchboard.runs(sc))
        );
    }

    #[test]
    fn passthrough_scenarios_compare_the_gateway_nginx_and_pushpin() {
        for sc in [Scenario::PassthroughIdle, Scenario::PassthroughEcho] {
            assert!(sc.is_passthrough());
            let systems: Vec<System> = System::ALL.into_iter().filter(|s| s.runs(sc)).collect();
            assert_eq!(
                systems,
                vec![System::Switchboard, System::Pushpin, System::Nginx]
            );
            assert_eq!(sc.name().parse::<Scenario>(), Ok(sc));
        }
        let nginx: Vec<Scenario> = Scenario::ALL
            .into_iter()
            .filter(|&sc| System::Nginx.runs(sc))
            .collect();
        assert_eq!(
            nginx,
            vec![Scenario::PassthroughIdle, Scenario::PassthroughEcho]
        );
        assert!(!Scenario::Idle.is_passthrough());
        let full = Sizes::preset(Size::Full);
        assert!(full.passthrough_conns * 2 < 20_000 - 1_000);
    }

    #[test]
    fn smoke_is_small_and_full_is_the_issue_defaults() {
        let smoke = Sizes::preset(Size::Smoke);
        assert!(smoke.idle_conns <= 1000 && smoke.echo_messages.is_some());
        let full = Sizes::preset(Size::Full);
        assert_eq!(full.idle_conns, 15_000);
        assert_eq!(full.echo_conns, 100);
        assert_eq!(full.fanout_members, 10_000);
        assert_eq!(full.fanout_publishes, 50);
    }
}
