//! A linear layer's weights in whichever format was chosen at load.

use std::sync::Arc;

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};
use migserve_kernels::cpu::q8_matmul::{self, PackedQ8};

use crate::cpu_ops::with_f32;
use crate::error::{ModelError, Result};
use crate::parallel::candle_pool;
use crate::weight_format::WeightFormat;
use crate::weights::RawTensor;

/// candle's tiled int8 (AVX-512 VNNI) Q8_0 kernels need the input width to be a multiple of
/// this; narrower layers fall back to a per-element dot product that is several times slower
/// for batches. Q8 weights are zero-padded up to it (bench/results).
const Q8_TILED_K: usize = 256;

/// `y = x · Wᵀ` for a weight matrix `W` of shape `[out, in]`.
///
/// Every format computes each output row from its input row alone, so a sequence gets the
/// same result whatever else is in the batch (greedy output does not depend on load).
pub enum Linear {
    /// candle's matmul on weights kept as a candle tensor.
    Candle {
        weights: QMatMul,
        /// Zero columns appended to the input to match padded weights.
        pad: usize,
    },
    /// Q8 weights on a CPU with AVX-512 VNNI: `migserve_kernels`' 8-bit matmul, which reads
    /// each weight once for a whole batch of rows (bench/results).
    PackedQ8(PackedQ8),
}

impl Linear {
    /// Builds the layer on `device` from a tensor held on the CPU, in `format`.
    pub fn new(raw: RawTensor, format: WeightFormat, device: &Device) -> Result<Self> {
        let q = match raw {
            RawTensor::Quantized(q) => *q,
            RawTensor::Dense(t) => return Self::from_dense(t, format, device),
        };
        let (_, k) = q.shape().dims2()?;
        if kept_as_is(q.dtype(), k, format, device) {
            let weights = QMatMul::from_arc(Arc::new(to_device(q, device)?))?;
            return Ok(Self::Candle { weights, pad: 0 });
        }
        if packs_q8(format, device, k) {
            return Self::packed_from_blocks(&[&q]);
        }
        Self::from_dense(q.dequantize(&Device::Cpu)?, format, device)
    }

    /// One layer computing several projections of the same input (Q, K and V; gate and up):
    /// their weights stacked by rows, so the input is quantized once and the matmul is one
    /// call. Split the output with [`split_columns`].
    pub fn fused(parts: Vec<RawTensor>, format: WeightFormat, device: &Device) -> Result<Self> {
        let cpu = &Device::Cpu;
        let quantized: Vec<&QTensor> = parts
            .iter()
            .filter_map(|p| match p {
                RawTensor::Quantized(q) => Some(q.as_ref()),
                RawTensor::Dense(_) => None,
            })
            .collect();
        let same_type = quantized.len() == parts.len()
            && quantized.windows(2).all(|w| w[0].dtype() == w[1].dtype());
        if format == WeightFormat::Quantized && same_type {
            let parts = quantized;
            // Rows are whole blocks: stacking the raw bytes keeps the file's own encoding.
            let dtype = parts[0].dtype();
            let cols = parts[0].shape().dims2()?.1;
            let mut rows = 0;
            let mut bytes = Vec::new();
            for p in &parts {
                rows += p.shape().dims2()?.0;
                bytes.extend_from_slice(&p.data()?);
            }
            let storage = QStorage::from_data(Cow::Owned(bytes), cpu, dtype)?;
            let stacked = QTensor::new(storage, (rows, cols))?;
            return Self::new(RawTensor::Quantized(Box::new(stacked)), format, device);
        }
        let k = parts.first().map(|p| p.dims()[1]).unwrap_or(0);
        if quantized.len() == parts.len() && packs_q8(format, device, k) {
            return Self::packed_from_blocks(&quantized);
        }
        let dense = parts
            .iter()
            .map(|p| p.to_dtype(format.activation_dtype()))
            .collect::<Result<Vec<_>>>()?;
        Self::from_dense(Tensor::cat(&dense, 0)?, format, device)
    }

    /// The output layer tied to a quantized embedding table kept on the CPU: the table's
    /// own blocks (`quantized`, or Q8_0 that candle's tiles take), packed a row at a time, or
    /// dequantized.
    pub fn tied(table: &Arc<QTensor>, format: WeightFormat, device: &Device) -> Result<Self> {
        let k = table.shape().dims2()?.1;
        if kept_as_is(table.dtype(), k, format, device) && device.is_cpu() {
            let weights = QMatMul::from_arc(table.clone())?;
            return Ok(Self::Candle { weights, pad: 0 });
        }
        if packs_q8(format, device, k) {
            return Self::packed_from_blocks(&[table]);
        }
        Self::from_dense(table.dequantize(&Device::Cpu)?, format, device)
    }

