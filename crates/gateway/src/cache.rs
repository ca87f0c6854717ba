//! The stage cache: a bounded in-memory cache per stage (moka), shared by production and canary only
//! when they would call the same deployment with the same effective stage variables. It is a shared
//! cache in the sense of RFC 9111, and what may be stored and served is decided by
//! `http-cache-semantics` (a shared-cache policy per entry).
//!
//! - Keys are method, path and query (below the stage), a *variant fingerprint* (a hash of the
//!   deployment id and the effective variables: a canary with another backend override gets other
//!   keys, so it is never answered from production's entries, API Gateway's trap) and a hash of the
//!   request's values of the fields the resource's responses `Vary` on.
//! - Stored: GET/HEAD 200 responses the policy finds storable for a shared cache — so never one to a
//!   request with `Authorization` unless the response says `public`, `s-maxage` or `must-revalidate`,
//!   nor one marked `private` or `no-store` — and never one with `Set-Cookie`, `no-cache` (we do not
//!   revalidate) or `Vary: *`. Freshness is the response's own (`s-maxage` over `max-age` over
//!   `Expires`, less its `Age`), the stage's `ttlSeconds` when it gives none, and never longer than
//!   `ttlSeconds`.
//! - Served: an entry answers a request only when the request's values of the `Vary` fields are those
//!   the entry was stored for and the entry is fresh. `Age` says how long it has been stored, plus
//!   the upstream's `Age`. A client's own `Cache-Control` (`no-cache`, `max-age`, `no-store`) neither
//!   bypasses nor refreshes the cache, as in nginx, Varnish and API Gateway: otherwise any client
//!   could send every request through to the backend; `DELETE .../cache` flushes it.
//! - Both bounds hold at once: each entry weighs `max(its bytes, maxBytes / maxEntries)` against a
//!   capacity of `maxBytes`, so there are never more than `maxEntries` entries nor more than `maxBytes`.
//! - Concurrent misses for one key make one upstream call (`try_get_with`); the others wait for it, up
//!   to the route's timeout. A waiter takes the answer only if it was stored and the entry answers the
//!   waiter's own request; otherwise (not storable, private, another `Vary` value) it calls the upstream
//!   itself.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use http_cache_semantics::{CacheOptions, CachePolicy, RequestLike, ResponseLike};
use moka::future::Cache;
use xxhash_rust::xxh3::Xxh3;

/// What identifies a cached response.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub method: Method,
    pub path_and_query: String,
    pub fingerprint: u64,
    /// Hash of the request's values of the fields the resource varies on (0: none known).
    pub vary: u64,
}

/// A stored response.
#[derive(Debug)]
pub struct CachedResponse {
    pub status: StatusCode,
    /// The response's fields, hop-by-hop fields removed.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The shared-cache policy it was stored under: freshness and age.
    policy: CachePolicy,
    /// The fields the response varies on, with the values the request that fetched it had.
    vary: Box<[(HeaderName, Option<HeaderValue>)]>,
    /// How long it is kept.
    pub ttl: Duration,
}

impl CachedResponse {
    fn weight(&self, key: &CacheKey) -> u64 {
        let headers: usize = self.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 32).sum();
        // The policy keeps a few fields of the request and the response.
        (self.body.len() + 2 * headers + key.path_and_query.len() + 512) as u64
    }

    /// How long it has been stored, plus the upstream's `Age`.
    pub fn age(&self, now: SystemTime) -> Duration {
        self.policy.age(now)
    }

    /// The fields the response varies on.
    pub fn vary_names(&self) -> impl Iterator<Item = &HeaderName> {
        self.vary.iter().map(|(n, _)| n)
    }

    /// The entry's age if it may answer a request with these fields now, else `None`: the request
    /// has other values for the `Vary` fields, or the entry is stale. The request's own
    /// `Cache-Control` is not consulted (see the module's documentation).
    pub fn answers(&self, req: &HeaderMap, now: SystemTime) -> Option<Duration> {
        if !self.vary.iter().all(|(n, v)| req.get(n) == v.as_ref()) {
            return None;
        }
        (!self.policy.is_stale(now)).then(|| self.policy.age(now))
    }
}

/// The request as the policy sees it: the key already matched its target and host, so only the
/// fields that decide storing are kept (`Authorization` only as a presence, the `Vary` fields).
struct PolicyRequest<'a> {
    method: &'a Method,
    headers: HeaderMap,
}

