//! `presage proxy --listen ADDR --to URL`: the one-line reverse proxy, written as YAML so
//! it goes through the same parser and validation as a file.

use std::net::SocketAddr;

/// The YAML for `presage proxy --listen ADDR --to URL`: the one-liner goes through the same
/// parser and validation as a file.
pub fn one_liner(
    listen: SocketAddr,
    to: &http::Uri,
    admin: Option<SocketAddr>,
) -> Result<String, String> {
    let authority = to
        .authority()
        .ok_or_else(|| format!("--to {to}: expected a URL like http://127.0.0.1:8080"))?;
    let scheme = to.scheme_str().unwrap_or("http");
    let port = authority
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let tls = match scheme {
        "http" => "",
        "https" => "\n    tls: {}",
        other => {
            return Err(format!(
                "--to {to}: unsupported scheme {other:?}, expected http or https"
            ))
        }
    };
    let mut yaml = format!("listeners:\n  - name: main\n    address: \"{listen}\"\n");
    if let Some(a) = admin {
        yaml.push_str(&format!("admin:\n  address: \"{a}\"\n"));
    }
    let rewrite = match to.path() {
        "" | "/" => String::new(),
        p => format!(
            "\n    match: {{ path: {{ prefix: / }} }}\n    rewrite: {{ prefix: \"{}/\" }}",
            p.trim_end_matches('/')
        ),
    };
    yaml.push_str(&format!(
        "routes:\n  - name: default\n    cluster: upstream{rewrite}\nclusters:\n  - name: upstream{tls}\n    endpoints:\n      - address: \"{}:{port}\"\n",
        authority.host()
    ));
    Ok(yaml)
}
