//! One member's description and the `ETCD_*` environment it turns into.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Error, EtcdVersion};

/// Everything needed to run one etcd member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EtcdNodeSpec {
    /// The member name (`ETCD_NAME`).
    pub name: String,
    /// The etcd version to run, `3.5.30`.
    pub version: String,
    /// The member's data dir (the caller passes `<data-dir>/data/<cluster token>`).
    pub data_dir: PathBuf,
    /// The cluster token (`ETCD_INITIAL_CLUSTER_TOKEN`).
    pub cluster_token: String,
    /// (name, peer urls) of every member of the initial cluster.
    pub initial_cluster: Vec<(String, Vec<String>)>,
    /// true: `ETCD_INITIAL_CLUSTER_STATE=new`; false: `existing`.
    pub initial_cluster_state_new: bool,
    /// Advertised peer urls.
    pub peer_urls: Vec<String>,
    /// Advertised client urls.
    pub client_urls: Vec<String>,
    /// Client urls used while quarantined.
    pub quarantined_client_urls: Vec<String>,
    /// true: listen on and advertise ONLY the quarantined client urls.
    pub quarantined: bool,
    /// Host to bind: replaces the host of each url for the listen-* urls; None = same as advertised.
    pub listen_address: Option<String>,
    /// Peer and client TLS files; None = plain http.
    #[serde(default)]
    pub tls: Option<MemberTlsFiles>,
    /// etcd's dedicated metrics listeners (`ETCD_LISTEN_METRICS_URLS`); none when empty.
    #[serde(default)]
    pub listen_metrics_urls: Vec<String>,
}

