//! The docs are tested: every Markdown file of `README.md`, `docs/` and `examples/` is read with a
//! CommonMark parser (pulldown-cmark), and the suite fails on
//! - a code fence without a language (so a fence closed too early shows up: its stray closer opens an
//!   untagged block) or one that is never closed;
//! - a relative link to a file that does not exist, or to an anchor that no heading of that file makes
//!   (GitHub's rule: lower-case, punctuation dropped, spaces to `-`, `-1`, `-2` for repeats);
//! - a YAML example that does not parse as a config file with the real parser (`config::parse`), or as
//!   a CodeDeploy AppSpec (fence `yaml appspec`) with the AWS endpoints' parser, and a
//!   JSON example that does not parse as the body it shows (a rollout, its analysis, a stage).
//!
//! `examples/*.yaml` are parsed as config files too.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use pulldown_cmark::{CodeBlockKind, Event, HeadingLevel, Options, Parser, Tag, TagEnd};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    for dir in ["docs", "examples"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else { continue };
        let mut more: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "md"))
            .collect();
        more.sort();
        files.extend(more);
    }
    files
}

/// A fenced code block: its language (with what the info string says it is, as `yaml appspec`), text
/// and the line it opens on.
struct Block {
    lang: String,
    kind: String,
    text: String,
    line: usize,
}

/// What a Markdown file holds that the checks need.
#[derive(Default)]
struct Doc {
    blocks: Vec<Block>,
    /// Link targets with the line they are on.
    links: Vec<(String, usize)>,
    anchors: HashSet<String>,
    problems: Vec<String>,
}

/// GitHub's anchor for a heading's text.
fn slug(text: &str) -> String {
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn read(text: &str) -> Doc {
    let line_of = |offset: usize| text[..offset].matches('\n').count() + 1;
    let mut doc = Doc::default();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut heading: Option<String> = None;
    let mut block: Option<Block> = None;
    for (event, range) in Parser::new_ext(text, Options::all()).into_offset_iter() {
        match event {
            Event::Start(Tag::CodeBlock(CodeBlockKind::Fenced(info))) => {
                let lang = info.split_whitespace().next().unwrap_or("").to_string();
                let kind = info.split_whitespace().nth(1).unwrap_or("").to_string();
                let line = line_of(range.start);
                if lang.is_empty() {
                    doc.problems.push(format!(
                        "line {line}: a code fence without a language (or a fence closed too early above it)"
                    ));
                }
                let source = text[range.clone()].trim_end();
                let fence = source.trim_start().chars().next().unwrap_or('`');
                let last = source.lines().last().unwrap_or("").trim();
                if source.lines().count() < 2 || !(last.len() >= 3 && last.chars().all(|c| c == fence)) {
                    doc.problems.push(format!("line {line}: a code fence that is never closed"));
                }
                block = Some(Block {
                    lang,
                    kind,
                    text: String::new(),
                    line,
                });
            }
            Event::Text(t) => {
                if let Some(b) = block.as_mut() {
                    b.text.push_str(&t);
                } else if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::Code(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::End(TagEnd::CodeBlock) => {
                if let Some(b) = block.take() {
                    doc.blocks.push(b);
                }
            }
            Event::Start(Tag::Heading { level, .. }) if level <= HeadingLevel::H6 => heading = Some(String::new()),
            Event::End(TagEnd::Heading(_)) => {
                if let Some(h) = heading.take() {
                    let base = slug(&h);
                    let n = seen.entry(base.clone()).or_insert(0);
                    let anchor = if *n == 0 { base.clone() } else { format!("{base}-{n}") };
                    *n += 1;
                    doc.anchors.insert(anchor);
                }
            }
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                doc.links.push((dest_url.to_string(), line_of(range.start)))
            }
            _ => {}
        }
    }
    doc
}

/// Every problem of the files under `root`, each naming its file and line.
fn check(root: &Path) -> Vec<String> {
    let files = markdown_files(root);
    let docs: HashMap<PathBuf, Doc> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            (f.clone(), read(&text))
        })
        .collect();
    let mut problems = Vec::new();
    for f in &files {
        let doc = &docs[f];
        let name = f.strip_prefix(root).unwrap_or(f).display().to_string();
        problems.extend(doc.problems.iter().map(|p| format!("{name}: {p}")));
        for (target, line) in &doc.links {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = target.split_once('#').map_or((target.as_str(), None), |(p, a)| (p, Some(a)));
            let file = if path.is_empty() {
                f.clone()
            } else {
                f.parent().unwrap().join(path)
            };
            if !file.exists() {
                problems.push(format!("{name}:{line}: link to {target}: no such file"));
                continue;
            }
            if let Some(anchor) = anchor {
                let known = docs
                    .iter()
                    .find(|(p, _)| p.canonicalize().ok() == file.canonicalize().ok())
                    .map(|(_, d)| d.anchors.contains(anchor));
                match known {
                    Some(true) => {}
                    Some(false) => problems.push(format!("{name}:{line}: link to {target}: no heading makes that anchor")),
                    None => problems.push(format!("{name}:{line}: link to {target}: an anchor in a file that is not checked")),
                }
            }
        }
        for b in &doc.blocks {
            if let Err(e) = example_parses(b) {
                problems.push(format!("{name}:{}: {} example: {e}", b.line, b.lang));
            }
        }
    }
    problems
}

