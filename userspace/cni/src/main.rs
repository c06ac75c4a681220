//! weir-cni entry point: environment and stdin in, a result or a spec
//! error object out, exit status 0 or 1.

use std::io::Read as _;

use weir_cni::{
    conf::{command_from, Command, Env, NetConf},
    ops, CniError,
};

fn main() -> std::process::ExitCode {
    let mut input = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut input);
    let requested = serde_json::from_slice::<serde_json::Value>(&input)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(|v| v.as_str()).map(str::to_string))
        .unwrap_or_else(|| "1.1.0".to_string());
    match run(&input, &requested) {
        Ok(out) => {
            if !out.is_null() {
                println!("{out}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", e.to_json(&requested));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(input: &[u8], requested: &str) -> Result<serde_json::Value, CniError> {
    let command = command_from(std::env::var("CNI_COMMAND").ok().as_deref())?;
    if command == Command::Version {
        return Ok(ops::version(requested));
    }
    let env = Env::from_vars(|k| std::env::var(k).ok());
    let conf = NetConf::parse(input)?;
    match command {
        Command::Add => ops::add(&conf, &env),
        Command::Del => ops::del(&conf, &env),
        Command::Check => ops::check(&conf, &env),
        Command::Status => ops::status(&conf, &env),
        Command::Gc => ops::gc(&conf, &env),
        Command::Version => Ok(ops::version(requested)),
    }
}
