//! Azurite (Azure's blob storage emulator, installed by scripts/setup.sh) on
//! a free loopback port with a folder of its own, killed on drop; and a
//! container made with a Shared Key signed request, since object_store has
//! no call for that. Shared by the lock, backup and end-to-end tests
//! (included with `#[path]` where the `tests` crate is not a dependency).

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The emulator's well-known account and key (public, in Azure's docs).
pub const ACCOUNT: &str = "devstoreaccount1";
const KEY_B64: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const VERSION: &str = "2021-08-06";

pub struct Azurite {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Azurite {
    /// None when `azurite-blob` is not installed, outside CI; under
    /// `CI=true` a missing emulator fails the test.
    pub async fn start() -> Option<Azurite> {
        let Some(bin) = super::tools::which("azurite-blob") else {
            super::tools::tool_missing(
                "azurite-blob is not on PATH (scripts/setup.sh installs it)",
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = std::process::Command::new(bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(dir.path())
            .args(["--silent", "--skipApiVersionCheck"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite-blob");
        let a = Azurite {
            child,
            port,
            _dir: dir,
        };
        let start = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "azurite-blob did not listen within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(a)
    }

    /// The blob endpoint, as `AZURITE_BLOB_STORAGE_URL` takes it.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The account's blob endpoint (path style, as the emulator serves it).
    pub fn endpoint(&self) -> String {
        format!("{}/{ACCOUNT}", self.url())
    }

    /// Environment for an `azureblob://` store on this emulator: the
    /// account, its key and the endpoint, as for any Azure-compatible store.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AZURE_STORAGE_ACCOUNT".into(), ACCOUNT.into()),
            ("AZURE_STORAGE_ACCOUNT_KEY".into(), KEY_B64.into()),
            ("AZURE_STORAGE_ENDPOINT".into(), self.endpoint()),
        ]
    }

    /// An object_store client for `container` on this emulator.
    pub fn store(&self, container: &str) -> object_store::azure::MicrosoftAzure {
        object_store::azure::MicrosoftAzureBuilder::new()
            .with_account(ACCOUNT)
            .with_access_key(KEY_B64)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_container_name(container)
            .build()
            .expect("Azure store on Azurite")
    }

    /// Create `container` (Put Container, signed with the account key).
    pub async fn create_container(&self, container: &str) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        // Verb, then 11 standard headers (all empty), the x-ms- headers,
        // and the resource: the account twice in the emulator's path style.
        let to_sign = format!(
            "PUT\n{}x-ms-date:{date}\nx-ms-version:{VERSION}\n/{ACCOUNT}/{ACCOUNT}/{container}\nrestype:container",
            "\n".repeat(11)
        );
        let key = b64.decode(KEY_B64).expect("key");
        let sig = b64.encode(hmac_sha256(&key, to_sign.as_bytes()));
        let req = format!(
            "PUT /{ACCOUNT}/{container}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             x-ms-date: {date}\r\nx-ms-version: {VERSION}\r\n\
             Authorization: SharedKey {ACCOUNT}:{sig}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            port = self.port
        );
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect to azurite");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.expect("read");
        assert!(
            resp.starts_with("HTTP/1.1 201"),
            "container creation failed: {resp}"
        );
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HMAC-SHA256 (RFC 2104) over sha2, for the one signature above.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}
