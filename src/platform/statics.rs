//! `--static-config`: a fixed cluster described on the command line (kops'
//! bare-metal manifests), instead of a spec written by `etcd-manager-ctl`.
//!
//! `{"etcdVersion":"3.6.16","nodes":[{"id":"c--main--0","ip":["10.0.0.1"]}]}`
//! gives the spec (one member per node, that etcd version) and the peers to
//! find (each `ip`, an address or a host name, on the gRPC port). As
//! upstream, the leader creates a new cluster only when its data dir holds
//! [`PLEASE_CREATE_NEW_CLUSTER`], and deletes that file once it did; it
//! reads no control files from the store (backups still go there).

use serde::Deserialize;

/// The file in the leader's data dir that allows creating a new cluster
/// under `--static-config` (upstream's name).
pub const PLEASE_CREATE_NEW_CLUSTER: &str = "please-create-new-cluster";

/// Longest `--static-config` accepted.
const MAX_LEN: usize = 64 * 1024;

/// The parsed `--static-config`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StaticConfig {
    /// The etcd version to run (a leading `v` is dropped).
    #[serde(default)]
    pub etcd_version: String,
    #[serde(default)]
    pub nodes: Vec<StaticNode>,
}

/// One member of the fixed cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StaticNode {
    /// Its member name (with the external volume provider: its volume's folder name).
    #[serde(default)]
    pub id: String,
    /// Addresses or host names where its manager listens (on the gRPC port).
    #[serde(default)]
    pub ip: Vec<String>,
}

