//! Ports for local instances. An instance is told its port before it binds it, so the
//! port must stay free until then: ports are taken from just below the kernel's
//! ephemeral range (30000-32767 with Linux's default 32768-60999, Kubernetes' NodePort
//! range), where no outgoing connection and no `bind(0)` anywhere on the host can land.
//! A port chosen with `bind(0)` can be handed to someone else's listener in between, and
//! the readiness probe then finds that listener instead of the instance.

use std::net::{IpAddr, TcpListener};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// How many ports below the ephemeral range instances may use.
const SPAN: u16 = 2768;

/// Instance ports on this host; `None` when the ephemeral range starts too low to leave
/// room under it (then ports come from `bind(0)`).
fn range() -> Option<RangeInclusive<u16>> {
    static RANGE: OnceLock<Option<RangeInclusive<u16>>> = OnceLock::new();
    RANGE
        .get_or_init(|| {
            let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
            below(text.split_whitespace().next()?.parse().ok()?)
        })
        .clone()
}

/// The ports under an ephemeral range starting at `low`, above the privileged ones.
fn below(low: u16) -> Option<RangeInclusive<u16>> {
    let start = low.saturating_sub(SPAN).max(1024);
    (low.saturating_sub(start) >= SPAN / 4).then(|| start..=low - 1)
}

/// The next port to try, shared by every actuator in the process (so two services do
/// not pick the same one) and starting at a random place (so two control planes on
/// one host rarely walk the same ports).
fn cursor() -> &'static AtomicU32 {
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    NEXT.get_or_init(|| AtomicU32::new(fastrand::u32(..)))
}

/// A port on `host` that nothing listens on now, is not in `used` (this actuator's
/// instances, which may not have bound theirs yet), and no automatic port will take.
pub fn pick(host: IpAddr, used: impl Fn(u16) -> bool) -> std::io::Result<u16> {
    let Some(range) = range() else {
        for _ in 0..16 {
            let port = TcpListener::bind((host, 0))?.local_addr()?.port();
            if !used(port) {
                return Ok(port);
            }
        }
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "bind(0) keeps returning ports already handed out",
        ));
    };
    let (start, len) = (*range.start() as u32, range.len() as u32);
    for _ in 0..len {
        let port = (start + cursor().fetch_add(1, Ordering::Relaxed) % len) as u16;
        if !used(port) && TcpListener::bind((host, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("every port in {}-{} is in use", range.start(), range.end()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn instance_ports_sit_under_the_ephemeral_range_and_above_the_privileged_ones() {
        assert_eq!(below(32768), Some(30000..=32767));
        assert_eq!(below(49152), Some(46384..=49151));
        assert_eq!(below(2000), Some(1024..=1999));
        // No room under a range that starts low: ports come from bind(0).
        assert_eq!(below(1500), None);
        assert_eq!(below(0), None);
    }

    #[test]
    fn a_pick_skips_ports_in_use_and_those_already_handed_out() {
        let host = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let first = pick(host, |_| false).unwrap();
        if let Some(range) = range() {
            assert!(range.contains(&first), "{first} outside {range:?}");
        }
        // Held by a listener: not picked again, nor a port this actuator handed out.
        let _held = TcpListener::bind((host, first)).unwrap();
        let handed = pick(host, |p| p == first).unwrap();
        let mut seen = vec![first, handed];
        for _ in 0..50 {
            let p = pick(host, |p| p == handed || seen.contains(&p)).unwrap();
            assert!(!seen.contains(&p), "{p} picked twice");
            seen.push(p);
        }
    }
}
