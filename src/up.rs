//! `presage up`: the local mesh demo. Starts a sample service (a child process of this
//! binary) for every 127.0.0.1 endpoint in the proxy config, then runs the proxy in front
//! of them. Children are killed when the proxy exits.

use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};

use presage_proxy::config;

struct Children(Vec<Child>);
impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn run(path: &Path) -> ExitCode {
    if !path.exists() {
        eprintln!(
            "{}: no such file (run from the repository root, or pass --config)",
            path.display()
        );
        return ExitCode::from(crate::EX_USAGE);
    }
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(crate::EX_USAGE);
        }
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot find this executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut children = Children(Vec::new());
    for c in &cfg.clusters {
        for e in &c.endpoints {
            if e.authority.host() != "127.0.0.1" {
                continue;
            }
            let spawned = Command::new(&exe)
                .args([
                    "sample-service",
                    "--listen",
                    e.authority.as_str(),
                    "--name",
                    &c.name,
                ])
                .stdin(Stdio::null())
                .spawn();
            match spawned {
                Ok(child) => children.0.push(child),
                Err(err) => {
                    eprintln!("cannot start a sample service for {}: {err}", e.authority);
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    println!(
        "presage up: {} sample service(s) started; proxy config {}",
        children.0.len(),
        path.display()
    );
    crate::serve(cfg, Some(path.to_path_buf()), None)
}
