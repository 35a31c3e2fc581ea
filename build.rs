//! Link options for the `presage` binary.

fn main() {
    // Relative relocations packed as bitmaps (DT_RELR; glibc 2.36, binutils 2.38): the
    // table the loader reads at every start shrinks from about 1 MiB to a few KiB, and
    // with it the binary's resident size. The binary stays position-independent.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
}
