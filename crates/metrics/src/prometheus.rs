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

/// A Prometheus metric family, declared once with its name, help text and type: it writes its
/// `# HELP` and `# TYPE` lines and its samples in the text exposition format, label values escaped.
/// Every series canarygate exposes is declared as one, whichever crate renders it.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
}

impl Family {
    pub const fn counter(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            kind: "counter",
        }
    }

    pub const fn gauge(name: &'static str, help: &'static str) -> Family {
        Family { name, help, kind: "gauge" }
    }

    pub const fn histogram(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            kind: "histogram",
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The family's `# HELP` and `# TYPE` lines.
    pub fn header(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
    }

    /// One sample with these labels (values escaped here).
    pub fn sample(&self, out: &mut String, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        out.push_str(self.name);
        if !labels.is_empty() {
            out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{k}=\"{}\"", escape(v));
            }
            out.push('}');
        }
        let _ = writeln!(out, " {value}");
    }

    /// The header and one sample without labels.
    pub fn single(&self, out: &mut String, value: impl std::fmt::Display) {
        self.header(out);
        self.sample(out, &[], value);
    }
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

const REQUESTS: Family = Family::counter("canarygate_requests_total", "Requests served, by variant and status class.");
const DURATION: Family = Family::histogram("canarygate_request_duration_seconds", "Whole request latency.");
const INTEGRATION: Family = Family::histogram("canarygate_integration_duration_seconds", "Time spent in the integration.");
const CACHE: Family = Family::counter("canarygate_cache_requests_total", "Stage cache lookups, by result.");
const OPEN: Family = Family::gauge(
    "canarygate_open_connections",
    "Connections switched to another protocol (WebSocket or another Upgrade) and relayed now.",
);
const NOT_SENT: Family = Family::counter(
    "canarygate_mirror_copies_not_sent_total",
    "Mirrored copies not sent: dropped (too many on their way to a slow canary) or skipped (body too large or incomplete).",
);
const DISCORDANT: Family = Family::counter(
    "canarygate_mirror_discordant_pairs_total",
    "Pairs of a production request and its mirrored copy where exactly one failed (5xx), by which one.",
);

pub(crate) fn render(series: &BTreeMap<SeriesKey, Arc<Series>>, out: &mut String) {
    REQUESTS.header(out);
    for (k, s) in series {
        let l = labels(k);
        for (i, c) in s.totals.by_class.iter().enumerate() {
            let _ = writeln!(out, "{}{{{l},status_class=\"{}xx\"}} {}", REQUESTS.name(), i + 1, c.load(Relaxed));
        }
    }
    for (family, latency) in [(DURATION, true), (INTEGRATION, false)] {
        family.header(out);
        for (k, s) in series {
            let t = &s.totals;
            let (buckets, sum) = if latency {
                (&t.latency, &t.latency_sum_us)
            } else {
                (&t.integration, &t.integration_sum_us)
            };
            histogram(out, family.name(), &labels(k), buckets, sum.load(Relaxed));
        }
    }
    CACHE.header(out);
    for (k, s) in series {
        let l = labels(k);
        let _ = writeln!(out, "{}{{{l},result=\"hit\"}} {}", CACHE.name(), s.totals.hit.load(Relaxed));
        let _ = writeln!(out, "{}{{{l},result=\"miss\"}} {}", CACHE.name(), s.totals.miss.load(Relaxed));
    }
    OPEN.header(out);
    for (k, s) in series {
        let l = labels(k);
        for kind in crate::OpenKind::ALL {
            let _ = writeln!(
                out,
                "{}{{{l},kind=\"{}\"}} {}",
                OPEN.name(),
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
        NOT_SENT,
        [
            ("reason=\"dropped\"", &|s| &s.totals.mirror_dropped),
            ("reason=\"skipped\"", &|s| &s.totals.mirror_skipped),
        ],
    );
    mirror_counter(
        out,
        &mirrors,
        DISCORDANT,
        [
            ("failed=\"copy\"", &|s| &s.totals.pairs_copy_failed),
            ("failed=\"original\"", &|s| &s.totals.pairs_original_failed),
        ],
    );
}

type Counter<'a> = (&'a str, &'a dyn Fn(&Series) -> &AtomicU64);

/// A per-stage counter of the mirror series, with one extra label.
fn mirror_counter(out: &mut String, mirrors: &[(&SeriesKey, &Arc<Series>)], family: Family, values: [Counter<'_>; 2]) {
    family.header(out);
    let name = family.name();
    for (k, s) in mirrors {
        let l = format!("api=\"{}\",stage=\"{}\"", escape(&k.api), escape(&k.stage));
        for (label, get) in &values {
            let _ = writeln!(out, "{name}{{{l},{label}}} {}", get(s).load(Relaxed));
        }
    }
}
