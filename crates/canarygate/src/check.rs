//! `canarygate check -f FILE` (and `serve --check`): a config file checked exactly as `serve` and
//! `apply` take it — parsed, its `server` section turned into settings, its certificate pairs loaded,
//! its resources applied to an empty state — without starting anything or touching a store, as
//! `nginx -t`, `haproxy -c` and `promtool check config` do.

use std::path::Path;

use anyhow::Result;
use canarygate_model::config::{plan, PlanMode};
use canarygate_model::State;

use crate::serve::ServeArgs;

/// Every problem of the file, each naming the file, the field and (where the YAML parser knows it) the
/// line. Empty when `serve` would start with it and `apply` would take it.
pub fn problems(path: &Path, args: &ServeArgs) -> Vec<String> {
    let file = path.display();
    let cfg = match crate::config::load(path) {
        Ok(c) => c,
        // The parser stops at its first error; it names the field path and the line.
        Err(e) => return vec![format!("{e:#}")],
    };
    let mut problems = Vec::new();
    let open_files = rlimit::Resource::NOFILE.get().map_or(1024, |(_, hard)| hard);
    if let Err(e) = crate::serve::settings(&cfg, args, open_files) {
        problems.push(format!("{file}: {e:#}"));
    }
    let pairs = cfg.server.tls.iter().map(|t| ("server.tls".to_string(), t.clone())).chain(
        cfg.domains()
            .into_iter()
            .enumerate()
            .filter_map(|(i, d)| d.tls.clone().map(|t| (format!("domains[{i}].tls"), t))),
    );
    for (field, tls) in pairs {
        let files = canarygate_gateway::tls::PairFiles {
            cert_file: tls.cert_file.clone().into(),
            key_file: tls.key_file.clone().into(),
        };
        if let Err(e) = canarygate_gateway::tls::Certificates::new(files) {
            problems.push(format!("{file}: {field}: {e:#}"));
        }
    }
    // The resources, as `apply` takes them: each action on its own, so every refusal is named.
    let mut state = State::default();
    let mut new_id = canarygate_store::new_deployment_id;
    for action in plan(&State::default(), &cfg.resources(), PlanMode::Converge) {
        let what = action.to_string();
        if let Err(e) = action.apply(&mut state, &mut new_id, chrono::Utc::now()) {
            problems.push(format!("{file}: {}", e.context(&what)));
        }
    }
    problems
}

/// Runs the check and exits: 0 when the file is good, 1 naming each problem.
pub fn run(path: &Path, args: &ServeArgs) -> Result<()> {
    let found = problems(path, args);
    if found.is_empty() {
        println!("{}: ok", path.display());
        return Ok(());
    }
    for p in &found {
        eprintln!("{p}");
    }
    eprintln!("{}: {} problem(s)", path.display(), found.len());
    std::process::exit(1);
}
