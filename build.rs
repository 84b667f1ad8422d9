//! Compiles our CUDA kernels (`kernels/*.cu`) to PTX, only with the `cuda`
//! feature. Without it this script does nothing else, so the default build
//! needs no CUDA toolkit.
//!
//! With `cuda`: `nvcc` (from `$NVCC`, else `PATH`) compiles each kernel to
//! PTX for the virtual architecture `compute_$CUDA_COMPUTE_CAP` (e.g. 80 for
//! A100 and newer data-centre GPUs, 87 for Jetson Orin; the driver JIT-compiles
//! PTX for the GPU it runs on, so 80 also runs on an H100). Without
//! `CUDA_COMPUTE_CAP` the compute capability of GPU 0 is read with
//! `nvidia-smi`, as candle-kernels does. The PTX lands in `$OUT_DIR` and is
//! embedded by `src/gpu/ptx.rs`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    git_commit();
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        cuda::compile_kernels();
    }
}

/// `GCM_GIT`: the commit being built (`gcm_build_info{git}`); `unknown`
/// outside a git checkout.
fn git_commit() {
    use std::process::Command;
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=GCM_GIT={commit}");
    // Run again when HEAD moves (a commit, a checkout). Only paths that
    // exist: a missing one would make cargo run this script every build.
    let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
    watch.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for p in watch {
        if let Some(path) = git(&["rev-parse", "--git-path", &p]) {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
}

mod cuda {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// The kernels, each compiled to `$OUT_DIR/<name>.ptx`.
    const KERNELS: &[&str] = &["score", "evidence", "preprocess"];

    pub fn compile_kernels() {
        for var in ["CUDA_COMPUTE_CAP", "NVCC", "NVCC_CCBIN"] {
            println!("cargo:rerun-if-env-changed={var}");
        }
        let dir = Path::new("kernels");
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("common.cuh").display()
        );
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
        let cap = compute_cap();
        let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
        for name in KERNELS {
            let src = dir.join(format!("{name}.cu"));
            println!("cargo:rerun-if-changed={}", src.display());
            let ptx = out.join(format!("{name}.ptx"));
            let mut cmd = Command::new(&nvcc);
            cmd.arg("--ptx")
                .arg(format!("--gpu-architecture=compute_{cap}"))
                .args(["-O3", "-std=c++14", "-I"])
                .arg(dir)
                .arg("-o")
                .arg(&ptx)
                .arg(&src);
            if let Ok(ccbin) = std::env::var("NVCC_CCBIN") {
                cmd.arg("-ccbin").arg(ccbin);
            }
            let status = cmd.status().unwrap_or_else(|e| {
                panic!(
                    "cannot run `{nvcc}` ({e}): the `cuda` feature needs the CUDA toolkit's nvcc \
                     on PATH (or in $NVCC)"
                )
            });
            if !status.success() {
                panic!("nvcc failed on {} ({status})", src.display());
            }
        }
    }

    /// `CUDA_COMPUTE_CAP` (e.g. `80` or `8.0`), else GPU 0's, via nvidia-smi.
    fn compute_cap() -> String {
        let raw = match std::env::var("CUDA_COMPUTE_CAP") {
            Ok(v) => v,
            Err(_) => {
                let out = Command::new("nvidia-smi")
                    .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
                    .output();
                match out {
                    Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                    _ => panic!(
                        "the `cuda` feature needs CUDA_COMPUTE_CAP (e.g. 80, or 87 for Jetson \
                         Orin) when no GPU can be asked with nvidia-smi"
                    ),
                }
            }
        };
        let cap: String = raw.trim().chars().filter(|c| *c != '.').collect();
        if cap.is_empty() || !cap.chars().all(|c| c.is_ascii_digit()) {
            panic!("CUDA_COMPUTE_CAP must be a number such as 80 or 8.0, got {raw:?}");
        }
        cap
    }
}
