//! The three EC2 calls the AWS volume provider makes (DescribeVolumes,
//! AttachVolume, DescribeInstances), over EC2's query API: a form POST
//! signed with SigV4 by object_store's signer, credentials from
//! object_store's chain (environment, web identity, the instance profile
//! through the metadata service), XML answers read with quick-xml into
//! bounded, checked values. The AWS SDK for Rust was measured and not taken:
//! its EC2 crate alone compiles for about three minutes on two cores, for
//! three calls.
//!
//! Endpoint: `AWS_ENDPOINT_URL_EC2`, else `AWS_ENDPOINT_URL` (the SDKs'
//! variables), else `https://ec2.<region>.amazonaws.com`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use object_store::CredentialProvider;
use serde::Deserialize;

/// The EC2 API version the query calls name.
const API_VERSION: &str = "2016-11-15";
/// The most of one answer read.
const ANSWER_LIMIT: usize = 8 << 20;
/// Pages of one listing followed at most.
const MAX_PAGES: usize = 50;
const TIMEOUT: Duration = Duration::from_secs(20);

/// One EBS volume as DescribeVolumes gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub id: String,
    pub zone: String,
    /// `available`, `in-use`, `creating`, ...
    pub state: String,
    pub attachments: Vec<Attachment>,
    pub tags: BTreeMap<String, String>,
}

/// One attachment of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub instance_id: String,
    /// The device name asked for at attach, `/dev/xvdu`.
    pub device: String,
    /// `attaching`, `attached`, `detaching`, ...
    pub state: String,
}

/// One instance as DescribeInstances gives it: its private addresses, the
/// IPv6 one first when it has one (as upstream dials it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub addresses: Vec<IpAddr>,
}

/// An EC2 call that failed: AWS's error code when it sent one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("EC2 {action}: {}{message}", code.as_ref().map(|c| format!("{c}: ")).unwrap_or_default())]
pub struct Ec2Error {
    pub action: &'static str,
    pub code: Option<String>,
    pub message: String,
}

impl Ec2Error {
    fn new(action: &'static str, message: impl std::fmt::Display) -> Ec2Error {
        Ec2Error {
            action,
            code: None,
            message: message.to_string(),
        }
    }

    /// AWS said this code.
    pub fn is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
}

/// What the volume provider needs of EC2; the production client below, a
/// scripted one in tests.
#[async_trait::async_trait]
pub trait Ec2: Send + Sync {
    /// Every volume matching `filters` (name, values), all pages.
    async fn describe_volumes(
        &self,
        filters: &[(String, Vec<String>)],
    ) -> Result<Vec<Volume>, Ec2Error>;
    /// Attach `volume` to `instance` as `device`.
    async fn attach_volume(
        &self,
        volume: &str,
        instance: &str,
        device: &str,
    ) -> Result<(), Ec2Error>;
    /// These instances (unknown ids are left out).
    async fn describe_instances(&self, ids: &[String]) -> Result<Vec<Instance>, Ec2Error>;
}

/// EC2's query API in one region.
pub struct Ec2Client {
    endpoint: String,
    region: String,
    credentials: Arc<dyn CredentialProvider<Credential = object_store::aws::AwsCredential>>,
    http: reqwest::Client,
}

impl Ec2Client {
    /// A client for `region`, credentials from the environment or the
    /// instance profile behind `metadata_endpoint`.
    pub fn from_env(region: &str, metadata_endpoint: &str) -> Result<Ec2Client, Ec2Error> {
        let endpoint = ["AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|e| !e.trim().is_empty()))
            .unwrap_or_else(|| default_endpoint(region));
        // object_store's credential chain, through an S3 client that is
        // never called.
        let s3 = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name("etcd-manager-credentials-only")
            .with_region(region)
            .with_metadata_endpoint(metadata_endpoint)
            .build()
            .map_err(|e| Ec2Error::new("credentials", e))?;
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Ec2Error::new("client", e))?;
        Ok(Ec2Client {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            region: region.to_string(),
            credentials: s3.credentials().clone(),
            http,
        })
    }

