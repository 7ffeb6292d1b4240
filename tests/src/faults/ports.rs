//! Loopback ports for the services of a test cluster.

use anyhow::bail;

/// A loopback port for a service of a test cluster: free now, outside the
/// kernel's ephemeral range and never handed out twice by this process.
pub fn free_port() -> anyhow::Result<u16> {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let (low, high) = service_ports();
    let mut handed_out = HANDED_OUT
        .lock()
        .map_err(|_| anyhow::anyhow!("port registry poisoned"))?;
    let span = u64::from(high - low);
    // Where to start looking: differs between runs and between test binaries.
    let start = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::from(d.subsec_nanos()))
            .unwrap_or_default();
    for step in 0..span {
        let port = low + u16::try_from((start + step) % span)?;
        if handed_out.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return Ok(port);
        }
    }
    bail!("no free port in {low}..{high}")
}

/// Ports for the services of a cluster: below the kernel's ephemeral range (or
/// above it when that starts low), so that no outgoing connection and no
/// `bind(0)` takes one between the choice and the service binding it, or while
/// the service is down for a restart. (A range that leaves no room on either
/// side falls back to 20000..32000, inside it.)
fn service_ports() -> (u16, u16) {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((parts.next()??, parts.next()??))
        });
    match range {
        Some((first, _)) if first >= 12_000 => (10_000, first),
        Some((_, last)) if last <= 55_000 => (last + 1, 65_000),
        _ => (20_000, 32_000),
    }
}
