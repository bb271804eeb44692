//! The bodies of the fuzz targets (`tests/fuzz/`, run by `scripts/fuzz.sh`):
//! every parser that reads bytes from outside, called exactly as production
//! calls it, with the properties that must hold for any input. Each function
//! must return (never panic, never allocate without bound) whatever `data`
//! is. The committed corpus and every crash input found run as ordinary
//! tests (`fuzz_regressions` below), so a fixed bug stays fixed in CI.

use std::time::{Duration, Instant};

use crate::driver::PeerPayload;
use crate::peer;

/// One fuzz target: it must return, whatever the bytes.
pub type Target = fn(&[u8]);

/// The targets by name, as `tests/fuzz/fuzz_targets/<name>.rs` calls them.
pub const TARGETS: &[(&str, Target)] = &[
    ("peer_frame", peer_frame),
    ("gossip_payload", gossip_payload),
    ("gossip_packet", gossip_packet),
    ("store_json", store_json),
    ("lease_record", lease_record),
    ("backup_inflate", backup_inflate),
    ("retention", retention),
    ("url_rewrite", url_rewrite),
    ("delta_segment", delta_segment),
    ("age_keys", age_keys),
    ("ec2_xml", ec2_xml),
    ("imds_answers", imds_answers),
    ("upstream_state", upstream_state),
    ("discovery_record", discovery_record),
    ("hosts_render", hosts_render),
];

/// A peer-API frame body as the server decodes it (and a response as the
/// client does). What decodes re-encodes to something that decodes equal.
pub fn peer_frame(data: &[u8]) {
    if let Ok(req) = peer::decode_request(data) {
        let again = peer::encode_request(&req).expect("a decoded request encodes");
        assert_eq!(peer::decode_request(&again).ok().as_ref(), Some(&req));
    }
    let _ = peer::decode_response(data);
}

/// A gossip payload as every manager reads its peers'.
pub fn gossip_payload(data: &[u8]) {
    if let Some(p) = PeerPayload::decode(data) {
        assert_eq!(PeerPayload::decode(&p.encode()).as_ref(), Some(&p));
    }
}

/// A UDP datagram into the gossip core, plain and with a keyring (so the
/// sealed path, `open` included, sees the bytes too).
pub fn gossip_packet(data: &[u8]) {
    use std::net::SocketAddr;
    let from: SocketAddr = ([127, 0, 0, 9], 8000).into();
    // Any instant will do for the core's timers.
    #[allow(clippy::disallowed_methods)]
    let now = Instant::now();
    for keyed in [false, true] {
        let mut config =
            gossip::GossipConfig::new("fuzz-node".into(), ([127, 0, 0, 1], 8000).into());
        if keyed {
            config.keys = gossip::GossipKeys::new(vec![[7u8; gossip::KEY_LEN]]).ok();
        }
        let Ok(mut core) = gossip::GossipCore::new(&config, b"payload".to_vec(), 1) else {
            return;
        };
        core.start(now);
        core.handle_packet(from, data, now);
        let _ = core.drain_packets();
        let _ = core.drain_events();
        let _ = core.members();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = gossip::parse_key_line(text);
    }
}

/// Every JSON model read from the store, as the store reads it.
pub fn store_json(data: &[u8]) {
    let _ = serde_json::from_slice::<backup::ClusterSpec>(data);
    let _ = serde_json::from_slice::<backup::Command>(data);
    let _ = serde_json::from_slice::<backup::CreatedMarker>(data);
    let _ = serde_json::from_slice::<backup::BackupInfo>(data);
    let _ = serde_json::from_slice::<backup::RestoreProgress>(data);
    let _ = serde_json::from_slice::<crate::status::ClusterStatus>(data);
    let _ = serde_json::from_slice::<crate::platform::discovery::Record>(data);
    if let Ok(x) = serde_json::from_slice::<backup::BackupExtra>(data) {
        let _ = x.validate();
    }
}

