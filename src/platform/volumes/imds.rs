//! The EC2 instance metadata service, IMDSv2 only (a session token first, as
//! AWS recommends and kops' launch templates require): this instance's id,
//! zone, region and private address. The endpoint is the SDKs' own variable
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT` (default `http://169.254.169.254`).
//! Every answer is bounded and checked before use.

use std::net::IpAddr;
use std::time::Duration;

/// The SDKs' variable for the metadata endpoint.
pub const ENDPOINT_VAR: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// The most of one metadata answer read (ids, zones and addresses are short).
const ANSWER_LIMIT: usize = 1024;
const TIMEOUT: Duration = Duration::from_secs(5);

/// What this instance is, as the metadata service says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `i-0123456789abcdef0`.
    pub id: String,
    /// `eu-west-1a`.
    pub zone: String,
    /// `eu-west-1`.
    pub region: String,
    /// The instance's IPv6 address when it has one, else its primary
    /// private IPv4 address.
    pub private_ip: IpAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error(
        "instance metadata at {endpoint} did not answer {path}: {reason}; is this an EC2 instance with IMDSv2 reachable (hop limit 2 or more in a container)? {ENDPOINT_VAR} overrides the address"
    )]
    Unreachable {
        endpoint: String,
        path: String,
        reason: String,
    },
    #[error("instance metadata {path} answered {value:?}, which is not {expected}")]
    Invalid {
        path: String,
        value: String,
        expected: &'static str,
    },
}

/// A client of one metadata endpoint.
pub struct Imds {
    endpoint: String,
    http: reqwest::Client,
}

impl Imds {
    /// The endpoint from `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else AWS's.
    pub fn from_env() -> Imds {
        let endpoint = std::env::var(ENDPOINT_VAR)
            .ok()
            .filter(|e| !e.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        Imds::new(&endpoint)
    }

    /// The endpoint asked.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn new(endpoint: &str) -> Imds {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Imds {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            http,
        }
    }

    fn unreachable(&self, path: &str, reason: impl std::fmt::Display) -> ImdsError {
        ImdsError::Unreachable {
            endpoint: self.endpoint.clone(),
            path: path.to_string(),
            reason: reason.to_string(),
        }
    }

    async fn token(&self) -> Result<String, ImdsError> {
        let path = "/latest/api/token";
        let resp = self
            .http
            .put(format!("{}{path}", self.endpoint))
            .header("X-aws-ec2-metadata-token-ttl-seconds", "21600")
            .send()
            .await
            .map_err(|e| self.unreachable(path, e))?;
        let token = self.body(path, resp).await?;
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ImdsError::Invalid {
                path: path.into(),
                value: token,
                expected: "a session token",
            });
        }
        Ok(token)
    }

    async fn body(&self, path: &str, resp: reqwest::Response) -> Result<String, ImdsError> {
        if !resp.status().is_success() {
            return Err(self.unreachable(path, format!("HTTP {}", resp.status())));
        }
        let out = super::read_capped(resp, ANSWER_LIMIT)
            .await
            .map_err(|e| self.unreachable(path, e))?;
        String::from_utf8(out)
            .map(|s| s.trim().to_string())
            .map_err(|_| self.unreachable(path, "answer is not UTF-8"))
    }

    async fn get(&self, token: &str, path: &str) -> Result<String, ImdsError> {
        let resp = self
            .http
            .get(format!("{}{path}", self.endpoint))
            .header("X-aws-ec2-metadata-token", token)
            .send()
            .await
            .map_err(|e| self.unreachable(path, e))?;
        self.body(path, resp).await
    }

    /// This instance: id, zone, region, private address.
    pub async fn instance(&self) -> Result<Instance, ImdsError> {
        let token = self.token().await?;
        let id = self.get(&token, ID_PATH).await?;
        let zone = self.get(&token, ZONE_PATH).await?;
        let region = self
            .get(&token, "/latest/meta-data/placement/region")
            .await
            .ok();
        let v6 = self.get(&token, "/latest/meta-data/ipv6").await.ok();
        let v4 = match &v6 {
            Some(v6) if v6.parse::<std::net::Ipv6Addr>().is_ok() => None,
            _ => Some(self.get(&token, IPV4_PATH).await?),
        };
        check_instance(id, zone, region, v6, v4)
    }
}

const ID_PATH: &str = "/latest/meta-data/instance-id";
const ZONE_PATH: &str = "/latest/meta-data/placement/availability-zone";
const IPV4_PATH: &str = "/latest/meta-data/local-ipv4";

/// The metadata answers (each already read to a bound, UTF-8, trimmed)
/// checked into an [`Instance`]: an instance id, a zone, the region (its
/// own answer when it looks like one, else the zone without its letter, as
/// older responders have no region), and the IPv6 address when there is
/// one (as upstream), else the private IPv4. Pure.
pub fn check_instance(
    id: String,
    zone: String,
    region: Option<String>,
    v6: Option<String>,
    v4: Option<String>,
) -> Result<Instance, ImdsError> {
    if !is_aws_id(&id, "i-") {
        return Err(ImdsError::Invalid {
            path: ID_PATH.into(),
            value: id,
            expected: "an instance id (i-0123abcd...)",
        });
    }
    if !is_zone(&zone) {
        return Err(ImdsError::Invalid {
            path: ZONE_PATH.into(),
            value: zone,
            expected: "an availability zone (eu-west-1a)",
        });
    }
    let region = match region {
        Some(r) if is_zone(&r) => r,
        _ => zone
            .trim_end_matches(|c: char| c.is_ascii_lowercase())
            .to_string(),
    };
    // A zone of letters only leaves no region (found by fuzzing).
    if !is_zone(&region) {
        return Err(ImdsError::Invalid {
            path: ZONE_PATH.into(),
            value: zone,
            expected: "an availability zone (eu-west-1a), or a region of its own",
        });
    }
    let ip_text = match (v6, v4) {
        (Some(v6), _) if v6.parse::<std::net::Ipv6Addr>().is_ok() => v6,
        (_, Some(v4)) => v4,
        (_, None) => String::new(),
    };
    let private_ip = ip_text.parse::<IpAddr>().map_err(|_| ImdsError::Invalid {
        path: IPV4_PATH.into(),
        value: ip_text.clone(),
        expected: "an IP address",
    })?;
    Ok(Instance {
        id,
        zone,
        region,
        private_ip,
    })
}

/// `i-0123abcd` / `vol-0123abcd`: the prefix, then 8 or 17 hex digits (moto
/// and AWS both), bounded.
pub fn is_aws_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|hex| {
        (8..=32).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// `eu-west-1a`, `us-east-1-bos-1a`, `eu-west-1`: lowercase letters, digits
/// and dashes, bounded.
fn is_zone(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_zones_are_checked() {
        assert!(is_aws_id("i-0123456789abcdef0", "i-"));
        assert!(is_aws_id("vol-0123abcd", "vol-"));
        assert!(!is_aws_id("i-", "i-"));
        assert!(!is_aws_id("i-../../etc", "i-"));
        assert!(!is_aws_id("vol-0123abcd", "i-"));
        assert!(is_zone("eu-west-1a"));
        assert!(!is_zone("eu west"));
        assert!(!is_zone(""));
    }
}
