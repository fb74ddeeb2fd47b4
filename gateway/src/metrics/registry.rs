//! The gateway's metrics: [`Metrics`], one per `Gateway`, owning its own
//! `prometheus-client` registry (no global recorder: tests run several gateways in one
//! process, each counting its own).
//!
//! Every label value comes from a small fixed set (the enums below); none names a
//! connection or a group. Series are resolved once and kept as handles: the unlabelled and
//! small fixed families when the metrics are made, the larger combinations (event ×
//! dialect × outcome, route × status, store operation × outcome) on first use, in a
//! `OnceLock` per combination. So a hot path (a client message, a send-back request, a
//! store call) costs an atomic load and the metric's own relaxed atomic adds, never the
//! family's map or its lock.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config::Dialect;
use crate::metrics::histogram::{Buckets, DURATION_BOUNDS, FANOUT_BOUNDS, Histogram, STORE_BOUNDS};
use crate::metrics::process::ProcessCollector;

/// Declares a label enum: its variants, their label values, and how many there are.
macro_rules! labels {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $value:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum $name {
            $($variant),+
        }

        impl $name {
            /// Every variant, in declaration order (`as usize` indexes it).
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// How many variants there are.
            pub const COUNT: usize = $name::ALL.len();

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $value),+
                }
            }
        }
    };
}

labels! {
    /// The event a function call carries (`event` label).
    FunctionEvent {
        Register => "register",
        Transport => "transport",
        Cleanup => "cleanup",
    }
}

labels! {
    /// How one HTTP attempt at a function call ended (`outcome` label).
    CallOutcome {
        Ok => "ok",
        Status4xx => "status_4xx",
        Status5xx => "status_5xx",
        StatusOther => "status_other",
        Timeout => "timeout",
        Unreachable => "unreachable",
        TooLarge => "too_large",
    }
}

labels! {
    /// Why an upgrade request did not become a WebSocket (`reason` label).
    Refusal {
        RegisterRefused => "register_refused",
        FunctionFailed => "function_failed",
        FunctionTimeout => "function_timeout",
        AtCapacity => "at_capacity",
        TooManyPending => "too_many_pending",
        BadHandshake => "bad_handshake",
        StoreUnavailable => "store_unavailable",
        ShuttingDown => "shutting_down",
        UpgradeFailed => "upgrade_failed",
        Unauthorized => "unauthorized",
        BackendFailed => "backend_failed",
    }
}

labels! {
    /// How dialing a passthrough route's backend ended (`outcome` label).
    DialOutcome {
        Ok => "ok",
        Refused => "refused",
        Timeout => "timeout",
        BadStatus => "bad_status",
    }
}

labels! {
    /// Which route of the send-back listener a request took (`route` label).
    Route {
        NativeConnection => "native_connection",
        NativeBatch => "native_batch",
        NativeGroup => "native_group",
        AwsConnection => "aws_connection",
        Tencent => "tencent",
        Healthz => "healthz",
        Readyz => "readyz",
        Metrics => "metrics",
        Other => "other",
    }
}

labels! {
    /// How a cleanup attempt ended (`outcome` label).
    CleanupOutcome {
        Delivered => "delivered",
        Retried => "retried",
        Dropped => "dropped",
        Expired => "expired",
    }
}

labels! {
    /// How a request relayed to another node ended (`outcome` label).
    RelayOutcome {
        Answered => "answered",
        Failed => "failed",
        Timeout => "timeout",
        BadAddress => "bad_address",
    }
}

labels! {
    /// How a store operation ended (`outcome` label).
    StoreOutcome {
        Ok => "ok",
        Unavailable => "unavailable",
        Error => "error",
    }
}

