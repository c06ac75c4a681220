//! Builds the eBPF objects (nightly, bpfel target, with BTF) through aya-build
//! and leaves them in OUT_DIR for `include_bytes_aligned!`.
use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let meta = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let pkg = meta
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "weir-ebpf")
        .ok_or_else(|| anyhow!("weir-ebpf package not found in the workspace"))?;
    let root = pkg
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("weir-ebpf manifest has no parent"))?;
    println!("cargo:rerun-if-changed=../../ebpf/common/src");
    println!("cargo:rerun-if-changed=../../ebpf/logic/src");
    aya_build::build_ebpf(
        [Package { name: "weir-ebpf", root_dir: root.as_str(), ..Default::default() }],
        Toolchain::default(),
    )
}
