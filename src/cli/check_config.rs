//! `gcm-inspect check-config FILE`: validate a daemon configuration without
//! running it. Beyond the schema it opens the compute device, loads the model,
//! checks the config against the model, and checks the source (opens the
//! camera and sets its format, or lists the replay folder), and creates the
//! output folders if needed and proves them writable.

use std::path::PathBuf;

use crate::config::{Loaded, SourceConfig};
use crate::error::Result;
use crate::pipeline::model::Bundle;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The daemon configuration (YAML) to check.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let loaded = Loaded::from_file(&a.file)?;
    let bundle = Bundle::open(&loaded)?;
    let cfg = &loaded.config;
    let source = match &cfg.source {
        SourceConfig::Synthetic(s) => {
            format!("synthetic {}x{} at {} fps", s.size_px, s.size_px, s.fps)
        }
        SourceConfig::Replay(r) => {
            let dir = loaded.resolve(&r.dir);
            let n = crate::pipeline::source::replay::list(&dir)?.len();
            format!("replay of {n} images in {}", dir.display())
        }
        #[cfg(target_os = "linux")]
        SourceConfig::V4l2(v) => {
            crate::pipeline::source::v4l2::Camera::probe(v)?;
            format!(
                "camera {} takes {}x{} {}",
                v.device_path.display(),
                v.width_px,
                v.height_px,
                v.pixel_format.name()
            )
        }
        #[cfg(not(target_os = "linux"))]
        SourceConfig::V4l2(v) => {
            return Err(crate::error::Error::device(
                v.device_path.display().to_string(),
                "V4L2 cameras are supported on Linux only",
            ))
        }
    };
    let (log_dir, evidence_dir) = loaded.prepare_output_dirs()?;
    println!("{}: OK", a.file.display());
    println!("  {}", bundle.describe());
    println!("  source: {source}");
    println!("  verdict: {}", cfg.decision.describe());
    println!("  decision log: {} (writable)", log_dir.display());
    println!("  evidence: {} (writable)", evidence_dir.display());
    if cfg.metrics.enabled {
        println!("  metrics: http://{}/metrics", cfg.metrics.listen);
    }
    let station = loaded.station();
    let outputs = loaded.outputs();
    for (i, o) in outputs.iter().enumerate() {
        let name = crate::outputs::output_name(&outputs, i);
        crate::outputs::check_secrets(o)?;
        println!("  output {name}: {}", crate::outputs::describe(o, &station));
        if let Some(host) = o.host().filter(|h| !is_loopback(h)) {
            println!(
                "  warning: output {name} connects to {host}, which the bundled systemd unit \
                 blocks (IPAddressDeny=any, loopback only); allow it with a drop-in: \
                 [Service] IPAddressAllow={host} (README, \"Outputs\")"
            );
        }
    }
    Ok(())
}

/// `localhost` or a loopback address: what the bundled unit lets through.
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