    /// One signed query call; the answer's body, or AWS's error.
    async fn call(
        &self,
        action: &'static str,
        params: &[(String, String)],
    ) -> Result<String, Ec2Error> {
        let mut form = url_form(&[("Action", action), ("Version", API_VERSION)]);
        for (k, v) in params {
            form.push('&');
            form.push_str(&url_form(&[(k.as_str(), v.as_str())]));
        }
        let credential = self
            .credentials
            .get_credential()
            .await
            .map_err(|e| Ec2Error::new(action, format!("no AWS credentials: {e}")))?;
        let url = format!("{}/", self.endpoint);
        let mut signed = http::Request::builder()
            .method(http::Method::POST)
            .uri(&url)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .body(object_store::client::HttpRequestBody::from(form.clone()))
            .map_err(|e| Ec2Error::new(action, e))?;
        object_store::aws::AwsAuthorizer::new(&credential, "ec2", &self.region)
            .try_authorize(&mut signed, None)
            .map_err(|e| Ec2Error::new(action, format!("signing: {e}")))?;
        let mut req = self.http.post(&url).body(form);
        for (name, value) in signed.headers() {
            req = req.header(name, value);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Ec2Error::new(action, format!("{url}: {e}")))?;
        let status = resp.status();
        let body = super::read_capped(resp, ANSWER_LIMIT)
            .await
            .map_err(|e| Ec2Error::new(action, format!("{url}: {e}")))?;
        let text = String::from_utf8_lossy(&body).into_owned();
        if status.is_success() {
            return Ok(text);
        }
        match quick_xml::de::from_str::<ErrorResponse>(&text) {
            Ok(e) if !e.errors.error.is_empty() => {
                let first = &e.errors.error[0];
                Err(Ec2Error {
                    action,
                    code: Some(first.code.clone()),
                    message: first.message.clone(),
                })
            }
            _ => Err(Ec2Error::new(
                action,
                format!(
                    "HTTP {status}: {}",
                    text.chars().take(300).collect::<String>()
                ),
            )),
        }
    }
}

fn default_endpoint(region: &str) -> String {
    if region.starts_with("cn-") {
        format!("https://ec2.{region}.amazonaws.com.cn")
    } else {
        format!("https://ec2.{region}.amazonaws.com")
    }
}

/// `a=b&c=d`, form-encoded.
fn url_form(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// `Filter.N.Name` / `Filter.N.Value.M` parameters.
fn filter_params(filters: &[(String, Vec<String>)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, (name, values)) in filters.iter().enumerate() {
        out.push((format!("Filter.{}.Name", i + 1), name.clone()));
        for (j, v) in values.iter().enumerate() {
            out.push((format!("Filter.{}.Value.{}", i + 1, j + 1), v.clone()));
        }
    }
    out
}

#[async_trait::async_trait]
impl Ec2 for Ec2Client {
    async fn describe_volumes(
        &self,
        filters: &[(String, Vec<String>)],
    ) -> Result<Vec<Volume>, Ec2Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut params = filter_params(filters);
            params.push(("MaxResults".into(), "500".into()));
            if let Some(t) = &token {
                params.push(("NextToken".into(), t.clone()));
            }
            let text = self.call("DescribeVolumes", &params).await?;
            let (vols, next) = parse_volumes(&text)?;
            out.extend(vols);
            match next {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
        Err(Ec2Error::new(
            "DescribeVolumes",
            format!("more than {MAX_PAGES} pages of volumes; narrow the --volume-tag filters"),
        ))
    }

    async fn attach_volume(
        &self,
        volume: &str,
        instance: &str,
        device: &str,
    ) -> Result<(), Ec2Error> {
        let params = [
            ("VolumeId".to_string(), volume.to_string()),
            ("InstanceId".to_string(), instance.to_string()),
            ("Device".to_string(), device.to_string()),
        ];
        self.call("AttachVolume", &params).await.map(|_| ())
    }

    async fn describe_instances(&self, ids: &[String]) -> Result<Vec<Instance>, Ec2Error> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let params = filter_params(&[("instance-id".to_string(), ids.to_vec())]);
        let text = self.call("DescribeInstances", &params).await?;
        parse_instances(&text)
    }
}

// ------------------------------------------------------------------ answers

#[derive(Debug, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
struct Items<T> {
    #[serde(default = "Vec::new", rename = "item")]
    item: Vec<T>,
}

