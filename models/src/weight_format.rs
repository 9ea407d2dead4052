//! How a model's linear-layer weights are kept in memory.

use candle_core::DType;

/// How linear-layer weights are kept in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// Dequantized to f32 at load: the reference for numerics, fastest CPU prefill, slowest decode.
    F32,
    /// Kept in the file's quantized type; matmuls quantize activations on the fly.
    Quantized,
    /// Re-quantized to 8-bit blocks (Q8_0) at load: a quarter of f32's bytes, and candle's
    /// SIMD Q8_0 matmul (AVX2). The CPU default: 3x f32's single-stream decode (bench/results).
    #[default]
    Q8,
    /// Dequantized to bf16 at load, activations in bf16 too: the GPU default (tensor-core
    /// matmuls through cuBLAS). Also runs on CPU, slowly.
    Bf16,
}

impl WeightFormat {
    /// The name `--weights` and configs take (`q8`, `bf16`, `f32`, `quantized`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Quantized => "quantized",
            Self::Q8 => "q8",
            Self::Bf16 => "bf16",
        }
    }

    /// The dtype activations (and so the KV values handed to the store) have.
    pub fn activation_dtype(self) -> DType {
        match self {
            Self::Bf16 => DType::BF16,
            Self::F32 | Self::Quantized | Self::Q8 => DType::F32,
        }
    }

    /// Bytes the weights of a model with `params` parameters take in this format;
    /// `file_bytes` (the GGUF file's size) stands for the file's own types.
    pub fn weight_bytes(self, params: usize, file_bytes: u64) -> u64 {
        let params = params as u64;
        match self {
            Self::Q8 => params * 34 / 32,
            Self::Bf16 => params * 2,
            Self::F32 => params * 4,
            Self::Quantized => file_bytes,
        }
    }
}

impl std::str::FromStr for WeightFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "quantized" | "q" => Ok(Self::Quantized),
            "q8" | "q8_0" => Ok(Self::Q8),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!(
                "unknown weight format `{other}` (use q8, bf16, f32 or quantized)"
            )),
        }
    }
}
