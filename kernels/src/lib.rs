//! Compute kernels of migserve. Each op has a CPU implementation here, written over plain
//! slices; CUDA versions (feature `cuda`, a later milestone) are tested against these.

pub mod cpu;
