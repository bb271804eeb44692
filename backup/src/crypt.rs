//! Client-side encryption of backups and delta segments with age
//! (<https://age-encryption.org/v1>, X25519 recipients).
//!
//! The writer encrypts to the public keys in `--backup-encryption-recipients-file`;
//! only where restores, drills or replays run does a process need the
//! private key (`--backup-encryption-identity-file`), and it reads that file
//! when it needs it, so an operator can put the key in place for a restore
//! without restarting anything. What is encrypted:
//!
//! - a backup's `etcd.backup.gz` holds the age file of the gzip stream (so
//!   `age -d -i key etcd.backup.gz | gunzip` recovers the snapshot by hand),
//!   and its side file records `encryption: {scheme: "age", recipients}`;
//! - a segment's body after its magic and checksum is the age file of the
//!   gzip'd segment.
//!
//! Checksums are over the ciphertext as stored, so corruption is found
//! before any key is asked for. age authenticates every 64 KiB chunk as well.
//! Upstream's tools cannot read an encrypted backup; the meta file, the
//! spec and the control files are never encrypted (upstream and our
//! managers read them without a key).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use crate::Error;

/// How every age file begins.
pub const AGE_HEADER: &[u8] = b"age-encryption.org/v1\n";
/// The one scheme written to side files.
pub const SCHEME_AGE: &str = "age";
/// Most recipients one backup is encrypted to.
pub const MAX_RECIPIENTS: usize = 64;
/// Most bytes a recipients or identity file may have.
const MAX_KEY_FILE: u64 = 1 << 20;

/// What is wrong with a recipients or identity file's text. Never holds a
/// private key's text; the operator fixes the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    #[error(
        "line {line}: this is a private key (an identity); the recipients file holds public keys \
         only (age1…, from `age-keygen -y`): keep the private key where restores run"
    )]
    PrivateKeyAsRecipient { line: usize },
    /// `shown`: the line's first 16 characters; `hint` says when the line
    /// is a kind of recipient this version does not support; `reason` is
    /// age's.
    #[error("line {line}: '{shown}…' is not an age X25519 recipient (age1…){hint}: {reason}")]
    NotARecipient {
        line: usize,
        shown: String,
        hint: &'static str,
        reason: String,
    },
    #[error("no recipient in it: write one age1… public key per line")]
    NoRecipient,
    #[error("{count} recipients, more than the {MAX_RECIPIENTS} a backup may be encrypted to")]
    TooManyRecipients { count: usize },
    #[error(
        "line {line} is not an age X25519 identity (AGE-SECRET-KEY-1…, as age-keygen writes); \
         SSH and plugin identities are not supported"
    )]
    NotAnIdentity { line: usize },
    #[error("no identity in it")]
    NoIdentity,
}

/// The public keys backups are encrypted to.
#[derive(Clone)]
pub struct Recipients(Arc<Vec<age::x25519::Recipient>>);

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys()).finish()
    }
}

impl Recipients {
    /// Parse a recipients file as `age -R` reads it: one `age1…` key per
    /// line; blank lines and `#` comments skipped.
    pub fn parse(text: &str) -> Result<Self, KeyFileError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with("AGE-SECRET-KEY-") {
                return Err(KeyFileError::PrivateKeyAsRecipient { line: i + 1 });
            }
            let key = age::x25519::Recipient::from_str(line).map_err(|e| {
                let hint =
                    if line.starts_with("ssh-") || line.starts_with("age1") && line.len() > 62 {
                        " (SSH and plugin recipients are not supported)"
                    } else {
                        ""
                    };
                KeyFileError::NotARecipient {
                    line: i + 1,
                    shown: line.chars().take(16).collect(),
                    hint,
                    reason: e.to_string(),
                }
            })?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(KeyFileError::NoRecipient);
        }
        if keys.len() > MAX_RECIPIENTS {
            return Err(KeyFileError::TooManyRecipients { count: keys.len() });
        }
        Ok(Recipients(Arc::new(keys)))
    }

    /// [`Self::parse`] a file.
    pub fn read(path: &Path) -> Result<Self, Error> {
        let text = read_key_file(path)?;
        Self::parse(&text).map_err(|e| Error::Encryption {
            what: format!("recipients file {}", path.display()),
            reason: e.to_string(),
        })
    }

    /// The keys as written (`age1…`).
    pub fn keys(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }

    fn encryptor(&self) -> age::Encryptor {
        age::Encryptor::with_recipients(self.0.iter().map(|r| r as &dyn age::Recipient))
            .expect("X25519 recipients (at least one) always combine")
    }

    /// `plain` as one age file.
    pub(crate) fn encrypt(&self, plain: &[u8]) -> Vec<u8> {
        let mut w = self
            .encryptor()
            .wrap_output(Vec::with_capacity(plain.len() + plain.len() / 4096 + 256))
            .expect("writing into a Vec cannot fail");
        w.write_all(plain).expect("writing into a Vec cannot fail");
        w.finish().expect("writing into a Vec cannot fail")
    }

    /// A writer that encrypts into a buffer [`Encrypting::take`] empties.
    pub(crate) fn encrypting(&self) -> Encrypting {
        let buf = Drain::default();
        let stream = self
            .encryptor()
            .wrap_output(buf.clone())
            .expect("writing into a buffer cannot fail");
        Encrypting { stream, buf }
    }
}

