//! The token embedding table: dense on the device, or on the CPU kept in the file's
//! quantized blocks with only the rows a step looks up dequantized. A dense f32 copy of a
//! large vocabulary is hundreds of megabytes (Gemma 3's 262,144 x 640 table: 671 MB) that a
//! worker would allocate and fill at every load.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::error::{ModelError, Result};

/// The table `[vocab, hidden]`.
pub enum TokenEmbedding {
    /// A dense tensor on the model's device.
    Dense(Tensor),
    /// Quantized blocks on the CPU, shared with the tied output layer when there is one.
    Blocks(Arc<QTensor>),
}

impl TokenEmbedding {
    /// The rows of `ids` (`u32`, on the model's device), `[ids, hidden]` in f32 (dense: the
    /// table's dtype).
    pub fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(table) => Ok(table.index_select(ids, 0)?),
            Self::Blocks(q) => {
                let (vocab, hidden) = q.shape().dims2()?;
                let bytes = q.data()?;
                let ids = ids.to_vec1::<u32>()?;
                let mut out = vec![0.0f32; ids.len() * hidden];
                for (id, row) in ids.iter().zip(out.chunks_exact_mut(hidden)) {
                    let id = *id as usize;
                    if id >= vocab {
                        return Err(ModelError::InvalidInput(format!(
                            "token id {id} is not below the vocabulary size {vocab}"
                        )));
                    }
                    dequantize_row(q.dtype(), &bytes, hidden, id, row)?;
                }
                Ok(Tensor::from_vec(out, (ids.len(), hidden), &Device::Cpu)?)
            }
        }
    }
}

/// Row `r` (`k` values) of the `dtype` matrix whose blocks are `bytes`, as f32 into `out`:
/// the values candle's dequantization of the whole matrix gives for that row.
pub(crate) fn dequantize_row(
    dtype: GgmlDType,
    bytes: &[u8],
    k: usize,
    r: usize,
    out: &mut [f32],
) -> candle_core::Result<()> {
    let row_bytes = k / dtype.block_size() * dtype.type_size();
    let Some(row) = bytes.get(r * row_bytes..(r + 1) * row_bytes) else {
        candle_core::bail!("row {r} is past the end of the matrix");
    };
    match dtype.from_data(Cow::Borrowed(row)).dequantize(k)? {
        candle_core::CpuStorage::F32(values) => out.copy_from_slice(&values),
        _ => candle_core::bail!("{dtype:?} did not dequantize to f32"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;

    #[test]
    fn rows_looked_up_in_blocks_equal_the_dense_table() {
        let (vocab, hidden) = (40, 64);
        let values: Vec<f32> = (0..vocab * hidden)
            .map(|i| ((i * 7919) % 997) as f32 / 100.0 - 5.0)
            .collect();
        let dense = Tensor::from_vec(values, (vocab, hidden), &Device::Cpu).unwrap();
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_1, GgmlDType::Q4K] {
            if hidden % dtype.block_size() != 0 {
                continue;
            }
            let q = QTensor::quantize(&dense, dtype).unwrap();
            let table = q.dequantize(&Device::Cpu).unwrap();
            let ids = Tensor::new(&[3u32, 0, 39, 3], &Device::Cpu).unwrap();
            let want = table.index_select(&ids, 0).unwrap();
            let got = TokenEmbedding::Blocks(Arc::new(q)).lookup(&ids).unwrap();
            let (want, got) = (
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert_eq!(want, got, "{dtype:?}");
        }
        let q = QTensor::quantize(&dense, GgmlDType::Q8_0).unwrap();
        let past = Tensor::new(&[40u32], &Device::Cpu).unwrap();
        assert!(TokenEmbedding::Blocks(Arc::new(q)).lookup(&past).is_err());
    }
}