/// A lease record body as the lease reads it.
pub fn lease_record(data: &[u8]) {
    let prefix = object_store::path::Path::from("c/lease");
    let seq = data.first().map_or(0, |b| u64::from(*b));
    let key = lock::record_key(&prefix, seq);
    if let Ok(r) = lock::LeaseRecord::parse(&key, seq, data) {
        assert_eq!(r.seq, seq);
        assert!(!r.holder.is_empty() && !r.nonce.is_empty());
    }
}

/// Most bytes the inflate target lets a backup declare (keeps runs fast;
/// production allows [`backup::MAX_SNAPSHOT_SIZE`]).
const FUZZ_INFLATE_LIMIT: u64 = 4 << 20;

/// A backup's side file and data as a restore reads them: the first two
/// bytes give the side file's length, the rest is `etcd.backup.gz`. The side
/// file is validated before its sizes are used; inflating never writes more
/// than declared.
pub fn backup_inflate(data: &[u8]) {
    let (head, rest) = data.split_at(data.len().min(2));
    let n = head.iter().fold(0usize, |a, b| a << 8 | usize::from(*b));
    let (side, gz) = rest.split_at(n.min(rest.len()));
    let extra = serde_json::from_slice::<backup::BackupExtra>(side)
        .ok()
        .filter(|x| x.validate().is_ok());
    let limit = extra.as_ref().map_or(FUZZ_INFLATE_LIMIT, |x| {
        x.snapshot_size.min(FUZZ_INFLATE_LIMIT)
    });
    let members = extra
        .as_ref()
        .map(|x| x.members.clone())
        .filter(|m| !m.is_empty() && m.iter().map(|[g, _]| *g).sum::<u64>() == gz.len() as u64)
        .unwrap_or_default();
    if members.is_empty() {
        let mut sink = CountingSink(0);
        if let Ok((_, size)) = backup::gzip::inflate_all(gz, &mut sink, limit) {
            assert!(size <= limit && sink.0 == size);
        }
        return;
    }
    let mut at = 0usize;
    for [g, r] in members {
        let Ok(g) = usize::try_from(g) else { return };
        let Some(member) = gz.get(at..at + g) else {
            return;
        };
        at += g;
        if r > FUZZ_INFLATE_LIMIT {
            return;
        }
        if let Ok(out) = backup::gzip::inflate_member(member, r) {
            assert_eq!(out.len() as u64, r);
        }
    }
}

struct CountingSink(u64);

impl std::io::Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Backup names and retention durations: the first line is a duration for
/// both horizons, the others are names. Names that do not parse are never
/// deleted, nor the newest [`backup::MIN_KEPT_BACKUPS`].
pub fn retention(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.lines();
    let horizon = lines
        .next()
        .and_then(|l| backup::parse_retention(l).ok())
        .unwrap_or(Duration::from_secs(86_400));
    let names: Vec<String> = lines.map(str::to_string).collect();
    for n in &names {
        let _ = backup::check_backup_name(n);
    }
    let policy = backup::RetentionPolicy {
        hourly: horizon,
        daily: horizon.saturating_mul(2),
    };
    let now = chrono::DateTime::<chrono::Utc>::from_timestamp(1_800_000_000, 0).unwrap_or_default();
    let doomed = backup::select_for_deletion(&names, now, &policy);
    let mut parsed: Vec<_> = names
        .iter()
        .filter_map(|n| backup::parse_backup_name(n).map(|(t, s)| (t, s, n)))
        .collect();
    parsed.sort();
    let newest: Vec<&String> = parsed
        .iter()
        .rev()
        .take(backup::MIN_KEPT_BACKUPS)
        .map(|(_, _, n)| *n)
        .collect();
    for d in &doomed {
        assert!(
            backup::parse_backup_name(d).is_some(),
            "deleted unparseable {d}"
        );
        assert!(!newest.contains(&d), "deleted one of the newest: {d}");
    }
}

/// URL rewriting (`__name__`-style host replacement for etcd's URLs) and the
/// identifier check, on any text.
pub fn url_rewrite(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (url, host) = text.split_once('\n').unwrap_or((text, "h"));
    let out = etcd::replace_url_host(url, host);
    assert!(out.len() <= url.len() + host.len() + 2, "{out}");
    let _ = etcd::check_ident(etcd::IdentKind::ClusterToken, text);
}