/// What is wrong with `--static-config` or `--network-cidr`, and what to write.
#[derive(Debug, thiserror::Error)]
pub enum StaticsError {
    #[error("longer than {MAX_LEN} bytes; list only the members")]
    TooLong,
    #[error(
        "not the JSON upstream takes ({0}); write {{\"etcdVersion\":\"3.6.16\",\"nodes\":[{{\"id\":\"name\",\"ip\":[\"10.0.0.1\"]}}]}}"
    )]
    Json(#[source] serde_json::Error),
    #[error("etcdVersion: {0}")]
    Version(#[source] etcd::InvalidVersion),
    #[error("nodes is empty: list every member")]
    NoNodes,
    #[error("node id: {0}")]
    NodeId(#[source] etcd::InvalidIdent),
    #[error("node {node} has no ip; give the address or host name its manager listens on")]
    NoIp { node: String },
    #[error("node {node}: '{ip}' is not an address or host name")]
    BadIp { node: String, ip: String },
    #[error("two nodes have the same id ({id}); give each member its own")]
    DuplicateId { id: String },
    #[error("'{text}' is not a CIDR such as 10.0.0.0/16")]
    NotCidr { text: String },
    #[error("'{text}': {reason}; write a CIDR such as 10.0.0.0/16")]
    BadCidr { text: String, reason: String },
    #[error("'{text}': a prefix of more than {max} bits")]
    CidrTooLong { text: String, max: u8 },
}

impl StaticConfig {
    /// Parse and check `--static-config`'s JSON; the error names what is wrong.
    pub fn parse(text: &str) -> Result<StaticConfig, StaticsError> {
        if text.len() > MAX_LEN {
            return Err(StaticsError::TooLong);
        }
        let mut c: StaticConfig = serde_json::from_str(text).map_err(StaticsError::Json)?;
        c.etcd_version = c.etcd_version.trim_start_matches('v').to_string();
        c.etcd_version
            .parse::<etcd::EtcdVersion>()
            .map_err(StaticsError::Version)?;
        if c.nodes.is_empty() {
            return Err(StaticsError::NoNodes);
        }
        for n in &c.nodes {
            n.check()?;
        }
        let mut ids: Vec<&str> = c.nodes.iter().map(|n| n.id.as_str()).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(StaticsError::DuplicateId {
                id: w[0].to_string(),
            });
        }
        Ok(c)
    }

    /// The spec it stands for.
    pub fn spec(&self) -> backup::ClusterSpec {
        backup::ClusterSpec {
            member_count: i32::try_from(self.nodes.len()).unwrap_or(i32::MAX),
            etcd_version: self.etcd_version.clone(),
        }
    }
}

impl StaticNode {
    /// A valid member name with at least one address or host name.
    fn check(&self) -> Result<(), StaticsError> {
        etcd::check_ident(etcd::IdentKind::MemberName, &self.id).map_err(StaticsError::NodeId)?;
        if self.ip.is_empty() {
            return Err(StaticsError::NoIp {
                node: self.id.clone(),
            });
        }
        match self
            .ip
            .iter()
            .find(|ip| ip.is_empty() || ip.len() > 253 || ip.contains(['/', ' ', ',']))
        {
            Some(ip) => Err(StaticsError::BadIp {
                node: self.id.clone(),
                ip: ip.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// `host:port`, with brackets for an IPv6 address.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Check a CIDR (`10.0.0.0/16`).
pub fn parse_cidr(s: &str) -> Result<(std::net::IpAddr, u8), StaticsError> {
    let bad = |reason: &dyn std::fmt::Display| StaticsError::BadCidr {
        text: s.to_string(),
        reason: reason.to_string(),
    };
    let (ip, bits) = s.split_once('/').ok_or_else(|| StaticsError::NotCidr {
        text: s.to_string(),
    })?;
    let ip: std::net::IpAddr = ip.parse().map_err(|e| bad(&e))?;
    let bits: u8 = bits.parse().map_err(|e| bad(&e))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if bits > max {
        return Err(StaticsError::CidrTooLong {
            text: s.to_string(),
            max,
        });
    }
    Ok((ip, bits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kops_metal_static_config_parses() {
        let c = StaticConfig::parse(
            r#"{"etcdVersion":"3.6.12","nodes":[{"id":"metal.k8s.local--main--0","ip":["node0.main.metal.k8s.local"]}]}"#,
        )
        .expect("kops' config");
        assert_eq!(c.spec().member_count, 1);
        assert_eq!(c.spec().etcd_version, "3.6.12");
        assert_eq!(
            host_port(&c.nodes[0].ip[0], 3996),
            "node0.main.metal.k8s.local:3996"
        );
        assert_eq!(host_port("fd00::1", 3996), "[fd00::1]:3996");
        let v = StaticConfig::parse(
            r#"{"etcdVersion":"v3.5.30","nodes":[{"id":"a","ip":["10.0.0.1"]}],"extra":1}"#,
        )
        .expect("v prefix and unknown fields, as Go reads them");
        assert_eq!(v.etcd_version, "3.5.30");
        for (bad, why) in [
            ("{", "JSON"),
            (r#"{"etcdVersion":"3.6.12","nodes":[]}"#, "empty"),
            (
                r#"{"etcdVersion":"latest","nodes":[{"id":"a","ip":["x"]}]}"#,
                "etcdVersion",
            ),
            (
                r#"{"etcdVersion":"3.6.12","nodes":[{"id":"../a","ip":["x"]}]}"#,
                "node id",
            ),
            (
                r#"{"etcdVersion":"3.6.12","nodes":[{"id":"a","ip":[]}]}"#,
                "no ip",
            ),
            (
                r#"{"etcdVersion":"3.6.12","nodes":[{"id":"a","ip":["x"]},{"id":"a","ip":["y"]}]}"#,
                "same id",
            ),
        ] {
            let e = StaticConfig::parse(bad).expect_err(bad).to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(parse_cidr("10.0.0.0/16").is_ok());
        assert!(matches!(
            parse_cidr("10.0.0.0/33"),
            Err(StaticsError::CidrTooLong { max: 32, .. })
        ));
        assert!(matches!(
            parse_cidr("10.0.0.0"),
            Err(StaticsError::NotCidr { .. })
        ));
        assert!(matches!(
            parse_cidr("10.0.0.x/8"),
            Err(StaticsError::BadCidr { .. })
        ));
    }
}