/// A YAML example is (part of) a config file, or a CodeDeploy AppSpec when its fence says `yaml
/// appspec`; a JSON one is a rollout request, or one of its fields written as `"field": value` (checked
/// in the smallest request, `{"deploymentConfig": "AllAtOnce"}`).
fn example_parses(b: &Block) -> Result<(), String> {
    if b.kind == "appspec" {
        return canarygate_admin::aws::parse_appspec(&b.text).map(drop).map_err(|e| e.message);
    }
    match b.lang.as_str() {
        "yaml" | "yml" => crate::config::parse(&b.text).map(drop).map_err(|e| format!("{e:#}")),
        "json" => {
            let text = b.text.trim();
            // A field of a rollout request on its own: in the smallest request there is.
            let text = if text.starts_with('"') {
                format!("{{\"deploymentConfig\": \"AllAtOnce\", {text}}}")
            } else {
                text.to_string()
            };
            serde_json::from_str::<canarygate_model::rollout::RolloutRequest>(&text)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        _ => Ok(()),
    }
}

#[test]
fn the_docs_render_link_and_parse() {
    let root = root();
    let problems = check(&root);
    assert!(
        problems.is_empty(),
        "{} problems in the docs:\n{}",
        problems.len(),
        problems.join("\n")
    );
    for example in std::fs::read_dir(root.join("examples")).unwrap() {
        let path = example.unwrap().path();
        if path.extension().is_some_and(|x| x == "yaml") {
            crate::config::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        }
    }
}

/// The check can fail: a copy of the docs with a fence closed too early, a dead link, a dead anchor and
/// a config example with a misspelt field is refused, naming each.
#[test]
fn a_broken_copy_of_the_docs_is_refused() {
    let copy = tempfile::tempdir().unwrap();
    let to = copy.path();
    let root = root();
    std::fs::copy(root.join("README.md"), to.join("README.md")).unwrap();
    for dir in ["docs", "examples"] {
        std::fs::create_dir_all(to.join(dir)).unwrap();
        for f in std::fs::read_dir(root.join(dir)).unwrap() {
            let f = f.unwrap().path();
            if f.is_file() {
                std::fs::copy(&f, to.join(dir).join(f.file_name().unwrap())).unwrap();
            }
        }
    }
    let config = to.join("docs/configuration.md");
    let text = std::fs::read_to_string(&config).unwrap();
    // A fence closed in the middle of the first YAML example.
    let broken = text.replacen("domains:\n", "```\ndomains:\n", 1);
    let broken = broken.replacen("timeoutMs:", "timeoutMz:", 1);
    std::fs::write(&config, broken).unwrap();
    let readme = to.join("README.md");
    let text = std::fs::read_to_string(&readme).unwrap();
    std::fs::write(
        &readme,
        text + "\nSee [gone](docs/nothing-here.md) and [here](docs/operations.md#no-such-heading).\n",
    )
    .unwrap();
    let problems = check(to).join("\n");
    assert!(
        problems.contains("configuration.md") && problems.contains("without a language"),
        "{problems}"
    );
    assert!(problems.contains("timeoutMz"), "{problems}");
    assert!(problems.contains("docs/nothing-here.md: no such file"), "{problems}");
    assert!(problems.contains("#no-such-heading: no heading makes that anchor"), "{problems}");
}

#[test]
fn anchors_are_githubs() {
    assert_eq!(slug("HTTP/2 upstreams, gRPC and WebSocket"), "http2-upstreams-grpc-and-websocket");
    assert_eq!(slug("Running several replicas (PostgreSQL)"), "running-several-replicas-postgresql");
    assert_eq!(slug("`canarygate demo`"), "canarygate-demo");
}
