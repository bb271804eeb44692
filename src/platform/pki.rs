//! Certificates: the certificate authorities in `--pki-dir` (upstream's file
//! names, so a kops PKI folder works as it is) and the short-lived node
//! certificates issued from them at every start.
//!
//! * `etcd-manager-ca.{crt,key}`: mutual TLS on the peer API between managers.
//! * `etcd-peers-ca.{crt,key}`: etcd's peer (raft) TLS.
//! * `etcd-clients-ca.{crt,key}`: etcd's client TLS; the manager's own etcd client
//!   certificate comes from it too.
//!
//! CA keys may be RSA (PKCS#1 or PKCS#8, as kops writes them), ECDSA or Ed25519;
//! the CAs `init-pki` makes are RSA 2048, as kops makes them. The keys of
//! etcd's node certificates (`<data-dir>/pki/<token>/`) are RSA 2048 too,
//! since upstream's manager reads only RSA keys there when a cluster goes
//! back to it; the peer API's and the manager's own client keys are ECDSA
//! P-256.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tokio_rustls::rustls;

/// The peer API's CA (upstream's name).
pub const MANAGER_CA: &str = "etcd-manager-ca";
/// The CA for etcd's peer TLS (upstream's name).
pub const PEERS_CA: &str = "etcd-peers-ca";
/// The CA for etcd's client TLS (upstream's name).
pub const CLIENTS_CA: &str = "etcd-clients-ca";
/// Every CA `init-pki` creates.
pub const ALL_CAS: [&str; 3] = [MANAGER_CA, PEERS_CA, CLIENTS_CA];
/// The DNS name every manager's peer API certificate carries and every manager
/// checks: managers are addressed by IP, and any certificate from the
/// `etcd-manager-ca` is a manager.
pub const PEER_API_SERVER_NAME: &str = "etcd-manager";
/// How long issued node certificates are valid. They are reissued at every start.
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 3600);
/// How long a CA made by `init-pki` is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Issued certificates start this much in the past, for clocks a little behind.
const BACKDATE: Duration = Duration::from_secs(3600);

/// What went wrong with certificates, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(
        "cannot read {path}: {source}; create the CAs with `etcd-manager-ctl init-pki -pki-dir {dir}` \
         (or copy them there), or turn TLS off with {off_flag}"
    )]
    Missing {
        path: PathBuf,
        dir: PathBuf,
        off_flag: &'static str,
        source: std::io::Error,
    },
    #[error("{path} is not a usable {what}: {reason}")]
    Unusable {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("cannot issue a certificate for {subject}: {reason}")]
    Issue { subject: String, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} already exists; refusing to overwrite a CA (remove it first if you mean to replace it)"
    )]
    Exists { path: PathBuf },
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// The salt of the gossip key derived from the etcd-manager CA
/// ([`Ca::gossip_key`]): changing it changes every cluster's key.
pub const GOSSIP_KEY_SALT: &[u8] = b"etcd-manager gossip key v1";

/// A certificate authority: its certificate and signing key.
pub struct Ca {
    name: String,
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("name", &self.name).finish()
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

/// Who a node certificate is for.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub common_name: String,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// URI subject alternative names (a manager's node identity, [`node_uri`]).
    pub uris: Vec<String>,
}

impl Subject {
    /// Add a host (from a URL or an address): an IP literal or a DNS name.
    pub fn add_host(&mut self, host: &str) {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            if !ip.is_unspecified() && !self.ips.contains(&ip) {
                self.ips.push(ip);
            }
        } else if !host.is_empty() && !self.dns_names.iter().any(|d| d == host) {
            self.dns_names.push(host.to_string());
        }
    }

    /// Add the host of every URL.
    pub fn add_url_hosts(&mut self, urls: &[String]) {
        for u in urls {
            if let Ok(url) = url::Url::parse(u)
                && let Some(host) = url.host_str()
            {
                self.add_host(host);
            }
        }
    }
}

