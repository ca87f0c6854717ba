//! The routing snapshot: every API's stages compiled for serving, built from the control-plane state on
//! every change and swapped in atomically. A request loads it once and uses it to the end, so in-flight
//! requests finish on the snapshot they started with.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use canarygate_metrics::{Registry, Series};
use canarygate_model::state::ApiState;
use canarygate_model::template::{self, PathSegment, Template};
use canarygate_model::{Deployment, Integration, Method, State, Variant};
use http::{HeaderName, HeaderValue};

use crate::cache::{fingerprint, StageCache};
use crate::routing::choose::threshold;

/// A compiled integration.
pub enum CompiledIntegration {
    Http {
        uri: UpstreamTarget,
        /// When the URI refers to stage variables: its place in each variant's
        /// [`VariantRoute::targets`], the URI with that variant's values in it.
        bound: Option<usize>,
        timeouts: crate::upstream::Timeouts,
        /// For an `https://` URI: how the upstream's certificate is verified.
        tls: Option<Arc<rustls::ClientConfig>>,
        /// Speak HTTP/2 to the upstream.
        http2: bool,
    },
    Mock {
        status: http::StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Template,
    },
}

/// An HTTP integration's URI template, with its scheme and authority parsed once when they are
/// literal (no stage variable in them): a request then parses only its path and query.
pub struct UpstreamTarget {
    template: Template,
    /// The literal `scheme://authority` the template starts with, and its length.
    origin: Option<(http::uri::Scheme, http::uri::Authority, usize)>,
}

impl UpstreamTarget {
    pub fn new(template: Template) -> UpstreamTarget {
        // The authority ends inside the first literal: at a path or query it holds, or at its end when
        // nothing follows it.
        let origin = match template.parts.first() {
            Some(template::Part::Literal(l)) => literal_origin(l).filter(|&(.., end)| end < l.len() || template.parts.len() == 1),
            _ => None,
        };
        UpstreamTarget { template, origin }
    }

    /// The upstream's URI: the template rendered with the stage variables and path parameters, the
    /// request's query appended; `Err` with the rendered text when it is no URI with a host.
    pub fn render<'v>(
        &self,
        var: impl Fn(&str) -> Option<&'v str>,
        param: impl Fn(&str) -> Option<&'v str>,
        query: Option<&str>,
    ) -> Result<http::Uri, String> {
        let target = self.text(&var, &param, query);
        let Some((scheme, authority, len)) = &self.origin else {
            return match target.parse::<http::Uri>() {
                Ok(u) if u.host().is_some() => Ok(u),
                _ => Err(target),
            };
        };
        // What follows the origin is a path or a query, or nothing (see `new`).
        let mut rest = bytes::Bytes::from(target);
        bytes::Buf::advance(&mut rest, *len);
        let path_and_query = match rest.is_empty() {
            true => Ok(http::uri::PathAndQuery::from_static("/")),
            false => http::uri::PathAndQuery::from_maybe_shared(rest),
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(scheme.clone());
        parts.authority = Some(authority.clone());
        parts.path_and_query = path_and_query.ok();
        // The text again only for the error (rare): the hot path keeps its one buffer.
        http::Uri::from_parts(parts).map_err(|_| self.text(&var, &param, query))
    }

    /// The template rendered, with the request's query appended.
    fn text<'v>(&self, var: impl Fn(&str) -> Option<&'v str>, param: impl Fn(&str) -> Option<&'v str>, query: Option<&str>) -> String {
        let mut target = String::with_capacity(128);
        self.template.render_into(&mut target, var, param);
        if let Some(q) = query {
            target.push(if target.bytes().any(|b| b == b'?') { '&' } else { '?' });
            target.push_str(q);
        }
        target
    }
}

/// The `http(s)://authority` a literal starts with, when what follows it is a path, a query or
/// nothing, and it parses as a URI with a host.
fn literal_origin(l: &str) -> Option<(http::uri::Scheme, http::uri::Authority, usize)> {
    let after = l.strip_prefix("http://").or_else(|| l.strip_prefix("https://"))?;
    let end = l.len() - after.len() + after.find(['/', '?', '#']).unwrap_or(after.len());
    if l[end..].starts_with('#') {
        return None;
    }
    let uri: http::Uri = l[..end].parse().ok()?;
    uri.host()?;
    let parts = uri.into_parts();
    Some((parts.scheme?, parts.authority?, end))
}

