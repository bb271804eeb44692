//! A small EC2 instance metadata responder, IMDSv2 only: a token from
//! `PUT /latest/api/token`, then the instance's id, zone, region and address
//! for requests that carry it (401 without). One per simulated instance, on
//! a free port of an address the test owns; stopped on drop.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Imds {
    addr: String,
    task: tokio::task::JoinHandle<()>,
}

impl Imds {
    /// Answer for instance `id` in `zone` at `ip`, on a free port of `bind`.
    pub async fn start(bind: &str, id: &str, zone: &str, ip: &str) -> Imds {
        let listener = tokio::net::TcpListener::bind((bind, 0))
            .await
            .expect("a port for the metadata responder");
        let addr = listener.local_addr().expect("addr").to_string();
        let token = format!("token-{id}");
        let region = zone.trim_end_matches(|c: char| c.is_ascii_lowercase());
        let answers: Arc<BTreeMap<String, String>> = Arc::new(
            [
                ("/latest/meta-data/instance-id", id),
                ("/latest/meta-data/placement/availability-zone", zone),
                ("/latest/meta-data/placement/region", region),
                ("/latest/meta-data/local-ipv4", ip),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (answers, token) = (answers.clone(), token.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut n = 0;
                    // Headers only: no request here has a body.
                    while n < buf.len() {
                        match s.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => n += k,
                        }
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let mut lines = req.lines();
                    let first: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
                    let header = |name: &str| {
                        req.lines().find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.trim()
                                .eq_ignore_ascii_case(name)
                                .then(|| v.trim().to_string())
                        })
                    };
                    let (code, body) = match (first.first().copied(), first.get(1).copied()) {
                        (Some("PUT"), Some("/latest/api/token"))
                            if header("x-aws-ec2-metadata-token-ttl-seconds").is_some() =>
                        {
                            (200, token.clone())
                        }
                        (Some("GET"), Some(path)) => {
                            if header("x-aws-ec2-metadata-token").as_deref() != Some(&token) {
                                (401, String::new())
                            } else {
                                match answers.get(path) {
                                    Some(v) => (200, v.clone()),
                                    None => (404, String::new()),
                                }
                            }
                        }
                        _ => (400, String::new()),
                    };
                    let reason = match code {
                        200 => "OK",
                        401 => "Unauthorized",
                        404 => "Not Found",
                        _ => "Bad Request",
                    };
                    let resp = format!(
                        "HTTP/1.1 {code} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        Imds { addr, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Imds {
    fn drop(&mut self) {
        self.task.abort();
    }
}
