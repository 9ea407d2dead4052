//! Opening GGUF files: magic check, metadata access, tensor loading.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;

use crate::error::{ModelError, Result};

/// An opened GGUF file: its parsed header (metadata + tensor index) and a reader for tensor data.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
}

impl GgufFile {
    /// Opens `path`, checks that it is GGUF and parses its header.
    pub fn open(path: &Path) -> Result<Self> {
        let io_err = |source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        if file.metadata().map_err(io_err)?.is_dir() {
            return Err(ModelError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "is a directory"),
            });
        }
        let mut reader = BufReader::new(file);
        let mut magic = [0u8; 4];
        if reader.read_exact(&mut magic).is_err() || &magic != b"GGUF" {
            return Err(ModelError::NotGguf {
                path: path.to_path_buf(),
            });
        }
        reader.seek(SeekFrom::Start(0)).map_err(io_err)?;
        let content = Content::read(&mut reader).map_err(|e| ModelError::BadGguf {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader,
        })
    }

    /// The file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All metadata key/values of the file.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// Whether the file holds a tensor of this name.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Reads one tensor (still in its GGUF storage type) onto `device`.
    pub fn tensor(&mut self, name: &str, device: &Device) -> Result<QTensor> {
        if !self.has_tensor(name) {
            return Err(ModelError::MissingTensor {
                name: name.to_string(),
                source_name: self.path.display().to_string(),
            });
        }
        self.content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| ModelError::BadGguf {
                path: self.path.clone(),
                reason: format!("tensor {name}: {e}"),
            })
    }

    /// Typed access to the metadata.
    pub fn view(&self) -> MetadataView<'_> {
        MetadataView(self.metadata())
    }

    /// A required metadata value.
    pub fn value(&self, key: &str) -> Result<&Value> {
        MetadataView(self.metadata()).value(key)
    }

    /// A required string value.
    pub fn string(&self, key: &str) -> Result<&str> {
        MetadataView(self.metadata()).string(key)
    }

    /// A required unsigned integer value (any integer width).
    pub fn u64(&self, key: &str) -> Result<u64> {
        self.view().u64(key)
    }

    /// A required float value.
    pub fn f32(&self, key: &str) -> Result<f32> {
        self.view().f32(key)
    }

    /// An optional value: `None` when absent.
    pub fn optional(&self, key: &str) -> Option<&Value> {
        self.metadata().get(key)
    }
}

/// Typed getters over GGUF metadata (of an opened file, or of one about to be written).
#[derive(Clone, Copy)]
pub struct MetadataView<'a>(pub &'a HashMap<String, Value>);

impl<'a> MetadataView<'a> {
    /// A required metadata value.
    pub fn value(&self, key: &str) -> Result<&'a Value> {
        self.0.get(key).ok_or_else(|| ModelError::Metadata {
            key: key.to_string(),
            reason: "missing".into(),
        })
    }

    /// A required string value.
    pub fn string(&self, key: &str) -> Result<&'a str> {
        self.value(key)?
            .to_string()
            .map(|s| s.as_str())
            .map_err(|e| meta_err(key, e))
    }

    /// A required unsigned integer value (any integer width).
    pub fn u64(&self, key: &str) -> Result<u64> {
        let n: i128 = match self.value(key)? {
            Value::U8(x) => (*x).into(),
            Value::I8(x) => (*x).into(),
            Value::U16(x) => (*x).into(),
            Value::I16(x) => (*x).into(),
            Value::U32(x) => (*x).into(),
            Value::I32(x) => (*x).into(),
            Value::U64(x) => (*x).into(),
            Value::I64(x) => (*x).into(),
            other => {
                return Err(meta_err(
                    key,
                    format!("expected an integer, found {:?}", other.value_type()),
                ))
            }
        };
        u64::try_from(n).map_err(|_| meta_err(key, format!("negative value {n}")))
    }

    /// A required float value.
    pub fn f32(&self, key: &str) -> Result<f32> {
        let v = self.value(key)?;
        v.to_f32()
            .or_else(|_| v.to_f64().map(|f| f as f32))
            .map_err(|e| meta_err(key, e))
    }

    /// An optional value: `None` when absent.
    pub fn optional(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key)
    }
}

fn meta_err(key: &str, e: impl std::fmt::Display) -> ModelError {
    ModelError::Metadata {
        key: key.to_string(),
        reason: e.to_string(),
    }
}
