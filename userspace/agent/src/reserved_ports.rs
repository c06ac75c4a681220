//! Keeps the node's own connections off the masquerade ports: a
//! `--masquerade-ports` range that overlaps the node's ephemeral ports
//! (`net.ipv4.ip_local_port_range`) is added to
//! `net.ipv4.ip_local_reserved_ports` of the node's network namespace,
//! which the kernel's automatic port choice skips (an explicit bind still
//! works). Without it a node process could connect from a port a
//! masqueraded flow holds towards the same backend, and the backend's
//! replies would be translated for the wrong flow. The default range
//! (61000-65535) lies above the kernel's default ephemeral range and
//! needs nothing.

use std::path::Path;

const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// The ephemeral range as the sysctl prints it ("32768\t60999").
pub fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
    match (it.next()??, it.next()??) {
        (a, b) if a <= b => Some((a, b)),
        _ => None,
    }
}

/// The reserved list with `want` added ("8080,9148-9150" style), or
/// `None` when a listed range already covers it.
pub fn with_reserved(current: &str, want: (u16, u16)) -> Option<String> {
    let covered = current.trim().split(',').filter(|e| !e.trim().is_empty()).any(|e| {
        let (a, b) = e.split_once('-').unwrap_or((e, e));
        matches!((a.trim().parse::<u16>(), b.trim().parse::<u16>()), (Ok(a), Ok(b)) if a <= want.0 && want.1 <= b)
    });
    if covered {
        return None;
    }
    let entry = format!("{}-{}", want.0, want.1);
    Some(if current.trim().is_empty() { entry } else { format!("{},{entry}", current.trim()) })
}

/// `--masquerade-ports` would leave the node no ephemeral port.
#[derive(Debug, thiserror::Error)]
#[error("--masquerade-ports {0}-{1} covers the node's whole ephemeral range {2}-{3} (net.ipv4.ip_local_port_range): the node's own connections would have no port left")]
pub struct NoPortsLeft(u16, u16, u16, u16);

/// Reserves `ports` when they overlap the ephemeral range; refuses a
/// range that covers all of it. Other errors are logged: the agent runs
/// on, and says what it risks.
pub fn ensure(ports: (u16, u16)) -> Result<(), NoPortsLeft> {
    ensure_in(Path::new(PORT_RANGE), Path::new(RESERVED), ports)
}

fn ensure_in(range_file: &Path, reserved_file: &Path, ports: (u16, u16)) -> Result<(), NoPortsLeft> {
    let ephemeral = match std::fs::read_to_string(range_file).map(|s| parse_port_range(&s)) {
        Ok(Some(r)) => r,
        Ok(None) | Err(_) => {
            tracing::warn!(file = %range_file.display(), "cannot read the ephemeral port range; the masquerade ports are not reserved");
            return Ok(());
        }
    };
    if ports.1 < ephemeral.0 || ports.0 > ephemeral.1 {
        return Ok(()); // no overlap: the node's own connections never take them
    }
    if ports.0 <= ephemeral.0 && ephemeral.1 <= ports.1 {
        return Err(NoPortsLeft(ports.0, ports.1, ephemeral.0, ephemeral.1));
    }
    let current = match std::fs::read_to_string(reserved_file) {
        Ok(s) => s,
        Err(error) => {
            tracing::error!(file = %reserved_file.display(), %error, "cannot read the reserved ports: the node's own connections may take masquerade ports");
            return Ok(());
        }
    };
    let Some(new) = with_reserved(&current, ports) else { return Ok(()) };
    match std::fs::write(reserved_file, &new) {
        Ok(()) => tracing::info!(min = ports.0, max = ports.1, ?ephemeral, reserved = %new, "reserved the masquerade ports (they overlap the ephemeral range)"),
        Err(error) => tracing::error!(file = %reserved_file.display(), %error, "cannot reserve the masquerade ports: the node's own connections may take them"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sysctls_format_is_read() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32_768, 60_999)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range(""), None);
    }

    #[test]
    fn a_range_is_added_unless_one_entry_covers_it() {
        assert_eq!(with_reserved("\n", (40_000, 50_000)).as_deref(), Some("40000-50000"));
        assert_eq!(with_reserved("8080,9148-9150\n", (40_000, 50_000)).as_deref(), Some("8080,9148-9150,40000-50000"));
        assert_eq!(with_reserved("30000-32767,39000-51000\n", (40_000, 50_000)), None);
        assert_eq!(with_reserved("40000\n", (40_000, 40_000)), None);
        assert_eq!(with_reserved("40000-45000\n", (40_000, 50_000)).as_deref(), Some("40000-45000,40000-50000"));
    }

    #[test]
    fn only_an_overlapping_range_is_reserved() {
        let dir = std::env::temp_dir().join(format!("weir-reserved-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (range, reserved) = (dir.join("range"), dir.join("reserved"));
        std::fs::write(&range, "32768\t60999\n").unwrap();
        std::fs::write(&reserved, "8080\n").unwrap();
        ensure_in(&range, &reserved, (61_000, 65_535)).unwrap();
        assert_eq!(std::fs::read_to_string(&reserved).unwrap(), "8080\n", "above the ephemeral range: untouched");
        ensure_in(&range, &reserved, (50_000, 62_000)).unwrap();
        assert_eq!(std::fs::read_to_string(&reserved).unwrap(), "8080,50000-62000");
        let err = ensure_in(&range, &reserved, (32_768, 65_535)).expect_err("nothing left to the node");
        assert!(err.to_string().contains("32768-60999"), "{err}");
        assert_eq!(std::fs::read_to_string(&reserved).unwrap(), "8080,50000-62000", "refused: untouched");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
