//! Variant choice, in the order of the contract: the variant header (from a trusted address, or with
//! the stage's token) or cookie; then the stage's cohorts; then a sticky hash of a header or cookie
//! value; otherwise a per-request random draw. The hash and the draw are both uniform `u64`s compared
//! with the same threshold, so a sticky client on the canary stays on it as the weight grows (the
//! choice is monotone in `percentTraffic`); the hash is salted per rollout (or by the stage's pinned
//! salt), so different rollouts put different keys on the canary.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::IpAddr;

use canarygate_metrics::Routed;
use canarygate_model::{CanaryRouting, Stickiness, Variant};
use http::HeaderName;

use crate::protocols::h1::fields::FieldsRef;
use ipnet::IpNet;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// A stage's canary routing, compiled for the request path.
pub struct Routing {
    header: Option<HeaderName>,
    cookie: Option<Box<str>>,
    stickiness: Stickiness,
    /// `None`: the header is honoured from any client.
    trusted_sources: Option<Vec<IpNet>>,
    header_token: Option<Box<str>>,
    /// Seed of the sticky hash, from the stage's salt.
    seed: u64,
    cohorts: Vec<Cohort>,
}

enum Source {
    Header(HeaderName),
    Cookie(Box<str>),
    Query(Box<str>),
    Address(Vec<IpNet>),
}

enum Match {
    Equals(Box<str>),
    OneOf(HashSet<Box<str>, foldhash::fast::RandomState>),
    Prefix(Box<str>),
}

impl Match {
    fn test(&self, v: &str) -> bool {
        match self {
            Match::Equals(x) => **x == *v,
            Match::OneOf(set) => set.contains(v),
            Match::Prefix(p) => v.starts_with(&**p),
        }
    }
}

struct Cohort {
    source: Source,
    test: Option<Match>,
    variant: Variant,
}

fn nets(cidrs: &[String]) -> Vec<IpNet> {
    cidrs
        .iter()
        .filter_map(|c| canarygate_model::parse_cidr("", c).ok())
        .filter_map(|(a, l)| IpNet::new(a, l).ok().map(|n| n.trunc()))
        .collect()
}

impl Routing {
    /// Compiles validated routing settings with the stage's effective salt.
    pub fn compile(r: &CanaryRouting, salt: &str) -> Routing {
        let cohorts = r
            .cohorts
            .iter()
            .filter_map(|c| {
                let source = if let Some(h) = &c.header {
                    Source::Header(HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok()?)
                } else if let Some(k) = &c.cookie {
                    Source::Cookie(k.as_str().into())
                } else if let Some(q) = &c.query {
                    Source::Query(q.as_str().into())
                } else {
                    Source::Address(nets(c.source_cidr.as_ref().map_or(&[][..], |c| c.as_slice())))
                };
                let test = if let Some(v) = &c.equals {
                    Some(Match::Equals(v.as_str().into()))
                } else if let Some(list) = &c.one_of {
                    Some(Match::OneOf(list.iter().map(|v| v.as_str().into()).collect()))
                } else {
                    c.prefix.as_ref().map(|p| Match::Prefix(p.as_str().into()))
                };
                Some(Cohort {
                    source,
                    test,
                    variant: c.variant,
                })
            })
            .collect();
        Routing {
            header: r.header.as_deref().and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            cookie: r.cookie.as_deref().map(Into::into),
            stickiness: r.stickiness.clone(),
            trusted_sources: r.trusted_sources.as_deref().map(nets),
            header_token: r.header_token.as_deref().map(Into::into),
            seed: xxh3_64(salt.as_bytes()),
            cohorts,
        }
    }

    /// The variant a header value forces, if the client may force one: any client when the stage
    /// lists no trusted sources, else one from a trusted address, or one carrying the stage's token
    /// (`canary; token=...`).
    fn forced_by_header(&self, value: &str, peer: IpAddr) -> Option<Variant> {
        let (v, token) = match value.split_once(';') {
            Some((v, rest)) => (v.trim(), rest.trim().strip_prefix("token=")),
            None => (value, None),
        };
        let v = forced(v)?;
        let trusted = self.trusted_sources.as_ref().is_none_or(|t| t.iter().any(|n| n.contains(&peer)))
            || matches!((&self.header_token, token), (Some(want), Some(got)) if same(want.as_bytes(), got.as_bytes()));
        trusted.then_some(v)
    }

