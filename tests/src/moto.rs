//! moto (an S3 server, installed by scripts/setup.sh into .venv/) on a free
//! port of an address, killed on drop; buckets made with an unsigned PUT
//! (moto needs no signature). Shared by the lock, backup and end-to-end
//! tests and the benchmarks (included with `#[path]` where the `tests`
//! crate is not a dependency).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Moto {
    child: std::process::Child,
    addr: String,
}

impl Moto {
    /// Start `moto_server` on a free port of `ip`, its log in `log` (none:
    /// discarded), and wait until it listens.
    pub async fn start(ip: &str, log: Option<&Path>) -> Result<Moto, String> {
        let port = std::net::TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port on {ip}: {e}"))?
            .port();
        let stderr = match log {
            Some(p) => std::fs::File::create(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .into(),
            None => Stdio::null(),
        };
        let child = std::process::Command::new("moto_server")
            .args(["-H", ip, "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("moto_server (run scripts/setup.sh): {e}"))?;
        let moto = Moto {
            child,
            addr: format!("{ip}:{port}"),
        };
        let start = Instant::now();
        while tokio::net::TcpStream::connect(&moto.addr).await.is_err() {
            if start.elapsed() > Duration::from_secs(30) {
                return Err("moto_server did not listen within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(moto)
    }

    /// For a test: moto on loopback, or None when it is not installed,
    /// outside CI; under `CI=true` a missing server fails the test.
    pub async fn for_test() -> Option<Moto> {
        if super::tools::which("moto_server").is_none() {
            super::tools::tool_missing("moto_server is not on PATH (scripts/setup.sh installs it)");
            return None;
        }
        Some(Moto::start("127.0.0.1", None).await.expect("moto_server"))
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Create a bucket in S3's default region.
    pub async fn create_bucket(&self, name: &str) -> Result<(), String> {
        self.create_bucket_in(name, None).await
    }

    /// Create a bucket in `region` (a LocationConstraint), or the default.
    pub async fn create_bucket_in(&self, name: &str, region: Option<&str>) -> Result<(), String> {
        let body = region.map_or(String::new(), |r| {
            format!(
                "<CreateBucketConfiguration><LocationConstraint>{r}</LocationConstraint></CreateBucketConfiguration>"
            )
        });
        let (code, resp) = request(&self.addr, "PUT", &format!("/{name}"), "", &body).await?;
        if code == 200 {
            Ok(())
        } else {
            Err(format!(
                "bucket creation answered: {}",
                resp.lines().next().unwrap_or("")
            ))
        }
    }
}

/// One HTTP/1.1 request to `addr` (host:port) with a body of
/// `content_type` (none if empty): the status code and the whole answer.
/// Five seconds at most.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> Result<(u16, String), String> {
    request_with(addr, method, path, &[], content_type, body).await
}

/// [`request`] with extra headers.
pub async fn request_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &str,
) -> Result<(u16, String), String> {
    request_within(
        addr,
        method,
        path,
        headers,
        content_type,
        body,
        CALL_DEADLINE,
    )
    .await
}

/// How long one call to the emulator may take.
pub const CALL_DEADLINE: Duration = Duration::from_secs(5);

/// [`request_with`] within `deadline` instead of [`CALL_DEADLINE`].
pub async fn request_within(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &str,
    deadline: Duration,
) -> Result<(u16, String), String> {
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let ct = if content_type.is_empty() {
            String::new()
        } else {
            format!("Content-Type: {content_type}\r\n")
        };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}{ct}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(resp)
    };
    let resp = tokio::time::timeout(deadline, exchange)
        .await
        .map_err(|_| format!("{method} {path} on {addr}: no answer within {deadline:?}"))??;
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not HTTP: {resp}"))?;
    Ok((code, resp))
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
