//! The CNI operations. Links, addresses, routes and neighbours are made
//! over netlink (`wire`); the only process weir-cni starts is the
//! delegated IPAM plugin.

use std::{net::IpAddr, path::PathBuf};

use serde_json::{json, Value};

use crate::{
    agent::{AgentClient, Registration},
    conf::{Env, NetConf, VALID_ATTACHMENTS},
    ipam,
    names::host_veth_name,
    nl::Netlink,
    store::{self, Held, Record, Wait},
    wire::{self, host_prefix, Plan},
    CniError, SUPPORTED_VERSIONS,
};

pub fn version(requested: &str) -> Value {
    json!({ "cniVersion": requested, "supportedVersions": SUPPORTED_VERSIONS })
}

/// IPs (without prefix length) from an IPAM or a previous result.
fn result_ips(result: &Value) -> Result<Vec<IpAddr>, CniError> {
    let Some(list) = result.get("ips").and_then(Value::as_array) else { return Ok(Vec::new()) };
    list.iter()
        .map(|i| {
            let a = i.get("address").and_then(Value::as_str).unwrap_or_default();
            a.split('/').next().unwrap_or_default().parse().map_err(|_| CniError::internal("an address in a result is malformed", format!("{i}")))
        })
        .collect()
}

fn record(conf: &NetConf, env: &Env, id: &str, netns: &str, ifname: &str, host: &str, ips: &[IpAddr]) -> Record {
    Record {
        container_id: id.to_string(),
        ifname: ifname.to_string(),
        netns: netns.to_string(),
        host_veth: host.to_string(),
        ips: ips.iter().map(IpAddr::to_string).collect(),
        pod_namespace: env.arg("K8S_POD_NAMESPACE").map(str::to_string),
        pod_name: env.arg("K8S_POD_NAME").map(str::to_string),
        network: conf.name.clone(),
    }
}

/// ADD: record, lease, veth pair, addresses, routes, neighbours, then the
/// agent programs the pod's identity and policy. Anything half made is
/// undone when a step fails; if even that fails, the record stays for DEL
/// or GC to finish.
pub fn add(conf: &NetConf, env: &Env) -> Result<Value, CniError> {
    let (id, netns, ifname) = env.require_attachment()?;
    if !std::path::Path::new(netns).exists() {
        return Err(CniError::InvalidEnv { var: "CNI_NETNS", why: format!("{netns} does not exist") });
    }
    let host = host_veth_name(id, ifname);
    let nl = Netlink::open()?;
    let held = store::take(&conf.data_dir, id, ifname, Wait::No)?
        .ok_or_else(|| CniError::TryAgainLater(format!("another operation on {id}/{ifname} is in progress")))?;
    if held.load().is_some() || wire::host_link_exists(&nl, &host)? {
        // A previous attachment with this ID is still there (a DEL in
        // flight, or one the runtime has yet to send): transient.
        return Err(CniError::TryAgainLater(format!("attachment {id}/{ifname} still exists ({host})")));
    }
    held.save(&record(conf, env, id, netns, ifname, &host, &[]))?;
    let mut leased = false;
    let made = (|| {
        let ipam_result = ipam::delegate(conf, env, "ADD", None)?;
        leased = true;
        let ips = result_ips(&ipam_result)?;
        if ips.is_empty() {
            return Err(CniError::internal("the IPAM plugin returned no address", ipam_result.to_string()));
        }
        held.save(&record(conf, env, id, netns, ifname, &host, &ips))?;
        let plan = Plan { host: host.clone(), ifname: ifname.to_string(), netns: PathBuf::from(netns), mtu: conf.mtu, ips };
        let wired = wire::wire(&nl, &plan)?;
        register(conf, env, id, &plan)?;
        Ok((plan, wired, ipam_result))
    })();
    match made {
        Ok((plan, wired, ipam_result)) => Ok(add_result(conf, &plan, &wired, &ipam_result)),
        Err(e) => {
            let _ = wire::unwire(&nl, &host);
            let released = !leased || ipam::delegate(conf, env, "DEL", None).is_ok();
            if released {
                let _ = held.forget();
            }
            Err(e)
        }
    }
}

