//! The CNI operations.

use serde_json::{json, Value};

use crate::{
    conf::{Env, NetConf},
    ipam, link,
    names::{host_veth_name, temp_peer_name},
    store::{self, Record},
    CniError, GATEWAY, SUPPORTED_VERSIONS,
};

const GATEWAY6: &str = "fe80::1";

pub fn version(requested: &str) -> Value {
    json!({ "cniVersion": requested, "supportedVersions": SUPPORTED_VERSIONS })
}

/// IPs (without prefix length) from an IPAM result.
fn ipam_ips(result: &Value) -> Vec<String> {
    result
        .get("ips")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|i| i.get("address")?.as_str()?.split('/').next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// ADD: veth pair, addresses, routes, neighbours, record. Anything half
/// made is undone when a step fails.
pub fn add(conf: &NetConf, env: &Env) -> Result<Value, CniError> {
    let (id, netns, ifname) = env.require_attachment()?;
    if !std::path::Path::new(netns).exists() {
        return Err(CniError::InvalidEnv { var: "CNI_NETNS", why: format!("{netns} does not exist") });
    }
    let host = host_veth_name(id, ifname);
    if link::exists(&host) {
        // A previous attachment with this ID is still there (a DEL in
        // flight, or one the runtime has yet to send): transient.
        return Err(CniError::TryAgainLater(format!("attachment {id}/{ifname} still exists ({host})")));
    }
    let ipam_result = ipam::delegate(conf, env, "ADD", None)?;
    let ips = ipam_ips(&ipam_result);
    if ips.is_empty() {
        let _ = ipam::delegate(conf, env, "DEL", None);
        return Err(CniError::internal("the IPAM plugin returned no address", ipam_result.to_string()));
    }
    match wire(conf, env, id, netns, ifname, &host, &ips) {
        Ok((host_mac, pod_mac)) => {
            let v4 = ips.iter().any(|ip| !ip.contains(':'));
            let v6 = ips.iter().any(|ip| ip.contains(':'));
            let mut routes = Vec::new();
            if v4 {
                routes.push(json!({"dst": "0.0.0.0/0", "gw": GATEWAY}));
            }
            if v6 {
                routes.push(json!({"dst": "::/0", "gw": GATEWAY6}));
            }
            Ok(json!({
                "cniVersion": conf.cni_version,
                "interfaces": [
                    {"name": host, "mac": host_mac},
                    {"name": ifname, "mac": pod_mac, "sandbox": netns},
                ],
                "ips": ips.iter().map(|ip| {
                    let (plen, gw) = if ip.contains(':') { (128, GATEWAY6) } else { (32, GATEWAY) };
                    json!({"address": format!("{ip}/{plen}"), "gateway": gw, "interface": 1})
                }).collect::<Vec<_>>(),
                "routes": routes,
                "dns": ipam_result.get("dns").cloned().unwrap_or(json!({})),
            }))
        }
        Err(e) => {
            // Leave nothing half-made: the veth (its peer and routes go with
            // it), the record, and the lease.
            let _ = link::delete(&host);
            let _ = link::ip(&["link", "del", "dev", &temp_peer_name(id, ifname)]);
            let _ = store::remove(&conf.data_dir, id, ifname);
            let _ = ipam::delegate(conf, env, "DEL", None);
            Err(e)
        }
    }
}

fn wire(conf: &NetConf, env: &Env, id: &str, netns: &str, ifname: &str, host: &str, ips: &[String]) -> Result<(String, String), CniError> {
    let tmp = temp_peer_name(id, ifname);
    let mut add = vec!["link", "add", host];
    let mtu_s = conf.mtu.map(|m| m.to_string());
    if let Some(m) = &mtu_s {
        add.extend_from_slice(&["mtu", m]);
    }
    add.extend_from_slice(&["type", "veth", "peer", "name", &tmp]);
    if let Some(m) = &mtu_s {
        add.extend_from_slice(&["mtu", m]);
    }
    link::ip(&add)?;
    link::ip(&["link", "set", "dev", &tmp, "netns", netns])?;
    link::ip_in(netns, &["link", "set", "dev", &tmp, "name", ifname])?;
    link::ip_in(netns, &["link", "set", "dev", ifname, "up"])?;
    link::ip(&["link", "set", "dev", host, "up"])?;
    let host_mac = link::mac(host)?;
    let pod_mac = link::mac_in(netns, ifname)?;
    for ip in ips {
        let v6 = ip.contains(':');
        let (cidr, gw) = if v6 { (format!("{ip}/128"), GATEWAY6) } else { (format!("{ip}/32"), GATEWAY) };
        let fam = if v6 { "-6" } else { "-4" };
        link::ip_in(netns, &[fam, "addr", "add", &cidr, "dev", ifname])?;
        link::ip_in(netns, &[fam, "neigh", "replace", gw, "lladdr", &host_mac, "dev", ifname, "nud", "permanent"])?;
        if !v6 {
            link::ip_in(netns, &["-4", "route", "replace", gw, "dev", ifname, "scope", "link"])?;
        }
        link::ip_in(netns, &[fam, "route", "replace", "default", "via", gw, "dev", ifname, "onlink"])?;
        link::ip(&[fam, "route", "replace", &cidr, "dev", host])?;
        link::ip(&[fam, "neigh", "replace", ip, "lladdr", &pod_mac, "dev", host, "nud", "permanent"])?;
    }
    store::save(
        &conf.data_dir,
        &Record {
            container_id: id.to_string(),
            ifname: ifname.to_string(),
            netns: netns.to_string(),
            host_veth: host.to_string(),
            ips: ips.to_vec(),
            pod_namespace: env.arg("K8S_POD_NAMESPACE").map(str::to_string),
            pod_name: env.arg("K8S_POD_NAME").map(str::to_string),
            network: conf.name.clone(),
        },
    )?;
    Ok((host_mac, pod_mac))
}

/// DEL: lease, veth (its routes go with it), record. Succeeds when things
/// are already gone, as the spec requires.
pub fn del(conf: &NetConf, env: &Env) -> Result<Value, CniError> {
    let id = env.require("CNI_CONTAINERID")?;
    let ifname = env.require("CNI_IFNAME")?;
    if conf.ipam.is_some() {
        ipam::delegate(conf, env, "DEL", None)?;
    }
    link::delete(&host_veth_name(id, ifname))?;
    store::remove(&conf.data_dir, id, ifname)?;
    Ok(Value::Null)
}

/// CHECK: the attachment is as ADD left it.
pub fn check(conf: &NetConf, env: &Env) -> Result<Value, CniError> {
    let (id, netns, ifname) = env.require_attachment()?;
    let prev = conf.prev_result.as_ref().ok_or_else(|| CniError::InvalidConfig("CHECK needs prevResult".into()))?;
    let host = host_veth_name(id, ifname);
    let fail = |what: String| Err(CniError::internal("CHECK failed", what));
    if !link::exists(&host) {
        return fail(format!("host veth {host} is missing"));
    }
    if !link::exists_in(netns, ifname) {
        return fail(format!("{ifname} is missing in {netns}"));
    }
    let addrs = link::ip_in(netns, &["-o", "addr", "show", "dev", ifname])?;
    let routes = link::ip(&["route", "show", "dev", &host])? + &link::ip(&["-6", "route", "show", "dev", &host])?;
    for ip in ipam_ips(prev) {
        let plen = if ip.contains(':') { 128 } else { 32 };
        if !addrs.contains(&format!("{ip}/{plen}")) {
            return fail(format!("{ip}/{plen} is not on {ifname}"));
        }
        if !routes.lines().any(|l| l.split_whitespace().next() == Some(ip.as_str())) {
            return fail(format!("no host route {ip} dev {host}"));
        }
    }
    let pod_routes = link::ip_in(netns, &["route", "show", "default"])?;
    if !pod_routes.contains(GATEWAY) && ipam_ips(prev).iter().any(|ip| !ip.contains(':')) {
        return fail(format!("no default route via {GATEWAY} in {netns}"));
    }
    if conf.ipam.is_some() {
        ipam::delegate(conf, env, "CHECK", Some(("prevResult", prev.clone())))?;
    }
    Ok(Value::Null)
}

/// STATUS: ready to serve ADD when the IPAM plugin can be found.
pub fn status(conf: &NetConf, env: &Env) -> Result<Value, CniError> {
    let plugin = conf.ipam_type()?;
    if env.path.iter().any(|d| d.join(plugin).is_file()) {
        Ok(Value::Null)
    } else {
        Err(CniError::Ipam { plugin: plugin.into(), code: 50, msg: format!("IPAM plugin {plugin} not found in CNI_PATH"), details: String::new() })
    }
}

/// GC: removes attachments of this network missing from
/// `cni.dev/valid-attachments`, then lets the IPAM plugin collect leases.
pub fn gc(conf: &NetConf, env: &Env) -> Result<Value, CniError> {
    let valid = conf.valid_attachments.clone().unwrap_or_default();
    for r in store::all(&conf.data_dir, &conf.name) {
        if valid.iter().any(|(id, ifname)| *id == r.container_id && *ifname == r.ifname) {
            continue;
        }
        let env = Env { container_id: Some(r.container_id.clone()), ifname: Some(r.ifname.clone()), netns: None, ..env.clone() };
        if conf.ipam.is_some() {
            let _ = ipam::delegate(conf, &env, "DEL", None);
        }
        link::delete(&r.host_veth)?;
        store::remove(&conf.data_dir, &r.container_id, &r.ifname)?;
    }
    Ok(Value::Null)
}
