use which::which;

/// Building this crate has an undeclared dependency on the `bpf-linker` binary; rebuild when it
/// changes (the aya-template's approach, see
/// https://github.com/rust-lang/cargo/issues/12385 for why it is not an artifact dependency).
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found in PATH");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
