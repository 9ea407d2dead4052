//! CUDA kernels (feature `cuda`): PTX built from `cuda/*.cu` by build.rs, loaded once per
//! device through candle's cudarc and launched on candle's stream, so they order with
//! candle's own ops. Each kernel has its CPU reference in [`crate::cpu`].

use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, CudaViewMut, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::CudaDevice;
use half::bf16;

use crate::cpu::paged_attention::AttentionShape;

/// PTX of `cuda/paged_attention.cu`.
pub const PAGED_ATTENTION_PTX: &str =
    include_str!(concat!(env!("OUT_DIR"), "/paged_attention.ptx"));
const MODULE: &str = "migserve_paged_attention";
/// Warps per attention block (`WARPS` in the .cu file).
const WARPS: u32 = 4;
/// Largest query-heads-per-KV-head and head_dim the attention kernel's register tiles hold.
pub const MAX_GROUP: usize = 8;
pub const MAX_HEAD_DIM: usize = 256;

/// Why a kernel could not run.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("unsupported attention shape: {0}")]
    Unsupported(String),
    #[error("buffer too small: {0}")]
    BadLength(String),
    #[error("CUDA: {0}")]
    Cuda(String),
}

fn cuda<E: std::fmt::Display>(e: E) -> KernelError {
    KernelError::Cuda(e.to_string())
}

/// Checks that the attention kernel supports `shape`.
pub fn check_shape(shape: AttentionShape) -> Result<(), KernelError> {
    if shape.n_kv_heads == 0 || !shape.n_heads.is_multiple_of(shape.n_kv_heads) {
        return Err(KernelError::Unsupported(format!(
            "{} query heads do not split over {} KV heads",
            shape.n_heads, shape.n_kv_heads
        )));
    }
    let group = shape.n_heads / shape.n_kv_heads;
    if group > MAX_GROUP || shape.head_dim == 0 || shape.head_dim > MAX_HEAD_DIM {
        return Err(KernelError::Unsupported(format!(
            "{group} query heads per KV head (at most {MAX_GROUP}) and head_dim {} (at most {MAX_HEAD_DIM})",
            shape.head_dim
        )));
    }
    if shape.block_size == 0 {
        return Err(KernelError::Unsupported("block_size 0".into()));
    }
    Ok(())
}