/// The routes of one path pattern, by method.
pub struct PathEntry {
    /// The route's path as the deployment declares it (`/items/{id}`): a span's `http.route`.
    pub route: Arc<str>,
    pub methods: Vec<(Method, Arc<CompiledIntegration>)>,
}

impl PathEntry {
    pub fn find(&self, m: &http::Method) -> Option<&Arc<CompiledIntegration>> {
        let want = match *m {
            http::Method::GET => Method::Get,
            http::Method::POST => Method::Post,
            http::Method::PUT => Method::Put,
            http::Method::PATCH => Method::Patch,
            http::Method::DELETE => Method::Delete,
            http::Method::HEAD => Method::Head,
            http::Method::OPTIONS => Method::Options,
            _ => Method::Any,
        };
        let exact = self.methods.iter().find(|(mm, _)| *mm == want && want != Method::Any);
        exact
            .or_else(|| self.methods.iter().find(|(mm, _)| *mm == Method::Any))
            .map(|(_, i)| i)
    }
}

/// A deployment's routes, compiled into a path router.
pub struct CompiledDeployment {
    pub router: matchit::Router<PathEntry>,
    /// The URIs that refer to stage variables, in the order of their integrations' `bound`.
    variable_uris: Vec<Template>,
}

impl CompiledDeployment {
    pub fn compile(d: &Deployment) -> CompiledDeployment {
        let mut by_path: BTreeMap<String, PathEntry> = BTreeMap::new();
        let mut variable_uris = Vec::new();
        for r in &d.routes {
            let Ok(segs) = template::parse_path("path", &r.path) else {
                continue;
            };
            let pattern = route_pattern(&segs);
            let integration = match &r.integration {
                Integration::Http {
                    uri,
                    timeout_ms,
                    read_timeout_ms,
                    ca_file,
                    http2,
                } => match Template::parse("uri", uri, true) {
                    Ok(t) => CompiledIntegration::Http {
                        bound: t.has_stage_variables().then(|| {
                            variable_uris.push(t.clone());
                            variable_uris.len() - 1
                        }),
                        uri: UpstreamTarget::new(t),
                        timeouts: crate::upstream::Timeouts {
                            head: Duration::from_millis(u64::from(*timeout_ms)),
                            body_read: Duration::from_millis(u64::from(*read_timeout_ms)),
                        },
                        tls: uri
                            .starts_with("https://")
                            .then(|| crate::protocols::tls::client_config(ca_file.as_deref(), *http2)),
                        http2: *http2,
                    },
                    Err(_) => continue,
                },
                Integration::Mock { status, headers, body } => {
                    let status = http::StatusCode::from_u16(*status).unwrap_or(http::StatusCode::OK);
                    let headers = headers
                        .iter()
                        .filter_map(|(k, v)| Some((HeaderName::try_from(k.as_str()).ok()?, HeaderValue::try_from(v.as_str()).ok()?)))
                        .collect();
                    let body = Template::parse("body", body, false).unwrap_or_default();
                    CompiledIntegration::Mock { status, headers, body }
                }
            };
            by_path
                .entry(pattern)
                .or_insert_with(|| PathEntry {
                    route: Arc::from(r.path.as_str()),
                    methods: Vec::new(),
                })
                .methods
                .push((r.method, Arc::new(integration)));
        }
        let mut router = matchit::Router::new();
        for (pattern, entry) in by_path {
            if let Err(e) = router.insert(pattern.clone(), entry) {
                tracing::error!(deployment = %d.id, %pattern, error = %e, "route conflicts; skipped");
            }
        }
        CompiledDeployment { router, variable_uris }
    }
}

