//! The text of a GStreamer source's pipeline, from its config: the presets
//! expanded, the daemon's appsink appended. Needs no GStreamer, so a build
//! without the `gstreamer` feature still validates and prints the pipeline.
//!
//! The appsink (named `sink`) takes the frame formats of the preprocessing
//! contract only ([`APPSINK_CAPS`]); it holds one buffer and drops the older
//! one when a newer arrives (`max-buffers=1 drop=true`: keep the latest, as
//! a camera faster than the model should), and does not wait for the clock
//! (`sync=false`: a frame is handed over as soon as it is decoded).
//!
//! Presets:
//!
//! | preset | pipeline |
//! |---|---|
//! | `rtsp` | `rtspsrc name=camera location="URL" latency=MS protocols=tcp ! decodebin ! videoconvert ! APPSINK` |
//! | `csi` | `nvarguscamerasrc sensor-id=N ! video/x-raw(memory:NVMM),width=W,height=H,framerate=F/1 ! nvvidconv ! video/x-raw,format=GRAY8 ! APPSINK` |
//! | `gige` | `aravissrc camera-name="NAME" ! APPSINK` |
//!
//! RTSP runs over TCP (interleaved): no UDP ports to open on the line's
//! firewall, and no packet loss turning into torn frames. Credentials are
//! set on the `camera` element after the text is parsed, so they are in no
//! printed or logged pipeline. The GigE preset has no converter: the camera
//! hands over Mono8, RGB8, YUV422 or Bayer 8-bit (`video/x-bayer`,
//! demosaiced by the preprocessing contract) as the daemon takes them
//! (set the camera's pixel format with Aravis's tools).

use std::path::Path;

use crate::config::{GstreamerConfig, RtspConfig};
use crate::error::{Error, Result};

/// The caps of the daemon's appsink: the camera formats of the
/// preprocessing contract.
pub const APPSINK_CAPS: &str =
    "video/x-raw,format=(string){GRAY8,YUY2,RGB,NV12}; video/x-bayer,format=(string){rggb,bggr,grbg,gbrg}";

/// The appsink element as written into a pipeline.
pub fn appsink() -> String {
    format!("appsink name=sink caps=\"{APPSINK_CAPS}\" max-buffers=1 drop=true sync=false")
}

/// Which kind of pipeline a config holds, for messages.
pub fn kind(g: &GstreamerConfig) -> &'static str {
    if g.rtsp.is_some() {
        "RTSP camera"
    } else if g.csi.is_some() {
        "Jetson CSI sensor"
    } else if g.gige.is_some() {
        "GigE Vision camera"
    } else {
        "GStreamer pipeline"
    }
}

/// Whether the pipeline text names its own appsink.
fn has_appsink(text: &str) -> bool {
    text.split(|c: char| c.is_whitespace() || c == '!')
        .any(|w| w == "appsink")
}

/// The pipeline text the daemon runs (credentials are not in it).
pub fn expand(g: &GstreamerConfig) -> String {
    let sink = appsink();
    if let Some(r) = &g.rtsp {
        return format!(
            "rtspsrc name=camera location=\"{}\" latency={} protocols=tcp ! decodebin ! videoconvert ! {sink}",
            r.url, r.latency_ms
        );
    }
    if let Some(c) = &g.csi {
        return format!(
            "nvarguscamerasrc sensor-id={} ! video/x-raw(memory:NVMM),width={},height={},framerate={}/1 ! nvvidconv ! video/x-raw,format={} ! {sink}",
            c.sensor_id, c.width_px, c.height_px, c.fps, c.format
        );
    }
    if let Some(a) = &g.gige {
        return match &a.camera_name {
            Some(n) => format!("aravissrc camera-name=\"{n}\" ! {sink}"),
            None => format!("aravissrc ! {sink}"),
        };
    }
    let text = g.pipeline.as_deref().unwrap_or("").trim();
    if has_appsink(text) {
        text.to_string()
    } else {
        format!("{text} ! {sink}")
    }
}

