//! The stage cache: a bounded in-memory cache per stage (moka), shared by production and canary only
//! when they would call the same deployment with the same effective stage variables.
//!
//! - Keys are method, path and query (below the stage) and a *variant fingerprint*: a hash of the
//!   deployment id and the effective variables. A canary on the same deployment but with another backend
//!   override gets other keys, so it is never answered from production's entries (API Gateway's trap).
//! - Only GET/HEAD 200 responses are stored, without `Set-Cookie` or `Vary`, and not when
//!   `Cache-Control` says `no-store`, `private` or `no-cache`; `s-maxage`/`max-age` shorter than the
//!   stage's `ttlSeconds` shortens the entry's life (`max-age=0`: not stored).
//! - Both bounds hold at once: each entry weighs `max(its bytes, maxBytes / maxEntries)` against a
//!   capacity of `maxBytes`, so there are never more than `maxEntries` entries nor more than `maxBytes`.
//! - Concurrent misses for one key make one upstream call (`try_get_with`); the others wait for it, up
//!   to the route's timeout, then call the upstream themselves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use moka::future::Cache;
use xxhash_rust::xxh3::Xxh3;

/// What identifies a cached response.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub method: Method,
    pub path_and_query: String,
    pub fingerprint: u64,
}

/// A stored response.
#[derive(Debug)]
pub struct CachedResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub stored_at: Instant,
    pub ttl: Duration,
}

impl CachedResponse {
    fn weight(&self, key: &CacheKey) -> u64 {
        let headers: usize = self.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 32).sum();
        (self.body.len() + headers + key.path_and_query.len() + 128) as u64
    }
}

struct PerEntryTtl;

