//! Starting the npm Kinesis emulators (kinesalite, kinesis-local) for conformance and
//! integration tests, plus a minimal raw-HTTP awsJson1.1 client.
//!
//! ```text
//! start(kind) ─▶ find <target>/emulators/node_modules (run scripts/setup-test-deps.sh once
//!                if missing) ─▶ free loopback port ─▶ spawn `node` (killed on drop)
//!             ─▶ poll with a raw request until it answers (20 s)
//! ```
//!
//! The target directory is `$CARGO_TARGET_DIR` when set at run time (falling back to
//! `<workspace>/target` when the emulators are installed there), else `<workspace>/target`.
//! In CI (`CI=true`) an emulator that cannot be started is a test failure
//! ([`start_or_skip`] panics); elsewhere the test is skipped with a message.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Which emulator to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Emulator {
    /// kinesalite@3.3.3 (AWS-faithful validation).
    Kinesalite,
    /// kinesis-local@0.6.2 (kinesis-mock; resharding, StreamARN).
    KinesisLocal,
}

impl Emulator {
    /// Package name under `node_modules`.
    pub fn package(self) -> &'static str {
        match self {
            Emulator::Kinesalite => "kinesalite",
            Emulator::KinesisLocal => "kinesis-local",
        }
    }

    fn entry(self) -> &'static str {
        match self {
            Emulator::Kinesalite => "cli.js",
            Emulator::KinesisLocal => "main.js",
        }
    }
}

/// Why an emulator could not be started.
#[derive(Debug)]
#[non_exhaustive]
pub enum EmulatorError {
    /// The npm packages are missing and the setup script failed.
    Install(String),
    /// `node` could not be spawned.
    Spawn(std::io::Error),
    /// The emulator did not answer in time or exited.
    NotReady(String),
}

impl std::fmt::Display for EmulatorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EmulatorError::Install(m) => write!(f, "emulator install failed: {m}"),
            EmulatorError::Spawn(e) => write!(f, "could not spawn node: {e}"),
            EmulatorError::NotReady(m) => write!(f, "emulator not ready: {m}"),
        }
    }
}

impl std::error::Error for EmulatorError {}

/// A running emulator child process; killed when dropped (also on panic).
#[derive(Debug)]
pub struct RunningEmulator {
    kind: Emulator,
    port: u16,
    child: Child,
}

