//! A step's small inputs (token ids, positions, the rows whose logits come back) written into
//! device tensors kept from step to step, instead of a fresh upload (an allocation and a
//! copy) per input per step: a step no larger than any before allocates nothing for them,
//! and the kernels read them at the same addresses every step (what a captured CUDA graph
//! needs).

use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Tensor};
use migserve_kernels::batch::grown_capacity;

use crate::error::Result;

/// One `u32` buffer on a device, grown (to the next power of two) only when a step needs more.
pub struct StepBuffer {
    buffer: Tensor,
    allocations: usize,
}

impl StepBuffer {
    /// A buffer of `capacity` values on `device`.
    pub fn new(device: &Device, capacity: usize) -> Result<Self> {
        Ok(Self {
            buffer: Tensor::zeros(capacity.max(1), DType::U32, device)?,
            allocations: 1,
        })
    }

    /// Writes `values` at the front of the buffer and returns them as a tensor (a view of the
    /// buffer: valid until the next `write`, which the device's stream orders after every op
    /// queued before it).
    pub fn write(&mut self, values: &[u32]) -> Result<Tensor> {
        if let Some(n) = grown_capacity(self.buffer.dim(0)?, values.len()) {
            self.buffer = Tensor::zeros(n, DType::U32, self.buffer.device())?;
            self.allocations += 1;
        }
        if !values.is_empty() {
            self.buffer.inplace_op1(&WriteFront(values))?;
        }
        Ok(self.buffer.narrow(0, 0, values.len())?)
    }

    /// Buffers allocated so far (1 at the start).
    pub fn allocations(&self) -> usize {
        self.allocations
    }
}

/// The inputs of one decoder step.
pub struct StepInputs {
    pub ids: StepBuffer,
    pub positions: StepBuffer,
    pub rows: StepBuffer,
}

impl StepInputs {
    /// Buffers for steps of up to `tokens` tokens.
    pub fn new(device: &Device, tokens: usize) -> Result<Self> {
        Ok(Self {
            ids: StepBuffer::new(device, tokens)?,
            positions: StepBuffer::new(device, tokens)?,
            rows: StepBuffer::new(device, tokens)?,
        })
    }

    /// Buffers allocated so far, all three together.
    pub fn allocations(&self) -> usize {
        self.ids.allocations + self.positions.allocations + self.rows.allocations
    }
}

/// Copies host values over the front of a `u32` tensor.
struct WriteFront<'a>(&'a [u32]);

impl InplaceOp1 for WriteFront<'_> {
    fn name(&self) -> &'static str {
        "migserve-write-front"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let CpuStorage::U32(data) = storage else {
            candle_core::bail!("a step buffer must hold u32 values");
        };
        let start = layout.start_offset();
        let Some(front) = data.get_mut(start..start + self.0.len()) else {
            candle_core::bail!("{} values do not fit the step buffer", self.0.len());
        };
        front.copy_from_slice(self.0);
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &mut candle_core::cuda_backend::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<()> {
        let stream = storage.device.cuda_stream();
        let start = layout.start_offset();
        let slice = storage.as_cuda_slice_mut::<u32>()?;
        if slice.len() < start + self.0.len() {
            candle_core::bail!("{} values do not fit the step buffer", self.0.len());
        }
        stream
            .memcpy_htod(self.0, &mut slice.slice_mut(start..start + self.0.len()))
            .map_err(|e| candle_core::Error::Msg(format!("step buffer upload: {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_read_back_and_allocate_only_to_grow() {
        let mut b = StepBuffer::new(&Device::Cpu, 4).unwrap();
        let t = b.write(&[7, 8, 9]).unwrap();
        assert_eq!(t.to_vec1::<u32>().unwrap(), [7, 8, 9]);
        let t = b.write(&[1, 2]).unwrap();
        assert_eq!(t.to_vec1::<u32>().unwrap(), [1, 2]);
        assert_eq!(b.allocations(), 1);
        let many: Vec<u32> = (0..100).collect();
        assert_eq!(b.write(&many).unwrap().to_vec1::<u32>().unwrap(), many);
        assert_eq!(b.allocations(), 2);
        // Anything up to the grown size again: in place.
        for n in [100, 3, 128, 0] {
            let v: Vec<u32> = (0..n).map(|i| i * 3).collect();
            assert_eq!(b.write(&v).unwrap().to_vec1::<u32>().unwrap(), v);
        }
        assert_eq!(b.allocations(), 2);
    }
}
