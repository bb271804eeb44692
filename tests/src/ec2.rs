//! Setting up EC2 on moto for a test, as a cloud operator (or kops) would:
//! a VPC and subnet of the test's own addresses, instances at chosen private
//! addresses, tagged volumes, detaches and terminations. Plain query calls;
//! moto reads the region from the credential scope and checks no signature.

/// EC2 on moto in one region.
pub struct Ec2Setup {
    addr: String,
    region: String,
}

/// The text between `<tag>` and `</tag>`, first occurrence.
pub fn xml_value(text: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&format!("</{tag}>"))? + start;
    Some(text[start..end].to_string())
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// An image in moto's base list (`moto/ec2/resources/amis.json`).
const MOTO_IMAGE: &str = "ami-12c6146b";

/// How long moto may take to build a region's EC2 backend (see [`Ec2Setup::ready`]).
const READY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

impl Ec2Setup {
    /// `endpoint` is moto's `http://host:port`.
    pub fn new(endpoint: &str, region: &str) -> Ec2Setup {
        Ec2Setup {
            addr: endpoint.trim_start_matches("http://").to_string(),
            region: region.to_string(),
        }
    }

    /// Wait until moto has built this region's EC2 backend. It does that on
    /// the region's first call, loading its image and instance type
    /// catalogues: 1.3 s on an idle machine here, past the 5 s a call gets
    /// on a loaded one (a CI run's CreateVpc missed it). So the first call
    /// has its own deadline, once; every later call has the usual one.
    pub async fn ready(&self) {
        self.call_within("DescribeVpcs", &[], READY_DEADLINE).await;
    }

    /// One call: the answer's body; a panic naming the call on an error.
    pub async fn call(&self, action: &str, params: &[(&str, &str)]) -> String {
        self.call_within(action, params, crate::moto::CALL_DEADLINE)
            .await
    }

    async fn call_within(
        &self,
        action: &str,
        params: &[(&str, &str)],
        deadline: std::time::Duration,
    ) -> String {
        let mut body = format!("Action={action}&Version=2016-11-15");
        for (k, v) in params {
            body.push_str(&format!("&{}={}", encode(k), encode(v)));
        }
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=testing/20261130/{}/ec2/aws4_request, SignedHeaders=host, Signature=0",
            self.region
        );
        let (code, resp) = crate::moto::request_within(
            &self.addr,
            "POST",
            "/",
            &[("Authorization", &auth)],
            "application/x-www-form-urlencoded",
            &body,
            deadline,
        )
        .await
        .unwrap_or_else(|e| panic!("EC2 {action}: {e}"));
        assert_eq!(code, 200, "EC2 {action} {params:?}: {resp}");
        resp
    }

    /// A VPC and a subnet `cidr` in `zone`: the subnet's id.
    pub async fn subnet(&self, cidr: &str, zone: &str) -> String {
        let vpc = self.call("CreateVpc", &[("CidrBlock", cidr)]).await;
        let vpc = xml_value(&vpc, "vpcId").expect("vpcId");
        let sn = self
            .call(
                "CreateSubnet",
                &[
                    ("VpcId", &vpc),
                    ("CidrBlock", cidr),
                    ("AvailabilityZone", zone),
                ],
            )
            .await;
        xml_value(&sn, "subnetId").expect("subnetId")
    }

    /// An instance in `subnet` at `private_ip`: its id.
    pub async fn run_instance(&self, subnet: &str, private_ip: &str) -> String {
        // One image moto has carried in its base list for years, asked for
        // by id: describing all 1,355 of them renders 1.2 MB of XML (0.8 s
        // on an idle machine, past the 5 s call deadline on a loaded one).
        let images = self
            .call("DescribeImages", &[("ImageId.1", MOTO_IMAGE)])
            .await;
        let image = xml_value(&images, "imageId").unwrap_or_else(|| {
            panic!(
                "moto no longer has the image {MOTO_IMAGE}: pick one from its amis.json: {images}"
            )
        });
        let r = self
            .call(
                "RunInstances",
                &[
                    ("ImageId", &image),
                    ("MinCount", "1"),
                    ("MaxCount", "1"),
                    ("SubnetId", subnet),
                    ("PrivateIpAddress", private_ip),
                ],
            )
            .await;
        xml_value(&r, "instanceId").expect("instanceId")
    }

    /// A 1 GiB volume in `zone` with `tags`: its id.
    pub async fn create_volume(&self, zone: &str, tags: &[(&str, &str)]) -> String {
        let mut params: Vec<(String, String)> = vec![
            ("AvailabilityZone".into(), zone.into()),
            ("Size".into(), "1".into()),
            ("TagSpecification.1.ResourceType".into(), "volume".into()),
        ];
        for (i, (k, v)) in tags.iter().enumerate() {
            params.push((
                format!("TagSpecification.1.Tag.{}.Key", i + 1),
                k.to_string(),
            ));
            params.push((
                format!("TagSpecification.1.Tag.{}.Value", i + 1),
                v.to_string(),
            ));
        }
        let refs: Vec<(&str, &str)> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = self.call("CreateVolume", &refs).await;
        xml_value(&r, "volumeId").expect("volumeId")
    }

    /// The instance `volume` is attached to, if any.
    pub async fn attached_to(&self, volume: &str) -> Option<String> {
        let r = self
            .call("DescribeVolumes", &[("VolumeId.1", volume)])
            .await;
        let set = xml_value(&r, "attachmentSet")?;
        xml_value(&set, "instanceId")
    }

    /// What AWS does to a terminated master's volume: detached.
    pub async fn detach(&self, volume: &str, instance: &str) {
        self.call(
            "DetachVolume",
            &[
                ("VolumeId", volume),
                ("InstanceId", instance),
                ("Force", "true"),
            ],
        )
        .await;
    }

    pub async fn terminate(&self, instance: &str) {
        self.call("TerminateInstances", &[("InstanceId.1", instance)])
            .await;
    }
}
