//! Replays every kept fuzz input — the corpus each target built (`fuzz/corpus/<target>/`) and the inputs
//! that once broke one (`fuzz/regressions/<target>/`) — through the same functions the fuzz targets call,
//! on stable, as an ordinary test.

use std::path::Path;

#[test]
fn every_kept_input_keeps_every_invariant() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    for (name, target) in canarygate_fuzzing::TARGETS {
        let mut n = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(name)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "{name}: {} breaks an invariant", path.display());
                n += 1;
            }
        }
        assert!(n > 0, "no kept inputs for fuzz target {name} under {}", fuzz.display());
        eprintln!("{name}: {n} inputs replayed");
    }
}
