//! CPU kernels: the reference implementations (and the CPU path) of the GPU kernels.

pub mod exp;
pub mod kv_element;
pub mod kv_write;
pub mod layer_ops;
pub mod paged_attention;
pub mod q8_matmul;