/// A value check as `config` runs them: `Err((key, what is wrong))`.
type Checked = std::result::Result<(), (String, String)>;

fn fail(key: &str, msg: impl Into<String>) -> Checked {
    Err((key.to_string(), msg.into()))
}

/// Checks the preset's values (the config's own check has made sure exactly
/// one of pipeline, rtsp, csi, gige is set).
pub fn check(g: &GstreamerConfig) -> Checked {
    if let Some(r) = &g.rtsp {
        return check_rtsp(r);
    }
    if let Some(c) = &g.csi {
        let key = "source.gstreamer.csi";
        for (k, v, hi) in [
            ("width_px", c.width_px, 16_384),
            ("height_px", c.height_px, 16_384),
            ("fps", c.fps, 1000),
        ] {
            if !(1..=hi).contains(&v) {
                return fail(
                    &format!("{key}.{k}"),
                    format!("{v} is out of range (must be between 1 and {hi})"),
                );
            }
        }
        if !["GRAY8", "NV12"].contains(&c.format.as_str()) {
            return fail(
                &format!("{key}.format"),
                format!("{:?} is not GRAY8 or NV12", c.format),
            );
        }
        return Ok(());
    }
    if let Some(a) = &g.gige {
        if let Some(n) = &a.camera_name {
            if n.is_empty() || n.contains(['"', '\\']) || n.contains(char::is_control) {
                return fail(
                    "source.gstreamer.gige.camera_name",
                    format!("{n:?} is not a camera name (empty, or with a quote, backslash or control character)"),
                );
            }
        }
        return Ok(());
    }
    let text = g.pipeline.as_deref().unwrap_or("");
    let key = "source.gstreamer.pipeline";
    if text.trim().is_empty() {
        return fail(key, "is empty");
    }
    if text.contains(|c: char| c.is_control() && c != '\n' && c != '\t') {
        return fail(key, "holds a control character");
    }
    if has_appsink(text) && !text.contains("name=sink") {
        return fail(
            key,
            "has an appsink not named `sink`: name it (`appsink name=sink`) or leave it out and the daemon appends its own",
        );
    }
    Ok(())
}

fn check_rtsp(r: &RtspConfig) -> Checked {
    let key = "source.gstreamer.rtsp.url";
    let url = r.url.as_str();
    let Some((scheme, rest)) = url.split_once("://") else {
        return fail(
            key,
            format!("{url:?} is not a URL (rtsp://host[:port]/path)"),
        );
    };
    if !["rtsp", "rtsps", "rtspt"].contains(&scheme) {
        return fail(
            key,
            format!("{url:?}: the scheme must be rtsp, rtsps or rtspt"),
        );
    }
    if url.contains(|c: char| c.is_whitespace() || c.is_control() || c == '"' || c == '\\') {
        return fail(
            key,
            "holds a space, quote, backslash or control character (percent-encode it)",
        );
    }
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        // Not echoed: the URL holds a password.
        return fail(
            key,
            "holds credentials (user:password@): put them in a file named by credentials_file",
        );
    }
    if authority.is_empty() {
        return fail(key, format!("{url:?} names no host"));
    }
    if !(0..=60_000).contains(&r.latency_ms) {
        return fail(
            "source.gstreamer.rtsp.latency_ms",
            format!(
                "{} is out of range (must be between 0 and 60000)",
                r.latency_ms
            ),
        );
    }
    Ok(())
}

