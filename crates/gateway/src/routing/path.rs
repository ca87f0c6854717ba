//! Request paths below a stage: dot segments resolved before route matching (RFC 3986 §5.2.4).
//!
//! A backend that normalises paths itself would otherwise serve `/public/../admin` as `/admin`, a
//! route the stage never exposed. `.` and `..` segments, also percent-encoded (`%2e`, `%2E`), are
//! resolved here, so routes match — and upstreams receive — the path the backend will act on; a path
//! that climbs above the stage's root (`/..`) is refused. Encoded slashes (`%2F`) are not segment
//! separators and are left as they are.

use std::borrow::Cow;

/// The path climbs above its root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AboveRoot;

/// Whether a segment is `.` (1) or `..` (2), percent-encoded dots included; 0 otherwise.
fn dots(seg: &str) -> usize {
    let b = seg.as_bytes();
    let mut n = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'.' {
            i += 1;
        } else if b[i] == b'%' && b.len() >= i + 3 && b[i + 1] == b'2' && (b[i + 2] == b'e' || b[i + 2] == b'E') {
            i += 3;
        } else {
            return 0;
        }
        n += 1;
        if n > 2 {
            return 0;
        }
    }
    n
}

/// `path` (empty or starting with `/`) with its dot segments resolved; borrowed when it has none.
pub fn resolve_dot_segments(path: &str) -> Result<Cow<'_, str>, AboveRoot> {
    // Most paths have no dot and no percent sign: no segment to look at.
    if !path.bytes().any(|b| b == b'.' || b == b'%') || !path.split('/').any(|s| dots(s) > 0) {
        return Ok(Cow::Borrowed(path));
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    // A dot segment at the end leaves a trailing slash ("/a/b/.." is "/a/").
    let mut trailing_slash = false;
    for (i, seg) in segments.into_iter().enumerate() {
        match dots(seg) {
            1 => trailing_slash = i == last,
            2 => {
                out.pop().ok_or(AboveRoot)?;
                trailing_slash = i == last;
            }
            _ => {
                out.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if trailing_slash || s.is_empty() {
        s.push('/');
    }
    Ok(Cow::Owned(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(p: &str) -> Result<String, AboveRoot> {
        resolve_dot_segments(p).map(Cow::into_owned)
    }

    #[test]
    fn dot_segments_are_resolved() {
        assert!(matches!(resolve_dot_segments("/a/b.c/..d/.e"), Ok(Cow::Borrowed(_))));
        assert!(matches!(resolve_dot_segments(""), Ok(Cow::Borrowed(""))));
        assert_eq!(r("/public/../admin").unwrap(), "/admin");
        assert_eq!(r("/a/./b").unwrap(), "/a/b");
        assert_eq!(r("/a/b/..").unwrap(), "/a/");
        assert_eq!(r("/a/b/.").unwrap(), "/a/b/");
        assert_eq!(r("/a/..").unwrap(), "/");
        assert_eq!(r("/a/%2e%2E/b").unwrap(), "/b");
        assert_eq!(r("/a/.%2e/b").unwrap(), "/b");
        assert_eq!(r("/a/%2E/b").unwrap(), "/a/b");
        assert_eq!(r("/a//../b").unwrap(), "/a/b", "an empty segment is a segment");
        assert_eq!(r("/a/.../b").unwrap(), "/a/.../b");
        assert_eq!(r("/a/..%2fb/c").unwrap(), "/a/..%2fb/c", "an encoded slash separates nothing");
    }

    #[test]
    fn climbing_above_the_root_is_refused() {
        for p in ["/..", "/../a", "/a/../..", "/%2e%2e/x", "/a/b/../../../c", "/./.."] {
            assert_eq!(r(p), Err(AboveRoot), "{p}");
        }
    }
}
