//! The gossip payload: what each manager tells the others about itself
//! (bounded and checked when decoded; the manager's before-lease format is
//! still read).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::peer::{EtcdNodeConfig, NodeInfo};

/// What each manager puts in its gossip payload: who it is, where its peer
/// API listens, how it runs etcd and a summary of its etcd state (the leader
/// still asks every peer over the peer API before acting).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPayload {
    pub cluster_name: String,
    pub peer_api: SocketAddr,
    pub node_config: EtcdNodeConfig,
    pub etcd: Option<EtcdSummary>,
    /// The leader's current lease record (see [`lock::LeaseClaim`]): a
    /// contender counts it as seen when the payload arrives. Last, so a
    /// manager without it (an older version) still reads this payload.
    pub lease: Option<lock::LeaseClaim>,
}

/// Most bytes a gossip payload may claim while it is decoded (a real one is a
/// few hundred bytes; gossip packets are smaller than this anyway).
pub const PAYLOAD_LIMIT: usize = 16 * 1024;

/// The payload of a manager from before `lease` was added.
#[derive(Serialize, Deserialize)]
struct PeerPayloadV1 {
    cluster_name: String,
    peer_api: SocketAddr,
    node_config: EtcdNodeConfig,
    etcd: Option<EtcdSummary>,
}

/// A node's etcd in a few fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdSummary {
    pub cluster_token: String,
    pub etcd_version: String,
    pub running: bool,
    pub quarantined: bool,
}

impl PeerPayload {
    pub fn from_info(
        info: &NodeInfo,
        peer_api: SocketAddr,
        lease: Option<lock::LeaseClaim>,
    ) -> PeerPayload {
        PeerPayload {
            lease,
            cluster_name: info.cluster_name.clone(),
            peer_api,
            node_config: info.node_config.clone(),
            etcd: info.etcd_state.as_ref().map(|s| EtcdSummary {
                cluster_token: s.cluster_token.clone(),
                etcd_version: s.etcd_version.clone(),
                running: s.running,
                quarantined: s.quarantined,
            }),
        }
    }
    /// The client URL this manager's etcd served on when it sent the
    /// payload, with the cluster's token; None when its etcd was not running.
    pub fn serving(&self) -> Option<(&str, String)> {
        let e = self.etcd.as_ref()?;
        let url = client_url(&self.node_config, e.running, e.quarantined)?;
        Some((e.cluster_token.as_str(), url))
    }
    pub fn encode(&self) -> Vec<u8> {
        crate::codec::encode::<_, PAYLOAD_LIMIT>(self).unwrap_or_default()
    }
    /// Decode a payload from gossip (any member may send any bytes): bounded
    /// by [`PAYLOAD_LIMIT`], identifiers checked; None for anything else.
    pub fn decode(b: &[u8]) -> Option<PeerPayload> {
        let p = Self::decode_unchecked(b)?;
        let ok = etcd::check_ident(etcd::IdentKind::MemberName, &p.node_config.name).is_ok()
            || p.node_config.name.is_empty();
        let token_ok = p.etcd.as_ref().is_none_or(|e| {
            etcd::check_ident(etcd::IdentKind::ClusterToken, &e.cluster_token).is_ok()
        });
        (ok && token_ok).then_some(p)
    }
    fn decode_unchecked(b: &[u8]) -> Option<PeerPayload> {
        if let Ok(p) = crate::codec::decode::<PeerPayload, PAYLOAD_LIMIT>(b) {
            return Some(p);
        }
        let v1: PeerPayloadV1 = crate::codec::decode::<_, PAYLOAD_LIMIT>(b).ok()?;
        Some(PeerPayload {
            cluster_name: v1.cluster_name,
            peer_api: v1.peer_api,
            node_config: v1.node_config,
            etcd: v1.etcd,
            lease: None,
        })
    }
}

