//! Delegated IPAM: the `ipam.type` plugin found on CNI_PATH runs with the
//! same environment and the network configuration on stdin, as the
//! reference plugins delegate. host-local (Debian's
//! containernetworking-plugins) speaks CNI up to 1.0.0; the configuration
//! is passed at the highest version both sides speak (1.0.0 and 1.1.0
//! results have the same shape).

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command as Proc, Stdio},
};

use serde_json::Value;

use crate::{
    conf::{Env, NetConf},
    CniError,
};

fn find(env: &Env, plugin: &str) -> Result<PathBuf, CniError> {
    if plugin.contains('/') {
        return Err(CniError::InvalidConfig(format!("ipam.type {plugin:?} must be a plugin name, not a path")));
    }
    env.path
        .iter()
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| CniError::InvalidConfig(format!("IPAM plugin {plugin:?} not found in CNI_PATH")))
}

fn run(env: &Env, bin: &PathBuf, command: &str, stdin: &[u8]) -> Result<(bool, Vec<u8>), CniError> {
    let mut child = Proc::new(bin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", env.container_id.as_deref().unwrap_or(""))
        .env("CNI_NETNS", env.netns.as_deref().unwrap_or(""))
        .env("CNI_IFNAME", env.ifname.as_deref().unwrap_or(""))
        .env("CNI_ARGS", delegated_args(env))
        .env(
            "CNI_PATH",
            env.path.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::Io(format!("running {}: {e}", bin.display())))?;
    if let Some(mut i) = child.stdin.take() {
        // A plugin may answer without reading its input (VERSION does): a
        // closed pipe is not a failure, its exit status and output say.
        match i.write_all(stdin) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(CniError::Io(format!("writing to {}: {e}", bin.display())));
            }
            _ => {}
        }
    }
    let out = child.wait_with_output().map_err(|e| CniError::Io(format!("waiting for {}: {e}", bin.display())))?;
    Ok((out.status.success(), out.stdout))
}

/// CNI_ARGS for the IPAM plugin: as given, with `IgnoreUnknown=1` so the
/// reference plugins accept the Kubernetes keys they do not know (runtimes
/// usually send it already).
fn delegated_args(env: &Env) -> String {
    let mut args: Vec<String> = env.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !env.args.iter().any(|(k, _)| k == "IgnoreUnknown") {
        args.insert(0, "IgnoreUnknown=1".into());
    }
    args.join(";")
}

/// The CNI versions the IPAM plugin says it speaks (none when it does not
/// answer VERSION).
fn supported(env: &Env, bin: &PathBuf, ours: &str) -> Vec<String> {
    let query = serde_json::json!({ "cniVersion": ours }).to_string();
    run(env, bin, "VERSION", query.as_bytes())
        .ok()
        .and_then(|(_, out)| serde_json::from_slice::<Value>(&out).ok())
        .and_then(|v| v.get("supportedVersions").cloned())
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

/// The version to talk to the IPAM plugin in.
fn version_for(supported: &[String], ours: &str) -> String {
    if supported.iter().any(|v| v == ours) {
        ours.to_string()
    } else if supported.iter().any(|v| v == "1.0.0") {
        "1.0.0".to_string()
    } else {
        ours.to_string()
    }
}

/// Whether the IPAM plugin has GC (CNI 1.1.0). Debian bookworm's
/// host-local (plugins 1.1.1) speaks up to 1.0.0 and has none; weir-cni's
/// own records still release every lease it took, through DEL.
pub fn has_gc(conf: &NetConf, env: &Env) -> Result<bool, CniError> {
    let bin = find(env, conf.ipam_type()?)?;
    Ok(supported(env, &bin, &conf.cni_version).iter().any(|v| v == "1.1.0") && conf.cni_version == "1.1.0")
}

/// Runs the IPAM plugin for `command`; returns its result (ADD) or Null.
pub fn delegate(conf: &NetConf, env: &Env, command: &str, extra: Option<(&str, Value)>) -> Result<Value, CniError> {
    let plugin = conf.ipam_type()?.to_string();
    let bin = find(env, &plugin)?;
    let version = version_for(&supported(env, &bin, &conf.cni_version), &conf.cni_version);
    let mut stdin = serde_json::json!({
        "cniVersion": version,
        "name": conf.name,
        "type": "weir-cni",
        "ipam": conf.ipam,
    });
    if let (Some((k, v)), Some(o)) = (extra, stdin.as_object_mut()) {
        o.insert(k.to_string(), v);
    }
    let (ok, out) = run(env, &bin, command, stdin.to_string().as_bytes())?;
    if ok {
        return Ok(if out.is_empty() { Value::Null } else { serde_json::from_slice(&out).unwrap_or(Value::Null) });
    }
    let err: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
    Err(CniError::Ipam {
        plugin,
        code: err.get("code").and_then(Value::as_u64).map_or(999, |c| c as u32),
        msg: err.get("msg").and_then(Value::as_str).unwrap_or("failed without an error object").to_string(),
        details: err.get("details").and_then(Value::as_str).unwrap_or_default().to_string(),
    })
}