labels! {
    /// A store operation: the `store::Store` method's name (`op` label).
    StoreOp {
        Register => "register",
        Get => "get",
        Unregister => "unregister",
        Join => "join",
        Leave => "leave",
        Members => "members",
        GroupVersion => "group_version",
        Count => "count",
        GroupsOf => "groups_of",
        GroupsOfMany => "groups_of_many",
        MarkNode => "mark_node",
        NodeCheck => "node_check",
        Heartbeat => "heartbeat",
        NodeAlive => "node_alive",
        NodeAddress => "node_address",
        Nodes => "nodes",
        QueueCleanup => "queue_cleanup",
        ClaimCleanups => "claim_cleanups",
        RetryCleanup => "retry_cleanup",
        FinishCleanup => "finish_cleanup",
        PendingCleanups => "pending_cleanups",
        CleanupQueued => "cleanup_queued",
        RemoveHeartbeat => "remove_heartbeat",
        DeadNodes => "dead_nodes",
        NodeConnections => "node_connections",
        Release => "release",
        ReapLease => "reap_lease",
        DropReapLease => "drop_reap_lease",
        MarkReaped => "mark_reaped",
        ReapedAt => "reaped_at",
        ClearReaped => "clear_reaped",
        AllMembers => "all_members",
    }
}

/// The `dialect` label.
fn dialect_name(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Native => "native",
        Dialect::Aws => "aws",
        Dialect::Tencent => "tencent",
    }
}

const DIALECTS: usize = 3;

fn dialect_index(dialect: Dialect) -> usize {
    match dialect {
        Dialect::Native => 0,
        Dialect::Aws => 1,
        Dialect::Tencent => 2,
    }
}