/// A route's path as a `matchit` pattern (`/orders/{id}/items/{*rest}`).
fn route_pattern(segs: &[PathSegment]) -> String {
    let mut pattern = String::new();
    for s in segs {
        pattern.push('/');
        match s {
            PathSegment::Literal(l) => {
                // matchit treats braces specially; the model forbids them in literals.
                pattern.push_str(l)
            }
            PathSegment::Param(n) => {
                pattern.push('{');
                pattern.push_str(n);
                pattern.push('}');
            }
            PathSegment::Greedy(n) => {
                pattern.push_str("{*");
                pattern.push_str(n);
                pattern.push('}');
            }
        }
    }
    if pattern.is_empty() {
        pattern.push('/');
    }
    pattern
}

/// One side of a stage, ready to serve.
pub struct VariantRoute {
    pub variant: Variant,
    pub deployment_id: Arc<str>,
    pub deployment: Arc<CompiledDeployment>,
    /// foldhash, not SipHash: looked up per request (the keys are the operator's).
    pub variables: HashMap<String, String, foldhash::fast::RandomState>,
    pub series: Arc<Series>,
    /// Deployment and effective variables, hashed: the cache key part that decides sharing.
    pub fingerprint: u64,
    /// Whether this variant reads and writes the stage cache.
    pub use_cache: bool,
    /// The deployment's URIs that refer to stage variables, with this variant's values in them (see
    /// [`VariantRoute::target`]): a request renders only its path parameters, and a URI whose
    /// authority was a variable has it parsed once, here.
    targets: Vec<UpstreamTarget>,
}

impl VariantRoute {
    /// The URI template a request of this variant renders for an integration (`uri`, `bound`).
    pub fn target<'a>(&'a self, uri: &'a UpstreamTarget, bound: Option<usize>) -> &'a UpstreamTarget {
        bound.and_then(|i| self.targets.get(i)).unwrap_or(uri)
    }
}

/// Mirroring of a stage, ready to serve: copies of production requests go to the canary's deployment
/// and variables, recorded in the `mirror` series.
pub struct MirrorRoute {
    /// The canary's side, with the mirror series; never reads or writes the stage cache.
    pub route: VariantRoute,
    /// A production request is copied when a uniform `u64` is below this (or always).
    pub threshold: u64,
    pub always: bool,
    pub methods: Vec<http::Method>,
    pub max_body: u64,
    /// Copies on their way; kept across snapshots while the bound stays the same.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    pub max_in_flight: u32,
}

impl MirrorRoute {
    /// Whether a production request of this method is to be copied (draws at random).
    #[inline]
    pub fn wants(&self, method: &http::Method) -> bool {
        (self.always || fastrand::u64(..) < self.threshold) && self.methods.iter().any(|m| m == method)
    }
}

/// A stage, ready to serve.
pub struct StageRoute {
    pub api: Arc<str>,
    pub stage: Arc<str>,
    pub production: VariantRoute,
    pub canary: Option<VariantRoute>,
    /// The canary's share (with `canary`).
    pub split: Option<crate::routing::choose::Split>,
    pub routing: crate::routing::choose::Routing,
    /// The stage cache, when enabled, and its time to live.
    pub cache: Option<Arc<StageCache>>,
    pub cache_ttl: Duration,
    /// The stage's last recorded cache flush: a newer one empties the cache.
    pub cache_flushed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Mirroring, when the stage has a canary and mirrors a share above 0.
    pub mirror: Option<Box<MirrorRoute>>,
}

impl StageRoute {
    pub fn variant(&self, v: Variant) -> &VariantRoute {
        match (v, &self.canary) {
            (Variant::Canary, Some(c)) => c,
            _ => &self.production,
        }
    }
}

/// A stage's cache when it has one on: the previous snapshot's while its bounds stay and no flush was
/// recorded since, else a new, empty one.
fn stage_cache(s: &canarygate_model::Stage, previous: Option<&Arc<StageRoute>>) -> Option<Arc<StageCache>> {
    if !s.cache.enabled {
        return None;
    }
    let flushed = previous.is_some_and(|p| p.cache_flushed_at != s.cache_flushed_at);
    match previous.and_then(|p| p.cache.as_ref()) {
        Some(c) if !flushed && c.max_entries == s.cache.max_entries && c.max_bytes == s.cache.max_bytes => Some(c.clone()),
        _ => Some(Arc::new(StageCache::new(s.cache.max_entries, s.cache.max_bytes))),
    }
}

