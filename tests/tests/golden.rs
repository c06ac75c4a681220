//! Golden tests of the pure translation: each `tests/testdata/<case>/`
//! holds `input.yaml` (upstream Kubernetes objects; its first comment says
//! what the case proves), an optional `node-name`, and `expected.txt`: the
//! desired datapath state in stable text, followed by the warnings bad
//! input produced. Regenerate with `WEIR_BLESS=1 cargo test --test golden`
//! and review the diff.

use std::{fs, path::Path};

use weir_model::{
    load::parse_file,
    state::{Change, ClusterState},
    translate::{translate_all, NodeContext},
};

fn render(case: &Path) -> String {
    let input = case.join("input.yaml");
    let bytes = fs::read(&input).expect("read input.yaml");
    let node_name = fs::read_to_string(case.join("node-name")).ok().map(|s| s.trim().to_string());
    let mut state = ClusterState::new();
    let mut out = String::new();
    let mut warnings = Vec::new();
    match parse_file(Path::new("input.yaml"), &bytes) {
        Ok(loaded) => {
            for o in loaded.objects {
                state.apply(Change::Upsert(o));
            }
            warnings.extend(loaded.warnings);
        }
        Err(w) => warnings.push(w),
    }
    let ctx = NodeContext::from_state(&state, node_name.as_deref());
    let specs: Vec<_> = translate_all(&state, &ctx).into_values().flatten().collect();
    out.push_str(&weir_desired::dump::dump(&specs));
    warnings.extend(state.policy_warnings());
    for w in warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out
}

#[test]
fn translation_matches_the_golden_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let bless = std::env::var("WEIR_BLESS").is_ok_and(|v| v == "1");
    let mut cases: Vec<_> = fs::read_dir(&root).expect("testdata").flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    cases.sort();
    assert!(cases.len() >= 15, "at least 15 golden cases, found {}", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let got = render(case);
        let expected_path = case.join("expected.txt");
        if bless {
            fs::write(&expected_path, &got).expect("write expected.txt");
            continue;
        }
        let expected = fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected {
            failures.push(format!("--- {}\nexpected:\n{expected}\ngot:\n{got}", case.display()));
        }
    }
    assert!(failures.is_empty(), "{} golden case(s) differ:\n{}", failures.len(), failures.join("\n"));
}
