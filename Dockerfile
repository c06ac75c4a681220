# The weir-agent image: the three binaries of `cargo build --release` on a
# Debian base. weir-cni and the agent talk netlink themselves: no iproute2
# or util-linux is needed.
#
#   cargo xtask build            # or: cargo build --release
#   docker build -t weir:dev .
#
# The binaries are built on the host (the eBPF build needs nightly Rust and
# bpf-linker with LLVM 22; see xtask/src/setup.rs) and link against glibc
# 2.36, so the base is the same Debian release as the build machine.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY target/release/weir-agent target/release/weir-cni target/release/weir /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/weir-agent"]