/// The statuses whose send-back series are kept as handles; another status (rare: the
/// gateway answers with few) resolves its series in the family each time.
const STATUSES: &[(u16, &str)] = &[
    (200, "200"),
    (202, "202"),
    (204, "204"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (410, "410"),
    (411, "411"),
    (413, "413"),
    (415, "415"),
    (429, "429"),
    (500, "500"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
];

type Labels<const N: usize> = [(&'static str, &'static str); N];
type StatusLabels = [(&'static str, Cow<'static, str>); 2];

/// One family whose series are each resolved on first use and then kept.
#[derive(Debug)]
struct Series<S, M, C, const N: usize> {
    family: Family<S, M, C>,
    cells: [OnceLock<M>; N],
}

impl<S, M, C, const N: usize> Series<S, M, C, N>
where
    S: Clone + std::hash::Hash + Eq + EncodeLabelSet,
    M: Clone,
    C: MetricConstructor<M>,
{
    fn new(family: Family<S, M, C>) -> Self {
        Series {
            family,
            cells: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// The series at `index`, resolved with `labels` the first time.
    fn get(&self, index: usize, labels: impl FnOnce() -> S) -> &M {
        self.cells[index].get_or_init(|| self.family.get_or_create_owned(&labels()))
    }
}

const CALLS: usize = FunctionEvent::COUNT * DIALECTS * CallOutcome::COUNT;
const CALL_KINDS: usize = FunctionEvent::COUNT * DIALECTS;
const REQUESTS: usize = Route::COUNT * STATUSES.len();
const STORE_CALLS: usize = StoreOp::COUNT * StoreOutcome::COUNT;

/// Every metric of one gateway, as typed handles.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// Connections this node holds (set at each scrape).
    pub connections: Gauge,
    /// Connections on the public listeners that are not WebSockets yet (set at each scrape).
    pub handshakes_in_progress: Gauge,
    /// `limits.max_connections` (set at each scrape), to alert before clients are refused.
    pub connections_limit: Gauge,
    /// 1 when `/readyz` would answer 200, else 0 (set at each scrape).
    pub ready: Gauge,
    /// Cleanups queued in the store (set at each scrape).
    pub cleanups_pending: Gauge,
    accepted: Counter,
    refused: [Counter; Refusal::COUNT],
    pub messages_in: Counter,
    pub messages_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    calls: Series<Labels<3>, Counter, fn() -> Counter, CALLS>,
    call_durations: Series<Labels<2>, Histogram, Buckets, CALL_KINDS>,
    retries: [Counter; FunctionEvent::COUNT],
    cleanups: [Counter; CleanupOutcome::COUNT],
    requests: Series<StatusLabels, Counter, fn() -> Counter, REQUESTS>,
    request_durations: Series<Labels<1>, Histogram, Buckets, { Route::COUNT }>,
    /// Sends refused because a connection's outbound queue was full (429, or `throttled`
    /// in a batch or group send result).
    pub throttled: Counter,
    relays: [Counter; RelayOutcome::COUNT],
    relay_duration: Histogram,
    store_calls: Series<Labels<2>, Counter, fn() -> Counter, STORE_CALLS>,
    store_durations: Series<Labels<1>, Histogram, Buckets, { StoreOp::COUNT }>,
    group_sends: Counter,
    group_fanout: Histogram,
    dials: [Counter; DialOutcome::COUNT],
    dial_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric registered, at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let r = &mut registry;
        let connections = gauge(
            r,
            "switchboard_connections",
            "WebSocket connections this node holds",
        );
        let handshakes_in_progress = gauge(
            r,
            "switchboard_handshakes_in_progress",
            "Connections on the public listeners that are not WebSockets yet (pending slots)",
        );
        let connections_limit = gauge(
            r,
            "switchboard_connections_limit",
            "The most connections this node holds (limits.max_connections)",
        );
        let ready = gauge(
            r,
            "switchboard_ready",
            "1 when GET /readyz answers 200 (not draining, store reachable, heartbeat done), else 0",
        );
        let cleanups_pending = gauge(
            r,
            "switchboard_cleanups_pending",
            "Cleanups queued in the store, due or not (the queue every node sharing the store drains)",
        );
        // A list, not an array: an accepted connection has no reason.
        let connects = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        r.register(
            "switchboard_connects",
            "Upgrade requests by outcome, and why the refused ones were refused",
            connects.clone(),
        );
        let accepted = connects.get_or_create_owned(&vec![("outcome", "accepted")]);
        let refused = std::array::from_fn(|i| {
            connects.get_or_create_owned(&vec![
                ("outcome", "refused"),
                ("reason", Refusal::ALL[i].as_str()),
            ])
        });
        let messages = Family::<Labels<1>, Counter>::default();
        r.register(
            "switchboard_messages",
            "WebSocket messages read from clients (in) and written to them (out)",
            messages.clone(),
        );
        let bytes = Family::<Labels<1>, Counter>::default();
        r.register(
            "switchboard_message_bytes",
            "Payload bytes of the messages read from clients (in) and written to them (out)",
            bytes.clone(),
        );
        let calls = Family::<Labels<3>, Counter>::default();
        r.register(
            "switchboard_function_calls",
            "HTTP calls to functions (each attempt, retries included) by event, dialect and outcome",
            calls.clone(),
        );
        let call_durations = Family::new_with_constructor(Buckets::seconds(DURATION_BOUNDS));
        r.register(
            "switchboard_function_call_duration_seconds",
            "How long one HTTP call to a function took, by event and dialect",
            call_durations.clone(),
        );
        let retries = Family::<Labels<1>, Counter>::default();
        r.register(
            "switchboard_function_retries",
            "Function calls retried after a retryable failure, by event",
            retries.clone(),
        );
        let cleanups = Family::<Labels<1>, Counter>::default();
        r.register(
            "switchboard_cleanups",
            "Cleanup attempts of this node's workers by outcome: delivered, retried (failed, \
             queued again), dropped (failed, not retryable), expired (cleanup.max_age passed)",
            cleanups.clone(),
        );
        let requests = Family::<StatusLabels, Counter>::default();
        r.register(
            "switchboard_sendback_requests",
            "Requests on the send-back listener by route and status",
            requests.clone(),
        );
        let request_durations = Family::new_with_constructor(Buckets::seconds(DURATION_BOUNDS));
        r.register(
            "switchboard_sendback_request_duration_seconds",
            "How long the send-back listener took to answer a request, by route",
            request_durations.clone(),
        );
        let throttled = Counter::default();
        r.register(
            "switchboard_throttled_sends",
            "Messages refused because a connection's outbound queue was full (the client reads too slowly)",
            throttled.clone(),
        );
        let relays = Family::<Labels<1>, Counter>::default();
        r.register(
            "switchboard_relays",
            "Send-back requests relayed to the node holding their connections, by outcome",
            relays.clone(),
        );
        let relay_duration = Histogram::new(Buckets::seconds(DURATION_BOUNDS));
        r.register(
            "switchboard_relay_duration_seconds",
            "How long a relayed request took to be answered (or to fail)",
            relay_duration.clone(),
        );
        let store_calls = Family::<Labels<2>, Counter>::default();
        r.register(
            "switchboard_store_operations",
            "Store operations of this node by operation and outcome",
            store_calls.clone(),
        );
        let store_durations = Family::new_with_constructor(Buckets::seconds(STORE_BOUNDS));
        r.register(
            "switchboard_store_operation_duration_seconds",
            "How long a store operation took, by operation",
            store_durations.clone(),
        );
        let group_sends = Counter::default();
        r.register(
            "switchboard_group_sends",
            "Group sends this node was asked for (relayed parts are counted by the node that was asked)",
            group_sends.clone(),
        );
        let group_fanout = Histogram::new(Buckets::count(FANOUT_BOUNDS));
        r.register(
            "switchboard_group_send_fanout",
            "Members a group send reached, every node's included",
            group_fanout.clone(),
        );
        let dials = Family::<Labels<1>, Counter>::default();
        r.register(
            "switchboard_passthrough_dials",
            "Passthrough backends dialed before a client's 101, by outcome",
            dials.clone(),
        );
        let dial_duration = Histogram::new(Buckets::seconds(DURATION_BOUNDS));
        r.register(
            "switchboard_passthrough_dial_duration_seconds",
            "How long dialing a passthrough backend took (TCP, TLS and its 101), or failed after",
            dial_duration.clone(),
        );
        r.register_collector(Box::new(ProcessCollector));
        Metrics {
            connections,
            handshakes_in_progress,
            connections_limit,
            ready,
            cleanups_pending,
            accepted,
            refused,
            messages_in: messages.get_or_create_owned(&[("direction", "in")]),
            messages_out: messages.get_or_create_owned(&[("direction", "out")]),
            bytes_in: bytes.get_or_create_owned(&[("direction", "in")]),
            bytes_out: bytes.get_or_create_owned(&[("direction", "out")]),
            calls: Series::new(calls),
            call_durations: Series::new(call_durations),
            retries: std::array::from_fn(|i| {
                retries.get_or_create_owned(&[("event", FunctionEvent::ALL[i].as_str())])
            }),
            cleanups: std::array::from_fn(|i| {
                cleanups.get_or_create_owned(&[("outcome", CleanupOutcome::ALL[i].as_str())])
            }),
            requests: Series::new(requests),
            request_durations: Series::new(request_durations),
            throttled,
            relays: std::array::from_fn(|i| {
                relays.get_or_create_owned(&[("outcome", RelayOutcome::ALL[i].as_str())])
            }),
            relay_duration,
            store_calls: Series::new(store_calls),
            store_durations: Series::new(store_durations),
            group_sends,
            group_fanout,
            dials: std::array::from_fn(|i| {
                dials.get_or_create_owned(&[("outcome", DialOutcome::ALL[i].as_str())])
            }),
            dial_duration,
            registry,
        }
    }

    /// Every metric in the Prometheus text format (version 0.0.4).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// An upgrade request became a WebSocket (its 101 was written).
    pub fn accepted(&self) {
        self.accepted.inc();
    }

    /// A passthrough backend was dialed, taking `took`.
    pub fn dialed(&self, outcome: DialOutcome, took: Duration) {
        self.dials[outcome as usize].inc();
        self.dial_duration.observe_duration(took);
    }

    /// An upgrade request was refused, or failed before its 101.
    pub fn refused(&self, reason: Refusal) {
        self.refused[reason as usize].inc();
    }

    /// One HTTP attempt at a function call.
    pub fn function_call(
        &self,
        event: FunctionEvent,
        dialect: Dialect,
        outcome: CallOutcome,
        elapsed: Duration,
    ) {
        let kind = event as usize * DIALECTS + dialect_index(dialect);
        self.calls
            .get(kind * CallOutcome::COUNT + outcome as usize, || {
                [
                    ("event", event.as_str()),
                    ("dialect", dialect_name(dialect)),
                    ("outcome", outcome.as_str()),
                ]
            })
            .inc();
        self.call_durations
            .get(kind, || {
                [
                    ("event", event.as_str()),
                    ("dialect", dialect_name(dialect)),
                ]
            })
            .observe_duration(elapsed);
    }

    /// A function call retried.
    pub fn function_retry(&self, event: FunctionEvent) {
        self.retries[event as usize].inc();
    }

    /// A cleanup attempt of this node's workers.
    pub fn cleanup(&self, outcome: CleanupOutcome) {
        self.cleanups[outcome as usize].inc();
    }

    /// A request the send-back listener answered.
    pub fn sendback_request(&self, route: Route, status: u16, elapsed: Duration) {
        let labels = |status: Cow<'static, str>| {
            [("route", Cow::Borrowed(route.as_str())), ("status", status)]
        };
        match STATUSES.iter().position(|&(code, _)| code == status) {
            Some(i) => {
                let name = STATUSES[i].1;
                self.requests
                    .get(route as usize * STATUSES.len() + i, || {
                        labels(Cow::Borrowed(name))
                    })
                    .inc();
            }
            None => {
                self.requests
                    .family
                    .get_or_create(&labels(Cow::Owned(status.to_string())))
                    .inc();
            }
        }
        self.request_durations
            .get(route as usize, || [("route", route.as_str())])
            .observe_duration(elapsed);
    }

    /// A request relayed to another node.
    pub fn relay(&self, outcome: RelayOutcome, elapsed: Duration) {
        self.relays[outcome as usize].inc();
        self.relay_duration.observe_duration(elapsed);
    }

    /// A store operation.
    pub fn store_op(&self, op: StoreOp, outcome: StoreOutcome, elapsed: Duration) {
        self.store_calls
            .get(op as usize * StoreOutcome::COUNT + outcome as usize, || {
                [("op", op.as_str()), ("outcome", outcome.as_str())]
            })
            .inc();
        self.store_durations
            .get(op as usize, || [("op", op.as_str())])
            .observe_duration(elapsed);
    }

    /// A group send this node was asked for, and how many members it reached.
    pub fn group_send(&self, reached: u64) {
        self.group_sends.inc();
        self.group_fanout.observe_units(reached);
    }
}

fn gauge(registry: &mut Registry, name: &str, help: &str) -> Gauge {
    let gauge = Gauge::default();
    registry.register(name, help, gauge.clone());
    gauge
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_resolve_once_and_count_under_their_labels() {
        let metrics = Metrics::new();
        metrics.function_call(
            FunctionEvent::Transport,
            Dialect::Aws,
            CallOutcome::Status5xx,
            Duration::from_millis(3),
        );
        metrics.function_call(
            FunctionEvent::Transport,
            Dialect::Aws,
            CallOutcome::Status5xx,
            Duration::from_millis(3),
        );
        metrics.sendback_request(Route::NativeBatch, 200, Duration::from_millis(1));
        metrics.sendback_request(Route::Other, 418, Duration::from_millis(1));
        metrics.sendback_request(Route::Other, 418, Duration::from_millis(1));
        metrics.store_op(StoreOp::Get, StoreOutcome::Unavailable, Duration::ZERO);
        metrics.refused(Refusal::AtCapacity);
        let text = metrics.encode().unwrap();
        for line in [
            "switchboard_function_calls_total{event=\"transport\",dialect=\"aws\",outcome=\"status_5xx\"} 2\n",
            "switchboard_function_call_duration_seconds_count{event=\"transport\",dialect=\"aws\"} 2\n",
            "switchboard_sendback_requests_total{route=\"native_batch\",status=\"200\"} 1\n",
            "switchboard_sendback_requests_total{route=\"other\",status=\"418\"} 2\n",
            "switchboard_store_operations_total{op=\"get\",outcome=\"unavailable\"} 1\n",
            "switchboard_connects_total{outcome=\"refused\",reason=\"at_capacity\"} 1\n",
            "switchboard_connects_total{outcome=\"refused\",reason=\"bad_handshake\"} 0\n",
            "switchboard_messages_total{direction=\"in\"} 0\n",
        ] {
            assert!(text.contains(line), "{line:?} in:\n{text}");
        }
        // Series never used are not listed.
        assert!(!text.contains("dialect=\"tencent\""), "{text}");
    }

    #[test]
    fn every_label_enum_indexes_its_own_list() {
        for (i, v) in StoreOp::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i);
        }
        for (i, v) in Route::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i);
        }
        for (i, v) in CallOutcome::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i);
        }
    }
}
