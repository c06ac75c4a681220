//! Writes weir's CRDs to manifests/crds/ (the kustomization's) and
//! manifests/helm/weir/crds/ (the chart's), or to the directory given.
//!
//! Usage: weir-crdgen [DIR]

fn main() -> std::process::ExitCode {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../manifests");
    let dirs = match std::env::args().nth(1) {
        Some(d) => vec![std::path::PathBuf::from(d)],
        None => vec![root.join("crds"), root.join("helm/weir/crds")],
    };
    let docs = match weir_crds::crd_yaml() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("weir-crdgen: rendering the CRDs: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    for (p, yaml) in dirs.iter().flat_map(|d| docs.iter().map(move |(n, y)| (d.join(n), y))) {
        if let Err(e) = std::fs::write(&p, yaml) {
            eprintln!("weir-crdgen: writing {}: {e}", p.display());
            return std::process::ExitCode::from(2);
        }
        println!("wrote {}", p.display());
    }
    std::process::ExitCode::SUCCESS
}