impl<T> Default for Items<T> {
    fn default() -> Self {
        Items { item: Vec::new() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VolumesResponse {
    #[serde(default)]
    volume_set: Items<VolumeItem>,
    #[serde(default)]
    next_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VolumeItem {
    volume_id: String,
    #[serde(default)]
    availability_zone: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    attachment_set: Items<AttachmentItem>,
    #[serde(default)]
    tag_set: Items<TagItem>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttachmentItem {
    #[serde(default)]
    instance_id: String,
    #[serde(default)]
    device: String,
    #[serde(default)]
    status: String,
}

#[derive(Debug, Deserialize)]
struct TagItem {
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InstancesResponse {
    #[serde(default)]
    reservation_set: Items<Reservation>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reservation {
    #[serde(default)]
    instances_set: Items<InstanceItem>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InstanceItem {
    instance_id: String,
    #[serde(default)]
    private_ip_address: Option<String>,
    #[serde(default)]
    ipv6_address: Option<String>,
    #[serde(default)]
    network_interface_set: Items<InterfaceItem>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InterfaceItem {
    #[serde(default)]
    private_ip_address: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorResponse {
    #[serde(default)]
    errors: ErrorList,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorList {
    #[serde(default)]
    error: Vec<ErrorItem>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorItem {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// DescribeVolumes' answer: volumes whose ids are well formed (others are
/// skipped with a warning), and the next page's token.
/// A device name as EC2 reports one (`/dev/xvdu`, `/dev/sdf`,
/// `/dev/nvme1n1`): `/dev/` and 1 to 32 lowercase letters and digits.
/// Anything else (a `..`, a slash, a space) is no device: it would become a
/// path that `mkfs -F` formats.
pub fn valid_device_name(device: &str) -> bool {
    device.strip_prefix("/dev/").is_some_and(|name| {
        (1..=32).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

pub(crate) fn parse_volumes(text: &str) -> Result<(Vec<Volume>, Option<String>), Ec2Error> {
    let r: VolumesResponse = quick_xml::de::from_str(text)
        .map_err(|e| Ec2Error::new("DescribeVolumes", format!("unreadable answer: {e}")))?;
    let mut out = Vec::new();
    for v in r.volume_set.item {
        if !super::imds::is_aws_id(&v.volume_id, "vol-") {
            tracing::warn!(volume = %v.volume_id, "skipping a volume whose id is not vol-<hex>");
            continue;
        }
        let volume_id = v.volume_id.clone();
        out.push(Volume {
            id: v.volume_id,
            zone: v.availability_zone,
            state: v.status,
            attachments: v
                .attachment_set
                .item
                .into_iter()
                .map(|a| Attachment {
                    instance_id: a.instance_id,
                    device: if valid_device_name(&a.device) {
                        a.device
                    } else {
                        tracing::warn!(volume = %volume_id, device = %a.device.escape_debug(), "ignoring an attachment's device name that is not /dev/<letters and digits>");
                        String::new()
                    },
                    state: a.status,
                })
                .collect(),
            tags: v
                .tag_set
                .item
                .into_iter()
                .map(|t| (t.key, t.value))
                .collect(),
        });
    }
    Ok((out, r.next_token))
}

/// DescribeInstances' answer: each instance's addresses (IPv6 first, then
/// the primary private IPv4, then its interfaces'), unparsable ones left out.
pub(crate) fn parse_instances(text: &str) -> Result<Vec<Instance>, Ec2Error> {
    let r: InstancesResponse = quick_xml::de::from_str(text)
        .map_err(|e| Ec2Error::new("DescribeInstances", format!("unreadable answer: {e}")))?;
    let mut out = Vec::new();
    for res in r.reservation_set.item {
        for i in res.instances_set.item {
            let mut addresses: Vec<IpAddr> = Vec::new();
            let texts = i
                .ipv6_address
                .iter()
                .chain(i.private_ip_address.iter())
                .chain(
                    i.network_interface_set
                        .item
                        .iter()
                        .filter_map(|n| n.private_ip_address.as_ref()),
                );
            for t in texts {
                if let Ok(ip) = t.trim().parse::<IpAddr>()
                    && !addresses.contains(&ip)
                {
                    addresses.push(ip);
                }
            }
            out.push(Instance {
                id: i.instance_id,
                addresses,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn volumes_are_read_with_attachments_and_tags() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeVolumesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>r</requestId>
  <volumeSet>
    <item>
      <volumeId>vol-0123456789abcdef0</volumeId>
      <size>20</size>
      <availabilityZone>eu-west-1a</availabilityZone>
      <status>in-use</status>
      <attachmentSet>
        <item><volumeId>vol-0123456789abcdef0</volumeId><instanceId>i-0aaaaaaaaaaaaaaaa</instanceId><device>/dev/xvdu</device><status>attached</status></item>
      </attachmentSet>
      <tagSet>
        <item><key>k8s.io/etcd/main</key><value>a/a,b,c</value></item>
        <item><key>k8s.io/role/control-plane</key><value>1</value></item>
      </tagSet>
    </item>
    <item>
      <volumeId>vol-1123456789abcdef0</volumeId>
      <availabilityZone>eu-west-1a</availabilityZone>
      <status>available</status>
      <attachmentSet/>
      <tagSet/>
    </item>
    <item><volumeId>../etc</volumeId></item>
  </volumeSet>
  <nextToken>page2</nextToken>
</DescribeVolumesResponse>"#;
        let (vols, next) = parse_volumes(xml).unwrap();
        assert_eq!(next.as_deref(), Some("page2"));
        assert_eq!(vols.len(), 2);
        assert_eq!(vols[0].id, "vol-0123456789abcdef0");
        assert_eq!(vols[0].state, "in-use");
        assert_eq!(
            vols[0].attachments,
            vec![Attachment {
                instance_id: "i-0aaaaaaaaaaaaaaaa".into(),
                device: "/dev/xvdu".into(),
                state: "attached".into(),
            }]
        );
        assert_eq!(vols[0].tags["k8s.io/etcd/main"], "a/a,b,c");
        assert!(vols[1].attachments.is_empty() && vols[1].tags.is_empty());
    }

    /// A device name from the API becomes a path that `mkfs -F` may format:
    /// one that is not `/dev/<letters and digits>` is dropped at the answer
    /// (the volume is then found only by its NVMe link, which must point
    /// into /dev).
    #[test]
    fn device_names_from_the_answer_are_checked() {
        for ok in ["/dev/xvdu", "/dev/sdf", "/dev/nvme1n1"] {
            assert!(valid_device_name(ok), "{ok}");
        }
        for bad in [
            "",
            "xvdu",
            "/dev/",
            "/dev/../etc/passwd",
            "/dev/sd f",
            "/dev/disk/by-id/x",
            "/dev/XVDU",
        ] {
            assert!(!valid_device_name(bad), "{bad:?}");
        }
        let xml = r#"<DescribeVolumesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><volumeSet><item><volumeId>vol-0123456789abcdef0</volumeId><availabilityZone>eu-west-1a</availabilityZone><status>in-use</status><attachmentSet><item><volumeId>vol-0123456789abcdef0</volumeId><instanceId>i-0aaaaaaaaaaaaaaaa</instanceId><device>/dev/../../tmp/victim</device><status>attached</status></item></attachmentSet><tagSet/></item></volumeSet></DescribeVolumesResponse>"#;
        let (vols, _) = parse_volumes(xml).unwrap();
        assert_eq!(vols[0].attachments[0].device, "");
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("tmp")).unwrap();
        std::fs::write(root.path().join("tmp/victim"), b"").unwrap();
        assert_eq!(
            super::super::aws::find_device(
                root.path(),
                "vol-0123456789abcdef0",
                "/dev/../tmp/victim"
            ),
            None
        );
    }

    #[test]
    fn instances_and_errors_are_read() {
        let xml = r#"<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <reservationSet><item><instancesSet>
    <item><instanceId>i-0aaaaaaaaaaaaaaaa</instanceId><privateIpAddress>10.0.0.5</privateIpAddress>
      <networkInterfaceSet><item><privateIpAddress>10.0.0.5</privateIpAddress></item><item><privateIpAddress>10.0.1.5</privateIpAddress></item></networkInterfaceSet>
    </item>
    <item><instanceId>i-0bbbbbbbbbbbbbbbb</instanceId><privateIpAddress>nonsense</privateIpAddress></item>
  </instancesSet></item></reservationSet>
</DescribeInstancesResponse>"#;
        let is = parse_instances(xml).unwrap();
        assert_eq!(is.len(), 2);
        assert_eq!(
            is[0].addresses,
            vec![
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "10.0.1.5".parse().unwrap()
            ]
        );
        assert!(is[1].addresses.is_empty());
        let err = r#"<?xml version="1.0"?><Response><Errors><Error><Code>VolumeInUse</Code><Message>vol-1 is already attached to an instance</Message></Error></Errors><RequestID>x</RequestID></Response>"#;
        let e: ErrorResponse = quick_xml::de::from_str(err).unwrap();
        assert_eq!(e.errors.error[0].code, "VolumeInUse");
        assert!(parse_volumes("<not xml").is_err());
    }

    #[test]
    fn filters_become_numbered_parameters() {
        let p = filter_params(&[
            ("tag-key".into(), vec!["k8s.io/etcd/main".into()]),
            ("tag:k8s.io/role/control-plane".into(), vec!["1".into()]),
        ]);
        assert_eq!(
            p,
            vec![
                ("Filter.1.Name".to_string(), "tag-key".to_string()),
                ("Filter.1.Value.1".into(), "k8s.io/etcd/main".into()),
                (
                    "Filter.2.Name".into(),
                    "tag:k8s.io/role/control-plane".into()
                ),
                ("Filter.2.Value.1".into(), "1".into()),
            ]
        );
        assert_eq!(
            url_form(&[("Filter.1.Name", "tag:a/b=c")]),
            "Filter.1.Name=tag%3Aa%2Fb%3Dc"
        );
    }
}