/// A stage's mirroring, `route` its canary side; `before` its mirroring in the previous snapshot.
fn mirror_route(m: &canarygate_model::MirrorSettings, route: VariantRoute, before: Option<&MirrorRoute>) -> Box<MirrorRoute> {
    let (threshold, always) = threshold(m.percent_traffic);
    // Copies on their way stay counted against the bound across snapshots.
    let kept = before
        .filter(|pm| pm.max_in_flight == m.max_in_flight)
        .map(|pm| pm.in_flight.clone());
    Box::new(MirrorRoute {
        route,
        threshold,
        always,
        methods: m
            .methods
            .iter()
            .filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok())
            .collect(),
        max_body: m.max_body_bytes,
        in_flight: kept.unwrap_or_else(|| Arc::new(tokio::sync::Semaphore::new(m.max_in_flight as usize))),
        max_in_flight: m.max_in_flight,
    })
}

/// Builds one API's stages, reusing what `previous` (the API's routes in the previous snapshot, if any)
/// compiled and its stages' mirror bounds.
fn build_api(api_name: &str, a: &Arc<ApiState>, previous: Option<&ApiRoutes>, metrics: &Registry) -> ApiRoutes {
    let mut compiled: HashMap<String, Arc<CompiledDeployment>> = HashMap::new();
    let mut stages = HashMap::default();
    for (sname, s) in &a.stages {
        let mut variant = |v: Variant, deployment_id: &str, vars: &BTreeMap<String, String>, use_cache: bool| -> Option<VariantRoute> {
            let c = match compiled
                .get(deployment_id)
                .or_else(|| previous.and_then(|p| p.compiled.get(deployment_id)))
            {
                Some(c) => c.clone(),
                None => Arc::new(CompiledDeployment::compile(a.deployment(deployment_id)?)),
            };
            compiled.insert(deployment_id.to_string(), c.clone());
            let var = |n: &str| vars.get(n).map(String::as_str);
            let targets = c.variable_uris.iter().map(|t| UpstreamTarget::new(t.bind_variables(var))).collect();
            Some(VariantRoute {
                variant: v,
                deployment_id: Arc::from(deployment_id),
                deployment: c,
                variables: vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                series: metrics.series(api_name, sname, v),
                fingerprint: fingerprint(deployment_id, vars.iter()),
                use_cache,
                targets,
            })
        };
        let Some(production) = variant(Variant::Production, &s.deployment_id, &s.variables, true) else {
            continue;
        };
        let canary = match (&s.canary_settings, s.canary_variables()) {
            (Some(c), Some(vars)) => variant(Variant::Canary, &c.deployment_id, &vars, c.use_stage_cache),
            _ => None,
        };
        let mirror = match (&s.mirror, &s.canary_settings, s.canary_variables()) {
            (Some(m), Some(c), Some(vars)) if m.percent_traffic > 0.0 => {
                let before = previous.and_then(|p| p.stages.get(sname)).and_then(|st| st.mirror.as_deref());
                variant(Variant::Mirror, &c.deployment_id, &vars, false).map(|route| mirror_route(m, route, before))
            }
            _ => None,
        };
        let percent = s.canary_settings.as_ref().map_or(0.0, |c| c.percent_traffic);
        let split = canary.as_ref().map(|_| crate::routing::choose::Split::of(percent));
        let route = StageRoute {
            api: Arc::from(api_name),
            stage: Arc::from(sname.as_str()),
            production,
            canary,
            split,
            routing: crate::routing::choose::Routing::compile(&s.canary_routing, &s.sticky_salt()),
            cache: stage_cache(s, previous.and_then(|p| p.stages.get(sname))),
            cache_ttl: Duration::from_secs(u64::from(s.cache.ttl_seconds)),
            cache_flushed_at: s.cache_flushed_at,
            mirror,
        };
        stages.insert(sname.clone(), Arc::new(route));
    }
    ApiRoutes {
        name: Arc::from(api_name),
        stages,
        compiled,
    }
}

