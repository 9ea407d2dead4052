//! Typed reads of a Hugging Face JSON file, every error naming the file and the key.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{ModelError, Result};

/// A parsed JSON object and the file it came from.
#[derive(Debug, Clone)]
pub struct JsonFile {
    pub path: PathBuf,
    pub value: Value,
}

impl JsonFile {
    /// Reads and parses `path`; `None` when the file does not exist.
    pub fn read_optional(path: &Path) -> Result<Option<Self>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ModelError::HfFile {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
        }
    }

    /// Reads and parses `path`, which must exist.
    pub fn read(path: &Path) -> Result<Self> {
        Self::read_optional(path)?.ok_or_else(|| ModelError::HfFile {
            path: path.to_path_buf(),
            reason: "missing".into(),
        })
    }

    fn parse(path: &Path, text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| ModelError::HfFile {
            path: path.to_path_buf(),
            reason: format!("not valid JSON: {e}"),
        })?;
        if !value.is_object() {
            return Err(ModelError::HfFile {
                path: path.to_path_buf(),
                reason: "not a JSON object".into(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            value,
        })
    }

    /// The error for `key` of this file.
    pub fn error(&self, key: &str, reason: impl Into<String>) -> ModelError {
        ModelError::HfKey {
            path: self.path.clone(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    /// The key's value; `None` when absent or `null`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.value.get(key).filter(|v| !v.is_null())
    }

    /// A required non-negative integer.
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| self.error(key, "missing"))
    }

    /// An optional value read by `read`, which is `None` when the value is not `expected`.
    fn opt<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        read: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>> {
        self.get(key)
            .map(|v| {
                read(v).ok_or_else(|| self.error(key, format!("expected {expected}, found {v}")))
            })
            .transpose()
    }

    /// An optional non-negative integer.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.opt(key, "a non-negative integer", |v| {
            v.as_u64().map(|n| n as usize)
        })
    }

    /// An optional number.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.opt(key, "a number", Value::as_f64)
    }

    /// An optional boolean.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.opt(key, "true or false", Value::as_bool)
    }

    /// An optional string.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.opt(key, "a string", Value::as_str)
    }

    /// Token ids given as one integer or a list of them (`eos_token_id`).
    pub fn ids(&self, key: &str) -> Result<Vec<u32>> {
        let bad = |v: &Value| {
            self.error(
                key,
                format!("expected a token id or a list of them, found {v}"),
            )
        };
        let one = |v: &Value| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad(v))
        };
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(list)) => list.iter().map(one).collect(),
            Some(v) => Ok(vec![one(v)?]),
        }
    }
}
