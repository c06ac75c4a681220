//! Interface, address, route and neighbour operations, through iproute2
//! (`ip`, with `ip -n`-less namespace entry by path via nsenter).

use std::process::Command;

use crate::CniError;

fn run(argv: &[&str]) -> Result<String, CniError> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|e| CniError::Io(format!("running {}: {e}", argv[0])))?;
    if !out.status.success() {
        return Err(CniError::internal(
            format!("`{}` failed", argv.join(" ")),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS` in the plugin's (the host's) namespace.
pub fn ip(args: &[&str]) -> Result<String, CniError> {
    let mut argv = vec!["ip"];
    argv.extend_from_slice(args);
    run(&argv)
}

/// `ip ARGS` inside the network namespace at `netns` (a path).
pub fn ip_in(netns: &str, args: &[&str]) -> Result<String, CniError> {
    let net = format!("--net={netns}");
    let mut argv = vec!["nsenter", net.as_str(), "ip"];
    argv.extend_from_slice(args);
    run(&argv)
}

pub fn exists(name: &str) -> bool {
    ip(&["-o", "link", "show", "dev", name]).is_ok()
}

pub fn exists_in(netns: &str, name: &str) -> bool {
    ip_in(netns, &["-o", "link", "show", "dev", name]).is_ok()
}

fn mac_from(out: &str) -> Option<String> {
    out.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).map(str::to_string)
}

pub fn mac(name: &str) -> Result<String, CniError> {
    mac_from(&ip(&["-o", "link", "show", "dev", name])?).ok_or_else(|| CniError::internal("reading a MAC address", name.to_string()))
}

pub fn mac_in(netns: &str, name: &str) -> Result<String, CniError> {
    mac_from(&ip_in(netns, &["-o", "link", "show", "dev", name])?)
        .ok_or_else(|| CniError::internal("reading a MAC address", format!("{name} in {netns}")))
}

/// Deletes a link; a missing link is not an error.
pub fn delete(name: &str) -> Result<(), CniError> {
    if exists(name) {
        ip(&["link", "del", "dev", name])?;
    }
    Ok(())
}
