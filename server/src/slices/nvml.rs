//! Slices from NVML: each MIG device of each GPU in MIG mode, or the whole GPU when MIG is off.

use std::ffi::CStr;

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};
use nvml_wrapper_sys::bindings as sys;

use super::{ProbeError, Profile, Slice, SliceKind, SliceProbe};

/// Asks the NVIDIA driver through NVML (loaded at run time: no driver is a clean error).
#[derive(Debug, Clone, Copy, Default)]
pub struct NvmlProbe;

impl SliceProbe for NvmlProbe {
    fn probe(&self) -> Result<Vec<Slice>, ProbeError> {
        let nvml = Nvml::init().map_err(|e| match e {
            NvmlError::LibloadingError(_)
            | NvmlError::LibraryNotFound
            | NvmlError::DriverNotLoaded
            | NvmlError::FailedToLoadSymbol(_) => ProbeError::NoDriver(e.to_string()),
            other => ProbeError::Nvml(format!("init: {other}")),
        })?;
        let nvml_err = |what: &str, e: NvmlError| ProbeError::Nvml(format!("{what}: {e}"));
        let count = nvml
            .device_count()
            .map_err(|e| nvml_err("device count", e))?;
        let mut slices = Vec::new();
        for index in 0..count {
            let gpu = nvml
                .device_by_index(index)
                .map_err(|e| nvml_err(&format!("GPU {index}"), e))?;
            let gpu_uuid = gpu.uuid().map_err(|e| nvml_err("GPU UUID", e))?;
            let mig_on =
                matches!(gpu.mig_mode(), Ok(mode) if mode.current == sys::NVML_DEVICE_MIG_ENABLE);
            if !mig_on {
                slices.push(Slice {
                    id: format!("gpu{index}"),
                    uuid: gpu_uuid.clone(),
                    profile: Profile::Full.to_string(),
                    kind: SliceKind::Gpu,
                    memory_bytes: gpu.memory_info().ok().map(|m| m.total),
                    sm_count: gpu.attributes().ok().map(|a| a.multiprocessor_count),
                    gpu_index: Some(index),
                    gpu_uuid: Some(gpu_uuid),
                    gpu_instance: None,
                    compute_instance: None,
                    cpus: Vec::new(),
                });
                continue;
            }
            // The count is the most MIG devices the GPU can have; absent ones are NotFound.
            let max = gpu
                .mig_device_count()
                .map_err(|e| nvml_err("MIG device count", e))?;
            for mig_index in 0..max {
                let mig = match gpu.mig_device_by_index(mig_index) {
                    Ok(mig) => mig,
                    Err(NvmlError::NotFound) | Err(NvmlError::InvalidArg) => continue,
                    Err(e) => return Err(nvml_err("MIG device", e)),
                };
                slices.push(mig_slice(&nvml, &gpu, &mig, index, &gpu_uuid, mig_index)?);
            }
        }
        Ok(slices)
    }
}

fn mig_slice(
    nvml: &Nvml,
    gpu: &Device,
    mig: &Device,
    gpu_index: u32,
    gpu_uuid: &str,
    mig_index: u32,
) -> Result<Slice, ProbeError> {
    let uuid = mig
        .uuid()
        .map_err(|e| ProbeError::Nvml(format!("MIG device UUID: {e}")))?;
    let attributes = mig.attributes().ok();
    let ids = instance_ids(nvml, mig);
    let profile = ids
        .and_then(|(gi, _)| profile_name(nvml, gpu, gi))
        .or_else(|| {
            // Fallback: `<slices>g.<GiB rounded up>gb`, which is how NVIDIA names them.
            attributes.as_ref().map(|a| {
                format!(
                    "{}g.{}gb",
                    a.gpu_instance_slice_count,
                    a.memory_size_mb.div_ceil(1024)
                )
            })
        })
        .unwrap_or_else(|| "unknown".into());
    Ok(Slice {
        id: format!("mig{gpu_index}-{mig_index}"),
        uuid,
        profile,
        kind: SliceKind::Mig,
        memory_bytes: mig.memory_info().ok().map(|m| m.total),
        sm_count: attributes.map(|a| a.multiprocessor_count),
        gpu_index: Some(gpu_index),
        gpu_uuid: Some(gpu_uuid.to_string()),
        gpu_instance: ids.map(|(gi, _)| gi),
        compute_instance: ids.map(|(_, ci)| ci),
        cpus: Vec::new(),
    })
}

/// GPU and compute instance ids of a MIG device (raw NVML: not wrapped by nvml-wrapper).
fn instance_ids(nvml: &Nvml, mig: &Device) -> Option<(u32, u32)> {
    let lib = nvml.lib();
    let gi_fn = lib.nvmlDeviceGetGpuInstanceId.as_ref().ok()?;
    let ci_fn = lib.nvmlDeviceGetComputeInstanceId.as_ref().ok()?;
    let (mut gi, mut ci) = (0u32, 0u32);
    // SAFETY: valid device handle from nvml-wrapper, out-pointers to live locals.
    unsafe {
        if gi_fn(mig.handle(), &mut gi) != sys::nvmlReturn_enum_NVML_SUCCESS
            || ci_fn(mig.handle(), &mut ci) != sys::nvmlReturn_enum_NVML_SUCCESS
        {
            return None;
        }
    }
    Some((gi, ci))
}

/// The profile name (`1g.10gb`) of GPU instance `gi` on `gpu`: GPU instance → its profile
/// id → the profile whose info carries that id.
fn profile_name(nvml: &Nvml, gpu: &Device, gi: u32) -> Option<String> {
    let lib = nvml.lib();
    let by_id = lib.nvmlDeviceGetGpuInstanceById.as_ref().ok()?;
    let get_info = lib.nvmlGpuInstanceGetInfo.as_ref().ok()?;
    let profile_info = lib.nvmlDeviceGetGpuInstanceProfileInfoV.as_ref().ok()?;
    // SAFETY: handles come from NVML; every struct is zero-initialised plain C data and
    // outlives the call that fills it; the name is NUL-terminated by NVML.
    unsafe {
        let mut instance: sys::nvmlGpuInstance_t = std::ptr::null_mut();
        if by_id(gpu.handle(), gi, &mut instance) != sys::nvmlReturn_enum_NVML_SUCCESS {
            return None;
        }
        let mut info: sys::nvmlGpuInstanceInfo_t = std::mem::zeroed();
        if get_info(instance, &mut info) != sys::nvmlReturn_enum_NVML_SUCCESS {
            return None;
        }
        for profile in 0..sys::NVML_GPU_INSTANCE_PROFILE_COUNT {
            let mut p: sys::nvmlGpuInstanceProfileInfo_v2_t = std::mem::zeroed();
            p.version =
                std::mem::size_of::<sys::nvmlGpuInstanceProfileInfo_v2_t>() as u32 | (2 << 24);
            if profile_info(gpu.handle(), profile, &mut p) == sys::nvmlReturn_enum_NVML_SUCCESS
                && p.id == info.profileId
            {
                let name = CStr::from_ptr(p.name.as_ptr()).to_string_lossy();
                // NVML names them "MIG 1g.10gb".
                return Some(name.trim_start_matches("MIG ").trim().to_string());
            }
        }
    }
    None
}
