//! weir-cni: the CNI plugin (`"type": "weir-cni"`). This stage answers
//! VERSION; ADD, DEL, CHECK, STATUS and GC arrive with the CNI issue and
//! are refused with a spec error object until then.

use std::io::Read as _;

/// CNI versions this plugin speaks.
const SUPPORTED_VERSIONS: [&str; 2] = ["1.0.0", "1.1.0"];

/// CNI error codes (spec, "Error" section).
const ERR_INCOMPATIBLE_VERSION: u32 = 1;
const ERR_INVALID_ENV: u32 = 4;
const ERR_DECODE: u32 = 6;

#[derive(serde::Serialize)]
struct CniError<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'a str,
    code: u32,
    msg: String,
    details: String,
}

#[derive(serde::Deserialize)]
struct VersionOnly {
    #[serde(rename = "cniVersion")]
    cni_version: Option<String>,
}

fn main() -> std::process::ExitCode {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    match command.as_str() {
        "VERSION" => {
            let mut input = String::new();
            let _ = std::io::stdin().read_to_string(&mut input);
            let requested = serde_json::from_str::<VersionOnly>(&input)
                .ok()
                .and_then(|v| v.cni_version)
                .unwrap_or_else(|| "1.1.0".into());
            let out = serde_json::json!({
                "cniVersion": requested,
                "supportedVersions": SUPPORTED_VERSIONS,
            });
            println!("{out}");
            std::process::ExitCode::SUCCESS
        }
        "" => fail(ERR_INVALID_ENV, "CNI_COMMAND is not set", "weir-cni is a CNI plugin; a container runtime runs it"),
        "ADD" | "DEL" | "CHECK" | "STATUS" | "GC" => fail(
            ERR_INCOMPATIBLE_VERSION,
            "operation not supported by this weir-cni build",
            &format!("CNI_COMMAND={command}"),
        ),
        other => fail(ERR_DECODE, "unknown CNI_COMMAND", other),
    }
}

fn fail(code: u32, msg: &str, details: &str) -> std::process::ExitCode {
    let err = CniError { cni_version: "1.1.0", code, msg: msg.to_string(), details: details.to_string() };
    match serde_json::to_string(&err) {
        Ok(s) => println!("{s}"),
        Err(_) => println!("{{\"code\":{code}}}"),
    }
    std::process::ExitCode::FAILURE
}