fn agent_client(conf: &NetConf) -> AgentClient<'_> {
    AgentClient { socket: &conf.agent.socket, timeout: conf.agent.timeout }
}

/// Registers a Kubernetes pod (K8S_POD_NAMESPACE and K8S_POD_NAME in
/// CNI_ARGS; a container that is no pod is selected by no policy) with the
/// local agent, which answers once the pod's identity, policy and programs
/// are in the datapath. Without that answer ADD fails (the runtime retries
/// it), unless the configuration says `failOpen`.
fn register(conf: &NetConf, env: &Env, id: &str, plan: &Plan) -> Result<(), CniError> {
    let (Some(namespace), Some(name)) = (env.arg("K8S_POD_NAMESPACE"), env.arg("K8S_POD_NAME")) else { return Ok(()) };
    let reg = Registration {
        namespace: namespace.to_string(),
        name: name.to_string(),
        container_id: id.to_string(),
        ifname: plan.ifname.clone(),
        host_interface: plan.host.clone(),
        addresses: plan.ips.clone(),
        // The agent answers (even if only to give up) before we stop waiting.
        timeout_ms: conf.agent.timeout.as_millis().saturating_sub(500).max(500) as u64,
    };
    match agent_client(conf).register(&reg) {
        Ok(_) => Ok(()),
        Err(e) if conf.agent.fail_open => {
            eprintln!("weir-cni: {e}; failOpen: starting pod {namespace}/{name} without its policy confirmed");
            Ok(())
        }
        Err(e) if e.is_transient() => Err(CniError::TryAgainLater(format!("pod {namespace}/{name} is not started before its policy is programmed: {e}"))),
        Err(e) => Err(CniError::AgentRefused(format!("pod {namespace}/{name}: {e}"))),
    }
}

/// Tells the agent a pod's network is going away. Best effort: an agent
/// that is down forgets the registration when it sees the veth gone.
fn unregister(conf: &NetConf, r: Option<&Record>, id: &str, ifname: &str) {
    if r.is_some_and(|r| r.pod_namespace.is_some() && r.pod_name.is_some()) {
        let _ = agent_client(conf).unregister(id, ifname);
    }
}

fn add_result(conf: &NetConf, plan: &Plan, wired: &wire::Wired, ipam_result: &Value) -> Value {
    let mut routes = Vec::new();
    if plan.ips.iter().any(IpAddr::is_ipv4) {
        routes.push(json!({"dst": "0.0.0.0/0", "gw": wire::GATEWAY4.to_string()}));
    }
    if plan.ips.iter().any(IpAddr::is_ipv6) {
        routes.push(json!({"dst": "::/0", "gw": wire::GATEWAY6.to_string()}));
    }
    json!({
        "cniVersion": conf.cni_version,
        "interfaces": [
            {"name": plan.host, "mac": wired.host_mac},
            {"name": plan.ifname, "mac": wired.pod_mac, "sandbox": plan.netns.display().to_string()},
        ],
        "ips": plan.ips.iter().map(|ip| {
            json!({"address": format!("{ip}/{}", host_prefix(*ip)), "gateway": wire::gateway(*ip).to_string(), "interface": 1})
        }).collect::<Vec<_>>(),
        "routes": routes,
        "dns": ipam_result.get("dns").cloned().unwrap_or(json!({})),
    })
}

/// Releases one attachment: the lease (IPAM DEL), then the veth (its
/// routes go with it) whether or not IPAM succeeded, then the record, but
/// only once the lease is released, so that a later DEL or GC retries it.
fn release(conf: &NetConf, env: &Env, nl: &Netlink, held: Held, host: &str) -> Result<(), CniError> {
    let ipam = if conf.ipam.is_some() { ipam::delegate(conf, env, "DEL", None).map(|_| ()) } else { Ok(()) };
    wire::unwire(nl, host)?;
    ipam?;
    held.forget()
}