fn to_time(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

impl Ca {
    /// Load `<dir>/<name>.crt` and `<dir>/<name>.key`. `off_flag` names the flag
    /// that turns this TLS off, for the error message.
    pub fn load(dir: &Path, name: &str, off_flag: &'static str) -> Result<Ca, PkiError> {
        let read = |ext: &str| {
            let path = dir.join(format!("{name}.{ext}"));
            std::fs::read_to_string(&path)
                .map_err(|source| PkiError::Missing {
                    path: path.clone(),
                    dir: dir.to_path_buf(),
                    off_flag,
                    source,
                })
                .map(|s| (path, s))
        };
        let (cert_path, cert_pem) = read("crt")?;
        let (key_path, key_pem) = read("key")?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Unusable {
            path: key_path.clone(),
            what: "private key (PEM: RSA, ECDSA P-256/P-384 or Ed25519)",
            reason: e.to_string(),
        })?;
        // Check the certificate parses and belongs to the key.
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, &key).map_err(|e| PkiError::Unusable {
            path: cert_path.clone(),
            what: "CA certificate (PEM)",
            reason: e.to_string(),
        })?;
        drop(issuer);
        let cert_der = first_cert_der(&cert_pem).ok_or_else(|| PkiError::Unusable {
            path: cert_path.clone(),
            what: "CA certificate (PEM)",
            reason: "no CERTIFICATE block".into(),
        })?;
        let parsed = x509_public_key(&cert_der, &cert_path)?;
        if parsed != key.public_key_raw() {
            return Err(PkiError::Unusable {
                path: key_path,
                what: "private key",
                reason: format!(
                    "it does not belong to the certificate {}; put the matching pair there",
                    cert_path.display()
                ),
            });
        }
        Ok(Ca {
            name: name.to_string(),
            cert_pem,
            key,
        })
    }

    /// A new self-signed CA valid from `now` for [`CA_VALIDITY`], with an
    /// RSA 2048 key as kops makes them: upstream's manager reads only RSA
    /// keys, so a cluster whose CAs `init-pki` made can go back to it.
    pub fn generate(name: &str, now: SystemTime) -> Result<Ca, PkiError> {
        let err = |e: rcgen::Error| PkiError::Issue {
            subject: name.to_string(),
            reason: e.to_string(),
        };
        let key = KeyKind::Rsa2048.generate().map_err(err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_time(now - BACKDATE);
        params.not_after = to_time(now + CA_VALIDITY);
        let cert = params.self_signed(&key).map_err(err)?;
        Ok(Ca {
            name: name.to_string(),
            cert_pem: cert.pem(),
            key,
        })
    }

    /// Write `<dir>/<name>.crt` and `<dir>/<name>.key` (mode 0600), refusing to
    /// overwrite either.
    pub fn write(&self, dir: &Path) -> Result<(), PkiError> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let crt = dir.join(format!("{}.crt", self.name));
        let key = dir.join(format!("{}.key", self.name));
        for p in [&crt, &key] {
            if p.exists() {
                return Err(PkiError::Exists { path: p.clone() });
            }
        }
        write_private(&key, self.key.serialize_pem().as_bytes())?;
        write_file(&crt, self.cert_pem.as_bytes())?;
        Ok(())
    }

    /// The gossip key of `cluster` derived from this CA's private key:
    /// HKDF-SHA256 over the key (its DER as the file holds it) with the
    /// fixed salt [`GOSSIP_KEY_SALT`] and the cluster name as info. Every
    /// manager that holds the CA key (kops puts it on every master) derives
    /// the same key with no flag of its own; a new CA gives a new key.
    /// Masters holding the same key in different encodings (PKCS#1 and
    /// PKCS#8) would derive different keys: give them the same file, or
    /// `--gossip-key-file`.
    pub fn gossip_key(&self, cluster: &str) -> Result<[u8; 32], PkiError> {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(GOSSIP_KEY_SALT), self.key.serialized_der());
        let mut key = [0u8; 32];
        hk.expand(cluster.as_bytes(), &mut key)
            .map_err(|e| PkiError::Tls(format!("deriving the gossip key: {e}")))?;
        Ok(key)
    }

    /// The CA's name (`etcd-peers-ca`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issue a certificate for server and client authentication, valid from `now`
    /// for [`NODE_CERT_VALIDITY`], with a fresh ECDSA P-256 key.
    pub fn issue(&self, subject: &Subject, now: SystemTime) -> Result<Issued, PkiError> {
        self.issue_with(subject, now, KeyKind::EcdsaP256)
    }

    /// [`Ca::issue`] with a fresh key of `kind`.
    pub fn issue_with(
        &self,
        subject: &Subject,
        now: SystemTime,
        kind: KeyKind,
    ) -> Result<Issued, PkiError> {
        let err = |e: rcgen::Error| PkiError::Issue {
            subject: subject.common_name.clone(),
            reason: e.to_string(),
        };
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).map_err(err)?;
        let key = kind.generate().map_err(err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, subject.common_name.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        for d in &subject.dns_names {
            let name = rcgen::string::Ia5String::try_from(d.as_str()).map_err(err)?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        for ip in &subject.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        for u in &subject.uris {
            let uri = rcgen::string::Ia5String::try_from(u.as_str()).map_err(err)?;
            params.subject_alt_names.push(SanType::URI(uri));
        }
        params.not_before = to_time(now - BACKDATE);
        params.not_after = to_time(now + NODE_CERT_VALIDITY);
        let cert = params.signed_by(&key, &issuer).map_err(err)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The kind of a fresh private key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA P-256: small and fast, for what only we read (the peer API's
    /// certificates, our etcd client certificate, `issue-client-cert`).
    EcdsaP256,
    /// RSA 2048: for every key file upstream's manager also reads (CA keys,
    /// the member's etcd certificates under `pki/<token>/`), since it reads
    /// nothing else ("unexpected private key type").
    Rsa2048,
}

impl KeyKind {
    fn generate(self) -> Result<KeyPair, rcgen::Error> {
        match self {
            KeyKind::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyKind::Rsa2048 => KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256),
        }
    }
}

/// Whether `pem` holds an RSA private key (PKCS#1 or PKCS#8): the only
/// kind upstream's manager loads from its pki folders.
pub fn is_rsa_key_pem(pem: &str) -> bool {
    KeyPair::from_pem(pem).is_ok_and(|k| k.algorithm() == &rcgen::PKCS_RSA_SHA256)
}

/// The URI a manager's peer API certificate carries to name its node:
/// `urn:etcd-manager:node:<id>`.
pub fn node_uri(node_id: &str) -> String {
    format!("{NODE_URI_PREFIX}{node_id}")
}

const NODE_URI_PREFIX: &str = "urn:etcd-manager:node:";

/// The node a peer API certificate (DER) names: its [`node_uri`] subject
/// alternative name; None when it has none (or more than one), or the id is
/// not a valid node id. The certificate itself was verified by the TLS
/// handshake; this only reads it.
pub fn node_id_of_cert(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut ids = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => u.strip_prefix(NODE_URI_PREFIX),
        _ => None,
    });
    let id = ids.next()?;
    if ids.next().is_some() || etcd::check_ident(etcd::IdentKind::NodeId, id).is_err() {
        return None;
    }
    Some(id.to_string())
}