/// Writes `rows` new key and value rows (`[rows][n_kv_heads * head_dim]` bf16) into cache
/// rows `slots` of `key_cache` / `value_cache`. Reference: [`crate::cpu::kv_write::write_rows`].
#[allow(clippy::too_many_arguments)]
pub fn kv_write(
    device: &CudaDevice,
    k: &CudaView<'_, bf16>,
    v: &CudaView<'_, bf16>,
    slots: &CudaView<'_, u32>,
    kv_row: usize,
    key_cache: &mut CudaSlice<bf16>,
    value_cache: &mut CudaSlice<bf16>,
) -> Result<(), KernelError> {
    let rows = slots.len();
    if rows == 0 {
        return Ok(());
    }
    if k.len() < rows * kv_row || v.len() < rows * kv_row {
        return Err(KernelError::BadLength(format!(
            "{rows} rows of {kv_row} values need {} keys/values, got {} / {}",
            rows * kv_row,
            k.len(),
            v.len()
        )));
    }
    let func = device
        .get_or_load_custom_func("migserve_kv_write_bf16", MODULE, PAGED_ATTENTION_PTX)
        .map_err(cuda)?;
    let kv_row_arg = kv_row as u32;
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (kv_row.clamp(32, 256) as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = func.builder();
    launch
        .arg(k)
        .arg(v)
        .arg(slots)
        .arg(key_cache)
        .arg(value_cache)
        .arg(&kv_row_arg);
    // SAFETY: argument types and order match the kernel's signature; every slot was
    // produced by the block manager that sized the caches, and k/v hold `rows` rows (checked).
    unsafe { launch.launch(cfg) }.map_err(cuda)?;
    Ok(())
}

/// Device buffers of a step's [`crate::batch::BatchLayout`] that the attention kernel reads:
/// allocated once and written in place each step (grown, to the next power of two, only when
/// a step needs more than any before), so a step allocates nothing for its layout and the
/// kernels read the same addresses every step (what a captured CUDA graph needs).
pub struct DeviceLayout {
    pub row_seq: CudaSlice<u32>,
    pub row_visible: CudaSlice<u32>,
    pub block_tables: CudaSlice<u32>,
    slots: CudaSlice<u32>,
    slot_count: usize,
    /// Width of one row of `block_tables` this step.
    pub max_blocks: usize,
    /// Query rows this step.
    pub rows: usize,
    /// Buffers allocated so far (4 at the start; more only when one grew).
    pub allocations: usize,
}

impl DeviceLayout {
    /// Buffers for steps of up to `rows` query rows and `table_entries` block-table entries.
    pub fn with_capacity(
        device: &CudaDevice,
        rows: usize,
        table_entries: usize,
    ) -> Result<Self, KernelError> {
        let stream = device.cuda_stream();
        let alloc = |n: usize| stream.alloc_zeros::<u32>(n.max(64)).map_err(cuda);
        Ok(Self {
            row_seq: alloc(rows)?,
            row_visible: alloc(rows)?,
            block_tables: alloc(table_entries)?,
            slots: alloc(rows)?,
            slot_count: 0,
            max_blocks: 1,
            rows: 0,
            allocations: 4,
        })
    }

    /// Writes `layout` into the buffers (on the device's stream, ordered before the kernels
    /// that read it), growing any that is too small.
    pub fn write(
        &mut self,
        device: &CudaDevice,
        layout: &crate::batch::BatchLayout,
    ) -> Result<(), KernelError> {
        let stream = device.cuda_stream();
        let mut allocations = 0;
        for (buffer, values) in [
            (&mut self.row_seq, &layout.row_seq),
            (&mut self.row_visible, &layout.row_visible),
            (&mut self.block_tables, &layout.block_tables),
            (&mut self.slots, &layout.slots),
        ] {
            if let Some(n) = crate::batch::grown_capacity(buffer.len(), values.len()) {
                *buffer = stream.alloc_zeros::<u32>(n).map_err(cuda)?;
                allocations += 1;
            }
            if !values.is_empty() {
                stream
                    .memcpy_htod(values.as_slice(), &mut buffer.slice_mut(..values.len()))
                    .map_err(cuda)?;
            }
        }
        self.allocations += allocations;
        self.max_blocks = layout.max_blocks;
        self.rows = layout.row_seq.len();
        self.slot_count = layout.slots.len();
        Ok(())
    }

    /// The cache rows this step's new tokens go to.
    pub fn slots(&self) -> CudaView<'_, u32> {
        self.slots.slice(..self.slot_count)
    }
}

/// `out[row, head, :] = softmax(q · Kᵀ) · V` for every query row (`q`, `out`:
/// `[rows][n_heads][head_dim]` bf16, `q` pre-scaled), reading keys and values through the
/// block tables in `layout`. Reference: [`crate::cpu::paged_attention::paged_attention`].
pub fn paged_attention(
    device: &CudaDevice,
    shape: AttentionShape,
    q: &CudaView<'_, bf16>,
    key_cache: &CudaSlice<bf16>,
    value_cache: &CudaSlice<bf16>,
    layout: &DeviceLayout,
    out: &mut CudaViewMut<'_, bf16>,
) -> Result<(), KernelError> {
    check_shape(shape)?;
    let rows = layout.rows;
    if rows == 0 {
        return Ok(());
    }
    let row_len = shape.n_heads * shape.head_dim;
    if q.len() < rows * row_len || out.len() < rows * row_len {
        return Err(KernelError::BadLength(format!(
            "{rows} query rows of {row_len} values, q has {}, out {}",
            q.len(),
            out.len()
        )));
    }
    let func = device
        .get_or_load_custom_func("migserve_paged_attention_bf16", MODULE, PAGED_ATTENTION_PTX)
        .map_err(cuda)?;
    let group = shape.n_heads / shape.n_kv_heads;
    let dims = [
        shape.n_heads as u32,
        shape.n_kv_heads as u32,
        shape.head_dim as u32,
        shape.block_size as u32,
        layout.max_blocks as u32,
        shape.window.map_or(0, |w| w.min(u32::MAX as usize) as u32),
    ];
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, shape.n_kv_heads as u32, 1),
        block_dim: (WARPS * 32, 1, 1),
        shared_mem_bytes: WARPS * (group * shape.head_dim * std::mem::size_of::<f32>()) as u32,
    };
    let mut launch = func.builder();
    launch
        .arg(q)
        .arg(key_cache)
        .arg(value_cache)
        .arg(&layout.block_tables)
        .arg(&layout.row_seq)
        .arg(&layout.row_visible)
        .arg(out);
    for d in &dims {
        launch.arg(d);
    }
    // SAFETY: argument types and order match the kernel's signature; the shape is within
    // the kernel's tiles (check_shape), q/out hold every row (checked), and the block
    // tables and visible counts come from the block manager that sized the caches.
    unsafe { launch.launch(cfg) }.map_err(cuda)?;
    Ok(())
}

