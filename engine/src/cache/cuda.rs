//! The paged KV cache on a CUDA device: one bf16 buffer per layer for keys and one for
//! values (layout as the CPU cache), written and read by migserve's own kernels
//! (`migserve_kernels::cuda`) on candle's stream.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{DType, Device, Storage, Tensor};
use migserve_kernels::cpu::paged_attention::AttentionShape;
use migserve_kernels::cuda::{self as kernels, Bf16, DeviceLayout};
use migserve_models::{AttentionSpan, KvStore, ModelConfig, ModelError, SeqId};

use super::{batch_layout, check_layer, PagedStore};
use crate::block_manager::BlockManager;

/// Keys and values of every layer in device memory, addressed through block tables.
pub struct CudaPagedKvCache {
    blocks: BlockManager,
    device: CudaDevice,
    keys: Vec<CudaSlice<Bf16>>,
    values: Vec<CudaSlice<Bf16>>,
    shape: AttentionShape,
    /// Per layer: its sliding window (`None`: full attention).
    windows: Vec<Option<usize>>,
    /// The current step's layout on the device, written by `begin_step` into buffers kept
    /// from step to step, read by every layer.
    step: DeviceLayout,
    /// Whether `begin_step` laid out a step with new tokens.
    step_ready: bool,
}

fn kernel_error(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tensor(candle_core::Error::Msg(e.to_string()))
}

impl CudaPagedKvCache {
    /// Allocates `total_blocks` blocks of `block_size` positions on `device` (a CUDA device).
    pub fn new(
        config: &ModelConfig,
        total_blocks: usize,
        block_size: usize,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let device = device.as_cuda_device()?.clone();
        let shape = AttentionShape {
            n_heads: config.n_heads,
            n_kv_heads: config.n_kv_heads,
            head_dim: config.head_dim,
            block_size,
            window: None,
        };
        kernels::check_shape(shape).map_err(kernel_error)?;
        let len = total_blocks * block_size * config.n_kv_heads * config.head_dim;
        let mut keys = Vec::with_capacity(config.n_layers);
        let mut values = Vec::with_capacity(config.n_layers);
        for _ in 0..config.n_layers {
            keys.push(device.alloc_zeros::<Bf16>(len)?);
            values.push(device.alloc_zeros::<Bf16>(len)?);
        }
        // Room for 1024 rows and 8192 block-table entries; grown if a step needs more.
        let step = DeviceLayout::with_capacity(&device, 1024, 8192).map_err(kernel_error)?;
        Ok(Self {
            blocks: BlockManager::new(total_blocks, block_size),
            device,
            keys,
            values,
            shape,
            windows: config.layer_windows.clone(),
            step,
            step_ready: false,
        })
    }
}

/// A contiguous bf16 CUDA tensor's elements as a device view.
fn view<'a>(storage: &'a Storage, t: &Tensor) -> Result<CudaView<'a, Bf16>, ModelError> {
    let Storage::Cuda(s) = storage else {
        return Err(kernel_error(
            "the CUDA KV cache got a tensor that is not on the GPU",
        ));
    };
    let start = t.layout().start_offset();
    Ok(s.as_cuda_slice::<Bf16>()?
        .slice(start..start + t.elem_count()))
}

impl KvStore for CudaPagedKvCache {
    fn begin_step(&mut self, spans: &[AttentionSpan]) -> Result<(), ModelError> {
        self.step_ready = false;
        let layout = batch_layout(&self.blocks, spans)?;
        if !layout.slots.is_empty() {
            self.step
                .write(&self.device, &layout)
                .map_err(kernel_error)?;
            self.step_ready = true;
        }
        Ok(())
    }

    fn attend(
        &mut self,
        layer: usize,
        _spans: &[AttentionSpan],
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor, ModelError> {
        check_layer(layer, self.keys.len())?;
        let (rows, n_heads, head_dim) = q.dims3()?;
        // The model's activation dtype (bf16 by default; f32 for the other weight formats).
        let out_dtype = q.dtype();
        if rows == 0 {
            return Ok(Tensor::zeros(
                (0, n_heads * head_dim),
                out_dtype,
                q.device(),
            )?);
        }
        if !self.step_ready {
            return Err(kernel_error("attend before begin_step"));
        }
        let step = &self.step;
        if rows != step.rows {
            return Err(ModelError::InvalidInput(format!(
                "{rows} query rows for a step laid out with {}",
                step.rows
            )));
        }
        let bf16 = |t: &Tensor| t.to_dtype(DType::BF16)?.contiguous();
        let (q, k, v) = (bf16(q)?, bf16(k)?, bf16(v)?);
        let kv_row = self.shape.n_kv_heads * self.shape.head_dim;
        {
            let (k_store, _) = k.storage_and_layout();
            let (v_store, _) = v.storage_and_layout();
            let (k_view, v_view) = (view(&k_store, &k)?, view(&v_store, &v)?);
            let (keys, values) = (&mut self.keys[layer], &mut self.values[layer]);
            kernels::kv_write(
                &self.device,
                &k_view,
                &v_view,
                &step.slots(),
                kv_row,
                keys,
                values,
            )
            .map_err(kernel_error)?;
        }
        let row_len = n_heads * head_dim;
        // SAFETY: every element is written by the attention kernel before it is read.
        let mut out = unsafe { self.device.alloc::<Bf16>(rows * row_len)? };
        {
            let (q_store, _) = q.storage_and_layout();
            let q_view = view(&q_store, &q)?;
            kernels::paged_attention(
                &self.device,
                AttentionShape {
                    window: self.windows.get(layer).copied().flatten(),
                    ..self.shape
                },
                &q_view,
                &self.keys[layer],
                &self.values[layer],
                step,
                &mut out.slice_mut(..),
            )
            .map_err(kernel_error)?;
        }
        let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(out, self.device.clone()));
        Ok(
            Tensor::from_storage(storage, (rows, row_len), BackpropOp::none(), false)
                .to_dtype(out_dtype)?,
        )
    }

    fn release(&mut self, seq: SeqId) {
        self.blocks.release(seq);
    }
}

impl PagedStore for CudaPagedKvCache {
    fn blocks(&self) -> &BlockManager {
        &self.blocks
    }

    fn blocks_mut(&mut self) -> &mut BlockManager {
        &mut self.blocks
    }
}
