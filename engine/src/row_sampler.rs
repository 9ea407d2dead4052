//! A step's sampling where its logits are: the rows that choose a token now are picked out of
//! the step's logits tensor, their edits (bias, penalties, the `min_tokens` mask) applied to a
//! copy with device-generic tensor ops, and the choice made by the row sampler
//! ([`migserve_kernels::cpu::sample`] on the CPU device, its CUDA kernel on a GPU). What
//! comes back to the host is three numbers per row (token, its log-probability, the row's
//! log-softmax normalizer), not the rows: O(rows), not O(rows x vocabulary).

use candle_core::{DType, Device, Storage, Tensor};
use migserve_kernels::cpu::parallel::{par_rows, ParallelFor};
use migserve_kernels::cpu::sample::{sample_row, RowChoice, RowSampling, NO_MASK};
use migserve_models::ModelError;

use crate::sampling::LogitEdit;

/// One row that chooses a token this step.
pub struct RowRequest<'a> {
    /// Its row in the step's logits.
    pub row: usize,
    /// How it chooses (its `mask_row` is filled in here).
    pub sampling: RowSampling,
    /// What sampling does to its logits first, by token.
    pub edits: &'a [LogitEdit],
    /// The tokens its grammar allows (one bit per token, 32 per word).
    pub mask: Option<&'a [u32]>,
}

/// Chooses the token of every request in `rows` from `logits` (`[step rows][vocab]`, on the
/// model's device), in the order of `rows`. `parallel` spreads CPU rows over threads.
pub fn sample_rows(
    logits: &Tensor,
    rows: &[RowRequest<'_>],
    parallel: ParallelFor<'_>,
) -> Result<Vec<RowChoice>, ModelError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let (step_rows, vocab) = logits.dims2()?;
    if let Some(bad) = rows.iter().find(|r| r.row >= step_rows) {
        return Err(ModelError::InvalidInput(format!(
            "row {} of a step with {step_rows} logits rows",
            bad.row
        )));
    }
    let device = logits.device();
    let identity = rows.len() == step_rows && rows.iter().enumerate().all(|(i, r)| r.row == i);
    let raw = if identity {
        logits.to_dtype(DType::F32)?.contiguous()?
    } else {
        let index: Vec<u32> = rows.iter().map(|r| r.row as u32).collect();
        let index = Tensor::new(index.as_slice(), device)?;
        logits
            .index_select(&index, 0)?
            .to_dtype(DType::F32)?
            .contiguous()?
    };
    let edited = edit(&raw, rows, vocab)?;
    let mask_words = vocab.div_ceil(32);
    let mut masks = Vec::new();
    let mut params = Vec::with_capacity(rows.len());
    for r in rows {
        let mut p = r.sampling;
        p.mask_row = NO_MASK;
        if let Some(mask) = r.mask {
            p.mask_row = (masks.len() / mask_words) as u32;
            masks.extend((0..mask_words).map(|w| mask.get(w).copied().unwrap_or(0)));
        }
        params.push(p);
    }
    match device {
        Device::Cpu => on_cpu(&raw, &edited, vocab, &params, &masks, parallel),
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => on_cuda(d, &raw, &edited, vocab, &params, &masks),
        other => Err(ModelError::InvalidInput(format!(
            "no row sampler for the device {other:?}"
        ))),
    }
}

/// `raw` with every request's edits applied (the same tensor when there are none): the
/// edited entries are read (a few per row), edited on the host, and written back.
fn edit(raw: &Tensor, rows: &[RowRequest<'_>], vocab: usize) -> Result<Tensor, ModelError> {
    let mut index = Vec::new();
    let mut edits = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        for e in r.edits.iter().filter(|e| (e.token as usize) < vocab) {
            index.push((i * vocab + e.token as usize) as u32);
            edits.push(e);
        }
    }
    if index.is_empty() {
        return Ok(raw.clone());
    }
    let flat = raw.flatten_all()?;
    let index = Tensor::new(index.as_slice(), raw.device())?;
    let before = flat.index_select(&index, 0)?.to_vec1::<f32>()?;
    let after: Vec<f32> = before
        .iter()
        .zip(&edits)
        .map(|(l, e)| e.apply(*l))
        .collect();
    let after = Tensor::new(after.as_slice(), raw.device())?;
    Ok(flat.scatter(&index, &after, 0)?.reshape(raw.shape())?)
}

fn on_cpu(
    raw: &Tensor,
    edited: &Tensor,
    vocab: usize,
    params: &[RowSampling],
    masks: &[u32],
    parallel: ParallelFor<'_>,
) -> Result<Vec<RowChoice>, ModelError> {
    let (raw_storage, _) = raw.storage_and_layout();
    let (edited_storage, _) = edited.storage_and_layout();
    let raw = cpu_slice(&raw_storage, raw)?;
    let edited = cpu_slice(&edited_storage, edited)?;
    let words = vocab.div_ceil(32);
    // Three numbers per row, written by the rows' threads.
    let mut out = vec![0.0f32; params.len() * 3];
    par_rows(parallel, &mut out, 3, &|range, out| {
        for (i, o) in range.zip(out.chunks_exact_mut(3)) {
            let p = &params[i];
            let mask = (p.mask_row != NO_MASK).then(|| {
                let start = p.mask_row as usize * words;
                &masks[start..start + words]
            });
            let row = i * vocab..(i + 1) * vocab;
            let c = sample_row(&raw[row.clone()], &edited[row], mask, p);
            o.copy_from_slice(&c.packed());
        }
    });
    Ok(RowChoice::unpack_all(&out))
}

/// A contiguous f32 CPU tensor's elements.
fn cpu_slice<'a>(storage: &'a Storage, t: &Tensor) -> Result<&'a [f32], ModelError> {
    let Storage::Cpu(s) = storage else {
        return Err(ModelError::InvalidInput(
            "the CPU row sampler got a tensor that is not on the CPU".into(),
        ));
    };
    let start = t.layout().start_offset();
    Ok(&s.as_slice::<f32>()?[start..start + t.elem_count()])
}

#[cfg(feature = "cuda")]
fn on_cuda(
    device: &candle_core::CudaDevice,
    raw: &Tensor,
    edited: &Tensor,
    vocab: usize,
    params: &[RowSampling],
    masks: &[u32],
) -> Result<Vec<RowChoice>, ModelError> {
    use candle_core::cuda_backend::cudarc::driver::CudaView;
    fn view<'a>(storage: &'a Storage, t: &Tensor) -> Result<CudaView<'a, f32>, ModelError> {
        let Storage::Cuda(s) = storage else {
            return Err(ModelError::InvalidInput(
                "the CUDA row sampler got a tensor that is not on the GPU".into(),
            ));
        };
        let start = t.layout().start_offset();
        Ok(s.as_cuda_slice::<f32>()?
            .slice(start..start + t.elem_count()))
    }
    let (raw_storage, _) = raw.storage_and_layout();
    let (edited_storage, _) = edited.storage_and_layout();
    let (raw_view, edited_view) = (view(&raw_storage, raw)?, view(&edited_storage, edited)?);
    migserve_kernels::cuda::sample_rows(
        device,
        &raw_view,
        &edited_view,
        vocab,
        params,
        masks,
        vocab.div_ceil(32),
    )
    .map_err(|e| ModelError::Tensor(candle_core::Error::Msg(format!("sampling kernel: {e}"))))
}
