//! Writes weir's CRDs to manifests/crds/ (or to the directory given).
//!
//! Usage: weir-crdgen [DIR]

fn main() -> std::process::ExitCode {
    let dir = std::env::args().nth(1).map_or_else(
        || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../manifests/crds"),
        std::path::PathBuf::from,
    );
    let docs = match weir_crds::crd_yaml() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("weir-crdgen: rendering the CRDs: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    for (name, yaml) in docs {
        let p = dir.join(name);
        if let Err(e) = std::fs::write(&p, yaml) {
            eprintln!("weir-crdgen: writing {}: {e}", p.display());
            return std::process::ExitCode::from(2);
        }
        println!("wrote {}", p.display());
    }
    std::process::ExitCode::SUCCESS
}