/// Most bytes the segment target lets a segment inflate to (keeps runs
/// fast; production allows [`backup::MAX_SEGMENT_INFLATED`]).
const FUZZ_SEGMENT_INFLATED: u64 = 8 << 20;

/// A continuous-backup segment, as a restore reads it: the bytes as a whole
/// file, and as the body of a file whose magic and checksum are right (so
/// the fuzzer reaches inflating and decoding). What decodes is valid and
/// encodes to what decodes equal.
pub fn delta_segment(data: &[u8]) {
    use sha2::Digest;
    let _ = backup::decode_segment(data, FUZZ_SEGMENT_INFLATED);
    let file = [
        b"EMDELTA1".as_slice(),
        sha2::Sha256::digest(data).as_slice(),
        data,
    ]
    .concat();
    if let Ok(seg) = backup::decode_segment(&file, FUZZ_SEGMENT_INFLATED) {
        assert!(seg.validate().is_ok());
        let again = backup::encode_segment(&seg);
        assert_eq!(
            backup::decode_segment(&again, FUZZ_SEGMENT_INFLATED).as_ref(),
            Ok(&seg)
        );
    }
}

/// An age identity file and a recipients file, as the backup crate reads
/// them (any text).
pub fn age_keys(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(ids) = backup::crypt::parse_identities(&text) {
        assert!(!ids.is_empty());
    }
    if let Ok(r) = backup::Recipients::parse(&text) {
        assert!(!r.keys().is_empty());
    }
}

/// EC2's DescribeVolumes and DescribeInstances answers: what is read has
/// checked ids and device names.
pub fn ec2_xml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok((volumes, _)) = crate::platform::volumes::ec2::parse_volumes(&text) {
        for v in volumes {
            assert!(
                crate::platform::volumes::imds::is_aws_id(&v.id, "vol-"),
                "{}",
                v.id
            );
            for a in v.attachments {
                assert!(
                    a.device.is_empty()
                        || crate::platform::volumes::ec2::valid_device_name(&a.device),
                    "{}",
                    a.device
                );
            }
        }
    }
    let _ = crate::platform::volumes::ec2::parse_instances(&text);
}

/// The instance metadata answers (five lines: id, zone, region, IPv6,
/// IPv4): what is taken is an instance id, a zone and an address.
pub fn imds_answers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n').map(str::to_string);
    let mut next = || lines.next();
    let (id, zone) = (next().unwrap_or_default(), next().unwrap_or_default());
    let (region, v6, v4) = (next(), next(), next());
    if let Ok(i) = crate::platform::volumes::imds::check_instance(id, zone, region, v6, v4) {
        assert!(crate::platform::volumes::imds::is_aws_id(&i.id, "i-"));
        assert!(
            !i.region.is_empty()
                && i.region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{i:?}"
        );
    }
}

/// Upstream's `state` protobuf and `myid` on a data dir, as an adoption
/// reads them: what is adopted names a valid member.
pub fn upstream_state(data: &[u8]) {
    if let Ok(pb) = crate::node::upstream_state::decode_state(data)
        && let Ok(Some(local)) = crate::node::upstream_state::from_upstream(&pb)
    {
        assert!(etcd::check_ident(etcd::IdentKind::ClusterToken, &local.cluster_token).is_ok());
    }
    if let Ok(id) = crate::node::upstream_state::parse_myid(data) {
        assert!(etcd::check_ident(etcd::IdentKind::NodeId, &id).is_ok());
    }
}

/// A discovery record, from the shared folder (named by the first line)
/// and from the store: what is taken has a valid id naming its file.
pub fn discovery_record(data: &[u8]) {
    let (stem, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (
            String::from_utf8_lossy(&data[..i]).into_owned(),
            &data[i + 1..],
        ),
        None => ("a".to_string(), data),
    };
    if let Ok(r) = gossip::parse_record(body, &stem) {
        assert_eq!(r.id, stem);
        assert!(gossip::check_member_id(&r.id).is_ok());
    }
    let _ = serde_json::from_slice::<crate::platform::discovery::Record>(body);
}

