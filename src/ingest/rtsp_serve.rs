//! An RTSP server (GStreamer's gst-rtsp-server) for synthetic flights and tests:
//! `smgeo synth stream --rtsp` serves a flight's MPEG-TS (H.264 video and, when the
//! file carries it, KLV as RTP SMPTE 336M) so that `smgeo run` can be tried against
//! RTSP exactly as against a drone's RTSP downlink; the ingest tests use it to take a
//! server away and bring it back on the same port.
//!
//! The server runs its own GLib main context on one thread. [`RtspServer::stop`]
//! closes every client connection, drops every session (the media pipelines stop),
//! stops listening and joins the thread: to a client this looks like a server that
//! went away. A new [`RtspServer::start`] on the same port is the server coming back.

use std::thread::JoinHandle;

use gstreamer_rtsp_server as rtsp;
use rtsp::glib;
use rtsp::prelude::*;

use super::{IngestError, Result};

const NAME: &str = "rtsp server";

/// What one mount point plays. Every client gets its own pipeline (not shared), so a
/// file plays from its start for each client at its real-time rate.
#[derive(Debug, Clone, PartialEq)]
pub enum RtspMedia {
    /// A live test pattern (`videotestsrc is-live=true`), H.264 or (`h265`) H.265.
    TestPattern { width: u32, height: u32, fps: u32, h265: bool },
    /// The H.264 video of an MPEG-TS file. Video only: gst-rtsp-server 1.22 aborts
    /// (`gst_rtsp_media_get_rates` asserts) when a file's sparse KLV stream is served
    /// as a second RTP stream, since that stream has no segment yet at PLAY time.
    TsFile { path: std::path::PathBuf },
    /// A whole MPEG-TS file (video, KLV, every PID) as one RTP stream of payload MP2T,
    /// paced by its PCR: how UAV encoders commonly serve video with KLV over RTSP.
    Mp2tFile { path: std::path::PathBuf },
}

impl RtspMedia {
    /// The media factory's launch text (payloaders named `pay0`, `pay1`).
    pub fn launch(&self) -> String {
        match self {
            RtspMedia::TestPattern { width, height, fps, h265 } => {
                let enc = if *h265 {
                    format!(
                        "x265enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bitrate=1000 ! rtph265pay"
                    )
                } else {
                    format!(
                        "x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bitrate=1000 ! rtph264pay"
                    )
                };
                format!(
                    "( videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},framerate={fps}/1 \
                     ! {enc} name=pay0 pt=96 config-interval=1 )"
                )
            }
            RtspMedia::Mp2tFile { path } => {
                let loc = path.display().to_string().replace('\\', "\\\\").replace('"', "\\\"");
                format!("( filesrc location=\"{loc}\" ! tsparse set-timestamps=true ! rtpmp2tpay name=pay0 pt=33 )")
            }
            RtspMedia::TsFile { path } => {
                let loc = path.display().to_string().replace('\\', "\\\\").replace('"', "\\\"");
                format!(
                    "( filesrc location=\"{loc}\" ! tsdemux name=d d. ! queue ! video/x-h264 ! h264parse \
                     ! rtph264pay name=pay0 pt=96 config-interval=1 )"
                )
            }
        }
    }
}

/// A running RTSP server with one mount point.
pub struct RtspServer {
    server: rtsp::RTSPServer,
    context: glib::MainContext,
    main_loop: glib::MainLoop,
    source: Option<glib::SourceId>,
    thread: Option<JoinHandle<()>>,
    port: u16,
    mount: String,
    address: String,
}

impl RtspServer {
    /// Listen on `address:port` (`port` 0: any free port) and serve `media` at
    /// `mount` (e.g. `/flight`).
    pub fn start(address: &str, port: u16, mount: &str, media: &RtspMedia) -> Result<Self> {
        super::init()?;
        let bad = |m: String| IngestError::Input { what: NAME.into(), message: m };
        if !mount.starts_with('/') || mount.len() < 2 {
            return Err(bad(format!("mount point must look like /name, got {mount:?}")));
        }
        if let RtspMedia::TsFile { path } | RtspMedia::Mp2tFile { path } = media {
            if !path.is_file() {
                return Err(bad(format!("{}: no such file", path.display())));
            }
        }
        let server = rtsp::RTSPServer::new();
        server.set_address(address);
        server.set_service(&port.to_string());
        let factory = rtsp::RTSPMediaFactory::new();
        factory.set_launch(&media.launch());
        factory.set_shared(false);
        factory.set_eos_shutdown(true);
        let mounts = server.mount_points().ok_or_else(|| bad("server has no mount points".into()))?;
        mounts.add_factory(mount, factory);

        let context = glib::MainContext::new();
        let main_loop = glib::MainLoop::new(Some(&context), false);
        let source =
            server.attach(Some(&context)).map_err(|e| bad(format!("cannot listen on {address}:{port}: {e}")))?;
        let bound = server.bound_port();
        let port = u16::try_from(bound).map_err(|_| bad(format!("bound port {bound}")))?;
        let thread = {
            let (ctx, ml) = (context.clone(), main_loop.clone());
            std::thread::Builder::new()
                .name("rtsp-server".into())
                .spawn(move || {
                    let _ = ctx.with_thread_default(|| ml.run());
                })
                .map_err(|e| IngestError::Thread(e.to_string()))?
        };
        tracing::info!(%address, port, mount, "RTSP server listening");
        Ok(Self {
            server,
            context,
            main_loop,
            source: Some(source),
            thread: Some(thread),
            port,
            mount: mount.to_string(),
            address: address.to_string(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `rtsp://address:port/mount` (0.0.0.0 shown as 127.0.0.1).
    pub fn url(&self) -> String {
        let host = if self.address == "0.0.0.0" { "127.0.0.1" } else { &self.address };
        format!("rtsp://{host}:{}{}", self.port, self.mount)
    }

    /// Clients connected right now.
    pub fn clients(&self) -> usize {
        self.server.client_filter(None).len()
    }

    /// Close all clients and sessions, stop listening, join the server thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(source) = self.source.take() else { return };
        // Everything runs on the server's own context: stop accepting, close what is
        // connected, drop the sessions (their media pipelines stop), quit the loop.
        // `invoke` queues the closure, so it also works if the loop has not started.
        let (server, ctx, ml) = (self.server.clone(), self.context.clone(), self.main_loop.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        self.context.invoke(move || {
            if let Some(s) = ctx.find_source_by_id(&source) {
                s.destroy();
            }
            let closed = server.client_filter(Some(&mut |_, client| {
                client.close();
                rtsp::RTSPFilterResult::Remove
            }));
            if let Some(pool) = server.session_pool() {
                pool.filter(Some(&mut |_, _| rtsp::RTSPFilterResult::Remove));
            }
            let _ = tx.send(closed.len());
            ml.quit();
        });
        let closed = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap_or(0);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        tracing::info!(port = self.port, clients = closed, "RTSP server stopped");
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