/// One API's stages, built from one `ApiState`. The next snapshot takes it as it is while the state
/// holds the same `Arc` for the API (a change copies only the APIs it touches), so a change rebuilds
/// only what it touches.
pub struct ApiRoutes {
    name: Arc<str>,
    /// foldhash, not SipHash: looked up per request (the keys are the operator's).
    pub stages: HashMap<String, Arc<StageRoute>, foldhash::fast::RandomState>,
    /// Compiled deployments by id (deployments are immutable: kept while the API is).
    compiled: HashMap<String, Arc<CompiledDeployment>>,
}

/// The APIs of a snapshot are spread over this many shards by a hash of their name: a change copies
/// only the shards of the APIs it touches.
const SHARDS: usize = 256;

type Shard = HashMap<Arc<str>, Arc<ApiRoutes>, foldhash::fast::RandomState>;

/// The whole snapshot.
pub struct RoutingTable {
    shards: Box<[Arc<Shard>]>,
    /// Picks an API's shard; the same for every snapshot of a process, and independent of the shards'
    /// own hashers (whose buckets would otherwise all share the bits that chose the shard).
    hasher: foldhash::fast::RandomState,
    /// Host -> base path mappings, longest base path first.
    pub domains: HashMap<String, Vec<(String, Arc<StageRoute>)>>,
    /// The state this snapshot was built from, to tell which APIs the next state changed.
    source: Arc<State>,
    /// Whether an API or stage of the previous snapshot is gone (its metric series may go too).
    pub(crate) removed: bool,
}

impl Default for RoutingTable {
    fn default() -> Self {
        RoutingTable {
            shards: (0..SHARDS).map(|_| Arc::new(Shard::default())).collect(),
            hasher: foldhash::fast::RandomState::default(),
            domains: HashMap::new(),
            source: Arc::default(),
            removed: false,
        }
    }
}

/// The APIs that differ between two states' API maps, in order: `(name, Some(now))` for one added or
/// changed, `(name, None)` for one gone. An API that is the same `Arc` in both is not looked at further
/// (an `ApiState` is filed under its own name, so the same `Arc` means the same key).
fn changed_apis<'a>(
    before: &'a BTreeMap<String, Arc<ApiState>>,
    now: &'a BTreeMap<String, Arc<ApiState>>,
) -> Vec<(&'a str, Option<&'a Arc<ApiState>>)> {
    use std::cmp::Ordering;
    let mut out = Vec::new();
    let (mut a, mut b) = (before.iter().peekable(), now.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((ka, _)), None) => {
                out.push((ka.as_str(), None));
                a.next();
            }
            (None, Some((kb, vb))) => {
                out.push((kb.as_str(), Some(*vb)));
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) => {
                if Arc::ptr_eq(va, vb) {
                    a.next();
                    b.next();
                    continue;
                }
                match ka.cmp(kb) {
                    Ordering::Less => {
                        out.push((ka.as_str(), None));
                        a.next();
                    }
                    Ordering::Greater => {
                        out.push((kb.as_str(), Some(*vb)));
                        b.next();
                    }
                    Ordering::Equal => {
                        out.push((kb.as_str(), Some(*vb)));
                        a.next();
                        b.next();
                    }
                }
            }
        }
    }
    out
}

