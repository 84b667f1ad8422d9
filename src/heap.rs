//! The C allocator's settings for this workload.
//!
//! Every operation of a training step (and of a batched forward pass) gets
//! fresh output buffers of a few megabytes, and frees them before the next
//! step allocates the same sizes again. With glibc's defaults such buffers
//! are mapped and unmapped from the kernel, or the top of the heap is given
//! back and taken again, so the same memory is page-faulted in (and zeroed
//! by the kernel) at every step (the page-fault counts and CPU time are in
//! BENCHMARKS.md, "Changes kept"). [`tune`]
//! keeps buffers up to 32 MiB on the heap and freed memory in the process,
//! which costs no more peak memory (the same buffers are reused).

/// Largest allocation served from the heap rather than its own mapping:
/// the upper limit mallopt(3) documents for `M_MMAP_THRESHOLD` on 64-bit
/// targets.
pub const MMAP_THRESHOLD: usize = 32 << 20;
/// Free memory at the top of the heap kept before giving it back.
pub const TRIM_THRESHOLD: usize = 1 << 30;

/// What [`tune`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tuning {
    /// Both thresholds set.
    Applied,
    /// `GLIBC_TUNABLES` sets malloc parameters: the operator's choice stands.
    LeftToEnvironment,
    /// Not glibc: nothing to set.
    Unsupported,
}

/// Sets glibc's mmap and trim thresholds (see the module docs), unless
/// `GLIBC_TUNABLES` already names a `glibc.malloc.` parameter. Call once at
/// start-up. Fails only when glibc refuses a value.
pub fn tune() -> Result<Tuning, String> {
    if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.")) {
        return Ok(Tuning::LeftToEnvironment);
    }
    set_thresholds()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_thresholds() -> Result<Tuning, String> {
    for (name, param, value) in [
        ("M_MMAP_THRESHOLD", libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        ("M_TRIM_THRESHOLD", libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    ] {
        // SAFETY: mallopt only sets allocator parameters; it takes the
        // allocator's lock and may be called at any time.
        if unsafe { libc::mallopt(param, value as libc::c_int) } != 1 {
            return Err(format!("mallopt({name}, {value}) was refused"));
        }
    }
    Ok(Tuning::Applied)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_thresholds() -> Result<Tuning, String> {
    Ok(Tuning::Unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_both_thresholds() {
        // mallopt returns 0 for a value glibc refuses.
        assert_eq!(set_thresholds(), Ok(Tuning::Applied));
    }
}
