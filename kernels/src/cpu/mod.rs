//! CPU kernels: the CPU path of the model (the 8-bit matmul, the layer's element-wise steps,
//! paged attention), and the reference implementations the GPU kernels are tested against.

pub mod exp;
pub mod kv_element;
pub mod kv_write;
pub mod lanes;
pub mod layer_ops;
pub mod paged_attention;
pub mod parallel;
pub mod q8_matmul;
pub mod sample;
