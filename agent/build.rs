//! Builds the eBPF programs (`ebpf/kite-ebpf`) for `bpfel-unknown-none` with aya-build and puts
//! the object in `OUT_DIR`, where `src/ebpf.rs` embeds it.
//!
//! Toolchain: rustup cannot fetch a nightly with `rust-src` on Kite's build machines, so by
//! default the programs are built with Debian's `rustc-web` (sysroot `/usr`, library source in
//! `/usr/lib/rustlib/src/rust/library`) with `RUSTC_BOOTSTRAP=1`, which lets aya-build use
//! `-Z build-std=core` (see shared TOOLCHAIN.md). `KITE_EBPF_TOOLCHAIN=nightly` (or any rustup
//! toolchain name) selects another.
use std::{env, path::Path};

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=KITE_EBPF_TOOLCHAIN");
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "kite-ebpf")
        .ok_or_else(|| anyhow!("kite-ebpf package not found"))?;
    let cargo_metadata::Package {
        name,
        manifest_path,
        ..
    } = ebpf_package;
    let root_dir = manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {manifest_path}"))?;
    // The shared crate is a path dependency of the eBPF crate: rebuild when it changes too.
    println!(
        "cargo:rerun-if-changed={}",
        root_dir.join("../kite-common/src").as_str()
    );
    let ebpf_package = aya_build::Package {
        name: name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    let requested = env::var("KITE_EBPF_TOOLCHAIN").ok();
    let toolchain = match requested.as_deref() {
        Some("nightly") => Toolchain::Nightly,
        Some(custom) => Toolchain::Custom(custom),
        None if Path::new("/usr/lib/rustlib/src/rust/library").is_dir() => {
            Toolchain::Custom("/usr")
        }
        None => Toolchain::Nightly,
    };
    if !matches!(toolchain, Toolchain::Nightly) {
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    }
    aya_build::build_ebpf([ebpf_package], toolchain)
}
