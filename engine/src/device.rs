//! The worker's device: choosing it, opening it with one clear error when it cannot be used,
//! and the memory CUDA reports inside this process (on a MIG slice: the slice's own memory;
//! NVML would report the parent GPU's).

use migserve_models::{Device, WeightFormat};

/// Which device a worker runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

impl DeviceKind {
    /// The weight format a worker holds when none is asked for: Q8_0 on the CPU, bf16 on a GPU.
    pub fn default_weights(self) -> WeightFormat {
        match self {
            DeviceKind::Cpu => WeightFormat::Q8,
            DeviceKind::Cuda => WeightFormat::Bf16,
        }
    }

    /// Bytes of one cached key or value element: f16 in the CPU cache, bf16 in the CUDA one.
    pub fn kv_element_bytes(self) -> usize {
        match self {
            DeviceKind::Cpu | DeviceKind::Cuda => 2,
        }
    }

    /// The name on the command line, in configs and in `/info` (`cpu`, `cuda`).
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        }
    }
}

/// The worker cannot use the device it was given (no driver, no such GPU, too little memory,
/// a build without CUDA).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DeviceUnusable(pub String);

/// `--device` when given; otherwise CUDA when this build has it and a GPU is visible.
pub fn resolve(requested: Option<DeviceKind>) -> DeviceKind {
    requested.unwrap_or_else(|| {
        if cuda_device_count() > 0 {
            DeviceKind::Cuda
        } else {
            DeviceKind::Cpu
        }
    })
}

/// What `CUDA_VISIBLE_DEVICES` says, for error messages.
fn visible_devices() -> String {
    std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".into())
}

/// GPUs CUDA can see (0 without a driver, or in a build without CUDA).
#[cfg(feature = "cuda")]
pub fn cuda_device_count() -> usize {
    use candle_core::cuda_backend::cudarc::driver::CudaContext;
    CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
}

/// GPUs CUDA can see (0 without a driver, or in a build without CUDA).
#[cfg(not(feature = "cuda"))]
pub fn cuda_device_count() -> usize {
    0
}

/// Opens `kind`: the CPU, or the one GPU this process sees (the supervisor pins each
/// worker to its slice with `CUDA_VISIBLE_DEVICES`).
pub fn open(kind: DeviceKind) -> Result<Device, DeviceUnusable> {
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda => open_cuda(),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda() -> Result<Device, DeviceUnusable> {
    Device::new_cuda(0).map_err(|e| {
        let e = e.to_string();
        let e = e.lines().next().unwrap_or_default();
        DeviceUnusable(format!(
            "no usable CUDA device (CUDA_VISIBLE_DEVICES={}): {e}",
            visible_devices()
        ))
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda() -> Result<Device, DeviceUnusable> {
    Err(DeviceUnusable(format!(
        "this build of migserve has no CUDA support (built without the `cuda` feature; \
         CUDA_VISIBLE_DEVICES={}); use --device cpu",
        visible_devices()
    )))
}

/// Free and total bytes of the device's memory as CUDA reports them inside this process;
/// `None` on the CPU.
pub fn memory(device: &Device) -> Result<Option<(usize, usize)>, DeviceUnusable> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        let stream = cuda.cuda_stream();
        return stream
            .context()
            .mem_get_info()
            .map(Some)
            .map_err(|e| DeviceUnusable(format!("cannot read the GPU's free memory: {e}")));
    }
    let _ = device;
    Ok(None)
}

/// The GPU's name (with its MIG profile on a slice), or "cpu".
pub fn describe(device: &Device) -> String {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        return cuda
            .cuda_stream()
            .context()
            .name()
            .unwrap_or_else(|_| "cuda".into());
    }
    let _ = device;
    "cpu".into()
}

/// Positions of KV cache that `fraction` of `free_bytes` holds at `bytes_per_position`.
pub fn kv_tokens_for(free_bytes: usize, fraction: f64, bytes_per_position: usize) -> usize {
    ((free_bytes as f64 * fraction) / bytes_per_position.max(1) as f64) as usize
}

/// Memory a worker needs for `weight_bytes` of weights and `kv_bytes` of KV cache: both plus
/// 10 % for activations and the runtime. Placement estimates with it and a worker given a
/// memory budget sizes its KV cache by its inverse ([`kv_tokens_in_budget`]).
pub fn footprint_bytes(weight_bytes: u64, kv_bytes: u64) -> u64 {
    (weight_bytes.saturating_add(kv_bytes) as f64 * 1.1) as u64
}

/// KV cache positions of `bytes_per_position` that a worker with `budget` bytes in all has
/// room for beside `weight_bytes` of weights (the inverse of [`footprint_bytes`]); 0 when
/// the weights alone take the budget.
pub fn kv_tokens_in_budget(budget: u64, weight_bytes: u64, bytes_per_position: usize) -> usize {
    let room = budget as f64 / 1.1 - weight_bytes as f64;
    if room <= 0.0 {
        return 0;
    }
    (room / bytes_per_position.max(1) as f64) as usize
}

/// GiB with one decimal, for messages.
pub fn gib(bytes: usize) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_tokens_scale_with_memory_and_fraction() {
        assert_eq!(kv_tokens_for(1 << 30, 0.5, 1024), 1 << 19);
        assert_eq!(kv_tokens_for(0, 0.9, 1024), 0);
    }

    #[test]
    fn a_budget_holds_the_cache_its_footprint_was_sized_with() {
        let (weights, per_position) = (150_000_000u64, 23_040usize);
        for tokens in [1usize, 4096, 16384, 100_000] {
            let budget = footprint_bytes(weights, (tokens * per_position) as u64);
            let back = kv_tokens_in_budget(budget, weights, per_position);
            assert!(back.abs_diff(tokens) <= 1, "{tokens} -> {back}");
        }
        assert_eq!(
            kv_tokens_in_budget(100, 1_000, 10),
            0,
            "weights over budget"
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cpu_build_refuses_cuda_in_one_line() {
        let e = open(DeviceKind::Cuda).unwrap_err().to_string();
        assert!(e.contains("no CUDA support") && !e.contains('\n'), "{e}");
        assert_eq!(resolve(None), DeviceKind::Cpu);
    }
}
