//! With the `cuda` feature, compiles `cuda/*.cu` to PTX with nvcc (found through `CUDA_HOME`,
//! `CUDA_PATH` or `PATH`; `scripts/cuda-toolchain.sh` sets one up from PyPI wheels). The PTX
//! targets `compute_<CUDA_COMPUTE_CAP>` (default 80: Ampere and newer JIT it). Without the
//! feature nothing is built and no CUDA is needed.

use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCES: &[&str] = &["paged_attention", "sample"];

fn main() {
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_CUDA");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=CUDA_PATH");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = find_nvcc();
    let cap: u32 = std::env::var("CUDA_COMPUTE_CAP")
        .ok()
        .and_then(|c| c.trim().trim_end_matches('a').parse().ok())
        .unwrap_or(80);
    // bf16 arithmetic needs sm_80; older targets are not supported.
    let cap = cap.max(80);
    for name in SOURCES {
        let src = Path::new("cuda").join(format!("{name}.cu"));
        println!("cargo:rerun-if-changed={}", src.display());
        let ptx = out_dir.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "--use_fast_math", "-std=c++17"])
            .arg(format!("-arch=compute_{cap}"))
            .arg("-o")
            .arg(&ptx)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
        if !status.success() {
            panic!("nvcc failed on {} ({status})", src.display());
        }
    }
}

/// nvcc from CUDA_HOME / CUDA_PATH, else the first on PATH.
fn find_nvcc() -> PathBuf {
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = std::env::var_os(var) {
            let nvcc = Path::new(&home).join("bin").join("nvcc");
            if nvcc.is_file() {
                return nvcc;
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let nvcc = dir.join("nvcc");
            if nvcc.is_file() {
                return nvcc;
            }
        }
    }
    panic!(
        "the `cuda` feature needs nvcc: set CUDA_HOME, or run `bash scripts/cuda-toolchain.sh && \
         source .tools/cuda/env.sh`"
    );
}
