//! Where cluster objects come from.

use std::{path::PathBuf, str::FromStr};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    /// The Kubernetes API, through `kube::Config::infer`.
    Kube,
    /// Standalone mode: a directory of Kubernetes YAML/JSON files.
    Dir(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum SourceSpecError {
    #[error("unknown source {0:?}: expected `kube` or `dir:<DIR>`")]
    Unknown(String),
    #[error("`dir:` needs a directory, as in `dir:/etc/weir/objects`")]
    EmptyDir,
}

impl FromStr for SourceSpec {
    type Err = SourceSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "kube" {
            return Ok(Self::Kube);
        }
        match s.strip_prefix("dir:") {
            Some("") => Err(SourceSpecError::EmptyDir),
            Some(dir) => Ok(Self::Dir(PathBuf::from(dir))),
            None => Err(SourceSpecError::Unknown(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!("kube".parse::<SourceSpec>().ok(), Some(SourceSpec::Kube));
        assert_eq!("dir:/x".parse::<SourceSpec>().ok(), Some(SourceSpec::Dir("/x".into())));
        assert!(matches!("dir:".parse::<SourceSpec>(), Err(SourceSpecError::EmptyDir)));
        assert!(matches!("etcd".parse::<SourceSpec>(), Err(SourceSpecError::Unknown(_))));
    }
}
