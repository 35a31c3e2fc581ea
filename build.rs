//! Link options for the `presage` binary.

fn main() {
    // Relative relocations packed as bitmaps (DT_RELR; glibc 2.36, binutils 2.38): the
    // table the loader reads at every start shrinks from about 1 MiB to a few KiB, and
    // with it the binary's resident size. The binary stays position-independent.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    // The functions a proxy runs to start and serve, placed together at the front of
    // the text (bench/proxy/hot_code.py writes the list; link/cc-ordered matches its
    // ThinLTO names to this build's): an idle proxy maps about the code it runs, not
    // 64 KiB around every function it calls across the 22 MiB of text. Release only:
    // the list names release functions. PRESAGE_HOT_ORDER names another list:
    // scripts/pgo.sh measures the profile-guided build's own (it inlines differently, so
    // few of the plain build's names are in it).
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PRESAGE_HOT_ORDER");
    let order = std::env::var("PRESAGE_HOT_ORDER")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/link/hot.order").into());
    println!("cargo:rerun-if-changed={order}");
    if std::env::var("PROFILE").as_deref() == Ok("release") {
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={order}");
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