/// RTSP credentials: `user:password` on the first line of `path`. Errors
/// name the file, never its content.
pub fn read_credentials(path: &Path) -> Result<(String, String)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::unreadable_input(path, e))?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    match line.split_once(':') {
        Some((user, password)) if !user.is_empty() => Ok((user.to_string(), password.to_string())),
        _ => Err(Error::config(
            path,
            "source.gstreamer.rtsp.credentials_file: the first line must be user:password",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CsiConfig, GigeConfig};

    fn cfg() -> GstreamerConfig {
        GstreamerConfig {
            pipeline: None,
            rtsp: None,
            csi: None,
            gige: None,
            frame_timeout_ms: 5000,
            reconnect_initial_backoff_ms: 250,
            reconnect_max_backoff_ms: 10_000,
        }
    }

    fn rtsp(url: &str) -> GstreamerConfig {
        GstreamerConfig {
            rtsp: Some(RtspConfig {
                url: url.into(),
                latency_ms: 200,
                credentials_file: None,
            }),
            ..cfg()
        }
    }

    #[test]
    fn presets_expand_to_their_pipelines() {
        let sink = appsink();
        assert_eq!(
            expand(&rtsp("rtsp://10.0.0.5:554/stream1")),
            format!("rtspsrc name=camera location=\"rtsp://10.0.0.5:554/stream1\" latency=200 protocols=tcp ! decodebin ! videoconvert ! {sink}")
        );
        let csi = GstreamerConfig {
            csi: Some(CsiConfig {
                sensor_id: 1,
                width_px: 1920,
                height_px: 1080,
                fps: 30,
                format: "NV12".into(),
            }),
            ..cfg()
        };
        assert_eq!(
            expand(&csi),
            format!("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1920,height=1080,framerate=30/1 ! nvvidconv ! video/x-raw,format=NV12 ! {sink}")
        );
        let gige = GstreamerConfig {
            gige: Some(GigeConfig {
                camera_name: Some("Basler-21234567".into()),
            }),
            ..cfg()
        };
        assert_eq!(
            expand(&gige),
            format!("aravissrc camera-name=\"Basler-21234567\" ! {sink}")
        );
        assert!(
            sink.ends_with("max-buffers=1 drop=true sync=false")
                && sink.contains(&format!("caps=\"{APPSINK_CAPS}\"")),
            "{sink}"
        );
    }

    #[test]
    fn a_pipeline_gets_the_appsink_unless_it_names_one() {
        let p = |t: &str| GstreamerConfig {
            pipeline: Some(t.into()),
            ..cfg()
        };
        assert_eq!(
            expand(&p("videotestsrc ! videoconvert")),
            format!("videotestsrc ! videoconvert ! {}", appsink())
        );
        let own = "videotestsrc ! videoconvert ! appsink name=sink";
        assert_eq!(expand(&p(own)), own);
        assert!(check(&p(own)).is_ok());
        let e = check(&p("videotestsrc ! appsink")).unwrap_err();
        assert!(e.1.contains("not named `sink`"), "{e:?}");
        assert!(check(&p("  ")).is_err());
    }

    #[test]
    fn rtsp_urls_are_checked_and_credentials_refused_unechoed() {
        assert!(check(&rtsp("rtsp://cam.local/s")).is_ok());
        for (url, says) in [
            ("http://cam/s", "scheme"),
            ("cam/s", "not a URL"),
            ("rtsp://user:secret@cam/s", "credentials_file"),
            ("rtsp://cam/a b", "space"),
            ("rtsp://cam/\"x", "quote"),
            ("rtsp:///s", "no host"),
        ] {
            let (key, msg) = check(&rtsp(url)).unwrap_err();
            assert_eq!(key, "source.gstreamer.rtsp.url");
            assert!(msg.contains(says), "{url}: {msg}");
            assert!(!msg.contains("secret"), "{msg}");
        }
    }

    #[test]
    fn credentials_come_from_the_first_line_and_errors_hide_them() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("cred");
        std::fs::write(&f, "operator:pa:ss\nignored\n").unwrap();
        assert_eq!(
            read_credentials(&f).unwrap(),
            ("operator".to_string(), "pa:ss".to_string())
        );
        std::fs::write(&f, "justasecret\n").unwrap();
        let e = read_credentials(&f).unwrap_err().to_string();
        assert!(
            e.contains("user:password") && !e.contains("justasecret"),
            "{e}"
        );
        let missing = read_credentials(&d.path().join("none")).unwrap_err();
        assert_eq!(missing.exit_code(), crate::error::exit::NO_INPUT);
    }
}
