//! Compute kernels of migserve. Each op has a CPU implementation here, written over plain
//! slices; the CUDA versions (feature `cuda`) are tested against these.

pub mod batch;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