/// The element type of the CUDA KV cache.
pub use half::bf16 as Bf16;

/// PTX of `cuda/sample.cu`.
pub const SAMPLE_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/sample.ptx"));
const SAMPLE_MODULE: &str = "migserve_sample";

/// Chooses every row's token where the logits are: `raw` and `edited` are `[rows][vocab]`
/// (`edited` with bias and penalties applied; it may be `raw` itself), `params` one per row,
/// `masks` the allowed-token bitmasks the rows' `mask_row` name (`mask_words` words each).
/// Only the parameters and masks go up and three numbers per row come back.
/// Reference: [`crate::cpu::sample::sample_row`].
pub fn sample_rows(
    device: &CudaDevice,
    raw: &CudaView<'_, f32>,
    edited: &CudaView<'_, f32>,
    vocab: usize,
    params: &[crate::cpu::sample::RowSampling],
    masks: &[u32],
    mask_words: usize,
) -> Result<Vec<crate::cpu::sample::RowChoice>, KernelError> {
    use crate::cpu::sample::{RowChoice, NO_MASK};
    let rows = params.len();
    if rows == 0 {
        return Ok(Vec::new());
    }
    if vocab == 0 || raw.len() < rows * vocab || edited.len() < rows * vocab {
        return Err(KernelError::BadLength(format!(
            "{rows} rows of {vocab} logits, raw has {}, edited {}",
            raw.len(),
            edited.len()
        )));
    }
    let mask_rows = masks.len().checked_div(mask_words).unwrap_or(0);
    let bad_mask = params
        .iter()
        .any(|p| p.mask_row != NO_MASK && p.mask_row as usize >= mask_rows);
    if bad_mask || (mask_rows > 0 && mask_words * 32 < vocab) {
        return Err(KernelError::BadLength(format!(
            "{mask_rows} masks of {mask_words} words for {vocab} tokens do not cover every row"
        )));
    }
    let func = device
        .get_or_load_custom_func("migserve_sample_rows", SAMPLE_MODULE, SAMPLE_PTX)
        .map_err(cuda)?;
    let stream = device.cuda_stream();
    let packed: Vec<u32> = params.iter().flat_map(|p| p.packed()).collect();
    let params_d = stream.clone_htod(&packed).map_err(cuda)?;
    let masks_d = stream
        .clone_htod(if masks.is_empty() { &[0u32][..] } else { masks })
        .map_err(cuda)?;
    let mut out = stream.alloc_zeros::<f32>(rows * 3).map_err(cuda)?;
    let (vocab_arg, words_arg) = (vocab as u32, mask_words as u32);
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (SAMPLE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = func.builder();
    launch
        .arg(raw)
        .arg(edited)
        .arg(&params_d)
        .arg(&masks_d)
        .arg(&vocab_arg)
        .arg(&words_arg)
        .arg(&mut out);
    // SAFETY: argument types and order match the kernel's signature; raw/edited hold `rows`
    // rows of `vocab` (checked), every mask row named is inside `masks` (checked), and `out`
    // holds three values per row.
    unsafe { launch.launch(cfg) }.map_err(cuda)?;
    let host = stream.clone_dtoh(&out).map_err(cuda)?;
    Ok(RowChoice::unpack_all(&host))
}

/// Threads per row of the sampling kernel (`THREADS` in `cuda/sample.cu`).
const SAMPLE_THREADS: u32 = 256;