    fn cohort<'h>(&self, headers: impl Into<FieldsRef<'h>>, query: Option<&str>, peer: IpAddr) -> Option<Variant> {
        let headers = headers.into();
        self.cohorts.iter().find_map(|c| {
            let hit = match (&c.source, &c.test) {
                (Source::Address(nets), _) => nets.iter().any(|n| n.contains(&peer)),
                (_, None) => false,
                (Source::Header(h), Some(m)) => headers.get_all_str(h).any(|v| m.test(v)),
                (Source::Cookie(k), Some(m)) => cookie(headers, k).is_some_and(|v| m.test(v)),
                (Source::Query(k), Some(m)) => query.and_then(|q| query_param(q, k)).is_some_and(|v| m.test(&v)),
            };
            hit.then_some(c.variant)
        })
    }
}

/// Compares two byte strings in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Finds a query parameter's value (percent-decoded only when it holds an escape).
fn query_param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            if v.contains('%') {
                percent_encoding::percent_decode_str(v).decode_utf8_lossy()
            } else {
                Cow::Borrowed(v)
            }
        })
    })
}

/// Finds a cookie's value in the request's `Cookie` headers.
pub(crate) fn cookie<'h>(headers: impl Into<FieldsRef<'h>>, name: &str) -> Option<&'h str> {
    headers
        .into()
        .get_all_str(&http::header::COOKIE)
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v.trim_matches('"'))
        })
}

fn forced(value: &str) -> Option<Variant> {
    if value.eq_ignore_ascii_case("canary") {
        Some(Variant::Canary)
    } else if value.eq_ignore_ascii_case("production") {
        Some(Variant::Production)
    } else {
        None
    }
}

/// Maps `percentTraffic` onto a threshold over the whole `u64` range, so 0.1% is exactly 1 in 1000.
pub fn threshold(percent: f64) -> (u64, bool) {
    if percent >= 100.0 {
        (u64::MAX, true)
    } else if percent <= 0.0 || percent.is_nan() {
        (0, false)
    } else {
        ((percent / 100.0 * 18_446_744_073_709_551_616.0) as u64, false)
    }
}

/// A stage's canary share: a request goes to the canary when a uniform `u64` (random or a sticky
/// hash) is below `threshold`; to it always at 100%.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub threshold: u64,
    pub always: bool,
}

impl Split {
    pub fn of(percent: f64) -> Split {
        let (threshold, always) = threshold(percent);
        Split { threshold, always }
    }
}

