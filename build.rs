//! Lays out the code a running server executes together, at the start of the release binary's
//! code, so that fewer of the binary's pages end up in the server's RSS: the kernel maps code
//! in runs of 64 KiB and more around each page touched (BENCHMARKS.md, "Hot code laid out
//! together"). The list is `build/text-order.txt`, written by `scripts/text-order`.
//!
//! Only for release builds of `culvert` linked by LLD — the linker of the Rust project's own
//! toolchains on x86-64 Linux since Rust 1.90 (`rust-lld`, shipped in the sysroot's
//! `gcc-ld`) — as other linkers do not take `--symbol-ordering-file`. A toolchain without it
//! (a distribution's rustc linking with the system's `ld`), or a build that chooses its own
//! linker (cargo's `linker` setting, `-C linker…`/`-C link-self-contained` in RUSTFLAGS), is
//! left alone, as is any build with `BUILD_TEXT_ORDER=0` in its environment.

use std::{env, path::Path, process::Command};

fn main() {
    let list = Path::new("build/text-order.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    println!("cargo:rerun-if-env-changed=BUILD_TEXT_ORDER");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let var = |name: &str| env::var(name).unwrap_or_default();
    let wanted = var("BUILD_TEXT_ORDER") != "0"
        && var("PROFILE") == "release"
        && var("TARGET") == "x86_64-unknown-linux-gnu"
        && var("HOST") == "x86_64-unknown-linux-gnu"
        && env::var_os("RUSTC_LINKER").is_none()
        && !["linker", "link-self-contained", "fuse-ld"]
            .iter()
            .any(|flag| var("CARGO_ENCODED_RUSTFLAGS").contains(flag));
    if !wanted || !rustc_links_with_lld() {
        return;
    }
    let Ok(list) = list.canonicalize() else {
        return;
    };
    println!(
        "cargo:rustc-link-arg-bin=culvert=-Wl,--symbol-ordering-file={}",
        list.display()
    );
    // Names the binary no longer has (the list is from an older build) are not an error.
    println!("cargo:rustc-link-arg-bin=culvert=-Wl,--no-warn-symbol-ordering");
}

/// Whether the rustc building us links with its own LLD by default: version 1.90 or later,
/// with `rust-lld` in its sysroot.
fn rustc_links_with_lld() -> bool {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let output = |args: &[&str]| {
        Command::new(&rustc)
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let minor = output(&["--version"])
        .split_whitespace()
        .nth(1)
        .and_then(|version| version.split('.').nth(1)?.parse::<u32>().ok())
        .unwrap_or(0);
    let sysroot = output(&["--print", "sysroot"]);
    minor >= 90
        && !sysroot.is_empty()
        && Path::new(&sysroot)
            .join("lib/rustlib/x86_64-unknown-linux-gnu/bin/gcc-ld/ld.lld")
            .exists()
}