impl moka::Expiry<CacheKey, Arc<CachedResponse>> for PerEntryTtl {
    fn expire_after_create(&self, _: &CacheKey, value: &Arc<CachedResponse>, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// One stage's cache.
pub struct StageCache {
    pub(crate) entries: Cache<CacheKey, Arc<CachedResponse>>,
    pub max_entries: u32,
    pub max_bytes: u64,
    /// Responses larger than this are passed through without being stored.
    pub max_entry_bytes: usize,
}

impl StageCache {
    pub fn new(max_entries: u32, max_bytes: u64) -> StageCache {
        let min_weight = max_bytes.div_ceil(u64::from(max_entries.max(1)));
        let max_entry_bytes = (max_bytes / 4).min(8 * 1024 * 1024) as usize;
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(move |k: &CacheKey, v: &Arc<CachedResponse>| u32::try_from(v.weight(k).max(min_weight)).unwrap_or(u32::MAX))
            .expire_after(PerEntryTtl)
            .build();
        StageCache {
            entries,
            max_entries,
            max_bytes,
            max_entry_bytes,
        }
    }

    /// Entries and weighted bytes, after pending evictions have run.
    pub async fn stats(&self) -> (u64, u64) {
        self.entries.run_pending_tasks().await;
        (self.entries.entry_count(), self.entries.weighted_size())
    }

    /// Drops every entry.
    pub async fn flush(&self) {
        self.entries.invalidate_all();
        self.entries.run_pending_tasks().await;
    }
}

/// The fingerprint of a variant: its deployment and effective variables.
pub fn fingerprint<'a>(deployment_id: &str, variables: impl Iterator<Item = (&'a String, &'a String)>) -> u64 {
    let mut h = Xxh3::new();
    h.update(deployment_id.as_bytes());
    h.update(&[0]);
    for (k, v) in variables {
        h.update(k.as_bytes());
        h.update(&[0]);
        h.update(v.as_bytes());
        h.update(&[0]);
    }
    h.digest()
}

/// How long a response may be stored, or `None` when it must not be.
pub fn storable_for(status: StatusCode, headers: &HeaderMap, stage_ttl: Duration) -> Option<Duration> {
    if status != StatusCode::OK || stage_ttl.is_zero() || headers.contains_key(header::SET_COOKIE) || headers.contains_key(header::VARY) {
        return None;
    }
    let mut max_age = None;
    let mut s_maxage = None;
    for v in headers.get_all(header::CACHE_CONTROL).iter().filter_map(|v| v.to_str().ok()) {
        for d in v.split(',').map(|d| d.trim().to_ascii_lowercase()) {
            let (name, arg) = d
                .split_once('=')
                .map_or((d.as_str(), None), |(n, a)| (n.trim(), Some(a.trim().trim_matches('"'))));
            match name {
                "no-store" | "private" | "no-cache" => return None,
                "max-age" => max_age = arg.and_then(|a| a.parse::<u64>().ok()).or(Some(0)),
                "s-maxage" => s_maxage = arg.and_then(|a| a.parse::<u64>().ok()).or(Some(0)),
                _ => {}
            }
        }
    }
    let ttl = match s_maxage.or(max_age) {
        Some(secs) => stage_ttl.min(Duration::from_secs(secs)),
        None => stage_ttl,
    };
    (!ttl.is_zero()).then_some(ttl)
}

/// Builds the answer for a hit.
pub fn hit_response(entry: &CachedResponse, method: &Method) -> http::Response<Bytes> {
    let body = if *method == Method::HEAD {
        Bytes::new()
    } else {
        entry.body.clone()
    };
    let mut r = http::Response::new(body);
    *r.status_mut() = entry.status;
    *r.headers_mut() = entry.headers.clone();
    let age = entry.stored_at.elapsed().as_secs();
    r.headers_mut().insert(header::AGE, HeaderValue::from(age));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn what_may_be_stored() {
        let ttl = Duration::from_secs(300);
        assert_eq!(storable_for(StatusCode::OK, &h(&[]), ttl), Some(ttl));
        assert_eq!(storable_for(StatusCode::NOT_FOUND, &h(&[]), ttl), None);
        assert_eq!(storable_for(StatusCode::OK, &h(&[]), Duration::ZERO), None);
        for cc in ["no-store", "private", "no-cache", "public, max-age=0", "Private"] {
            assert_eq!(storable_for(StatusCode::OK, &h(&[("cache-control", cc)]), ttl), None, "{cc}");
        }
        assert_eq!(storable_for(StatusCode::OK, &h(&[("set-cookie", "a=b")]), ttl), None);
        assert_eq!(storable_for(StatusCode::OK, &h(&[("vary", "accept-encoding")]), ttl), None);
        assert_eq!(
            storable_for(StatusCode::OK, &h(&[("cache-control", "public, max-age=10")]), ttl),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            storable_for(StatusCode::OK, &h(&[("cache-control", "max-age=10, s-maxage=20")]), ttl),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            storable_for(StatusCode::OK, &h(&[("cache-control", "max-age=99999")]), ttl),
            Some(ttl)
        );
    }

    #[test]
    fn fingerprints_differ_by_deployment_and_variables() {
        let a: Vec<(String, String)> = vec![("backend".into(), "a:1".into())];
        let b: Vec<(String, String)> = vec![("backend".into(), "b:2".into())];
        let f = |d: &str, v: &Vec<(String, String)>| fingerprint(d, v.iter().map(|(k, v)| (k, v)));
        assert_eq!(f("d-1", &a), f("d-1", &a));
        assert_ne!(f("d-1", &a), f("d-2", &a));
        assert_ne!(f("d-1", &a), f("d-1", &b));
    }

    /// Inserts `n` distinct entries with bodies of `body` bytes.
    async fn fill(cache: &StageCache, n: usize, body: usize) {
        for i in 0..n {
            let key = CacheKey {
                method: Method::GET,
                path_and_query: format!("/k{i}"),
                fingerprint: 1,
            };
            let v = Arc::new(CachedResponse {
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                body: Bytes::from(vec![0u8; body]),
                stored_at: Instant::now(),
                ttl: Duration::from_secs(60),
            });
            cache.entries.insert(key, v).await;
        }
    }

    #[tokio::test]
    async fn both_bounds_hold() {
        let cache = StageCache::new(10, 1024 * 1024);
        fill(&cache, 100, 100).await;
        let (n, bytes) = cache.stats().await;
        assert!(n <= 10, "{n} entries");
        assert!(bytes <= 1024 * 1024);
        let small = StageCache::new(1000, 64 * 1024);
        fill(&small, 100, 4000).await;
        let (n, bytes) = small.stats().await;
        assert!(bytes <= 64 * 1024, "{bytes} bytes");
        assert!(n <= 16, "{n} entries of ~4 KiB in 64 KiB");
    }
}