impl RequestLike for PolicyRequest<'_> {
    fn uri(&self) -> Uri {
        Uri::from_static("/")
    }
    fn is_same_uri(&self, _: &Uri) -> bool {
        true
    }
    fn method(&self) -> &Method {
        self.method
    }
    fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

struct PolicyResponse {
    status: StatusCode,
    headers: HeaderMap,
}

impl ResponseLike for PolicyResponse {
    fn status(&self) -> StatusCode {
        self.status
    }
    fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

fn policy_fields<'a>(req: &HeaderMap, vary: impl Iterator<Item = &'a HeaderName>) -> HeaderMap {
    let mut h = HeaderMap::new();
    if req.contains_key(header::AUTHORIZATION) {
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("(present)"));
    }
    for name in vary {
        for v in req.get_all(name) {
            h.append(name.clone(), v.clone());
        }
    }
    h
}

/// Cache directives are case-insensitive (RFC 9111 §5.2); the policy matches them in lower case.
fn lowercase_directives(name: &HeaderName, v: &HeaderValue) -> HeaderValue {
    if (name == header::CACHE_CONTROL || name == header::PRAGMA) && v.as_bytes().iter().any(u8::is_ascii_uppercase) {
        HeaderValue::from_bytes(&v.as_bytes().to_ascii_lowercase()).unwrap_or_else(|_| v.clone())
    } else {
        v.clone()
    }
}

/// The fields a response varies on (`None` for `Vary: *`, which nothing matches).
fn vary_of(resp: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for v in resp.get_all(header::VARY) {
        for t in v.to_str().ok()?.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if t == "*" {
                return None;
            }
            let name = HeaderName::from_bytes(t.as_bytes()).ok()?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Some(names)
}

/// Hash of the request's values of `names` (0 when there are none).
pub fn vary_hash<'a>(req: &HeaderMap, names: impl Iterator<Item = &'a HeaderName>) -> u64 {
    let mut h: Option<Xxh3> = None;
    for name in names {
        let h = h.get_or_insert_with(Xxh3::new);
        h.update(name.as_str().as_bytes());
        for v in req.get_all(name) {
            h.update(&[0]);
            h.update(v.as_bytes());
        }
        h.update(&[1]);
    }
    h.map_or(0, |h| h.digest().max(1))
}

/// A response that may be stored: its policy, how long to keep it, what it varies on.
pub struct Storable {
    policy: CachePolicy,
    pub ttl: Duration,
    vary: Box<[(HeaderName, Option<HeaderValue>)]>,
}

impl Storable {
    pub fn into_entry(self, status: StatusCode, headers: HeaderMap, body: Bytes) -> CachedResponse {
        CachedResponse {
            status,
            headers,
            body,
            policy: self.policy,
            vary: self.vary,
            ttl: self.ttl,
        }
    }
}

/// Whether the response to a request with `req` fields may be stored, under RFC 9111's rules for a
/// shared cache and the stage's: see the module's documentation.
pub fn storable(
    method: &Method,
    req: &HeaderMap,
    status: StatusCode,
    resp: &HeaderMap,
    stage_ttl: Duration,
    now: SystemTime,
) -> Option<Storable> {
    if status != StatusCode::OK || stage_ttl.is_zero() || resp.contains_key(header::SET_COOKIE) {
        return None;
    }
    let vary = vary_of(resp)?;
    // `Pragma: no-cache` without `Cache-Control` is read as `no-cache` (RFC 9111 §5.4).
    let pragma_no_cache = || {
        resp.get_all(header::PRAGMA)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"))
    };
    if !resp.contains_key(header::CACHE_CONTROL) && pragma_no_cache() {
        return None;
    }
    let mut fields = HeaderMap::new();
    let mut explicit = resp.contains_key(header::EXPIRES);
    for v in resp.get_all(header::CACHE_CONTROL) {
        for d in v.to_str().ok()?.split(',').map(|d| d.trim().split('=').next().unwrap_or("").trim()) {
            if d.eq_ignore_ascii_case("no-cache") {
                return None;
            }
            explicit |= d.eq_ignore_ascii_case("max-age") || d.eq_ignore_ascii_case("s-maxage");
        }
    }
    for name in [
        header::CACHE_CONTROL,
        header::EXPIRES,
        header::AGE,
        header::DATE,
        header::PRAGMA,
        header::VARY,
    ] {
        for v in resp.get_all(&name) {
            fields.append(name.clone(), lowercase_directives(&name, v));
        }
    }
    // No freshness of its own: the stage's TTL is its freshness (as nginx's `proxy_cache_valid`).
    if !explicit {
        let max_age = format!("max-age={}", stage_ttl.as_secs());
        fields.append(header::CACHE_CONTROL, HeaderValue::from_str(&max_age).expect("a valid field value"));
    }
    let policy = CachePolicy::new_options(
        &PolicyRequest {
            method,
            headers: policy_fields(req, vary.iter()),
        },
        &PolicyResponse { status, headers: fields },
        now,
        CacheOptions {
            shared: true,
            cache_heuristic: 0.0,
            ..CacheOptions::default()
        },
    );
    if !policy.is_storable() {
        return None;
    }
    let ttl = policy.time_to_live(now).min(stage_ttl);
    if ttl.is_zero() {
        return None;
    }
    let vary = vary.into_iter().map(|n| {
        let v = req.get(&n).cloned();
        (n, v)
    });
    Some(Storable {
        policy,
        ttl,
        vary: vary.collect(),
    })
}