impl RoutingTable {
    /// Builds the snapshot of `state` from the previous one: only the APIs the state changed since
    /// (not the same `Arc` as the previous snapshot's source) are built again, reusing the previous
    /// snapshot's compiled deployments, stage caches and mirror bounds; only their shards are copied.
    pub fn build(state: &Arc<State>, previous: &RoutingTable, metrics: &Registry) -> RoutingTable {
        let mut shards = previous.shards.to_vec();
        let mut removed = false;
        let mut copied = [false; SHARDS];
        for (name, now) in changed_apis(&previous.source.apis, &state.apis) {
            let i = previous.shard_of(name);
            if !copied[i] {
                // Copied once per change, then changed in place.
                shards[i] = Arc::new(Shard::clone(&shards[i]));
                copied[i] = true;
            }
            let shard = Arc::get_mut(&mut shards[i]).expect("a shard copied for this build is not shared");
            match now {
                None => {
                    shard.remove(name);
                    removed = true;
                }
                Some(a) => {
                    let before = shard.get(name).cloned();
                    let routes = build_api(name, a, before.as_deref(), metrics);
                    if let Some(p) = &before {
                        removed |= p.stages.keys().any(|s| !a.stages.contains_key(s));
                    }
                    shard.insert(routes.name.clone(), Arc::new(routes));
                }
            }
        }
        let mut t = RoutingTable {
            shards: shards.into_boxed_slice(),
            hasher: previous.hasher,
            domains: HashMap::new(),
            source: state.clone(),
            removed,
        };
        for d in state.domains.values() {
            let mut maps: Vec<(String, Arc<StageRoute>)> = d
                .mappings
                .iter()
                .filter_map(|m| Some((m.base_path.clone(), t.api(&m.api)?.stages.get(&m.stage)?.clone())))
                .collect();
            maps.sort_by_key(|m| std::cmp::Reverse(m.0.len()));
            t.domains.insert(d.domain.clone(), maps);
        }
        t
    }

    fn shard_of(&self, api: &str) -> usize {
        use std::hash::BuildHasher;
        (self.hasher.hash_one(api) as usize) & (SHARDS - 1)
    }

    /// An API's routes.
    #[inline]
    pub fn api(&self, name: &str) -> Option<&Arc<ApiRoutes>> {
        self.shards[self.shard_of(name)].get(name)
    }