/// The client URL an etcd with this configuration listens on: the quarantined
/// one while quarantined; None when it is not running.
pub(super) fn client_url(
    config: &EtcdNodeConfig,
    running: bool,
    quarantined: bool,
) -> Option<String> {
    if !running {
        return None;
    }
    let urls = if quarantined {
        &config.quarantined_client_urls
    } else {
        &config.client_urls
    };
    urls.first().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::EtcdState;

    #[test]
    fn payload_round_trips_and_fits_a_gossip_packet() {
        let host = "ip-10-120-123-245.eu-central-1.compute.internal";
        let info = NodeInfo {
            id: "GEyIUF0s9J07setaePSQ3Q".into(),
            cluster_name: "main".into(),
            node_config: EtcdNodeConfig {
                name: "GEyIUF0s9J07setaePSQ3Q".into(),
                peer_urls: vec![format!("https://{host}:2380")],
                client_urls: vec![format!("https://{host}:4001")],
                quarantined_client_urls: vec![format!("https://{host}:8001")],
            },
            etcd_state: Some(EtcdState {
                cluster_token: "XypoARu3zvWjVHHmWSGr_Q".into(),
                etcd_version: "3.5.30".into(),
                quarantined: false,
                running: true,
                restarts: 0,
                nodes: vec![],
            }),
            highest_epoch: 9,
            installed_versions: vec![],
            jobs: Some(vec![]),
        };
        let claim = lock::LeaseClaim {
            seq: 123_456,
            nonce: "GEyIUF0s9J07setaePSQ3Q-0123456789abcdef-98765".into(),
            epoch: 12,
            duration_ms: 5000,
        };
        let p = PeerPayload::from_info(
            &info,
            "10.120.123.245:8000".parse().expect("addr"),
            Some(claim),
        );
        let bytes = p.encode();
        assert!(
            bytes.len() < 1024,
            "payload of {} bytes may not fit a gossip packet",
            bytes.len()
        );
        assert_eq!(PeerPayload::decode(&bytes), Some(p.clone()));
        assert_eq!(PeerPayload::decode(&bytes[..bytes.len() / 2]), None);

        // Mixed versions during an upgrade: an older manager's payload reads
        // with no claim, and an older manager reads ours (trailing bytes ignored).
        let config = bincode::config::standard();
        let v1 = PeerPayloadV1 {
            cluster_name: p.cluster_name.clone(),
            peer_api: p.peer_api,
            node_config: p.node_config.clone(),
            etcd: p.etcd.clone(),
        };
        let old = bincode::serde::encode_to_vec(&v1, config).expect("encode");
        let read = PeerPayload::decode(&old).expect("an older payload reads");
        assert_eq!(
            (read.lease, read.cluster_name),
            (None, p.cluster_name.clone())
        );
        let (back, _): (PeerPayloadV1, _) =
            bincode::serde::decode_from_slice(&bytes, config).expect("older managers read ours");
        assert_eq!(back.node_config, p.node_config);
    }

    #[test]
    fn a_crafted_payload_is_dropped_not_fatal() {
        // cluster_name claiming 2^42 bytes (used to abort every manager on
        // allocation), and 2^63 (capacity overflow panic).
        for len in [1u64 << 42, 1u64 << 63, u64::MAX] {
            let mut b = vec![253u8];
            b.extend_from_slice(&len.to_le_bytes());
            assert_eq!(PeerPayload::decode(&b), None);
        }
        // A well-formed payload whose token would be a path is dropped too.
        let p = PeerPayload {
            cluster_name: "c".into(),
            peer_api: "127.0.0.1:8000".parse().expect("addr"),
            node_config: EtcdNodeConfig::default(),
            etcd: Some(EtcdSummary {
                cluster_token: "../../etc".into(),
                etcd_version: "3.5.30".into(),
                running: true,
                quarantined: false,
            }),
            lease: None,
        };
        assert_eq!(PeerPayload::decode(&p.encode()), None);
    }
}
