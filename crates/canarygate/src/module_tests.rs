//! The architecture is tested: inside every crate of the workspace, modules point one way.
//!
//! Each `.rs` file under `crates/*/src` is a module (`a.rs` or `a/mod.rs` is `a`, `a/b.rs` is `a::b`).
//! Every path it names from the crate root (`crate::x::y`, in `use` lists too) or through `super::`
//! is an edge to the deepest module that path reaches. An edge between two modules counts between the
//! two siblings under their closest common parent (`crate::h2` naming `crate::server::Conn` is `h2 ->
//! server`); a module naming its own parent or child is not a dependency between siblings. The suite
//! fails on a cycle among siblings, naming it and one line of each edge. Test modules (`tests.rs`,
//! `*_tests.rs`, `testing.rs`, `fuzz.rs`) are left out: nothing else points at them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A module path from the crate root: `["gateway", "h1"]`; the root is `[]`.
type Module = Vec<String>;

fn modules_of(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap();
            let mut parts: Vec<String> = rel
                .iter()
                .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                parts.pop();
            }
            out.insert(parts, p);
        }
    }
    out
}

fn is_test_module(m: &Module) -> bool {
    m.last()
        .is_some_and(|l| l == "tests" || l.ends_with("_tests") || l == "testing" || l == "fuzz")
}

/// The text with comments and string literals blanked (so a doc comment naming `crate::x` is no edge).
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut kept = String::new();
        let mut in_str = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if in_str {
                if c == '\\' {
                    chars.next();
                } else if c == '"' {
                    in_str = false;
                }
                continue;
            }
            if c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' {
                in_str = true;
                continue;
            }
            kept.push(c);
        }
        out.push_str(&kept);
        out.push('\n');
    }
    out
}

/// Every path named after `crate::` or `super::` in `code`, from module `at`, as absolute module
/// paths (the items' names included; the caller finds the module they reach), with their line.
fn named_paths(code: &str, at: &Module) -> Vec<(Vec<String>, usize)> {
    let mut out = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let mut rest = line;
        while let Some(i) = rest.find(['c', 's']) {
            let tail = &rest[i..];
            let boundary = rest[..i].chars().last().is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
            let (base, after) = if boundary && tail.starts_with("crate::") {
                (Vec::new(), &tail["crate::".len()..])
            } else if boundary && tail.starts_with("super::") {
                // `super` of `a/b.rs` is `a`; of `a/b/mod.rs` (module `a::b`) it is `a` too.
                let mut base = at.clone();
                let mut after = tail;
                while let Some(a) = after.strip_prefix("super::") {
                    base.pop();
                    after = a;
                }
                (base, after)
            } else {
                rest = &rest[i + 1..];
                continue;
            };
            for p in expand(after) {
                let mut full = base.clone();
                full.extend(p);
                out.push((full, n + 1));
            }
            rest = &tail[1..];
        }
    }
    out
}

/// The paths a use-tree names: `a::b`, `a::{b, c::d}`, `{a, b}`.
fn expand(s: &str) -> Vec<Vec<String>> {
    let s = s.trim_start();
    if let Some(inner) = s.strip_prefix('{') {
        let mut depth = 1;
        let mut end = inner.len();
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let inner = &inner[..end];
        let mut parts = Vec::new();
        let (mut depth, mut start) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&inner[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&inner[start..]);
        return parts.into_iter().flat_map(expand).collect();
    }
    let mut segs = Vec::new();
    let mut rest = s;
    loop {
        let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        segs.push(rest[..end].to_string());
        rest = &rest[end..];
        match rest.strip_prefix("::") {
            Some(r) if r.starts_with('{') => {
                return expand(r).into_iter().map(|p| segs.iter().cloned().chain(p).collect()).collect();
            }
            Some(r) => rest = r,
            None => break,
        }
    }
    if segs.is_empty() {
        Vec::new()
    } else {
        vec![segs]
    }
}