impl RunningEmulator {
    /// `http://127.0.0.1:PORT`.
    pub fn endpoint_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Which emulator this is.
    pub fn kind(&self) -> Emulator {
        self.kind
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The workspace root (the directory above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn candidate_dirs() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        let t = if t.is_relative() {
            workspace_root().join(t)
        } else {
            t
        };
        v.push(t.join("emulators"));
    }
    v.push(workspace_root().join("target").join("emulators"));
    v
}

fn installed(dir: &Path) -> bool {
    [Emulator::Kinesalite, Emulator::KinesisLocal]
        .iter()
        .all(|k| {
            dir.join("node_modules")
                .join(k.package())
                .join(k.entry())
                .is_file()
        })
}

static SETUP: Mutex<Option<Result<PathBuf, String>>> = Mutex::new(None);

/// Finds (installing once per process if needed) the directory holding `node_modules`.
pub fn emulators_dir() -> Result<PathBuf, EmulatorError> {
    let mut guard = SETUP.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = guard.as_ref() {
        return r.clone().map_err(EmulatorError::Install);
    }
    let r = (|| {
        if let Some(d) = candidate_dirs().into_iter().find(|d| installed(d)) {
            return Ok(d);
        }
        let script = workspace_root().join("scripts").join("setup-test-deps.sh");
        let status = std::process::Command::new("bash")
            .arg(&script)
            .current_dir(workspace_root())
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        candidate_dirs()
            .into_iter()
            .find(|d| installed(d))
            .ok_or_else(|| {
                format!(
                    "{} exited with {status}; packages still missing",
                    script.display()
                )
            })
    })();
    *guard = Some(r.clone());
    r.map_err(EmulatorError::Install)
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts an emulator on a free loopback port and waits until it answers (~20 s timeout).
pub async fn start(kind: Emulator) -> Result<RunningEmulator, EmulatorError> {
    let dir = emulators_dir()?;
    let port = free_port().map_err(EmulatorError::Spawn)?;
    let pkg = dir.join("node_modules").join(kind.package());
    let mut cmd = Command::new("node");
    cmd.arg(pkg.join(kind.entry()))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    match kind {
        Emulator::Kinesalite => {
            cmd.args(["--port", &port.to_string(), "--shardLimit", "1000"]);
        }
        Emulator::KinesisLocal => {
            let tls = free_port().map_err(EmulatorError::Spawn)?;
            cmd.env("KINESIS_MOCK_CERT_PATH", pkg.join("server.json"))
                .env("KINESIS_MOCK_PLAIN_PORT", port.to_string())
                .env("KINESIS_MOCK_TLS_PORT", tls.to_string())
                .env("SHARD_LIMIT", "2000")
                .env("LOG_LEVEL", "WARN");
        }
    }
    let child = cmd.spawn().map_err(EmulatorError::Spawn)?;
    let mut emu = RunningEmulator { kind, port, child };
    let endpoint = emu.endpoint_url();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = call(&endpoint, "ListStreams", &serde_json::json!({})).await;
        if status != 0 {
            return Ok(emu);
        }
        if let Ok(Some(st)) = emu.child.try_wait() {
            return Err(EmulatorError::NotReady(format!(
                "{kind:?} exited with {st}"
            )));
        }
        if Instant::now() > deadline {
            return Err(EmulatorError::NotReady(format!(
                "{kind:?} did not answer on port {port} within 20 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// True when emulators are mandatory: environment `CI=true`.
pub fn require_emulators() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Starts `kind`; on failure panics when [`require_emulators`], else prints why and returns
/// `None` so the caller can skip.
pub async fn start_or_skip(kind: Emulator) -> Option<RunningEmulator> {
    match start(kind).await {
        Ok(e) => Some(e),
        Err(e) if require_emulators() => {
            panic!("CI=true and emulator {kind:?} is unavailable: {e}")
        }
        Err(e) => {
            eprintln!("skipping: emulator {kind:?} unavailable: {e}");
            None
        }
    }
}

/// Sends one awsJson1.1 request with the headers the emulators expect and returns the HTTP
/// status (0 when the connection closed without a response) and the JSON body
/// (`Null` when empty, a JSON string when not JSON).
pub async fn call(
    endpoint: &str,
    action: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let bytes = serde_json::to_vec(body).expect("json");
    let (status, raw) = call_raw(endpoint, action, &bytes).await;
    let v = if raw.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&raw).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&raw).into_owned())
        })
    };
    (status, v)
}

/// Like [`call`] with a raw body; returns the status (0 = no response) and body bytes.
pub async fn call_raw(endpoint: &str, action: &str, body: &[u8]) -> (u16, Vec<u8>) {
    match tokio::time::timeout(Duration::from_secs(30), exchange(endpoint, action, body)).await {
        Ok(Ok(r)) => r,
        _ => (0, Vec::new()),
    }
}

async fn exchange(endpoint: &str, action: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let host = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut tcp = TcpStream::connect(&host).await?;
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-amz-json-1.1\r\n\
         X-Amz-Target: Kinesis_20131202.{action}\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host, Signature=x\r\n\
         X-Amz-Date: 20260101T000000Z\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    // The server may answer (e.g. 413) and close before reading everything.
    let _ = tcp.write_all(body).await;
    let mut buf = Vec::new();
    let _ = tcp.read_to_end(&mut buf).await;
    Ok(parse_response(&buf).unwrap_or((0, Vec::new())))
}

fn parse_response(buf: &[u8]) -> Option<(u16, Vec<u8>)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = v.parse::<usize>().ok();
            }
        }
    }
    let rest = &buf[end + 4..];
    let body = if chunked {
        let mut out = Vec::new();
        let mut p = rest;
        loop {
            let nl = p.windows(2).position(|w| w == b"\r\n")?;
            let size_s = std::str::from_utf8(&p[..nl]).ok()?;
            let size = usize::from_str_radix(size_s.split(';').next()?.trim(), 16).ok()?;
            p = &p[nl + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(p.get(..size)?);
            p = p.get(size + 2..)?;
        }
        out
    } else {
        let n = length.unwrap_or(rest.len()).min(rest.len());
        rest[..n].to_vec()
    };
    Some((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chunked_and_plain_responses() {
        let plain = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain), Some((400, b"{}".to_vec())));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((200, b"abcde".to_vec())));
        assert_eq!(parse_response(b""), None);
    }
}
