//! `gcm-inspect check-config FILE`: validate a daemon configuration without
//! running it. Beyond the schema it opens the compute device, loads the model,
//! checks the config against the model, and checks the source (opens the
//! camera and sets its format; prints a GStreamer source's pipeline and runs
//! it until its first frame; or lists the replay folder), and creates the
//! output folders if needed and proves them writable.
//!
//! Given several files (the configs of one box's `gcm-inspect@NAME`
//! instances) it checks each, then refuses two that would share a decision
//! log folder, an evidence folder or a metrics port: two daemons appending
//! to one log interleave their frame ids, two quotas fight over one folder,
//! and the second daemon cannot bind the port. Folders left unset are not
//! compared (their defaults come from systemd's per-instance
//! `LogsDirectory=`/`StateDirectory=`).

use std::path::{Path, PathBuf};

use crate::config::{Loaded, SourceConfig};
use crate::error::{Error, Result};
use crate::pipeline::model::Bundle;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The daemon configuration (YAML) to check; several: also that no two
    /// share a log folder, an evidence folder or a metrics port.
    #[arg(value_name = "FILE", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Before the checks, list the V4L2 camera's controls (name, id, type,
    /// range, default, current value): what `source.v4l2.controls` sets.
    #[arg(long)]
    pub list_controls: bool,
}

/// What two instances on one box must not share.
struct Claims {
    file: PathBuf,
    log_dir: Option<PathBuf>,
    evidence_dir: Option<PathBuf>,
    port: Option<u16>,
}

pub fn run(a: Args) -> Result<()> {
    let mut claims: Vec<Claims> = Vec::new();
    for file in &a.files {
        if a.list_controls {
            list_controls(file)?;
        }
        let c = check_one(file)?;
        for other in &claims {
            refuse_shared(other, &c)?;
        }
        claims.push(c);
    }
    Ok(())
}

/// Prints the controls of the file's V4L2 camera.
fn list_controls(file: &Path) -> Result<()> {
    let loaded = Loaded::from_file(file)?;
    let SourceConfig::V4l2(v) = &loaded.config.source else {
        return Err(Error::Usage(format!(
            "--list-controls lists a V4L2 camera's controls; the source of {} is {}",
            file.display(),
            loaded.config.source.kind()
        )));
    };
    #[cfg(target_os = "linux")]
    {
        println!(
            "{}: controls of {}",
            file.display(),
            v.device_path.display()
        );
        for line in crate::pipeline::source::v4l2::list_controls(v)? {
            println!("{line}");
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    Err(Error::device(
        v.device_path.display().to_string(),
        "V4L2 cameras are supported on Linux only",
    ))
}

/// Refuses `b` when it claims what `a` does.
fn refuse_shared(a: &Claims, b: &Claims) -> Result<()> {
    let same = |x: &Option<PathBuf>, y: &Option<PathBuf>| x.is_some() && x == y;
    let shared = |key: &str, what: &Path| {
        Error::config(
            &b.file,
            format!(
                "{key} {} is also {}'s: two instances must not share it",
                what.display(),
                a.file.display()
            ),
        )
    };
    if same(&a.log_dir, &b.log_dir) {
        return Err(shared(
            "output.log_dir",
            b.log_dir.as_deref().expect("same"),
        ));
    }
    if same(&a.evidence_dir, &b.evidence_dir) {
        return Err(shared(
            "output.evidence_dir",
            b.evidence_dir.as_deref().expect("same"),
        ));
    }
    if let (Some(p), Some(q)) = (a.port, b.port) {
        if p == q && p != 0 {
            return Err(Error::config(
                &b.file,
                format!(
                    "metrics.listen port {p} is also {}'s: give each instance its own port",
                    a.file.display()
                ),
            ));
        }
    }
    Ok(())
}

fn check_one(file: &Path) -> Result<Claims> {
    let loaded = Loaded::from_file(file)?;
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
        SourceConfig::Gstreamer(g) => {
            // Printed before it runs, so a pipeline that fails is on screen.
            println!(
                "{}: pipeline: {}",
                file.display(),
                crate::pipeline::source::gst_spec::expand(g)
            );
            let metrics = std::sync::Arc::new(crate::pipeline::metrics::Metrics::default());
            let s = crate::pipeline::source::open_gstreamer(&loaded, g, &metrics)?;
            s.describe()
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
    let set = |dir: &Option<PathBuf>, resolved: &Path| {
        dir.as_ref()
            .map(|_| resolved.canonicalize().unwrap_or(resolved.to_path_buf()))
    };
    let claims = Claims {
        file: file.to_path_buf(),
        log_dir: set(&cfg.output.log_dir, &log_dir),
        evidence_dir: set(&cfg.output.evidence_dir, &evidence_dir),
        port: cfg
            .metrics
            .enabled
            .then(|| cfg.metrics.listen.parse::<std::net::SocketAddr>().ok())
            .flatten()
            .map(|a| a.port()),
    };
    println!("{}: OK", file.display());
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
    Ok(claims)
}

/// `localhost` or a loopback address: what the bundled unit lets through.
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
