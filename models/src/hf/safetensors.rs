//! The weights of a Hugging Face directory: `model.safetensors`, or the shards that
//! `model.safetensors.index.json` lists. Headers are read without touching the data (for
//! placement); loading memory-maps the shards.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::json::JsonFile;
use crate::error::{ModelError, Result};

/// Single-file weights.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The index of sharded weights.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// One tensor as a shard's header describes it.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// The shard that holds it.
    pub file: PathBuf,
    pub shape: Vec<usize>,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The tensors of every shard, by name.
#[derive(Debug, Clone)]
pub struct SafetensorsIndex {
    pub files: Vec<PathBuf>,
    pub tensors: HashMap<String, TensorInfo>,
    /// Bytes of all shards together.
    pub file_bytes: u64,
}

impl SafetensorsIndex {
    /// Finds the weight files of `dir` and reads their headers.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(INDEX_FILE);
        let files = if index.is_file() {
            shards_of(&JsonFile::read(&index)?, dir)?
        } else if single.is_file() {
            vec![single]
        } else {
            let bin = dir.join("pytorch_model.bin").is_file()
                || dir.join("pytorch_model.bin.index.json").is_file();
            return Err(ModelError::HfFile {
                path: single,
                reason: match bin {
                    true => "missing; only PyTorch .bin weights are here, which are not read \
                             (convert them to safetensors)"
                        .into(),
                    false => format!("missing, and no {INDEX_FILE} either"),
                },
            });
        };
        let mut tensors = HashMap::new();
        let mut file_bytes = 0;
        for file in &files {
            let (header, bytes) = read_header(file)?;
            file_bytes += bytes;
            for (name, info) in header {
                if let Some(other) = tensors.insert(name.clone(), info) {
                    return Err(ModelError::HfFile {
                        path: file.clone(),
                        reason: format!("tensor `{name}` is also in {}", other.file.display()),
                    });
                }
            }
        }
        Ok(Self {
            files,
            tensors,
            file_bytes,
        })
    }

    /// Number of elements of all tensors.
    pub fn parameters(&self) -> usize {
        self.tensors.values().map(TensorInfo::elements).sum()
    }
}

/// The distinct shard files `weight_map` names, in order, each checked to exist.
fn shards_of(index: &JsonFile, dir: &Path) -> Result<Vec<PathBuf>> {
    let map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| index.error("weight_map", "missing or not an object"))?;
    let mut files: Vec<PathBuf> = Vec::new();
    for (tensor, file) in map {
        let name = file.as_str().ok_or_else(|| {
            index.error(
                "weight_map",
                format!("`{tensor}` maps to {file}, not a file name"),
            )
        })?;
        let path = dir.join(name);
        if !files.contains(&path) {
            if !path.is_file() {
                return Err(index.error(
                    "weight_map",
                    format!("shard {name} (of `{tensor}`) is missing"),
                ));
            }
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(index.error("weight_map", "lists no tensors"));
    }
    Ok(files)
}

/// A shard's tensors and its size, from its header alone.
fn read_header(path: &Path) -> Result<(Vec<(String, TensorInfo)>, u64)> {
    let bad = |reason: String| ModelError::HfFile {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = File::open(path).map_err(|e| bad(e.to_string()))?;
    let size = file.metadata().map_err(|e| bad(e.to_string()))?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| bad("not a safetensors file (too short)".into()))?;
    let len = u64::from_le_bytes(len);
    if len > 100_000_000 || len + 8 > size {
        return Err(bad(format!(
            "not a safetensors file (header of {len} bytes in a file of {size})"
        )));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)
        .map_err(|e| bad(e.to_string()))?;
    let header: serde_json::Map<String, Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let data_bytes = size - 8 - len;
    let mut out = Vec::with_capacity(header.len());
    for (name, v) in header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = v.get("dtype").and_then(Value::as_str).unwrap_or_default();
        let shape: Option<Vec<usize>> = v
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|s| s.iter().map(|d| d.as_u64().map(|d| d as usize)).collect());
        let offsets: Option<Vec<u64>> = v
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|s| s.iter().map(Value::as_u64).collect());
        let (Some(shape), Some(offsets)) = (shape, offsets) else {
            return Err(bad(format!(
                "tensor `{name}` has no valid shape and offsets"
            )));
        };
        let width = match dtype {
            "BF16" | "F16" => 2,
            "F32" => 4,
            other => {
                return Err(bad(format!(
                    "tensor `{name}` is {other}: only BF16, F16 and F32 tensors are supported"
                )))
            }
        };
        let elements: usize = shape.iter().product();
        let fits = offsets.len() == 2
            && offsets[1] >= offsets[0]
            && offsets[1] <= data_bytes
            && offsets[1] - offsets[0] == (elements * width) as u64;
        if !fits {
            return Err(bad(format!(
                "tensor `{name}`: offsets {offsets:?} do not hold {dtype} {shape:?}"
            )));
        }
        out.push((
            name,
            TensorInfo {
                file: path.to_path_buf(),
                shape,
            },
        ));
    }
    Ok((out, size))
}
