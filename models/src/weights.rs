//! Where a decoder's tensors come from: a GGUF file (quantized or dense, llama.cpp's tensor
//! names) or a Hugging Face directory's safetensors (dense). The decoder asks for every tensor
//! by its GGUF name; each source answers in its own storage.

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

/// One tensor as its source stores it, on the CPU.
pub enum RawTensor {
    /// A GGUF tensor in its own (possibly quantized) type (boxed: a `QTensor` is large with
    /// the `cuda` feature).
    Quantized(Box<QTensor>),
    /// A dense tensor (bf16, f16 or f32), as safetensors store them.
    Dense(Tensor),
}

impl RawTensor {
    /// The tensor's dimensions, outermost first (`[out, in]` for a weight matrix).
    pub fn dims(&self) -> &[usize] {
        match self {
            Self::Quantized(q) => q.shape().dims(),
            Self::Dense(t) => t.dims(),
        }
    }

    /// The values as a `dtype` tensor on the CPU (a dense tensor already of that type is
    /// not copied).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        Ok(match self {
            Self::Quantized(q) => q.dequantize(&Device::Cpu)?.to_dtype(dtype)?,
            Self::Dense(t) => t.to_dtype(dtype)?,
        })
    }
}

/// Something that holds a model's tensors under their GGUF names.
pub trait TensorSource {
    /// Whether the source holds this tensor.
    fn has(&self, name: &str) -> bool;
    /// Reads one tensor onto the CPU; [`ModelError::MissingTensor`] when absent.
    fn tensor(&mut self, name: &str) -> Result<RawTensor>;
    /// The name the source itself gives the tensor (for error messages).
    fn display_name(&self, name: &str) -> String {
        name.to_string()
    }
}

impl TensorSource for GgufFile {
    fn has(&self, name: &str) -> bool {
        self.has_tensor(name)
    }

    fn tensor(&mut self, name: &str) -> Result<RawTensor> {
        GgufFile::tensor(self, name, &Device::Cpu).map(|q| RawTensor::Quantized(Box::new(q)))
    }
}

/// The error for a tensor whose shape is not the one the configuration implies.
pub fn shape_mismatch(name: &str, have: &[usize], want: &[usize]) -> ModelError {
    ModelError::ShapeMismatch {
        name: name.to_string(),
        have: have.to_vec(),
        want: want.to_vec(),
    }
}

/// Checks that `src`'s tensor `name` has the dimensions `want` (its name in the source's own
/// terms is looked up only for the error).
pub fn check_dims(
    src: &dyn TensorSource,
    name: &str,
    have: &[usize],
    want: &[usize],
) -> Result<()> {
    match have == want {
        true => Ok(()),
        false => Err(shape_mismatch(&src.display_name(name), have, want)),
    }
}