struct PerEntryTtl;

impl moka::Expiry<CacheKey, Arc<CachedResponse>> for PerEntryTtl {
    fn expire_after_create(&self, _: &CacheKey, value: &Arc<CachedResponse>, _: std::time::Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// One stage's cache.
pub struct StageCache {
    pub(crate) entries: Cache<CacheKey, Arc<CachedResponse>>,
    /// The fields a resource's responses vary on, by its key without a vary hash: which key to look
    /// up. Only a hint — an entry is checked against the request's values before it answers.
    pub(crate) vary: Cache<CacheKey, Arc<[HeaderName]>>,
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
        let vary = Cache::builder()
            .max_capacity(u64::from(max_entries))
            .time_to_idle(Duration::from_secs(3600))
            .build();
        StageCache {
            entries,
            vary,
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
        self.vary.invalidate_all();
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

/// Builds the answer for a hit of `age`.
pub fn hit_response(entry: &CachedResponse, method: &Method, age: Duration) -> http::Response<Bytes> {
    let body = if *method == Method::HEAD {
        Bytes::new()
    } else {
        entry.body.clone()
    };
    let mut r = http::Response::new(body);
    *r.status_mut() = entry.status;
    *r.headers_mut() = entry.headers.clone();
    r.headers_mut().insert(header::AGE, HeaderValue::from(age.as_secs()));
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

    const TTL: Duration = Duration::from_secs(300);

    /// How long a response with `resp` fields to a GET with `req` fields would be kept.
    fn kept(req: &[(&'static str, &str)], resp: &[(&'static str, &str)]) -> Option<Duration> {
        storable(&Method::GET, &h(req), StatusCode::OK, &h(resp), TTL, SystemTime::now()).map(|s| s.ttl)
    }

    fn entry(req: &[(&'static str, &str)], resp: &[(&'static str, &str)], now: SystemTime) -> CachedResponse {
        let resp = h(resp);
        storable(&Method::GET, &h(req), StatusCode::OK, &resp, TTL, now)
            .expect("storable")
            .into_entry(StatusCode::OK, resp, Bytes::new())
    }

    #[test]
    fn what_may_be_stored() {
        assert_eq!(kept(&[], &[]), Some(TTL), "no freshness of its own: the stage's");
        assert_eq!(
            storable(&Method::GET, &h(&[]), StatusCode::NOT_FOUND, &h(&[]), TTL, SystemTime::now()).map(|s| s.ttl),
            None
        );
        assert_eq!(
            storable(&Method::GET, &h(&[]), StatusCode::OK, &h(&[]), Duration::ZERO, SystemTime::now()).map(|s| s.ttl),
            None
        );
        for cc in [
            "no-store",
            "private",
            "no-cache",
            "public, max-age=0",
            "Private",
            "s-maxage=0, max-age=60",
        ] {
            assert_eq!(kept(&[], &[("cache-control", cc)]), None, "{cc}");
        }
        assert_eq!(kept(&[], &[("set-cookie", "a=b")]), None);
        assert_eq!(kept(&[], &[("set-cookie", "a=b"), ("cache-control", "public")]), None);
        assert_eq!(kept(&[], &[("vary", "*")]), None);
        assert_eq!(kept(&[], &[("pragma", "no-cache")]), None);
        assert_eq!(
            kept(&[("cache-control", "no-store")], &[]),
            Some(TTL),
            "the request's directives are not consulted"
        );
        assert_eq!(kept(&[], &[("cache-control", "public, max-age=10")]), Some(Duration::from_secs(10)));
        assert_eq!(
            kept(&[], &[("cache-control", "max-age=10, s-maxage=20")]),
            Some(Duration::from_secs(20)),
            "s-maxage overrides max-age in a shared cache"
        );
        assert_eq!(kept(&[], &[("cache-control", "max-age=99999")]), Some(TTL), "capped by the stage");
        assert_eq!(
            kept(&[], &[("cache-control", "max-age=100"), ("age", "60")]),
            Some(Duration::from_secs(40)),
            "Age reduces freshness"
        );
        assert_eq!(kept(&[], &[("expires", "Thu, 01 Jan 2015 00:00:00 GMT")]), None, "past Expires");
        assert_eq!(kept(&[], &[("expires", "0")]), None, "invalid Expires is in the past");
    }

    #[test]
    fn authorization_requests_are_stored_only_when_the_response_allows_it() {
        let auth = [("authorization", "Bearer alice-token")];
        assert_eq!(kept(&auth, &[]), None);
        assert_eq!(kept(&auth, &[("cache-control", "max-age=60")]), None);
        assert_eq!(kept(&auth, &[("cache-control", "public")]), Some(TTL));
        assert_eq!(kept(&auth, &[("cache-control", "s-maxage=30")]), Some(Duration::from_secs(30)));
        assert_eq!(
            kept(&auth, &[("cache-control", "must-revalidate, max-age=30")]),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn an_entry_answers_only_matching_fresh_requests() {
        let now = SystemTime::now();
        let e = entry(
            &[("accept-language", "de")],
            &[("vary", "Accept-Language"), ("cache-control", "max-age=60")],
            now,
        );
        assert_eq!(e.vary_names().map(HeaderName::as_str).collect::<Vec<_>>(), ["accept-language"]);
        assert_eq!(e.answers(&h(&[("accept-language", "de")]), now), Some(Duration::ZERO));
        assert_eq!(e.answers(&h(&[("accept-language", "fr")]), now), None);
        assert_eq!(e.answers(&h(&[]), now), None);
        let later = now + Duration::from_secs(30);
        assert_eq!(e.answers(&h(&[("accept-language", "de")]), later), Some(Duration::from_secs(30)));
        assert_eq!(e.answers(&h(&[("accept-language", "de")]), now + Duration::from_secs(61)), None);
        // The request's own directives do not bypass the shared cache.
        let de_no_cache = h(&[("accept-language", "de"), ("cache-control", "no-cache")]);
        assert_eq!(e.answers(&de_no_cache, later), Some(Duration::from_secs(30)));
        // The upstream's Age counts.
        let aged = entry(&[], &[("cache-control", "max-age=100"), ("age", "60")], now);
        assert_eq!(aged.answers(&h(&[]), now), Some(Duration::from_secs(60)));
        assert_eq!(aged.answers(&h(&[]), now + Duration::from_secs(41)), None);
    }

    #[test]
    fn vary_hashes_differ_by_value_and_are_zero_without_fields() {
        let names = [HeaderName::from_static("accept-language")];
        let de = vary_hash(&h(&[("accept-language", "de")]), names.iter());
        let fr = vary_hash(&h(&[("accept-language", "fr")]), names.iter());
        let none = vary_hash(&h(&[]), names.iter());
        assert_ne!(de, fr);
        assert_ne!(de, none);
        assert_ne!(none, 0);
        assert_eq!(vary_hash(&h(&[("accept-language", "de")]), [].iter()), 0);
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
                vary: 0,
            };
            let resp = HeaderMap::new();
            let v = storable(&Method::GET, &HeaderMap::new(), StatusCode::OK, &resp, TTL, SystemTime::now())
                .unwrap()
                .into_entry(StatusCode::OK, resp, Bytes::from(vec![0u8; body]));
            cache.entries.insert(key, Arc::new(v)).await;
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