/// The hosts file: any existing text, and records (lines `address name`
/// after a blank line). The block is written once, holds only addresses
/// and host names, and writing again changes nothing.
pub fn hosts_render(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (existing, recs) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut records = crate::platform::hosts::Records::new();
    for line in recs.lines() {
        let (addr, name) = line.split_once(' ').unwrap_or((line, "x"));
        records
            .entry(addr.to_string())
            .or_default()
            .insert(name.to_string());
    }
    let (ok, _) = crate::platform::hosts::checked(&records);
    let out = crate::platform::hosts::render(existing, "etcd", "internal.example", &ok);
    let begin = "# Begin host entries managed by etcd-manager[etcd] - do not edit";
    let end = "# End host entries managed by etcd-manager[etcd]";
    assert_eq!(
        out.lines().filter(|l| l.trim() == begin).count(),
        1,
        "{out:?}"
    );
    let block: Vec<&str> = out
        .lines()
        .skip_while(|l| l.trim() != begin)
        .skip(1)
        .take_while(|l| l.trim() != end)
        .collect();
    for l in block {
        let (addr, names) = l.split_once('\t').expect("address, tab, names");
        assert!(addr.parse::<std::net::IpAddr>().is_ok(), "{l:?}");
        assert!(
            names
                .split(' ')
                .all(crate::platform::hosts::valid_host_name),
            "{l:?}"
        );
    }
    assert_eq!(
        crate::platform::hosts::render(&out, "etcd", "internal.example", &ok),
        out,
        "a second write changes nothing"
    );
}

/// Well-formed inputs for each target, the seeds of its corpus
/// (`tests/fuzz/corpus/<target>/seed-*`, written by the ignored test
/// `write_seed_corpus`). Their order names the files: new seeds go last.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let node = crate::peer::EtcdNodeConfig {
        name: "GEyIUF0s9J07setaePSQ3Q".into(),
        peer_urls: vec!["https://10.0.0.1:2380".into()],
        client_urls: vec!["https://10.0.0.1:4001".into()],
        quarantined_client_urls: vec!["https://10.0.0.1:3994".into()],
    };
    let mut out = peer_seeds(&node);
    out.extend(gossip_seeds(node));
    out.extend(store_seeds());
    out.extend(backup_seeds());
    out.extend(delta_and_key_seeds());
    out.extend(cloud_seeds());
    out.extend(node_seeds());
    out
}