/// A buffer shared between age's writer and whoever uploads its output.
#[derive(Clone, Default)]
pub(crate) struct Drain(Arc<Mutex<Vec<u8>>>);

impl Write for Drain {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.lock().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drain {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A streaming encryption whose output is taken as it is made.
pub(crate) struct Encrypting {
    stream: age::stream::StreamWriter<Drain>,
    buf: Drain,
}

impl Encrypting {
    /// Encrypt `plain`; the ciphertext made so far is in [`Self::take`].
    pub(crate) fn write(&mut self, plain: &[u8]) {
        self.stream
            .write_all(plain)
            .expect("writing into a buffer cannot fail");
    }
    /// The ciphertext not yet taken.
    pub(crate) fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.buf.lock())
    }
    /// End the file: its last chunk.
    pub(crate) fn finish(self) -> Vec<u8> {
        let buf = self
            .stream
            .finish()
            .expect("writing into a buffer cannot fail");
        std::mem::take(&mut *buf.lock())
    }
}

/// Where a process finds its private key, read each time it is needed.
#[derive(Clone, Debug, Default)]
pub struct Encryption {
    /// Encrypt what this process writes to these (None: write plaintext).
    pub recipients: Option<Recipients>,
    /// The age identity file that decrypts (None: this process cannot).
    pub identity_file: Option<PathBuf>,
}

impl Encryption {
    /// Check an identity file at start: one that is there must parse (and
    /// should be private); one that is not is read when first needed.
    pub fn check_identity_file(path: &Path) -> Result<(), Error> {
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(file = %path.display(), "backup identity file not there (yet); it is read when a restore, drill or replay needs it");
                return Ok(());
            }
            Err(source) => {
                return Err(Error::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let text = read_key_file(path)?;
        parse_identities(&text).map_err(|e| Error::Encryption {
            what: format!("identity file {}", path.display()),
            reason: e.to_string(),
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(file = %path.display(), mode = format!("{mode:o}"), "the backup identity file can be read by other users; chmod 600 it");
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        Ok(())
    }

    /// Whether the identity file (read now) decrypts what is encrypted to
    /// `recipients`; None when there is no readable identity file.
    pub fn decrypts_for(&self, recipients: &Recipients) -> Option<bool> {
        let ids = self.identities("").ok()?;
        let keys = recipients.keys();
        Some(
            ids.iter()
                .any(|i| keys.contains(&i.to_public().to_string())),
        )
    }

    /// The identities of the identity file, read now. `what` names the
    /// encrypted thing in the error.
    pub fn identities(&self, what: &str) -> Result<Vec<age::x25519::Identity>, Error> {
        let err = |reason: String| Error::Encryption {
            what: what.to_string(),
            reason,
        };
        let Some(path) = &self.identity_file else {
            return Err(err(
                "it is encrypted with age and this process has no key: pass \
                 --backup-encryption-identity-file=<file holding the AGE-SECRET-KEY-1… line> where \
                 restores, drills and replays run"
                    .into(),
            ));
        };
        let text = read_key_file(path).map_err(|e| {
            err(format!(
                "it is encrypted with age and the identity file cannot be read ({e}); put the \
                 private key at {} (it is read when needed, no restart)",
                path.display()
            ))
        })?;
        parse_identities(&text).map_err(|e| err(format!("identity file {}: {e}", path.display())))
    }

    /// Decrypt the age file `input` into `output`, at most `cap` bytes.
    /// Returns the bytes written.
    fn decrypt_stream(
        &self,
        what: &str,
        input: impl Read,
        mut output: impl Write,
        cap: u64,
    ) -> Result<u64, Broken> {
        let ids = self.identities(what).map_err(Broken::Ciphertext)?;
        let err = |reason: String| {
            Broken::Ciphertext(Error::Encryption {
                what: what.to_string(),
                reason,
            })
        };
        let reader = age::Decryptor::new(input)
            .map_err(|e| err(format!("not a readable age file: {e}")))?
            .decrypt(ids.iter().map(|i| i as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => err(format!(
                    "none of the {} key(s) in {} is one it was encrypted to; use the identity whose \
                     public key (age-keygen -y) is in the backup's side file",
                    ids.len(),
                    self.identity_file
                        .as_deref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                )),
                e => err(format!("cannot decrypt: {e}")),
            })?;
        let mut reader = reader.take(cap.saturating_add(1));
        let mut buf = vec![0u8; 64 << 10];
        let mut copied = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // age reports a chunk that does not authenticate, or a
                // stream cut short, as invalid data or an early end.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    return Err(err(format!(
                        "decryption failed (changed or truncated ciphertext): {e}"
                    )));
                }
                Err(e) => return Err(Broken::Read(e)),
            };
            output.write_all(&buf[..n]).map_err(Broken::Write)?;
            copied += n as u64;
        }
        if copied > cap {
            return Err(err(format!(
                "decrypts to more than the {cap} bytes expected"
            )));
        }
        Ok(copied)
    }

    /// Decrypt the age file at `from` into a new file `to`, at most `cap`
    /// bytes; a disk that fails is an IO error (worth retrying), not a
    /// backup that is wrong. Returns the bytes written.
    pub(crate) fn decrypt_file(
        &self,
        what: &str,
        from: &Path,
        to: &Path,
        cap: u64,
    ) -> Result<u64, Error> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        let input = std::io::BufReader::new(std::fs::File::open(from).map_err(io(from))?);
        let mut out = std::io::BufWriter::new(crate::private_file(to).map_err(io(to))?);
        let n = self
            .decrypt_stream(what, input, &mut out, cap)
            .map_err(|b| match b {
                Broken::Ciphertext(e) => e,
                Broken::Read(e) => io(from)(e),
                Broken::Write(e) => io(to)(e),
            })?;
        out.flush().map_err(io(to))?;
        Ok(n)
    }

    /// Decrypt `input` into memory, at most `cap` bytes.
    pub(crate) fn decrypt(&self, what: &str, input: &[u8], cap: u64) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        self.decrypt_stream(what, input, &mut out, cap)
            .map_err(|b| match b {
                Broken::Ciphertext(e) => e,
                // Neither a slice nor a Vec has IO errors of its own.
                Broken::Read(e) | Broken::Write(e) => Error::Encryption {
                    what: what.to_string(),
                    reason: format!("decryption failed: {e}"),
                },
            })?;
        Ok(out)
    }
}

