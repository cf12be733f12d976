//! A real S3-compatible server (moto) on loopback, for tests and the demo.

use std::collections::BTreeMap;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::proc::{self, MARKER_ENV, Spec};
use crate::require_tool;

/// Credentials the server accepts (moto accepts any; these are what clients are given).
pub const ACCESS_KEY: &str = "ocellus-test-access";
/// See [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "ocellus-test-secret";

/// A running S3 server; stopped on drop.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    endpoint: String,
    marker: String,
}

impl S3Server {
    /// Starts moto's S3 server on a free loopback port.
    pub fn start() -> Result<S3Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let marker = format!("s3-{}-{port}", std::process::id());
        let env: BTreeMap<String, String> = [
            (MARKER_ENV.to_string(), marker.clone()),
            ("PATH".to_string(), std::env::var("PATH").unwrap_or_default()),
            ("HOME".to_string(), std::env::temp_dir().display().to_string()),
        ]
        .into();
        let log = std::env::temp_dir().join(format!("ocellus-moto-{port}.log"));
        let child = proc::spawn(Spec {
            program: require_tool("moto_server"),
            args: vec!["-H".into(), "127.0.0.1".into(), "-p".into(), port.to_string()],
            env,
            clear_env: true,
            cwd: None,
            log: Some(log.clone()),
        })
        .context("starting moto_server")?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut server = S3Server { child, endpoint, marker };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Ok(Some(st)) = server.child.try_wait() {
                bail!("moto_server exited with {st}: {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            if Instant::now() > deadline {
                bail!("moto_server did not listen within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Client settings for this server.
    pub fn config(&self) -> ocellus_storage::s3::S3Config {
        ocellus_storage::s3::S3Config {
            endpoint: Some(self.endpoint.clone()),
            region: "us-east-1".into(),
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
            force_path_style: true,
        }
    }

    /// The environment our binaries read S3 settings from (`OCELLUS_S3_ENDPOINT`, AWS keys).
    pub fn env(&self) -> [(&'static str, String); 3] {
        [
            ("OCELLUS_S3_ENDPOINT", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
        ]
    }

    /// The value of [`MARKER_ENV`] in the server's environment.
    pub fn marker(&self) -> &str {
        &self.marker
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        proc::stop(&mut self.child, Duration::from_secs(2));
    }
}
