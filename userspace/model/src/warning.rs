//! Problems with input: one per bad file or object, naming the file, the
//! object and the field, so a person can fix it. Bad input never stops
//! anything else.

use std::{fmt, path::PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// The file the object came from (standalone mode).
    pub file: Option<PathBuf>,
    /// `Kind namespace/name`, when known.
    pub object: Option<String>,
    /// The field path, e.g. `spec.ports[0].port`.
    pub field: Option<String>,
    pub message: String,
}

impl Warning {
    /// A short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match (&self.object, &self.field) {
            (None, _) => "file",
            (Some(_), None) => "object",
            (Some(_), Some(_)) => "field",
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(file) = &self.file {
            parts.push(format!("file {}", file.display()));
        }
        if let Some(o) = &self.object {
            parts.push(o.clone());
        }
        if let Some(field) = &self.field {
            parts.push(format!("field {field}"));
        }
        parts.push(self.message.clone());
        f.write_str(&parts.join(": "))
    }
}
