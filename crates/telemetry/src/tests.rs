use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::SpanData;

use super::*;

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const UNSAMPLED_PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

#[derive(Debug, Default)]
struct Memory {
    batches: Mutex<Vec<Vec<SpanData>>>,
    fail: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone, Default)]
struct MemoryExporter(Arc<Memory>);

impl opentelemetry_sdk::trace::SpanExporter for MemoryExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if self.0.fail.load(Relaxed) {
            return Err(OTelSdkError::InternalFailure("collector down".into()));
        }
        self.0.batches.lock().unwrap().push(batch);
        Ok(())
    }
}

fn cfg(ratio: f64) -> TracingConfig {
    TracingConfig {
        sample_ratio: ratio,
        delay: Duration::from_millis(20),
        ..TracingConfig::new("http://127.0.0.1:4318")
    }
}

fn header(s: &str) -> http::HeaderValue {
    http::HeaderValue::from_str(s).unwrap()
}

fn span(ctx: &TraceCtx) -> FinishedSpan {
    let now = SystemTime::now();
    FinishedSpan::server(ctx, "GET /x".into(), now, now, vec![KeyValue::new("canarygate.variant", "canary")])
}

#[tokio::test]
async fn a_parent_with_the_sampled_flag_off_is_continued_but_not_sampled() {
    let t = Tracer::with_exporter(&cfg(1.0), MemoryExporter::default());
    let ctx = t.begin(Some(&header(UNSAMPLED_PARENT)));
    assert!(!ctx.sampled, "the parent said not sampled");
    assert!(ctx.continued());
    assert_eq!(ctx.parent_id, Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]));
    let child = [9u8; 8];
    assert_eq!(
        ctx.traceparent(child).to_str().unwrap(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0909090909090909-00"
    );
    // A sampled parent is followed even at ratio 0.
    let t0 = Tracer::with_exporter(&cfg(0.0), MemoryExporter::default());
    let ctx = t0.begin(Some(&header(PARENT)));
    assert!(ctx.sampled);
    assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(
        ctx.span_id,
        [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
        "a new span, not the caller's"
    );
}

#[tokio::test]
async fn an_invalid_or_missing_traceparent_starts_a_new_trace_sampled_by_ratio() {
    let all = Tracer::with_exporter(&cfg(1.0), MemoryExporter::default());
    let none = Tracer::with_exporter(&cfg(0.0), MemoryExporter::default());
    for bad in [None, Some(header("00-zz-00f067aa0ba902b7-01")), Some(header("garbage"))] {
        let a = all.begin(bad.as_ref());
        assert!(!a.continued() && a.sampled && a.trace_id != [0; 16]);
        assert!(!none.begin(bad.as_ref()).sampled);
    }
    // Ratio 0.25: about a quarter of new traces.
    let quarter = Tracer::with_exporter(&cfg(0.25), MemoryExporter::default());
    let n = (0..20_000).filter(|_| quarter.begin(None).sampled).count();
    assert!((4_400..5_600).contains(&n), "{n} of 20000 sampled at 0.25");
}

#[test]
fn the_endpoint_is_a_base_url_or_the_traces_url() {
    let url = |e: &str| TracingConfig::new(e).traces_url();
    assert_eq!(url("http://c:4318").unwrap(), "http://c:4318/v1/traces");
    assert_eq!(url("http://c:4318/").unwrap(), "http://c:4318/v1/traces");
    assert_eq!(url("https://c/otlp/v1/traces").unwrap(), "https://c/otlp/v1/traces");
    for bad in ["c:4318", "ftp://c/", "not a url"] {
        let e = url(bad).unwrap_err().to_string();
        assert!(e.contains("server.telemetry.otlpEndpoint") && e.contains(bad), "{e}");
    }
    let e = Tracer::start(&TracingConfig {
        sample_ratio: 1.5,
        ..TracingConfig::new("http://c:4318")
    })
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("server.telemetry.sampleRatio") && e.contains("1.5"), "{e}");
}

#[tokio::test]
async fn spans_are_batched_out_and_a_failed_export_is_counted() {
    let exporter = MemoryExporter::default();
    let t = Tracer::with_exporter(&cfg(1.0), exporter.clone());
    let ctx = t.begin(Some(&header(PARENT)));
    t.end(span(&ctx));
    let client = new_span_id();
    let now = SystemTime::now();
    t.end(FinishedSpan::client(&ctx, client, "GET".into(), now, now, vec![]));
    t.flush().await;
    let batches = exporter.0.batches.lock().unwrap().clone();
    let spans: Vec<&SpanData> = batches.iter().flatten().collect();
    assert_eq!(spans.len(), 2);
    let (server, client_span) = (spans[0], spans[1]);
    assert_eq!(server.span_kind, opentelemetry::trace::SpanKind::Server);
    assert_eq!(server.parent_span_id.to_bytes(), [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
    assert!(server.parent_span_is_remote);
    assert_eq!(client_span.span_kind, opentelemetry::trace::SpanKind::Client);
    assert_eq!(client_span.parent_span_id.to_bytes(), ctx.span_id);
    assert_eq!(client_span.span_context.span_id().to_bytes(), client);
    assert_eq!(t.counts().exported, 2);

    exporter.0.fail.store(true, Relaxed);
    for _ in 0..3 {
        t.end(span(&ctx));
    }
    t.flush().await;
    assert_eq!(t.counts().export_failed, 3);
    assert_eq!(t.counts().exported, 2);
    let mut text = String::new();
    t.render_prometheus(&mut text);
    assert!(
        text.contains("canarygate_trace_spans_dropped_total{reason=\"export_failed\"} 3"),
        "{text}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_drops_and_counts_without_waiting() {
    let t = Tracer::with_exporter(&TracingConfig { queue: 4, ..cfg(1.0) }, MemoryExporter::default());
    let ctx = t.begin(None);
    // On a single-threaded runtime the export task cannot run while this loop does: the queue fills.
    for _ in 0..10 {
        t.end(span(&ctx));
    }
    assert_eq!(t.counts().queue_full, 6);
    t.flush().await;
    assert_eq!(t.counts().exported, 4);
}
