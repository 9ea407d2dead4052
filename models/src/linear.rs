//! A linear layer's weights in whichever format was chosen at load.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use crate::error::Result;
use crate::llama::WeightFormat;

/// `y = x · Wᵀ` for a weight matrix `W` of shape `[out, in]`.
///
/// Every format computes each output row from its input row alone, so a sequence gets the
/// same result whatever else is in the batch (greedy output does not depend on load). A
/// "hybrid" that switched to f32 GEMM for large batches was measured and dropped for
/// breaking exactly that.
pub struct Linear(QMatMul);

impl Linear {
    /// Builds the layer from a GGUF tensor in `format`.
    pub fn new(q: QTensor, format: WeightFormat, device: &Device) -> Result<Self> {
        Ok(Linear(match format {
            WeightFormat::F32 => QMatMul::Tensor(q.dequantize(device)?),
            WeightFormat::Quantized => QMatMul::from_arc(Arc::new(q))?,
            WeightFormat::Q8 if q.dtype() == GgmlDType::Q8_0 => QMatMul::from_arc(Arc::new(q))?,
            WeightFormat::Q8 => {
                let requantized = QTensor::quantize(&q.dequantize(device)?, GgmlDType::Q8_0)?;
                QMatMul::from_arc(Arc::new(requantized))?
            }
        }))
    }

    /// Applies the layer to `x` of shape `[rows, in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.0.forward(x)?)
    }
}
