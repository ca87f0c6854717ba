//! Variant choice, in the order of the contract: the variant header or cookie; then a sticky hash of a
//! header or cookie value; otherwise a per-request random draw. The hash and the draw are both uniform
//! `u64`s compared with the same threshold, so a sticky client on the canary stays on it as the weight
//! grows (the choice is monotone in `percentTraffic`).

use canarygate_metrics::Routed;
use canarygate_model::{Stickiness, Variant};
use http::HeaderMap;
use xxhash_rust::xxh3::xxh3_64;

use crate::table::StageRoute;

/// Finds a cookie's value in the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
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

/// Chooses the variant of one request, and says how.
pub fn choose(route: &StageRoute, headers: &HeaderMap) -> (Variant, Routed) {
    if route.canary.is_none() {
        return (Variant::Production, Routed::Random);
    }
    let r = &route.routing;
    if let Some(v) = r
        .header
        .as_deref()
        .and_then(|h| headers.get(h))
        .and_then(|v| v.to_str().ok())
        .and_then(forced)
    {
        return (v, Routed::Forced);
    }
    if let Some(v) = r.cookie.as_deref().and_then(|c| cookie(headers, c)).and_then(forced) {
        return (v, Routed::Forced);
    }
    if route.canary_always {
        return (Variant::Canary, Routed::Random);
    }
    if route.canary_threshold == 0 {
        return (Variant::Production, Routed::Random);
    }
    let sticky = match &r.stickiness {
        Stickiness::None => None,
        Stickiness::Header(h) => headers.get(h.as_str()).map(|v| v.as_bytes()),
        Stickiness::Cookie(c) => cookie(headers, c).map(str::as_bytes),
    };
    let (draw, routed) = match sticky {
        Some(key) => {
            let h = xxh3_64(key);
            (h, Routed::Sticky(h))
        }
        None => (fastrand::u64(..), Routed::Random),
    };
    let variant = if draw < route.canary_threshold {
        Variant::Canary
    } else {
        Variant::Production
    };
    (variant, routed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cookies() {
        let mut h = HeaderMap::new();
        h.append(http::header::COOKIE, "a=1; sid=abc".parse().unwrap());
        h.append(http::header::COOKIE, "v=canary".parse().unwrap());
        assert_eq!(cookie(&h, "sid"), Some("abc"));
        assert_eq!(cookie(&h, "v"), Some("canary"));
        assert_eq!(cookie(&h, "x"), None);
    }
}
