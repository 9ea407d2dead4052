//! CPU kernels: the reference implementations (and the CPU path) of the GPU kernels.

pub mod kv_write;
pub mod paged_attention;