/// Why a decryption stopped.
enum Broken {
    /// The key, the file's format or its contents.
    Ciphertext(Error),
    /// Reading the input (its disk).
    Read(std::io::Error),
    /// Writing the output (its disk).
    Write(std::io::Error),
}

/// Parse an age identity file: `AGE-SECRET-KEY-1…` lines; blank lines and
/// `#` comments (age-keygen writes two) skipped.
pub fn parse_identities(text: &str) -> Result<Vec<age::x25519::Identity>, KeyFileError> {
    let mut ids = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // Never echo a line of a private key file.
        let id = age::x25519::Identity::from_str(line)
            .map_err(|_| KeyFileError::NotAnIdentity { line: i + 1 })?;
        ids.push(id);
    }
    if ids.is_empty() {
        return Err(KeyFileError::NoIdentity);
    }
    Ok(ids)
}

/// A new key pair as age-keygen makes it: the public key (`age1…`, for
/// the recipients file) and the identity file's text (comments, then the
/// `AGE-SECRET-KEY-1…` line).
pub fn generate_identity(now_rfc3339: &str) -> (String, String) {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    let public = id.to_public().to_string();
    let file = format!(
        "# created: {now_rfc3339}\n# public key: {public}\n{}\n",
        id.to_string().expose_secret()
    );
    (public, file)
}

/// Read a key file of at most [`MAX_KEY_FILE`] bytes as UTF-8.
fn read_key_file(path: &Path) -> Result<String, Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut text = String::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(Error::Encryption {
            what: path.display().to_string(),
            reason: format!("larger than the {MAX_KEY_FILE} bytes a key file may have"),
        });
    }
    Ok(text)
}