    /// Our packed 8-bit layer from quantized matrices stacked by rows, dequantized a row at a
    /// time as it is packed (no f32 copy of the whole matrix: the same values, less memory
    /// traffic at load).
    fn packed_from_blocks(parts: &[&QTensor]) -> Result<Self> {
        let k = parts[0].shape().dims2()?.1;
        let mut rows = Vec::with_capacity(parts.len());
        for p in parts {
            let (n, width) = p.shape().dims2()?;
            if width != k {
                return Err(ModelError::Tensor(candle_core::Error::msg(format!(
                    "stacked matrices of widths {k} and {width}"
                ))));
            }
            rows.push((p.dtype(), p.data()?, n));
        }
        let n = rows.iter().map(|(_, _, n)| n).sum();
        let failed: std::sync::Mutex<Option<candle_core::Error>> = Default::default();
        let row = |mut r: usize, out: &mut [f32]| {
            for (dtype, bytes, part_rows) in &rows {
                if r >= *part_rows {
                    r -= part_rows;
                    continue;
                }
                if let Err(e) = crate::embedding::dequantize_row(*dtype, bytes, k, r, out) {
                    out.fill(0.0);
                    if let Ok(mut f) = failed.lock() {
                        f.get_or_insert(e);
                    }
                }
                return;
            }
        };
        let packed = PackedQ8::quantize_rows_with(&candle_pool, n, k, &row)
            .map_err(|e| ModelError::Tensor(candle_core::Error::msg(e)))?;
        if let Some(e) = failed.into_inner().ok().flatten() {
            return Err(ModelError::Tensor(e));
        }
        Ok(Self::PackedQ8(packed))
    }

    /// The layer in `format` from dense weights `[out, in]` (f32, bf16 or f16) on the CPU.
    pub(crate) fn from_dense(w: Tensor, format: WeightFormat, device: &Device) -> Result<Self> {
        // bf16 weights stay bf16 for the bf16 format (no f32 copy); every other format is
        // computed from f32.
        let w = w.to_dtype(format.activation_dtype())?;
        let (n, k) = w.dims2()?;
        if packs_q8(format, device, k) {
            // Read in place: one f32 copy of the matrix at a time.
            let packed = with_f32(&w, |dense| {
                PackedQ8::quantize_with(&candle_pool, dense, n, k)
            })?;
            return packed
                .map(Self::PackedQ8)
                .map_err(|e| ModelError::Tensor(candle_core::Error::msg(e)));
        }
        let (weights, pad) = match format {
            WeightFormat::F32 | WeightFormat::Quantized | WeightFormat::Bf16 => {
                (QMatMul::Tensor(w.to_device(device)?), 0)
            }
            WeightFormat::Q8 => {
                let pad = k.next_multiple_of(Q8_TILED_K) - k;
                let q8 = QTensor::quantize(&w.pad_with_zeros(1, 0, pad)?, GgmlDType::Q8_0)?;
                (QMatMul::from_arc(Arc::new(to_device(q8, device)?))?, pad)
            }
        };
        Ok(Self::Candle { weights, pad })
    }

    /// Applies the layer to `x` of shape `[rows, in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Candle { weights, pad: 0 } => Ok(weights.forward(x)?),
            Self::Candle { weights, pad } => Ok(weights.forward(&x.pad_with_zeros(1, 0, *pad)?)?),
            Self::PackedQ8(w) => {
                let (rows, k) = x.dims2()?;
                if k != w.k() {
                    return Err(ModelError::Tensor(candle_core::Error::msg(format!(
                        "input width {k} for a layer of input width {}",
                        w.k()
                    ))));
                }
                let len = rows * w.n();
                let mut out = Vec::with_capacity(len);
                with_f32(x, |x| {
                    let dst = &mut out.spare_capacity_mut()[..len];
                    q8_matmul::matmul_uninit(&candle_pool, w, x, rows, dst)
                })?;
                // SAFETY: `matmul_uninit` wrote all `len` values.
                unsafe { out.set_len(len) };
                Ok(Tensor::from_vec(out, (rows, w.n()), x.device())?)
            }
        }
    }
}

/// Whether a quantized matrix of `dtype` and input width `k` is kept in the file's own
/// encoding in `format` on `device`: `quantized`, and Q8_0 that candle's tiles take as is.
fn kept_as_is(dtype: GgmlDType, k: usize, format: WeightFormat, device: &Device) -> bool {
    match format {
        WeightFormat::Quantized => true,
        WeightFormat::Q8 => {
            dtype == GgmlDType::Q8_0 && k.is_multiple_of(Q8_TILED_K) && !packs_q8(format, device, k)
        }
        WeightFormat::F32 | WeightFormat::Bf16 => false,
    }
}

/// Whether a layer of input width `k` in `format` on `device` runs our packed 8-bit matmul:
/// Q8 on a CPU with AVX-512 VNNI, unless `MIGSERVE_CANDLE_Q8` asks for candle's (to compare).
fn packs_q8(format: WeightFormat, device: &Device, k: usize) -> bool {
    format == WeightFormat::Q8
        && device.is_cpu()
        && k.is_multiple_of(q8_matmul::BLOCK)
        && q8_matmul::simd_available()
        && std::env::var_os("MIGSERVE_CANDLE_Q8").is_none()
}

/// The same quantized tensor on `device` (the bytes are copied as they are).
fn to_device(q: QTensor, device: &Device) -> Result<QTensor> {
    if device.is_cpu() {
        return Ok(q);
    }
    let shape = q.shape().clone();
    let storage = QStorage::from_data(Cow::Owned(q.data()?.into_owned()), device, q.dtype())?;
    Ok(QTensor::new(storage, shape)?)
}

/// Splits `[rows, a + b + ...]` into `[rows, a]`, `[rows, b]`, ... (contiguous copies).
pub fn split_columns(t: &Tensor, widths: &[usize]) -> Result<Vec<Tensor>> {
    let mut start = 0;
    widths
        .iter()
        .map(|&w| {
            let part = t.narrow(1, start, w)?.contiguous()?;
            start += w;
            Ok(part)
        })
        .collect()
}