/// The sibling-level edges of one crate: (parent, from child, to child) -> a line that makes it.
fn edges(src: &Path) -> BTreeMap<(Module, String, String), String> {
    let modules = modules_of(src);
    // What the crate root re-exports (`pub use state::State;`): a path through the root to such a
    // name reaches the module it comes from.
    let mut reexports: BTreeMap<String, Module> = BTreeMap::new();
    if let Some(root_file) = modules.get(&Vec::new()) {
        let code = code_only(&std::fs::read_to_string(root_file).unwrap());
        for stmt in code.split(';') {
            let Some(tree) = stmt.trim().strip_prefix("pub use ") else {
                continue;
            };
            for path in expand(tree.trim_start_matches("crate::").trim_start_matches("self::")) {
                if path.len() > 1 && modules.contains_key(&path[..1]) {
                    reexports.insert(path.last().unwrap().clone(), path[..path.len() - 1].to_vec());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    for (m, file) in &modules {
        if is_test_module(m) {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        // A file's own `#[cfg(test)] mod tests { ... }` is a test module too: stop at it.
        let code = code_only(text.split("#[cfg(test)]\nmod tests").next().unwrap_or(""));
        for (path, line) in named_paths(&code, m) {
            // The deepest module the path reaches.
            let mut target: Module = Vec::new();
            let path = match path.first().and_then(|first| reexports.get(first)) {
                Some(m) => m.iter().chain(&path).cloned().collect(),
                None => path,
            };
            for seg in &path {
                let mut next = target.clone();
                next.push(seg.clone());
                if modules.contains_key(&next) {
                    target = next;
                } else {
                    break;
                }
            }
            if is_test_module(&target) {
                continue;
            }
            let common = m.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common == m.len() || common == target.len() {
                continue;
            }
            let key = (m[..common].to_vec(), m[common].clone(), target[common].clone());
            let rel = file.strip_prefix(root()).unwrap_or(file).display().to_string();
            out.entry(key).or_insert_with(|| format!("{rel}:{line}"));
        }
    }
    out
}

/// The groups of one parent's children that depend on each other in a cycle (strongly connected
/// components of more than one module), each sorted.
fn cycles(edges: &BTreeMap<(Module, String, String), String>) -> Vec<(Module, Vec<String>)> {
    let mut by_parent: BTreeMap<Module, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (parent, from, to) in edges.keys() {
        by_parent
            .entry(parent.clone())
            .or_default()
            .entry(from.clone())
            .or_default()
            .insert(to.clone());
    }
    let mut out = Vec::new();
    for (parent, graph) in by_parent {
        let reach = |from: &String| {
            let mut seen = BTreeSet::new();
            let mut todo = vec![from.clone()];
            while let Some(n) = todo.pop() {
                for next in graph.get(&n).into_iter().flatten() {
                    if seen.insert(next.clone()) {
                        todo.push(next.clone());
                    }
                }
            }
            seen
        };
        let reached: BTreeMap<String, BTreeSet<String>> = graph.keys().map(|n| (n.clone(), reach(n))).collect();
        let mut groups: BTreeSet<Vec<String>> = BTreeSet::new();
        for (n, r) in &reached {
            if !r.contains(n) {
                continue;
            }
            let group: Vec<String> = r
                .iter()
                .filter(|m| reached.get(*m).is_some_and(|back| back.contains(n)))
                .cloned()
                .collect();
            groups.insert(group);
        }
        out.extend(groups.into_iter().map(|g| (parent.clone(), g)));
    }
    out
}

#[test]
fn the_path_parser_finds_what_a_use_names() {
    let at: Module = vec!["proxy".into(), "phases".into()];
    let code = "use crate::{a::B, c::{d::E, F}};\nlet x = super::g::h();\n// crate::comment\nlet s = \"crate::string\";";
    let found: Vec<_> = named_paths(&code_only(code), &at).into_iter().map(|(p, _)| p.join("::")).collect();
    assert_eq!(found, ["a::B", "c::d::E", "c::F", "proxy::g::h"]);
}

#[test]
fn a_cycle_is_found_and_named() {
    let e = |p: &[&str], a: &str, b: &str| {
        (
            (p.iter().map(|s| s.to_string()).collect(), a.to_string(), b.to_string()),
            String::new(),
        )
    };
    let edges: BTreeMap<_, _> = [e(&[], "a", "b"), e(&[], "b", "c"), e(&[], "c", "a"), e(&["x"], "y", "z")]
        .into_iter()
        .collect();
    assert_eq!(
        cycles(&edges),
        vec![(Vec::<String>::new(), vec!["a".to_string(), "b".into(), "c".into()])]
    );
    let acyclic: BTreeMap<_, _> = [e(&[], "a", "b"), e(&[], "b", "c"), e(&[], "a", "c")].into_iter().collect();
    assert!(cycles(&acyclic).is_empty());
}

#[test]
fn no_crate_has_a_module_cycle() {
    let mut problems = Vec::new();
    let mut crates: Vec<_> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    crates.sort();
    for dir in crates {
        let src = dir.join("src");
        if !src.is_dir() {
            continue;
        }
        let edges = edges(&src);
        for (parent, group) in cycles(&edges) {
            let name = dir.file_name().unwrap().to_string_lossy().to_string();
            let at = if parent.is_empty() {
                name.clone()
            } else {
                format!("{name}::{}", parent.join("::"))
            };
            let mut lines = Vec::new();
            for ((p, from, to), line) in &edges {
                if p == &parent && group.contains(from) && group.contains(to) {
                    lines.push(format!("    {from} -> {to} ({line})"));
                }
            }
            problems.push(format!("in {at}: {} depend on each other\n{}", group.join(", "), lines.join("\n")));
        }
    }
    assert!(problems.is_empty(), "module cycles:\n{}", problems.join("\n"));
}