/// Chooses the variant of one request, and says how. `split`: the canary's share, `None` for a stage
/// without a canary.
pub(crate) fn choose<'h>(
    r: &Routing,
    split: Option<Split>,
    headers: impl Into<FieldsRef<'h>>,
    query: Option<&str>,
    peer: IpAddr,
) -> (Variant, Routed) {
    let Some(split) = split else {
        return (Variant::Production, Routed::Random);
    };
    let headers = headers.into();
    if let Some(v) = r
        .header
        .as_ref()
        .and_then(|h| headers.text_of(h))
        .and_then(|v| r.forced_by_header(v, peer.to_canonical()))
    {
        return (v, Routed::Forced);
    }
    if let Some(v) = r.cookie.as_deref().and_then(|c| cookie(headers, c)).and_then(forced) {
        return (v, Routed::Forced);
    }
    // A cohort's requests are judged as forced ones: the analysis compares randomly routed requests.
    if !r.cohorts.is_empty() {
        if let Some(v) = r.cohort(headers, query, peer.to_canonical()) {
            return (v, Routed::Forced);
        }
    }
    if split.always {
        return (Variant::Canary, Routed::Random);
    }
    if split.threshold == 0 {
        return (Variant::Production, Routed::Random);
    }
    let sticky = match &r.stickiness {
        Stickiness::None => None,
        Stickiness::Header(h) => headers.get_bytes(h),
        Stickiness::Cookie(c) => cookie(headers, c).map(str::as_bytes),
    };
    let (draw, routed) = match sticky {
        Some(key) => {
            let h = xxh3_64_with_seed(key, r.seed);
            (h, Routed::Sticky(h))
        }
        None => (fastrand::u64(..), Routed::Random),
    };
    let variant = if draw < split.threshold {
        Variant::Canary
    } else {
        Variant::Production
    };
    (variant, routed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    /// Whether the salted sticky hash of `key` is under `threshold` (what [`choose`] computes).
    fn sticky_on_canary(key: &[u8], salt: &str, threshold: u64) -> bool {
        xxh3_64_with_seed(key, xxh3_64(salt.as_bytes())) < threshold
    }

    #[test]
    fn finds_cookies() {
        let mut h = HeaderMap::new();
        h.append(http::header::COOKIE, "a=1; sid=abc".parse().unwrap());
        h.append(http::header::COOKIE, "v=canary".parse().unwrap());
        assert_eq!(cookie(&h, "sid"), Some("abc"));
        assert_eq!(cookie(&h, "v"), Some("canary"));
        assert_eq!(cookie(&h, "x"), None);
    }

    #[test]
    fn finds_query_parameters() {
        assert_eq!(query_param("a=1&tenant=acme&b", "tenant").as_deref(), Some("acme"));
        assert_eq!(query_param("tenant=ac%20me", "tenant").as_deref(), Some("ac me"));
        assert_eq!(query_param("b&tenant", "tenant").as_deref(), Some(""));
        assert_eq!(query_param("xtenant=1", "tenant"), None);
    }

    fn routing(json: serde_json::Value) -> Routing {
        let mut r: CanaryRouting = serde_json::from_value(json).unwrap();
        r.validate().unwrap();
        Routing::compile(&r, "s")
    }

    #[test]
    fn the_header_is_honoured_from_trusted_addresses_or_with_the_token() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let public: IpAddr = "203.0.113.9".parse().unwrap();
        // Without trusted sources: any client (the contract's default).
        let r = routing(serde_json::json!({}));
        assert_eq!(r.forced_by_header("canary", public), Some(Variant::Canary));
        let r = routing(serde_json::json!({"trustedSources": ["127.0.0.0/8", "::1"]}));
        assert_eq!(r.forced_by_header("canary", local), Some(Variant::Canary));
        assert_eq!(r.forced_by_header("canary", public), None);
        assert_eq!(r.forced_by_header("canary", "::1".parse().unwrap()), Some(Variant::Canary));
        let r = routing(serde_json::json!({"trustedSources": ["203.0.113.0/24"], "headerToken": "0123456789abcdef-qa"}));
        assert_eq!(r.forced_by_header("production", public), Some(Variant::Production));
        assert_eq!(r.forced_by_header("canary", local), None);
        assert_eq!(
            r.forced_by_header("canary; token=0123456789abcdef-qa", local),
            Some(Variant::Canary)
        );
        assert_eq!(r.forced_by_header("canary; token=0123456789abcdef-qb", local), None);
        assert_eq!(r.forced_by_header("canary;token=0123456789abcdef-qa", local), Some(Variant::Canary));
    }

    #[test]
    fn cohorts_match_headers_cookies_queries_and_addresses_in_order() {
        let r = routing(serde_json::json!({"cohorts": [
            {"header": "x-tenant", "in": ["a", "b", "c"]},
            {"header": "x-beta", "equals": "1"},
            {"cookie": "plan", "prefix": "beta-"},
            {"query": "tenant", "equals": "internal", "variant": "production"},
            {"sourceCidr": ["10.1.0.0/16", "2001:db8::/32"]},
            {"sourceCidr": "192.0.2.0/25", "variant": "production"}
        ]}));
        let peer: IpAddr = "198.51.100.1".parse().unwrap();
        let with = |name: &str, value: &str| {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
            h
        };
        assert_eq!(r.cohort(&with("x-tenant", "b"), None, peer), Some(Variant::Canary));
        assert_eq!(r.cohort(&with("x-tenant", "d"), None, peer), None);
        assert_eq!(r.cohort(&with("x-beta", "1"), None, peer), Some(Variant::Canary));
        assert_eq!(
            r.cohort(&with("cookie", "sid=1; plan=beta-gold"), None, peer),
            Some(Variant::Canary)
        );
        assert_eq!(r.cohort(&with("cookie", "plan=gold"), None, peer), None);
        assert_eq!(
            r.cohort(&HeaderMap::new(), Some("x=1&tenant=internal"), peer),
            Some(Variant::Production)
        );
        assert_eq!(
            r.cohort(&HeaderMap::new(), None, "10.1.2.3".parse().unwrap()),
            Some(Variant::Canary)
        );
        assert_eq!(
            r.cohort(&HeaderMap::new(), None, "2001:db8::1".parse().unwrap()),
            Some(Variant::Canary)
        );
        assert_eq!(r.cohort(&HeaderMap::new(), None, "10.2.0.1".parse().unwrap()), None);
        assert_eq!(
            r.cohort(&HeaderMap::new(), None, "192.0.2.1".parse().unwrap()),
            Some(Variant::Production)
        );
        assert_eq!(r.cohort(&HeaderMap::new(), None, peer), None);
    }

    /// The sticky share of keys and of requests against `percentTraffic`, over 1,000 salts (one per
    /// rollout): 10,000 and 100 equally busy keys, and 10,000 keys whose request counts follow Zipf's
    /// law (s = 1: the busiest key sends 1/H(10,000) ≈ 10% of all requests). Prints the table in
    /// docs/BENCHMARKS.md (`cargo test --release -p canarygate-gateway sticky_share -- --nocapture`).
    #[test]
    fn sticky_share_against_the_weight() {
        let quantiles = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
            (v.iter().sum::<f64>() / v.len() as f64, at(0.05), at(0.5), at(0.95))
        };
        let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
        let zipf: Vec<f64> = (1..=10_000).map(|i| 1.0 / i as f64).collect();
        let zipf_total: f64 = zipf.iter().sum();
        println!("| percentTraffic | population | mean | p5 | median | p95 |");
        println!("|---|---|---|---|---|---|");
        for percent in [1.0, 10.0, 50.0] {
            let (t, _) = threshold(percent);
            let (mut users, mut few, mut requests) = (Vec::new(), Vec::new(), Vec::new());
            for salt in 0..1000 {
                let salt = format!("r-{salt:08x}");
                let on: Vec<bool> = keys.iter().map(|k| sticky_on_canary(k.as_bytes(), &salt, t)).collect();
                users.push(on.iter().filter(|x| **x).count() as f64 / 100.0);
                few.push(on[..100].iter().filter(|x| **x).count() as f64);
                requests.push(100.0 * on.iter().zip(&zipf).filter(|(x, _)| **x).map(|(_, w)| w).sum::<f64>() / zipf_total);
            }
            let p = percent / 100.0;
            for (name, v, n) in [
                ("10,000 keys, share of keys", users, 10_000.0),
                ("100 keys, share of keys", few, 100.0),
                ("10,000 Zipf keys, share of requests", requests, 0.0),
            ] {
                let (mean, p5, p50, p95) = quantiles(v);
                println!("| {percent}% | {name} | {mean:.2}% | {p5:.2}% | {p50:.2}% | {p95:.2}% |");
                // Over 1,000 salts the mean is the weight; for equally busy keys the spread is binomial.
                assert!((mean - percent).abs() < percent * 0.05 + 0.2, "{name} at {percent}%: mean {mean}");
                if n > 0.0 {
                    let sd = 100.0 * (p * (1.0 - p) / n).sqrt();
                    assert!(p95 - p5 < 4.0 * sd + 1.0, "{name} at {percent}%: p5 {p5}, p95 {p95}, sd {sd}");
                }
            }
        }
        // Two salts share about p² of the keys, not all of them.
        let (t, _) = threshold(20.0);
        let both = keys
            .iter()
            .filter(|k| sticky_on_canary(k.as_bytes(), "r-a", t) && sticky_on_canary(k.as_bytes(), "r-b", t))
            .count();
        assert!(
            (both as f64 - 400.0).abs() < 4.0 * (10_000.0f64 * 0.04 * 0.96).sqrt(),
            "{both} keys on both canaries"
        );
    }

    #[test]
    fn bad_cohorts_are_refused_naming_the_field() {
        for (json, field) in [
            (
                serde_json::json!({"cohorts": [{"header": "x-a", "cookie": "b", "equals": "1"}]}),
                "canaryRouting.cohorts[0]",
            ),
            (serde_json::json!({"cohorts": [{"header": "x-a"}]}), "canaryRouting.cohorts[0]"),
            (
                serde_json::json!({"cohorts": [{"sourceCidr": ["10.0.0.0/33"]}]}),
                "canaryRouting.cohorts[0].sourceCidr[0]",
            ),
            (
                serde_json::json!({"cohorts": [{"sourceCidr": "10.0.0.0/8", "equals": "x"}]}),
                "canaryRouting.cohorts[0]",
            ),
            (
                serde_json::json!({"trustedSources": ["nowhere"]}),
                "canaryRouting.trustedSources[0]",
            ),
            (serde_json::json!({"headerToken": "short"}), "canaryRouting.headerToken"),
            (
                serde_json::json!({"cohorts": [{"header": "x-a", "equals": "1", "variant": "mirror"}]}),
                "canaryRouting.cohorts[0].variant",
            ),
        ] {
            let mut r: CanaryRouting = serde_json::from_value(json.clone()).unwrap();
            let e = r.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{json}: {e}");
        }
    }
}