    /// Finds the stage for a request: a custom domain mapping (longest base path), else
    /// `/<api>/<stage>/...`. Returns the stage and the path left for route matching.
    pub fn resolve<'p>(&self, host: Option<&str>, path: &'p str) -> Option<(&Arc<StageRoute>, &'p str)> {
        if let Some(maps) = host.and_then(|h| self.domains.get(h)) {
            for (base, route) in maps {
                if base.is_empty() {
                    return Some((route, path));
                }
                if let Some(rest) = path.strip_prefix('/').and_then(|p| p.strip_prefix(base.as_str())) {
                    if rest.is_empty() || rest.starts_with('/') {
                        return Some((route, rest));
                    }
                }
            }
            return None;
        }
        let p = path.strip_prefix('/')?;
        // Byte searches: `str::find(char)` goes through the generic char searcher, measurably slower
        // on these short segments.
        let slash = |s: &str| s.bytes().position(|b| b == b'/');
        let (api, rest) = match slash(p) {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => (p, ""),
        };
        let (stage, rest) = match slash(rest) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let route = self.api(api)?.stages.get(stage)?;
        Some((route, rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        assert_eq!(threshold(0.0), (0, false));
        assert_eq!(threshold(100.0), (u64::MAX, true));
        let (t, _) = threshold(0.1);
        let expected = u64::MAX / 1000;
        assert!((t as f64 - expected as f64).abs() / (expected as f64) < 1e-9);
        let (t10, _) = threshold(10.0);
        let (t30, _) = threshold(30.0);
        assert!(t10 < t30);
    }

    #[test]
    fn upstream_uris_render_as_a_whole_parse_would() {
        let vars = |n: &str| match n {
            "host" => Some("api.internal:8080"),
            "path" => Some("v2"),
            "bad" => Some("a b"),
            _ => None,
        };
        let params = |n: &str| (n == "proxy").then_some("orders/7");
        for (text, query) in [
            ("http://127.0.0.1:9000/{proxy}", None),
            ("http://127.0.0.1:9000/{proxy}", Some("a=1&b")),
            ("http://127.0.0.1:9000/x?k=v", Some("a=1")),
            ("https://Backend.Example:443/${stageVariables.path}/{proxy}", None),
            ("http://backend", None),
            ("http://backend", Some("q=1")),
            ("http://backend?q=0", None),
            ("http://${stageVariables.host}/{proxy}", None),
            ("http://api${stageVariables.path}.internal/{proxy}", Some("z")),
            ("http://127.0.0.1:9000/${stageVariables.bad}", None),
            ("http://127.0.0.1:9000/x#frag", None),
            ("http://a b/x", None),
            ("http:///x", None),
            ("/relative/{proxy}", None),
        ] {
            let target = UpstreamTarget::new(Template::parse("uri", text, true).unwrap());
            let mut rendered = String::new();
            target.template.render_into(&mut rendered, vars, params);
            if let Some(q) = query {
                rendered.push(if rendered.contains('?') { '&' } else { '?' });
                rendered.push_str(q);
            }
            let whole = match rendered.parse::<http::Uri>() {
                Ok(u) if u.host().is_some() => Ok(u),
                _ => Err(rendered.clone()),
            };
            let got = target.render(vars, params, query);
            // With the variables bound first (as a variant's targets are), the same answer.
            let bound = UpstreamTarget::new(target.template.bind_variables(vars));
            let got_bound = bound.render(|_| None, params, query);
            assert_eq!(got_bound, got, "{text} with its variables bound");
            match (&got, &whole) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b, "{text}");
                    assert_eq!(
                        a.path_and_query().map(|p| p.as_str()),
                        b.path_and_query().map(|p| p.as_str()),
                        "{text}"
                    );
                    assert_eq!((a.scheme(), a.authority()), (b.scheme(), b.authority()), "{text}");
                }
                (Err(a), Err(b)) => assert_eq!(a, b, "{text}"),
                _ => panic!("{text}: {got:?} against {whole:?}"),
            }
        }
        let literal = UpstreamTarget::new(Template::parse("uri", "http://h:1/{proxy}", true).unwrap());
        assert!(literal.origin.is_some(), "a literal authority is parsed once");
        let variable = UpstreamTarget::new(Template::parse("uri", "http://h${stageVariables.path}/", true).unwrap());
        assert!(variable.origin.is_none());
    }

    #[test]
    fn each_variant_renders_its_own_variables_into_its_targets() {
        let metrics = Registry::new();
        let t = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut s = State::default();
        let routes = serde_json::from_value(serde_json::json!([
            {"path": "/{proxy+}", "integration": {"type": "http", "uri": "http://${stageVariables.backend}/{proxy}"}},
            {"path": "/fixed", "integration": {"type": "http", "uri": "http://literal:1/fixed"}},
        ]))
        .unwrap();
        s.put_api("a", routes, t).unwrap();
        s.create_deployment("a", || "d-00001".into(), String::new(), t).unwrap();
        let input = canarygate_model::StageInput {
            variables: [("backend".to_string(), "prod.internal:8080".to_string())].into(),
            canary_settings: Some(canarygate_model::CanaryInput {
                percent_traffic: 10.0,
                stage_variable_overrides: [("backend".to_string(), "canary.internal:9090".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        s.put_stage("a", "prod", input, t).unwrap();
        let s = Arc::new(s);
        let table = RoutingTable::build(&s, &RoutingTable::default(), &metrics);
        let stage = &table.resolve(None, "/a/prod/x").unwrap().0;
        let uri = |vr: &VariantRoute, path: &str| {
            let m = vr.deployment.router.at(path).unwrap();
            let CompiledIntegration::Http { uri, bound, .. } = &**m.value.find(&http::Method::GET).unwrap() else {
                panic!("an http integration")
            };
            let target = vr.target(uri, *bound);
            let var = |n: &str| vr.variables.get(n).map(String::as_str);
            let got = target.render(var, |n| m.params.get(n), Some("q=1")).unwrap();
            // The deployment's own template, rendered with the variables, agrees.
            assert_eq!(Ok(&got), uri.render(var, |n| m.params.get(n), Some("q=1")).as_ref());
            (got.to_string(), target.origin.is_some())
        };
        assert_eq!(
            uri(&stage.production, "/orders/7"),
            ("http://prod.internal:8080/orders/7?q=1".to_string(), true)
        );
        let canary = stage.canary.as_ref().unwrap();
        assert_eq!(
            uri(canary, "/orders/7"),
            ("http://canary.internal:9090/orders/7?q=1".to_string(), true)
        );
        assert_eq!(uri(canary, "/fixed"), ("http://literal:1/fixed?q=1".to_string(), true));
        // One compiled deployment for both sides; each side's own targets.
        assert!(Arc::ptr_eq(&stage.production.deployment, &canary.deployment));
        assert_eq!((stage.production.targets.len(), canary.targets.len()), (1, 1));
    }

    fn state_with(apis: usize) -> State {
        let t = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut s = State::default();
        for i in 0..apis {
            let name = format!("api-{i}");
            let routes = serde_json::from_value(serde_json::json!([{"path": "/h", "integration": {"type": "mock"}}])).unwrap();
            s.put_api(&name, routes, t).unwrap();
            s.create_deployment(&name, || format!("d-{i}"), String::new(), t).unwrap();
            let input = canarygate_model::StageInput {
                cache: canarygate_model::CacheSettings {
                    enabled: i == 0,
                    ..Default::default()
                },
                ..Default::default()
            };
            s.put_stage(&name, "prod", input, t).unwrap();
        }
        s
    }

    #[test]
    fn a_change_rebuilds_only_the_apis_it_touches() {
        let metrics = Registry::new();
        let t = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let s1 = Arc::new(state_with(50));
        let first = RoutingTable::build(&s1, &RoutingTable::default(), &metrics);
        assert!(first.api("api-7").is_some() && first.api("api-50").is_none());
        assert!(first.resolve(None, "/api-49/prod/h").is_some());

        // Change api-7's stage: only api-7 is built again; the others are the same `Arc`s.
        let mut s2 = State::clone(&s1);
        s2.patch_stage(
            "api-7",
            "prod",
            &[canarygate_model::PatchOperation::replace("/variables/x", "1")],
            t,
        )
        .unwrap();
        let s2 = Arc::new(s2);
        let second = RoutingTable::build(&s2, &first, &metrics);
        assert!(!second.removed);
        for i in 0..50 {
            let name = format!("api-{i}");
            let same = Arc::ptr_eq(first.api(&name).unwrap(), second.api(&name).unwrap());
            assert_eq!(same, i != 7, "{name}");
        }
        let v = &second.resolve(None, "/api-7/prod/h").unwrap().0.production;
        assert_eq!(v.variables.get("x").map(String::as_str), Some("1"));
        // Its compiled deployment is reused; api-0's stage cache stays the same cache.
        let d = |t: &RoutingTable| t.api("api-7").unwrap().stages["prod"].production.deployment.clone();
        assert!(Arc::ptr_eq(&d(&first), &d(&second)));
        let c = |t: &RoutingTable| t.api("api-0").unwrap().stages["prod"].cache.clone().unwrap();
        assert!(Arc::ptr_eq(&c(&first), &c(&second)));

        // Delete one API and add another: both seen, the deletion flagged.
        let mut s3 = State::clone(&s2);
        s3.delete_api("api-3").unwrap();
        let routes = serde_json::from_value(serde_json::json!([{"path": "/h", "integration": {"type": "mock"}}])).unwrap();
        s3.put_api("zzz", routes, t).unwrap();
        let s3 = Arc::new(s3);
        let third = RoutingTable::build(&s3, &second, &metrics);
        assert!(third.removed);
        assert!(third.api("api-3").is_none() && third.api("zzz").is_some());
        assert!(third.resolve(None, "/api-3/prod/h").is_none());
        assert!(Arc::ptr_eq(second.api("api-4").unwrap(), third.api("api-4").unwrap()));
    }

    #[test]
    fn changed_apis_walks_both_maps_in_order() {
        let a = state_with(5);
        let mut b = a.clone();
        let t = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        b.delete_api("api-1").unwrap();
        b.patch_stage(
            "api-3",
            "prod",
            &[canarygate_model::PatchOperation::replace("/variables/x", "1")],
            t,
        )
        .unwrap();
        let routes = serde_json::from_value(serde_json::json!([])).unwrap();
        b.put_api("api-22", routes, t).unwrap();
        let got: Vec<(&str, bool)> = changed_apis(&a.apis, &b.apis).into_iter().map(|(n, v)| (n, v.is_some())).collect();
        assert_eq!(got, [("api-1", false), ("api-22", true), ("api-3", true)]);
        assert!(changed_apis(&a.apis, &a.apis).is_empty());
    }
}