/// DEL: succeeds when things are already gone, as the spec requires.
pub fn del(conf: &NetConf, env: &Env) -> Result<Value, CniError> {
    let (id, ifname) = env.require_ids()?;
    let nl = Netlink::open()?;
    let held = store::take(&conf.data_dir, id, ifname, Wait::Yes)?
        .ok_or_else(|| CniError::TryAgainLater(format!("attachment {id}/{ifname} is busy")))?;
    let rec = held.load();
    unregister(conf, rec.as_ref(), id, ifname);
    let host = rec.map_or_else(|| host_veth_name(id, ifname), |r| r.host_veth);
    release(conf, env, &nl, held, &host)?;
    Ok(Value::Null)
}

/// CHECK: the attachment is as ADD left it, compared by value.
pub fn check(conf: &NetConf, env: &Env) -> Result<Value, CniError> {
    let (id, netns, ifname) = env.require_attachment()?;
    let prev = conf.prev_result.as_ref().ok_or_else(|| CniError::InvalidConfig("CHECK needs prevResult".into()))?;
    let plan = Plan { host: host_veth_name(id, ifname), ifname: ifname.to_string(), netns: PathBuf::from(netns), mtu: conf.mtu, ips: result_ips(prev)? };
    let wrong = wire::check(&Netlink::open()?, &plan)?;
    if !wrong.is_empty() {
        return Err(CniError::internal("CHECK failed", wrong.join("; ")));
    }
    if conf.ipam.is_some() {
        ipam::delegate(conf, env, "CHECK", Some(("prevResult", prev.clone())))?;
    }
    Ok(Value::Null)
}

/// STATUS: ready to serve ADD when the IPAM plugin can be found and the
/// agent can program new pods (unless `failOpen`, which starts pods
/// without it).
pub fn status(conf: &NetConf, env: &Env) -> Result<Value, CniError> {
    let plugin = conf.ipam_type()?;
    if !env.path.iter().any(|d| d.join(plugin).is_file()) {
        return Err(CniError::Ipam { plugin: plugin.into(), code: 50, msg: format!("IPAM plugin {plugin} not found in CNI_PATH"), details: String::new() });
    }
    if !conf.agent.fail_open {
        agent_client(conf).status().map_err(|e| CniError::NotReady(e.to_string()))?;
    }
    Ok(Value::Null)
}

/// GC: releases every attachment of this network that is not in
/// `cni.dev/valid-attachments` (an ADD still in flight is left alone),
/// then lets an IPAM plugin that has GC collect its own leases. One
/// failure does not stop the sweep; the error lists every one.
pub fn gc(conf: &NetConf, env: &Env) -> Result<Value, CniError> {
    let valid = conf.valid_attachments()?;
    let nl = Netlink::open()?;
    let stale = store::take_stale(&conf.data_dir, &conf.name, |r| !valid.iter().any(|(id, ifname)| *id == r.container_id && *ifname == r.ifname))?;
    let mut failed = Vec::new();
    for (held, r) in stale {
        let env = Env { container_id: Some(r.container_id.clone()), ifname: Some(r.ifname.clone()), netns: None, ..env.clone() };
        unregister(conf, Some(&r), &r.container_id, &r.ifname);
        if let Err(e) = release(conf, &env, &nl, held, &r.host_veth) {
            failed.push(format!("{}/{}: {e}", r.container_id, r.ifname));
        }
    }
    if conf.ipam.is_some() && ipam::has_gc(conf, env)? {
        let list = conf.valid_attachments_raw.clone().unwrap_or(Value::Null);
        if let Err(e) = ipam::delegate(conf, env, "GC", Some((VALID_ATTACHMENTS, list))) {
            failed.push(format!("IPAM GC: {e}"));
        }
    }
    if failed.is_empty() {
        Ok(Value::Null)
    } else {
        Err(CniError::internal(format!("GC could not release {} attachment(s)", failed.len()), failed.join("; ")))
    }
}