/// Whether stored bytes are an age file.
pub(crate) fn is_age(bytes: &[u8]) -> bool {
    bytes.starts_with(AGE_HEADER)
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A fresh key pair: (recipients, identity file text).
    pub(crate) fn keypair() -> (Recipients, String) {
        let (public, file) = generate_identity("now");
        (
            Recipients::parse(&format!("# a comment\n\n{public}\n")).unwrap(),
            file,
        )
    }

    fn with_identity(text: &str) -> (tempfile::TempDir, Encryption) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.txt");
        std::fs::write(&path, text).unwrap();
        (
            dir,
            Encryption {
                recipients: None,
                identity_file: Some(path),
            },
        )
    }

    #[test]
    fn round_trip_streaming_and_whole() {
        let (r, secret) = keypair();
        let (_d, enc) = with_identity(&secret);
        let plain: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = r.encrypting();
        let mut ct = Vec::new();
        for chunk in plain.chunks(70_000) {
            w.write(chunk);
            ct.extend(w.take());
        }
        ct.extend(w.finish());
        assert!(is_age(&ct));
        assert_eq!(enc.decrypt("x", &ct, plain.len() as u64).unwrap(), plain);
        assert_eq!(
            enc.decrypt("x", &r.encrypt(&plain), plain.len() as u64)
                .unwrap(),
            plain
        );
        // More than the cap is refused.
        let err = enc.decrypt("x", &ct, 1000).unwrap_err().to_string();
        assert!(err.contains("more than the 1000 bytes"), "{err}");
    }

    #[test]
    fn wrong_key_missing_key_and_tampering_are_named() {
        let (r, _) = keypair();
        let (_, other) = keypair();
        let ct = r.encrypt(b"secret");
        let (_d, enc) = with_identity(&other);
        let err = enc.decrypt("backup b", &ct, 100).unwrap_err().to_string();
        assert!(err.contains("none of the 1 key(s)"), "{err}");
        let none = Encryption::default();
        let err = none.decrypt("backup b", &ct, 100).unwrap_err().to_string();
        assert!(err.contains("--backup-encryption-identity-file"), "{err}");
        let missing = Encryption {
            recipients: None,
            identity_file: Some("/nonexistent/key.txt".into()),
        };
        let err = missing
            .decrypt("backup b", &ct, 100)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/key.txt"), "{err}");
        assert!(
            !Error::Encryption {
                what: "a".into(),
                reason: "b".into()
            }
            .is_retryable()
        );

        let (r, secret) = keypair();
        let (_d, enc) = with_identity(&secret);
        let mut ct = r.encrypt(b"secret payload");
        let last = ct.len() - 1;
        ct[last] ^= 1;
        let err = enc.decrypt("backup b", &ct, 100).unwrap_err().to_string();
        assert!(err.contains("decryption failed"), "{err}");
    }

    #[test]
    fn a_full_disk_is_an_io_error_and_a_changed_file_is_not() {
        let (r, secret) = keypair();
        let (dir, enc) = with_identity(&secret);
        let plain = vec![7u8; 200_000];
        let from = dir.path().join("b.age");
        std::fs::write(&from, r.encrypt(&plain)).unwrap();
        let to = dir.path().join("b.gz");
        assert_eq!(enc.decrypt_file("b", &from, &to, 1 << 20).unwrap(), 200_000);
        assert!(std::fs::read(&to).unwrap() == plain);
        // Writing fails (ENOSPC): worth retrying, named by the output's path.
        let err = enc
            .decrypt_file("b", &from, Path::new("/dev/full"), 1 << 20)
            .unwrap_err();
        assert!(
            matches!(&err, Error::Io { path, .. } if path == Path::new("/dev/full")),
            "{err}"
        );
        assert!(err.is_retryable());
        // A changed byte: the backup is wrong, not the disk.
        let mut ct = std::fs::read(&from).unwrap();
        let mid = ct.len() / 2;
        ct[mid] ^= 1;
        std::fs::write(&from, ct).unwrap();
        let err = enc.decrypt_file("b", &from, &to, 1 << 20).unwrap_err();
        assert!(matches!(err, Error::Encryption { .. }), "{err}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn key_files_are_checked_line_by_line() {
        let (r, secret) = keypair();
        let public = r.keys()[0].clone();
        let err = Recipients::parse("").unwrap_err().to_string();
        assert!(err.contains("no recipient"), "{err}");
        let err = Recipients::parse(&format!("{public}\nnot-a-key\n"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("line 2:"), "{err}");
        let err = Recipients::parse("ssh-ed25519 AAAAC3Nza x@y")
            .unwrap_err()
            .to_string();
        assert!(err.contains("SSH"), "{err}");
        let secret_line = secret.lines().last().unwrap();
        let err = Recipients::parse(secret_line).unwrap_err().to_string();
        assert!(err.contains("private key"), "{err}");
        assert!(!err.contains(secret_line), "a secret is never echoed");
        let many = std::iter::repeat_n(public.as_str(), MAX_RECIPIENTS + 1)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            Recipients::parse(&many)
                .unwrap_err()
                .to_string()
                .contains("more than")
        );
        let Err(err) = parse_identities(&format!("{secret}\nAGE-SECRET-KEY-1XYZ\n")) else {
            panic!("a malformed identity line is refused")
        };
        assert_eq!(err, KeyFileError::NotAnIdentity { line: 5 });
        assert!(err.to_string().starts_with("line 5 "), "{err}");
        assert!(!err.to_string().contains("XYZ"));
        assert_eq!(parse_identities(&secret).unwrap().len(), 1);
        assert!(parse_identities("# only comments\n").is_err());
    }
}
