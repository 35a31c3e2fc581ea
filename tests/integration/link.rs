//! `link/cc-ordered`, the linker driver of the release build (`.cargo/config.toml`): it
//! hands lld `link/hot.order`, the functions a proxy runs, with ThinLTO's build-specific
//! `NAME.llvm.HASH` names matched by the order's `NAME.llvm.*`. A real C program linked
//! by the real cc and Rust's own lld.

use std::path::{Path, PathBuf};
use std::process::Command;

const DRIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/link/cc-ordered");

/// Defined last to first, so that only the order puts them first to last; `second` is
/// named as ThinLTO names a function it promoted.
const PROGRAM: &str = r#"
int third(void) { return 3; }
int second(void) __asm__("second.llvm.1234567");
int second(void) { return 2; }
int first(void) { return 1; }
int main(void) { return first() + second() + third(); }
"#;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Rust's lld, as rustc itself links with it.
fn lld_dir() -> PathBuf {
    let sysroot = run(Command::new("rustc").args(["--print", "sysroot"]));
    let host = run(Command::new("rustc").arg("-vV"))
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .unwrap();
    let dir = Path::new(sysroot.trim()).join(format!("lib/rustlib/{host}/bin/gcc-ld"));
    assert!(dir.join("ld.lld").exists(), "no lld in {}", dir.display());
    dir
}

/// The functions of `exe` named in `names`, by address.
fn placed(exe: &Path, names: &[&str]) -> Vec<String> {
    run(Command::new("nm").arg("-n").arg(exe))
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|n| names.contains(n))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_release_linker_places_the_listed_functions_first_matching_thinlto_names() {
    let dir = std::env::temp_dir().join(format!("presage-link-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("prog.c"), PROGRAM).unwrap();
    std::fs::write(dir.join("hot.order"), "first\nsecond.llvm.*\nthird\n").unwrap();
    let object = dir.join("prog.o");
    run(Command::new("cc")
        .args(["-c", "-O0", "-ffunction-sections", "-o"])
        .arg(&object)
        .arg(dir.join("prog.c")));
    let link = |driver: &str, exe: &Path, ordered: bool| {
        let mut cmd = Command::new(driver);
        cmd.arg("-fuse-ld=lld")
            .arg(format!("-B{}", lld_dir().display()))
            .arg(&object)
            .arg("-o")
            .arg(exe);
        if ordered {
            cmd.arg(format!(
                "-Wl,--symbol-ordering-file={}",
                dir.join("hot.order").display()
            ))
            .arg("-Wl,--no-warn-symbol-ordering");
        }
        run(&mut cmd);
    };
    let names = ["first", "second.llvm.1234567", "third"];

    // Through the driver: in the order's order, the ThinLTO name matched by its pattern.
    let ordered = dir.join("ordered");
    link(DRIVER, &ordered, true);
    assert_eq!(placed(&ordered, &names), names);
    // The program still runs as linked.
    let status = Command::new(&ordered).status().unwrap();
    assert_eq!(status.code(), Some(6));

    // Straight to cc, lld finds no `second.llvm.*` and leaves it after the listed ones.
    let plain = dir.join("plain");
    link("cc", &plain, true);
    assert_eq!(
        placed(&plain, &names),
        ["first", "third", "second.llvm.1234567"]
    );

    // Without an order the driver is cc: same link, same program.
    let passed = dir.join("passed");
    link(DRIVER, &passed, false);
    assert_eq!(Command::new(&passed).status().unwrap().code(), Some(6));

    std::fs::remove_dir_all(&dir).unwrap();
}
