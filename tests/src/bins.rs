//! Where the release binaries are: `$WEIR_BIN_DIR`, or `<workspace>/target/release`.

use std::path::PathBuf;

pub fn dir() -> PathBuf {
    if let Ok(d) = std::env::var("WEIR_BIN_DIR") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release")
}

/// The path of a weir binary; panics with a hint when it was not built.
pub fn path(name: &str) -> PathBuf {
    let p = dir().join(name);
    assert!(
        p.is_file(),
        "{} not found: build with `cargo build --release` first (`cargo xtask test` does)",
        p.display()
    );
    p
}
