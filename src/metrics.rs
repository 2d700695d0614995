//! Prometheus metrics, served at `GET /metrics` in the text exposition format.
//!
//! One set per process ([`metrics()`]): every part of the server records into it with
//! plain atomic operations, and only a scrape walks it. Names follow Prometheus
//! conventions (`_total` for counters, base units, seconds and bytes).

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// Open connections by transport (`ws`, `sse`, `longpoll`).
    pub connections: IntGaugeVec,
    /// Connections accepted since start, by transport.
    pub connections_opened: IntCounterVec,
    /// Connections and requests refused before they started, by reason
    /// (`max_connections`, `max_connections_per_room`, `max_connections_per_ip`,
    /// `admission_rate`, `admission_rate_per_ip`, `http_rate`, `max_rooms`, `auth`,
    /// `forbidden`, `origin`).
    pub connections_refused: IntCounterVec,
    /// WebSocket sessions closed by the server or the client, by close code.
    pub sessions_closed: IntCounterVec,
    pub rooms_loaded: IntGauge,
    pub room_load_seconds: Histogram,
    /// Updates that changed a document and were logged.
    pub updates_accepted: IntCounter,
    /// Full-state encodings of a document (rooms encode once per seq and share it).
    pub state_encodes: IntCounter,
    /// Presence entries refused, by reason (see `room::presence::Refusal`).
    pub awareness_refused: IntCounterVec,
    /// Updates refused, by reason (`invalid`, `doc_too_large`, `read_only`).
    pub updates_rejected: IntCounterVec,
    /// Payload bytes received and sent, by transport.
    pub bytes_in: IntCounterVec,
    pub bytes_out: IntCounterVec,
    /// `bytes_in` and `bytes_out` of WebSocket sessions, resolved once (a label lookup
    /// takes a lock); `bytes_out` is added once per broadcast, not per delivery.
    pub ws_bytes_in: IntCounter,
    pub ws_bytes_out: IntCounter,
    /// Frames handed to sessions by room broadcasts (one per receiving session).
    pub fanout_frames: IntCounter,
    /// Frames and bytes waiting in WebSocket sessions' outbound queues, all sessions.
    pub outbound_queued_frames: IntGauge,
    pub outbound_queued_bytes: IntGauge,
    pub oplog_append_seconds: Histogram,
    pub oplog_flush_seconds: Histogram,
    pub snapshot_seconds: Histogram,
    pub compaction_seconds: Histogram,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Buckets from 10 µs to ~10 s, for latencies that span fast appends to slow loads.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.000_01, 4.0, 11).expect("valid buckets")
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let gauge_vec = |name: &str, help: &str, label: &str| {
            let m = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry.register(Box::new(m.clone())).expect("unique");
            m
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let m = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry.register(Box::new(m.clone())).expect("unique");
            m
        };
        let counter = |name: &str, help: &str| {
            let m = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(m.clone())).expect("unique");
            m
        };
        let gauge = |name: &str, help: &str| {
            let m = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(m.clone())).expect("unique");
            m
        };
        let histogram = |name: &str, help: &str| {
            let opts = HistogramOpts::new(name, help).buckets(latency_buckets());
            let m = Histogram::with_opts(opts).expect("valid metric");
            registry.register(Box::new(m.clone())).expect("unique");
            m
        };
        let bytes_in = counter_vec(
            "collabd_bytes_in_total",
            "Payload bytes received, by transport.",
            "transport",
        );
        let bytes_out = counter_vec(
            "collabd_bytes_out_total",
            "Payload bytes sent, by transport.",
            "transport",
        );
        Metrics {
            ws_bytes_in: bytes_in.with_label_values(&["ws"]),
            ws_bytes_out: bytes_out.with_label_values(&["ws"]),
            bytes_in,
            bytes_out,
            connections: gauge_vec(
                "collabd_connections",
                "Open connections by transport.",
                "transport",
            ),
            connections_opened: counter_vec(
                "collabd_connections_opened_total",
                "Connections accepted, by transport.",
                "transport",
            ),
            connections_refused: counter_vec(
                "collabd_connections_refused_total",
                "Connections refused before they started, by reason.",
                "reason",
            ),
            sessions_closed: counter_vec(
                "collabd_sessions_closed_total",
                "WebSocket sessions closed, by close code.",
                "code",
            ),
            rooms_loaded: gauge("collabd_rooms_loaded", "Rooms held in memory."),
            room_load_seconds: histogram(
                "collabd_room_load_seconds",
                "Time to load a room from the store.",
            ),
            updates_accepted: counter(
                "collabd_updates_accepted_total",
                "Updates that changed a document and were logged.",
            ),
            state_encodes: counter(
                "collabd_state_encodes_total",
                "Full-state encodings of a document (once per seq, shared by readers).",
            ),
            awareness_refused: counter_vec(
                "collabd_awareness_refused_total",
                "Presence entries refused, by reason.",
                "reason",
            ),
            updates_rejected: counter_vec(
                "collabd_updates_rejected_total",
                "Updates refused, by reason.",
                "reason",
            ),
            fanout_frames: counter(
                "collabd_fanout_frames_total",
                "Frames handed to sessions by room broadcasts.",
            ),
            outbound_queued_frames: gauge(
                "collabd_outbound_queued_frames",
                "Frames waiting in WebSocket outbound queues.",
            ),
            outbound_queued_bytes: gauge(
                "collabd_outbound_queued_bytes",
                "Bytes waiting in WebSocket outbound queues.",
            ),
            oplog_append_seconds: histogram(
                "collabd_oplog_append_seconds",
                "Time to append one record to the op log (not yet durable).",
            ),
            oplog_flush_seconds: histogram(
                "collabd_oplog_flush_seconds",
                "Time of one group-commit flush.",
            ),
            snapshot_seconds: histogram(
                "collabd_snapshot_seconds",
                "Time to encode and store one snapshot.",
            ),
            compaction_seconds: histogram(
                "collabd_compaction_seconds",
                "Time to delete the records one snapshot replaced.",
            ),
            registry,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("metrics encoding failed: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Counts one open connection of a transport while it lives.
pub struct ConnectionGauge(&'static str);

impl ConnectionGauge {
    pub fn open(transport: &'static str) -> ConnectionGauge {
        let m = metrics();
        m.connections.with_label_values(&[transport]).inc();
        m.connections_opened.with_label_values(&[transport]).inc();
        ConnectionGauge(transport)
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        metrics().connections.with_label_values(&[self.0]).dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let gauge = ConnectionGauge::open("test");
        metrics()
            .updates_rejected
            .with_label_values(&["invalid"])
            .inc();
        let text = metrics().render();
        assert!(
            text.contains("collabd_connections{transport=\"test\"} 1"),
            "{text}"
        );
        assert!(text.contains("collabd_updates_rejected_total{reason=\"invalid\"}"));
        assert!(text.contains("# TYPE collabd_oplog_flush_seconds histogram"));
        drop(gauge);
        assert!(
            metrics()
                .render()
                .contains("collabd_connections{transport=\"test\"} 0")
        );
    }
}