type Seeds = Vec<(&'static str, Vec<u8>)>;

/// Peer API requests, one of each kind that carries a body.
fn peer_seeds(node: &crate::peer::EtcdNodeConfig) -> Seeds {
    use crate::peer::{Fence, JoinCluster, JoinPhase, Request};
    let fence = Fence {
        cluster_name: "etcd".into(),
        leader_id: "GEyIUF0s9J07setaePSQ3Q".into(),
        epoch: 7,
        lease_seq: 1234,
    };
    let requests = [
        Request::GetInfo,
        Request::StopEtcd(fence.clone()),
        Request::JoinCluster(JoinCluster {
            fence: fence.clone(),
            phase: JoinPhase::Initial,
            cluster_token: "k2c4v7x9a1b3d5f6".into(),
            etcd_version: "3.5.30".into(),
            quarantined: true,
            nodes: vec![node.clone()],
        }),
        Request::GcTrashcan { fence, keep: 3 },
    ];
    requests
        .iter()
        .filter_map(|r| peer::encode_request(r).ok())
        .map(|b| ("peer_frame", b))
        .collect()
}

/// A gossip payload, and the starts of a plain and a sealed packet.
fn gossip_seeds(node: crate::peer::EtcdNodeConfig) -> Seeds {
    let info = crate::peer::NodeInfo {
        id: node.name.clone(),
        cluster_name: "etcd".into(),
        node_config: node,
        etcd_state: None,
        highest_epoch: 7,
        installed_versions: vec!["3.5.30".into()],
        jobs: Some(vec![]),
    };
    let payload = PeerPayload::from_info(&info, ([10, 0, 0, 1], 3996).into(), None);
    vec![
        ("gossip_payload", payload.encode()),
        ("gossip_packet", vec![gossip::wire::TAG_HELLO, 0, 0]),
        ("gossip_packet", vec![gossip::SEALED_V1; 60]),
    ]
}

/// The store's JSON files and a lease record.
fn store_seeds() -> Seeds {
    let mut out: Seeds = [
        r#"{"memberCount":3,"etcdVersion":"3.5.30"}"#,
        r#"{"restoreBackup":{"clusterSpec":{"memberCount":3,"etcdVersion":"3.5.30"},"backup":"2026-01-02T03:04:05Z-000001"},"timestamp":"1700000000"}"#,
        r#"{"timestamp":1700000000000000000}"#,
        r#"{"format":1,"snapshotSha256":"0000000000000000000000000000000000000000000000000000000000000000","snapshotSize":10,"compressedSha256":"0000000000000000000000000000000000000000000000000000000000000000","compressedSize":30,"writer":"x","members":[[30,10]]}"#,
    ]
    .iter()
    .map(|json| ("store_json", json.as_bytes().to_vec()))
    .collect();
    out.push((
        "lease_record",
        br#"{"holder":"a","epoch":3,"seq":123,"nonce":"a-1-2","durationMs":5000,"released":false}"#
            .to_vec(),
    ));
    out
}

/// A backup with its side file, backup names for retention, and etcd URLs.
fn backup_seeds() -> Seeds {
    let gz = backup::gzip::compress_block(b"etcd snapshot bytes", 6)
        .map(|(g, _)| g)
        .unwrap_or_default();
    let side = format!(
        r#"{{"format":1,"snapshotSha256":"{z}","snapshotSize":19,"compressedSha256":"{z}","compressedSize":{n},"writer":"x","members":[[{n},19]]}}"#,
        z = "0".repeat(64),
        n = gz.len()
    );
    let mut inflate = (side.len() as u16).to_be_bytes().to_vec();
    inflate.extend_from_slice(side.as_bytes());
    inflate.extend_from_slice(&gz);
    vec![
        ("backup_inflate", inflate),
        (
            "retention",
            b"7d\n2026-01-02T03:04:05Z-000001\n2026-01-01T03:04:05Z-000002\nnot-a-backup\n"
                .to_vec(),
        ),
        (
            "url_rewrite",
            b"https://__name__:4001/x\netcd-a.internal".to_vec(),
        ),
        ("url_rewrite", b"http://[::1]:2380\n::2".to_vec()),
    ]
}

/// A continuous-backup segment (its body and the whole file), and an age
/// identity and recipients file.
fn delta_and_key_seeds() -> Seeds {
    let seg = backup::DeltaSegment {
        base: "2026-01-02T03:04:05Z-000001".into(),
        start_revision: 5,
        end_revision: 6,
        revisions: vec![
            backup::DeltaRevision {
                revision: 5,
                at_ms: 1_700_000_000_000,
                ops: vec![backup::DeltaOp::Put {
                    key: b"/registry/pods/a".to_vec(),
                    value: b"{}".to_vec(),
                    lease: 7,
                }],
            },
            backup::DeltaRevision {
                revision: 6,
                at_ms: 1_700_000_000_001,
                ops: vec![backup::DeltaOp::Delete {
                    key: b"/registry/pods/a".to_vec(),
                }],
            },
        ],
        leases: vec![backup::DeltaLease { id: 7, ttl: 60 }],
    };
    let file = backup::encode_segment(&seg);
    let (public, identity) = backup::crypt::generate_identity("2026-01-02T03:04:05Z");
    vec![
        ("delta_segment", file.get(40..).unwrap_or_default().to_vec()),
        ("delta_segment", file),
        ("age_keys", identity.into_bytes()),
        ("age_keys", format!("# a comment\n{public}\n").into_bytes()),
    ]
}

/// EC2's answers and the instance metadata's.
fn cloud_seeds() -> Seeds {
    vec![
        (
            "ec2_xml",
            br#"<DescribeVolumesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><volumeSet><item><volumeId>vol-0123456789abcdef0</volumeId><availabilityZone>eu-west-1a</availabilityZone><status>in-use</status><attachmentSet><item><volumeId>vol-0123456789abcdef0</volumeId><instanceId>i-0aaaaaaaaaaaaaaaa</instanceId><device>/dev/xvdu</device><status>attached</status></item></attachmentSet><tagSet><item><key>k8s.io/etcd/main</key><value>a/a,b,c</value></item></tagSet></item></volumeSet></DescribeVolumesResponse>"#.to_vec(),
        ),
        (
            "ec2_xml",
            br#"<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><reservationSet><item><instancesSet><item><instanceId>i-0aaaaaaaaaaaaaaaa</instanceId><privateIpAddress>10.0.1.5</privateIpAddress><instanceState><name>running</name></instanceState></item></instancesSet></item></reservationSet></DescribeInstancesResponse>"#.to_vec(),
        ),
        (
            "imds_answers",
            b"i-0aaaaaaaaaaaaaaaa\neu-west-1a\neu-west-1\n\n10.0.1.5".to_vec(),
        ),
    ]
}

/// What a node reads on its machine: upstream's state and myid, a
/// discovery record, the hosts file.
fn node_seeds() -> Seeds {
    let local = crate::node::LocalEtcd {
        cluster_token: "k2c4v7x9a1b3d5f6".into(),
        etcd_version: "3.5.30".into(),
        nodes: vec![crate::peer::EtcdNodeConfig {
            name: "etcd-a".into(),
            peer_urls: vec!["https://etcd-a.internal.example:2380".into()],
            client_urls: vec!["https://etcd-a.internal.example:4001".into()],
            quarantined_client_urls: vec!["https://etcd-a.internal.example:3994".into()],
        }],
        quarantined: false,
        new_cluster: true,
    };
    vec![
        (
            "upstream_state",
            prost::Message::encode_to_vec(&crate::node::upstream_state::to_upstream(&local, true)),
        ),
        ("upstream_state", b"Zq3-x_9aBcDeFgHiJkLmNo".to_vec()),
        (
            "discovery_record",
            br#"etcd-a
{"id":"etcd-a","addr":"10.0.0.1:3996"}"#
                .to_vec(),
        ),
        (
            "hosts_render",
            b"127.0.0.1\tlocalhost\n# Begin host entries managed by etcd-manager[etcd] - do not edit\n10.0.0.9\told.internal.example\n# End host entries managed by etcd-manager[etcd]\n\n10.0.0.1 etcd-a.internal.example\n10.0.0.2 etcd-b.internal.example"
                .to_vec(),
        ),
    ]
}

#[cfg(test)]
mod fuzz_regressions {
    /// Writes the seeds into the corpus folders (run by hand after changing
    /// `seeds`: `cargo test -p etcd-manager --lib write_seed_corpus -- --ignored`).
    #[test]
    #[ignore]
    fn write_seed_corpus() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus");
        for (i, (name, data)) in super::seeds().into_iter().enumerate() {
            let dir = root.join(name);
            std::fs::create_dir_all(&dir).expect("corpus dir");
            std::fs::write(dir.join(format!("seed-{i}")), data).expect("write seed");
        }
    }

    /// Every seed passes its target.
    #[test]
    fn seeds_pass() {
        for (name, data) in super::seeds() {
            let target = super::TARGETS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| *t)
                .expect("a target of that name");
            target(&data);
        }
    }

    /// Each target for a bounded time (`FUZZ_SMOKE_SECS`, default 2 s) on
    /// random mutations of its corpus and seeds (bit flips, new bytes,
    /// cuts, copies, splices): the fuzzing CI runs on the stable toolchain.
    /// The coverage-guided runs are `scripts/fuzz.sh` (cargo-fuzz, nightly);
    /// their counts are in docs/security.md. The run's seed is printed and
    /// `FUZZ_SMOKE_SEED` replays it.
    #[test]
    fn every_target_survives_mutations_of_its_corpus() {
        use rand::{RngExt, SeedableRng};
        let secs: u64 = std::env::var("FUZZ_SMOKE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2);
        let seed: u64 = std::env::var("FUZZ_SMOKE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| u64::from(std::process::id()));
        println!(
            "fuzz smoke: seed {seed} (FUZZ_SMOKE_SEED={seed} replays it), {secs} s per target"
        );
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
        let seeds = super::seeds();
        for (name, target) in super::TARGETS {
            let mut inputs: Vec<Vec<u8>> = seeds
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, d)| d.clone())
                .collect();
            for sub in ["corpus", "regressions"] {
                if let Ok(entries) = std::fs::read_dir(root.join(sub).join(name)) {
                    inputs.extend(
                        entries
                            .flatten()
                            .filter_map(|e| std::fs::read(e.path()).ok()),
                    );
                }
            }
            assert!(!inputs.is_empty(), "no input for {name}");
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ name.len() as u64);
            #[allow(clippy::disallowed_methods)]
            let start = std::time::Instant::now();
            let mut runs = 0u64;
            while start.elapsed() < std::time::Duration::from_secs(secs) {
                let mut data = inputs[rng.random_range(0..inputs.len())].clone();
                for _ in 0..rng.random_range(1..8) {
                    let len = data.len();
                    match rng.random_range(0..7) {
                        0 if len > 0 => {
                            let i = rng.random_range(0..len);
                            data[i] ^= 1 << rng.random_range(0..8);
                        }
                        1 if len > 0 => {
                            let i = rng.random_range(0..len);
                            data[i] = rng.random();
                        }
                        2 => {
                            let i = rng.random_range(0..=len);
                            let n = rng.random_range(1..16);
                            let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                            data.splice(i..i, bytes);
                        }
                        3 if len > 0 => {
                            let a = rng.random_range(0..len);
                            let b = rng.random_range(a..=len);
                            data.drain(a..b);
                        }
                        4 if len > 0 => {
                            let a = rng.random_range(0..len);
                            let b = rng.random_range(a..=len.min(a + 64));
                            let copy = data[a..b].to_vec();
                            let at = rng.random_range(0..=len);
                            data.splice(at..at, copy);
                        }
                        5 => {
                            let other = &inputs[rng.random_range(0..inputs.len())];
                            let cut = rng.random_range(0..=data.len());
                            let from = rng.random_range(0..=other.len());
                            data.truncate(cut);
                            data.extend_from_slice(&other[from..]);
                        }
                        _ => {
                            let keep = rng.random_range(0..=len);
                            data.truncate(keep);
                        }
                    }
                }
                target(&data);
                runs += 1;
            }
            println!("fuzz smoke: {name}: {runs} runs");
            assert!(runs > 0, "{name} never ran");
        }
    }

    /// Every committed corpus input and crash reproducer, through its target.
    #[test]
    fn corpus_and_crash_inputs_pass() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
        let mut ran = 0usize;
        for (name, target) in super::TARGETS {
            for sub in ["corpus", "regressions"] {
                let dir = root.join(sub).join(name);
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    assert!(
                        sub == "regressions",
                        "no seed corpus for {name} in {}",
                        dir.display()
                    );
                    continue;
                };
                for e in entries.flatten() {
                    let data = std::fs::read(e.path()).expect("read a corpus file");
                    target(&data);
                    ran += 1;
                }
            }
        }
        assert!(ran >= super::TARGETS.len(), "only {ran} inputs ran");
    }
}

