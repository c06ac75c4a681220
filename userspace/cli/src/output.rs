//! Output formats shared by every command.

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// `addr:port`, an IPv6 address in brackets (`[fd00::1]:80`), so that the
/// port never reads as part of the address.
pub fn addr_port(addr: impl Into<std::net::IpAddr>, port: u16) -> String {
    std::net::SocketAddr::new(addr.into(), port).to_string()
}

/// Prints rows as a left-aligned table with a header.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints `rows` as pretty JSON, or as a table: `header`, then `line` of
/// each row.
pub fn print_rows<T: serde::Serialize>(format: Format, rows: &[T], header: &[&str], line: impl Fn(&T) -> Vec<String>) -> anyhow::Result<()> {
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    let table: Vec<Vec<String>> = rows.iter().map(line).collect();
    print_table(header, &table);
    Ok(())
}

/// `--addr` / `--port` filters shared by `ct` and `monitor`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct AddrPort {
    /// Only what has this address (as source, destination or translation).
    #[arg(long)]
    pub addr: Option<std::net::IpAddr>,
    /// Only what has this port.
    #[arg(long)]
    pub port: Option<u16>,
}

impl AddrPort {
    /// Whether any of `addrs` and any of `ports` match (a filter not given matches).
    pub fn matches(&self, addrs: &[std::net::IpAddr], ports: &[u16]) -> bool {
        self.addr.is_none_or(|a| addrs.contains(&a)) && self.port.is_none_or(|p| ports.contains(&p))
    }

    pub fn is_empty(&self) -> bool {
        self.addr.is_none() && self.port.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_address_and_port_are_written_with_brackets() {
        assert_eq!(addr_port("fd00::1".parse::<std::net::IpAddr>().expect("v6"), 80), "[fd00::1]:80");
        assert_eq!(addr_port(std::net::Ipv4Addr::new(10, 96, 0, 10), 53), "10.96.0.10:53");
    }
}