fn first_cert_der(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()
        .map(|c| c.to_vec())
}

/// The subject public key (raw bits) of the DER CA certificate read from `path`.
fn x509_public_key(der: &[u8], path: &Path) -> Result<Vec<u8>, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Unusable {
        path: path.to_path_buf(),
        what: "CA certificate (PEM)",
        reason: e.to_string(),
    })?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    std::fs::write(path, bytes).map_err(|source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let w = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    w().map_err(|source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Write an issued pair as `<dir>/<stem>.crt` / `<dir>/<stem>.key` plus the CA as
/// `<dir>/ca.crt` (upstream's layout for etcd's files), replacing what was there.
pub fn write_issued(dir: &Path, stem: &str, ca: &Ca, issued: &Issued) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    write_file(&dir.join("ca.crt"), ca.cert_pem.as_bytes())?;
    write_private(&dir.join(format!("{stem}.key")), issued.key_pem.as_bytes())?;
    write_file(&dir.join(format!("{stem}.crt")), issued.cert_pem.as_bytes())?;
    Ok(())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, PkiError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let c = c.map_err(|e| PkiError::Tls(format!("CA certificate: {e}")))?;
        roots
            .add(c)
            .map_err(|e| PkiError::Tls(format!("CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn identity(
    issued: &Issued,
) -> Result<
    (
        Vec<rustls_pki_types::CertificateDer<'static>>,
        rustls_pki_types::PrivateKeyDer<'static>,
    ),
    PkiError,
> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Tls(format!("certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
        .map_err(|e| PkiError::Tls(format!("private key: {e}")))?;
    Ok((certs, key))
}

/// Mutual TLS for the peer API: this manager's certificate from the
/// `etcd-manager-ca`, and the CA to check the other side against.
#[derive(Clone)]
pub struct PeerTls {
    pub connector: tokio_rustls::TlsConnector,
    pub acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls").finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Issue this manager's certificate (CN = its id, URI = [`node_uri`] of its id,
    /// DNS = [`PEER_API_SERVER_NAME`], IP = its address) and build both sides of the TLS configuration.
    pub fn issue(ca: &Ca, node_id: &str, ip: IpAddr, now: SystemTime) -> Result<Self, PkiError> {
        let subject = Subject {
            common_name: node_id.to_string(),
            dns_names: vec![PEER_API_SERVER_NAME.to_string()],
            ips: vec![ip],
            uris: vec![node_uri(node_id)],
        };
        let issued = ca.issue(&subject, now)?;
        Self::from_parts(ca.cert_pem(), &issued)
    }

    /// Both sides from a CA certificate and an issued identity.
    pub fn from_parts(ca_pem: &str, issued: &Issued) -> Result<Self, PkiError> {
        let tls_err = |e: rustls::Error| PkiError::Tls(e.to_string());
        let roots = Arc::new(roots(ca_pem)?);
        let (certs, key) = identity(issued)?;
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| PkiError::Tls(e.to_string()))?;
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(tls_err)?;
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(tls_err)?;
        Ok(PeerTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        })
    }
}

/// Certificates for the local etcd member and the manager's etcd client, from the
/// `etcd-peers-ca` and `etcd-clients-ca`.
#[derive(Debug)]
pub struct EtcdPki {
    pub peers_ca: Ca,
    pub clients_ca: Ca,
    /// The manager's own client identity for talking to etcd.
    pub client: etcd::ClientTls,
}

impl EtcdPki {
    /// Load both CAs from `dir` and issue the manager's client certificate.
    pub fn load(dir: &Path, now: SystemTime) -> Result<Self, PkiError> {
        let peers_ca = Ca::load(dir, PEERS_CA, "--etcd-insecure")?;
        let clients_ca = Ca::load(dir, CLIENTS_CA, "--etcd-insecure")?;
        let issued = clients_ca.issue(
            &Subject {
                common_name: "etcd-manager".to_string(),
                ..Subject::default()
            },
            now,
        )?;
        let client = etcd::ClientTls {
            ca_pem: clients_ca.cert_pem().to_string(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
        };
        Ok(EtcdPki {
            peers_ca,
            clients_ca,
            client,
        })
    }

    /// Issue the member's peer and serving certificates into `dir/peers` and
    /// `dir/clients` (upstream's layout) and say where they are.
    pub fn write_member_certs(
        &self,
        dir: &Path,
        name: &str,
        peer_urls: &[String],
        client_urls: &[String],
        extra_hosts: &[String],
        now: SystemTime,
    ) -> Result<etcd::MemberTlsFiles, PkiError> {
        let mut peer = Subject {
            common_name: name.to_string(),
            ..Subject::default()
        };
        peer.add_host(name);
        peer.add_url_hosts(peer_urls);
        for h in extra_hosts {
            peer.add_host(h);
        }
        // Always the loopback names too: local clients (kube-apiserver dials
        // https://127.0.0.1:4001) verify them, and etcd checks a peer's client
        // certificate against the address the connection comes from, which on
        // a loopback setup is 127.0.0.1 / ::1, not the member's own.
        for h in ["127.0.0.1", "::1", "localhost"] {
            peer.add_host(h);
        }
        let mut server = peer.clone();
        server.add_url_hosts(client_urls);
        let peers_dir = dir.join("peers");
        let clients_dir = dir.join("clients");
        // RSA: upstream's manager loads these files (same names, same
        // folder) when it takes the member back, and reads only RSA keys.
        write_issued(
            &peers_dir,
            "me",
            &self.peers_ca,
            &self.peers_ca.issue_with(&peer, now, KeyKind::Rsa2048)?,
        )?;
        write_issued(
            &clients_dir,
            "server",
            &self.clients_ca,
            &self.clients_ca.issue_with(&server, now, KeyKind::Rsa2048)?,
        )?;
        Ok(etcd::MemberTlsFiles {
            peer_ca: peers_dir.join("ca.crt"),
            peer_cert: peers_dir.join("me.crt"),
            peer_key: peers_dir.join("me.key"),
            client_ca: clients_dir.join("ca.crt"),
            server_cert: clients_dir.join("server.crt"),
            server_key: clients_dir.join("server.key"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000)
    }

    #[test]
    fn generated_ca_round_trips_through_files_and_refuses_overwrite() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = Ca::generate(MANAGER_CA, now()).expect("ca");
        ca.write(dir.path()).expect("write");
        let loaded = Ca::load(dir.path(), MANAGER_CA, "--insecure").expect("load");
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        let err = ca.write(dir.path()).expect_err("overwrite");
        assert!(matches!(err, PkiError::Exists { .. }), "{err}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("etcd-manager-ca.key"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the CA key must not be readable by others");
    }

    /// Every master that holds the CA's key derives the same gossip key
    /// for a cluster (also after the key went through its file); another
    /// cluster or another CA gives another key.
    #[test]
    fn the_gossip_key_follows_the_ca_and_the_cluster() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = Ca::generate(MANAGER_CA, now()).expect("ca");
        ca.write(dir.path()).expect("write");
        let loaded = Ca::load(dir.path(), MANAGER_CA, "--insecure").expect("load");
        let key = ca.gossip_key("etcd").expect("key");
        assert_eq!(loaded.gossip_key("etcd").expect("key"), key);
        assert_ne!(ca.gossip_key("etcd-events").expect("key"), key);
        let other = Ca::generate(MANAGER_CA, now()).expect("ca");
        assert_ne!(other.gossip_key("etcd").expect("key"), key);
        assert_ne!(key, [0u8; 32]);
    }

    #[test]
    fn missing_and_mismatched_files_name_the_path_and_the_fix() {
        let dir = tempfile::tempdir().expect("tmp");
        let err = Ca::load(dir.path(), PEERS_CA, "--etcd-insecure").expect_err("missing");
        let text = err.to_string();
        assert!(text.contains("etcd-peers-ca.crt"), "{text}");
        assert!(text.contains("init-pki"), "{text}");
        assert!(text.contains("--etcd-insecure"), "{text}");

        let a = Ca::generate(PEERS_CA, now()).expect("a");
        let b = Ca::generate(PEERS_CA, now()).expect("b");
        a.write(dir.path()).expect("write");
        std::fs::write(dir.path().join("etcd-peers-ca.key"), b.key.serialize_pem())
            .expect("swap key");
        let text = Ca::load(dir.path(), PEERS_CA, "--etcd-insecure")
            .expect_err("mismatch")
            .to_string();
        assert!(text.contains("does not belong"), "{text}");

        std::fs::write(dir.path().join("etcd-peers-ca.key"), "not a key").expect("garbage");
        let text = Ca::load(dir.path(), PEERS_CA, "--etcd-insecure")
            .expect_err("garbage")
            .to_string();
        assert!(text.contains("private key"), "{text}");
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // openssl makes the key the way kops does
    fn an_rsa_pkcs1_ca_as_kops_writes_it_is_accepted() {
        // RSA 2048 in PKCS#1 PEM ("RSA PRIVATE KEY"), as kops writes its CA keys.
        let dir = tempfile::tempdir().expect("tmp");
        let key = dir.path().join("etcd-clients-ca.key");
        let crt = dir.path().join("etcd-clients-ca.crt");
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl is installed by scripts/setup.sh");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        let (k, c) = (key.to_str().expect("utf8"), crt.to_str().expect("utf8"));
        run(&["genrsa", "-traditional", "-out", k, "2048"]);
        run(&[
            "req",
            "-x509",
            "-new",
            "-key",
            k,
            "-out",
            c,
            "-days",
            "3650",
            "-subj",
            "/CN=etcd-clients-ca",
        ]);
        let pem = std::fs::read_to_string(&key).expect("key");
        assert!(pem.contains("BEGIN RSA PRIVATE KEY"), "not PKCS#1: {pem}");
        let ca = Ca::load(dir.path(), CLIENTS_CA, "--etcd-insecure").expect("rsa ca loads");
        let issued = ca
            .issue(
                &Subject {
                    common_name: "n1".into(),
                    dns_names: vec!["n1".into()],
                    ips: vec!["127.0.0.2".parse().expect("ip")],
                    uris: vec![],
                },
                now(),
            )
            .expect("issue");
        // The issued pair works as a TLS identity trusted by that CA.
        PeerTls::from_parts(ca.cert_pem(), &issued).expect("usable identity");
    }

    #[test]
    fn subject_hosts_from_urls() {
        let mut s = Subject::default();
        s.add_url_hosts(&[
            "https://10.0.0.1:2380".into(),
            "https://etcd-a.internal:2380".into(),
            "https://[fd00::1]:2380".into(),
            "https://10.0.0.1:4001".into(),
        ]);
        assert_eq!(
            s.ips,
            vec![
                "10.0.0.1".parse::<IpAddr>().expect("ip"),
                "fd00::1".parse().expect("ip")
            ]
        );
        assert_eq!(s.dns_names, vec!["etcd-a.internal".to_string()]);
    }

    /// Every key file upstream's manager loads is RSA (it refuses any
    /// other: "unexpected private key type"): the CAs `init-pki` makes and
    /// the member's etcd certificates under `pki/<token>/`, issued from an
    /// RSA CA as kops makes them or from any other.
    #[test]
    fn the_key_files_upstream_reads_are_rsa() {
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let dir = tempfile::tempdir().expect("tmp");
        for ca in [PEERS_CA, CLIENTS_CA, MANAGER_CA] {
            Ca::generate(ca, now)
                .expect("ca")
                .write(dir.path())
                .expect("write");
            let key = std::fs::read_to_string(dir.path().join(format!("{ca}.key"))).expect("key");
            assert!(is_rsa_key_pem(&key), "{ca}: {key}");
        }
        let pki = EtcdPki::load(dir.path(), now).expect("load");
        let files = pki
            .write_member_certs(&dir.path().join("m"), "etcd-a", &[], &[], &[], now)
            .expect("certs");
        for key in [&files.peer_key, &files.server_key] {
            let pem = std::fs::read_to_string(key).expect("key");
            assert!(is_rsa_key_pem(&pem), "{}", key.display());
        }
        // What only we read stays ECDSA (smaller, faster handshakes).
        let ours = pki
            .clients_ca
            .issue(&Subject::default(), now)
            .expect("issue");
        assert!(!is_rsa_key_pem(&ours.key_pem));
    }

    /// etcd's certificates always name the loopback (kube-apiserver dials
    /// https://127.0.0.1:4001) besides the member's names; a manager's peer
    /// certificate names its node.
    #[test]
    fn member_certificates_carry_loopback_and_peer_certificates_their_node() {
        let dir = tempfile::tempdir().expect("tmp");
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        for ca in [PEERS_CA, CLIENTS_CA, MANAGER_CA] {
            Ca::generate(ca, now)
                .expect("ca")
                .write(dir.path())
                .expect("write");
        }
        let pki = EtcdPki::load(dir.path(), now).expect("load");
        let files = pki
            .write_member_certs(
                &dir.path().join("m"),
                "etcd-a",
                &["https://etcd-a.internal.example.com:2380".into()],
                &["https://etcd-a.internal.example.com:4001".into()],
                &["10.0.0.7".into()],
                now,
            )
            .expect("certs");
        for path in [&files.peer_cert, &files.server_cert] {
            let pem = std::fs::read_to_string(path).expect("read");
            let der = first_cert_der(&pem).expect("der");
            let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
            let san = cert.subject_alternative_name().expect("ext").expect("san");
            let names: Vec<String> = san
                .value
                .general_names
                .iter()
                .map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
                    x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(*b).expect("v4")).to_string(),
                        _ => IpAddr::from(<[u8; 16]>::try_from(*b).expect("v6")).to_string(),
                    },
                    other => format!("{other:?}"),
                })
                .collect();
            for want in [
                "127.0.0.1",
                "::1",
                "localhost",
                "etcd-a",
                "etcd-a.internal.example.com",
                "10.0.0.7",
            ] {
                assert!(
                    names.iter().any(|n| n == want),
                    "{want} missing from {names:?} in {}",
                    path.display()
                );
            }
        }
        let ca = Ca::load(dir.path(), MANAGER_CA, "--insecure").expect("ca");
        let issued = ca
            .issue(
                &Subject {
                    common_name: "n1".into(),
                    dns_names: vec![PEER_API_SERVER_NAME.into()],
                    ips: vec![],
                    uris: vec![node_uri("n1")],
                },
                now,
            )
            .expect("issue");
        let der = first_cert_der(&issued.cert_pem).expect("der");
        assert_eq!(node_id_of_cert(&der).as_deref(), Some("n1"));
        let anonymous = ca
            .issue(
                &Subject {
                    common_name: "n2".into(),
                    ..Subject::default()
                },
                now,
            )
            .expect("issue");
        let der = first_cert_der(&anonymous.cert_pem).expect("der");
        assert_eq!(node_id_of_cert(&der), None, "no node URI: no node identity");
    }
}