/// Where a member's TLS files are (upstream's layout: `peers/{ca,me}.*`,
/// `clients/{ca,server}.*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberTlsFiles {
    pub peer_ca: PathBuf,
    pub peer_cert: PathBuf,
    pub peer_key: PathBuf,
    pub client_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl EtcdNodeSpec {
    /// The `version` field parsed.
    pub fn parsed_version(&self) -> Result<EtcdVersion, Error> {
        Ok(self.version.parse()?)
    }

    /// The client urls this member advertises in its current mode (quarantined or not).
    pub fn active_client_urls(&self) -> &[String] {
        if self.quarantined {
            &self.quarantined_client_urls
        } else {
            &self.client_urls
        }
    }

    /// `name=url,name=url2,other=url3`: etcd's `--initial-cluster` text.
    pub fn initial_cluster_string(&self) -> String {
        self.initial_cluster
            .iter()
            .flat_map(|(name, urls)| urls.iter().map(move |u| format!("{name}={u}")))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The `ETCD_*` variables for `spec`, sorted by key, with `overrides` (the manager's own
/// `ETCD_*` environment) replacing ours key by key and adding any others.
pub fn etcd_env(spec: &EtcdNodeSpec, overrides: &[(String, String)]) -> Vec<(String, String)> {
    let listen = |urls: &[String]| -> String {
        urls.iter()
            .map(|u| match &spec.listen_address {
                Some(host) => replace_url_host(u, host),
                None => u.clone(),
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let client_urls = spec.active_client_urls();
    let mut env = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_string(), v);
    };
    set("ETCD_NAME", spec.name.clone());
    set("ETCD_DATA_DIR", spec.data_dir.display().to_string());
    set("ETCD_INITIAL_CLUSTER", spec.initial_cluster_string());
    set(
        "ETCD_INITIAL_CLUSTER_STATE",
        if spec.initial_cluster_state_new {
            "new"
        } else {
            "existing"
        }
        .to_string(),
    );
    set("ETCD_INITIAL_CLUSTER_TOKEN", spec.cluster_token.clone());
    set("ETCD_LISTEN_PEER_URLS", listen(&spec.peer_urls));
    set("ETCD_INITIAL_ADVERTISE_PEER_URLS", spec.peer_urls.join(","));
    set("ETCD_LISTEN_CLIENT_URLS", listen(client_urls));
    set("ETCD_ADVERTISE_CLIENT_URLS", client_urls.join(","));
    set("ETCD_STRICT_RECONFIG_CHECK", "true".to_string());
    if !spec.listen_metrics_urls.is_empty() {
        set(
            "ETCD_LISTEN_METRICS_URLS",
            spec.listen_metrics_urls.join(","),
        );
    }
    // What upstream sets per version: no v2 API on 3.2/3.3 (3.4+ has it off
    // by default, 3.6 removed it), the initial corruption check on 3.5 (3.6
    // runs it by feature gate; 3.7 dropped the experimental flag).
    if let Ok(v) = spec.parsed_version() {
        match (v.major, v.minor) {
            (3, 2 | 3) => set("ETCD_ENABLE_V2", "false".to_string()),
            (3, 5) => set(
                "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK",
                "true".to_string(),
            ),
            _ => {}
        }
    }
    if let Some(t) = &spec.tls {
        let p = |p: &PathBuf| p.display().to_string();
        set("ETCD_PEER_CLIENT_CERT_AUTH", "true".to_string());
        set("ETCD_PEER_TRUSTED_CA_FILE", p(&t.peer_ca));
        set("ETCD_PEER_CERT_FILE", p(&t.peer_cert));
        set("ETCD_PEER_KEY_FILE", p(&t.peer_key));
        set("ETCD_CLIENT_CERT_AUTH", "true".to_string());
        set("ETCD_TRUSTED_CA_FILE", p(&t.client_ca));
        set("ETCD_CERT_FILE", p(&t.server_cert));
        set("ETCD_KEY_FILE", p(&t.server_key));
    }
    for (k, v) in overrides {
        env.insert(k.clone(), v.clone());
    }
    env.into_iter().collect()
}

/// The `ETCD_*` variables of the current process environment, sorted by key
/// (what the manager passes to [`etcd_env`] as overrides). Variables whose name or
/// value is not UTF-8 are skipped.
pub fn etcd_env_overrides_from_process() -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| is_etcd_override(k))
        .collect();
    vars.sort();
    vars
}

/// An `ETCD_*` variable meant for etcd: the manager's own `ETCD_MANAGER_*`
/// settings are not (etcd warns about every variable it does not know).
pub fn is_etcd_override(key: &str) -> bool {
    key.starts_with("ETCD_") && !key.starts_with("ETCD_MANAGER_")
}

/// Replaces the host of `url` (`scheme://host:port/path`) with `host`, keeping scheme,
/// port and path. An IPv6 `host` gets brackets. Text without `://` is returned unchanged.
pub fn replace_url_host(url: &str, host: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (&authority[..=i], &authority[i + 1..]),
        None => ("", authority),
    };
    let port = if let Some(after_bracket) = hostport.strip_prefix('[') {
        after_bracket
            .find(']')
            .map(|i| &after_bracket[i + 1..])
            .unwrap_or("")
    } else {
        hostport.find(':').map(|i| &hostport[i..]).unwrap_or("")
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    format!("{scheme}://{userinfo}{host}{port}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_hosts() {
        assert_eq!(
            replace_url_host("http://10.0.0.1:2380", "0.0.0.0"),
            "http://0.0.0.0:2380"
        );
        assert_eq!(
            replace_url_host("https://node-a.example:4001", "127.0.0.2"),
            "https://127.0.0.2:4001"
        );
        assert_eq!(
            replace_url_host("http://[fd00::1]:2380", "::"),
            "http://[::]:2380"
        );
        assert_eq!(replace_url_host("http://host", "0.0.0.0"), "http://0.0.0.0");
        assert_eq!(replace_url_host("http://host:1/x", "a"), "http://a:1/x");
        assert_eq!(replace_url_host("nonsense", "a"), "nonsense");
    }
}

#[cfg(test)]
mod override_tests {
    #[test]
    fn the_managers_own_settings_are_not_passed_to_etcd() {
        assert!(super::is_etcd_override("ETCD_SNAPSHOT_COUNT"));
        assert!(!super::is_etcd_override("ETCD_MANAGER_BACKUP_STORE"));
        assert!(!super::is_etcd_override("ETCDCTL_API"));
    }
}