/// Round trips of everything that crosses a boundary, on generated values.
#[cfg(test)]
mod round_trips {
    use proptest::prelude::*;

    use crate::driver::{EtcdSummary, PeerPayload};
    use crate::peer::{self, EtcdNodeConfig, Fence, JoinCluster, JoinPhase, Request};

    fn ident() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_][A-Za-z0-9_-]{0,30}"
    }

    fn node() -> impl Strategy<Value = EtcdNodeConfig> {
        (ident(), prop::collection::vec(".{0,40}", 0..3)).prop_map(|(name, urls)| EtcdNodeConfig {
            name,
            peer_urls: urls.clone(),
            client_urls: urls.clone(),
            quarantined_client_urls: urls,
        })
    }

    fn fence() -> impl Strategy<Value = Fence> {
        (".{0,20}", ident(), any::<u64>(), any::<u64>()).prop_map(
            |(cluster_name, leader_id, epoch, lease_seq)| Fence {
                cluster_name,
                leader_id,
                epoch,
                lease_seq,
            },
        )
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            Just(Request::GetInfo),
            fence().prop_map(Request::StopEtcd),
            (fence(), any::<u32>()).prop_map(|(fence, keep)| Request::GcTrashcan { fence, keep }),
            (
                fence(),
                ident(),
                ".{0,12}",
                any::<bool>(),
                prop::collection::vec(node(), 0..5)
            )
                .prop_map(
                    |(fence, cluster_token, etcd_version, quarantined, nodes)| {
                        Request::JoinCluster(JoinCluster {
                            fence,
                            phase: JoinPhase::JoinExisting,
                            cluster_token,
                            etcd_version,
                            quarantined,
                            nodes,
                        })
                    }
                ),
        ]
    }

    proptest! {
        #[test]
        fn peer_requests_round_trip(req in request()) {
            let bytes = peer::encode_request(&req).expect("encode");
            prop_assert_eq!(peer::decode_request(&bytes).ok(), Some(req));
            // Any cut of a valid frame is refused, never a panic.
            for cut in [1, bytes.len() / 2, bytes.len().saturating_sub(1)] {
                if cut < bytes.len() {
                    prop_assert!(peer::decode_request(&bytes[..cut]).is_err());
                }
            }
        }

        #[test]
        fn gossip_payloads_round_trip(n in node(), token in ident(), cluster in ".{0,20}", running in any::<bool>(), port in any::<u16>()) {
            let p = PeerPayload {
                cluster_name: cluster,
                peer_api: ([10, 1, 2, 3], port).into(),
                node_config: n,
                etcd: Some(EtcdSummary { cluster_token: token, etcd_version: "3.5.30".into(), running, quarantined: !running }),
                lease: None,
            };
            prop_assert_eq!(PeerPayload::decode(&p.encode()), Some(p));
        }

        #[test]
        fn lease_records_round_trip(holder in ".{1,30}", nonce in ".{1,30}", epoch in any::<u64>(), seq in any::<u64>(), duration_ms in any::<u64>(), released in any::<bool>()) {
            let r = lock::LeaseRecord { holder, epoch, seq, nonce, duration_ms, released };
            let key = lock::record_key(&object_store::path::Path::from("p"), seq);
            prop_assert_eq!(lock::LeaseRecord::parse(&key, seq, &r.to_json()).ok(), Some(r));
        }

        #[test]
        fn backup_names_round_trip(secs in 0i64..4_000_000_000, seq in 0u32..1_000_000) {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
            let name = backup::format_backup_name(t, seq);
            prop_assert!(backup::check_backup_name(&name).is_ok());
            let (back, s) = backup::parse_backup_name(&name).expect("parses");
            prop_assert_eq!((back.timestamp(), s), (secs, seq));
        }

        #[test]
        fn backup_side_files_round_trip(members in prop::collection::vec((1u64..2000, 1u64..(1 << 20)), 0..20)) {
            let members: Vec<[u64; 2]> = members.into_iter().map(|(g, r)| [g.min(r), r]).collect();
            let x = backup::BackupExtra {
                format: 1,
                snapshot_sha256: "a".repeat(64),
                snapshot_size: members.iter().map(|m| m[1]).sum(),
                compressed_sha256: "b".repeat(64),
                compressed_size: members.iter().map(|m| m[0]).sum(),
                revision: Some(5),
                leader_epoch: None,
                writer: "w".into(),
                members,
                kv_hash: Some(backup::KvHash { revision: 5, hash: 7, compact_revision: 1 }),
                cluster_id: Some("cdf818194e3a8c32".into()),
                replayed_from: None,
                encryption: None,
                requested_at: Some(1_796_000_000_000_000_000),
            };
            let json = serde_json::to_vec(&x).expect("json");
            let back: backup::BackupExtra = serde_json::from_slice(&json).expect("parse");
            prop_assert!(back.validate().is_ok());
            prop_assert_eq!(back, x);
        }
    }
}
