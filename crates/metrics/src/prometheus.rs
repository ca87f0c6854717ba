//! Prometheus text exposition of all series.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::histogram::bucket_bounds_us;
use crate::{Series, SeriesKey};

/// Escapes a label value as the text format requires.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn labels(k: &SeriesKey) -> String {
    format!(
        "api=\"{}\",stage=\"{}\",variant=\"{}\"",
        escape(&k.api),
        escape(&k.stage),
        k.variant
    )
}

fn histogram(out: &mut String, name: &str, l: &str, buckets: &[AtomicU64], sum_us: u64) {
    let mut cum = 0u64;
    for (i, b) in buckets.iter().enumerate() {
        cum += b.load(Relaxed);
        match bucket_bounds_us().get(i) {
            Some(bound) => {
                let _ = writeln!(out, "{name}_bucket{{{l},le=\"{}\"}} {cum}", *bound as f64 / 1e6);
            }
            None => {
                let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {cum}");
            }
        }
    }
    let _ = writeln!(out, "{name}_sum{{{l}}} {}", sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count{{{l}}} {cum}");
}

pub(crate) fn render(series: &BTreeMap<SeriesKey, Arc<Series>>, out: &mut String) {
    out.push_str("# HELP canarygate_requests_total Requests served, by variant and status class.\n");
    out.push_str("# TYPE canarygate_requests_total counter\n");
    for (k, s) in series {
        let l = labels(k);
        for (i, c) in s.totals.by_class.iter().enumerate() {
            let _ = writeln!(
                out,
                "canarygate_requests_total{{{l},status_class=\"{}xx\"}} {}",
                i + 1,
                c.load(Relaxed)
            );
        }
    }
    out.push_str("# HELP canarygate_request_duration_seconds Whole request latency.\n");
    out.push_str("# TYPE canarygate_request_duration_seconds histogram\n");
    for (k, s) in series {
        histogram(
            out,
            "canarygate_request_duration_seconds",
            &labels(k),
            &s.totals.latency,
            s.totals.latency_sum_us.load(Relaxed),
        );
    }
    out.push_str("# HELP canarygate_integration_duration_seconds Time spent in the integration.\n");
    out.push_str("# TYPE canarygate_integration_duration_seconds histogram\n");
    for (k, s) in series {
        histogram(
            out,
            "canarygate_integration_duration_seconds",
            &labels(k),
            &s.totals.integration,
            s.totals.integration_sum_us.load(Relaxed),
        );
    }
    out.push_str("# HELP canarygate_cache_requests_total Stage cache lookups, by result.\n");
    out.push_str("# TYPE canarygate_cache_requests_total counter\n");
    for (k, s) in series {
        let l = labels(k);
        let _ = writeln!(
            out,
            "canarygate_cache_requests_total{{{l},result=\"hit\"}} {}",
            s.totals.hit.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "canarygate_cache_requests_total{{{l},result=\"miss\"}} {}",
            s.totals.miss.load(Relaxed)
        );
    }
    out.push_str(
        "# HELP canarygate_open_connections Connections switched to another protocol (WebSocket or another Upgrade) and relayed now.\n",
    );
    out.push_str("# TYPE canarygate_open_connections gauge\n");
    for (k, s) in series {
        let l = labels(k);
        for kind in crate::OpenKind::ALL {
            let _ = writeln!(
                out,
                "canarygate_open_connections{{{l},kind=\"{}\"}} {}",
                kind.as_str(),
                s.open_connections(kind)
            );
        }
    }
    let mirrors: Vec<_> = series.iter().filter(|(k, _)| k.variant == crate::Variant::Mirror).collect();
    if mirrors.is_empty() {
        return;
    }
    mirror_counter(
        out,
        &mirrors,
        "canarygate_mirror_copies_not_sent_total",
        "Mirrored copies not sent: dropped (too many on their way to a slow canary) or skipped (body too large or incomplete).",
        [
            ("reason=\"dropped\"", &|s| &s.totals.mirror_dropped),
            ("reason=\"skipped\"", &|s| &s.totals.mirror_skipped),
        ],
    );
    mirror_counter(
        out,
        &mirrors,
        "canarygate_mirror_discordant_pairs_total",
        "Pairs of a production request and its mirrored copy where exactly one failed (5xx), by which one.",
        [
            ("failed=\"copy\"", &|s| &s.totals.pairs_copy_failed),
            ("failed=\"original\"", &|s| &s.totals.pairs_original_failed),
        ],
    );
}

type Counter<'a> = (&'a str, &'a dyn Fn(&Series) -> &AtomicU64);

/// A per-stage counter of the mirror series, with one extra label.
fn mirror_counter(out: &mut String, mirrors: &[(&SeriesKey, &Arc<Series>)], name: &str, help: &str, values: [Counter<'_>; 2]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    for (k, s) in mirrors {
        let l = format!("api=\"{}\",stage=\"{}\"", escape(&k.api), escape(&k.stage));
        for (label, get) in &values {
            let _ = writeln!(out, "{name}{{{l},{label}}} {}", get(s).load(Relaxed));
        }
    }
}
