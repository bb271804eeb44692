//! The store's messages in proto3 canonical JSON, as upstream writes them:
//! lowerCamelCase keys (snake_case accepted when reading), int64 as JSON
//! strings (numbers accepted when reading), zero fields omitted, unknown
//! fields ignored. Never add fields to these types: an upstream reader may
//! reject them. Our own facts go into [`BackupExtra`], a separate file.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use etcd_manager_core::ClusterSpec;

/// `<backup>/_etcd_backup.meta`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupInfo {
    #[serde(
        default,
        alias = "etcd_version",
        skip_serializing_if = "String::is_empty"
    )]
    pub etcd_version: String,
    /// Unix seconds.
    #[serde(default, with = "int64", skip_serializing_if = "is_zero_i64")]
    pub timestamp: i64,
    #[serde(
        default,
        alias = "cluster_spec",
        skip_serializing_if = "Option::is_none"
    )]
    pub cluster_spec: Option<ClusterSpec>,
}

/// `control/<name>/_command.json`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Command {
    /// Unix nanoseconds.
    #[serde(default, with = "int64", skip_serializing_if = "is_zero_i64")]
    pub timestamp: i64,
    #[serde(
        default,
        alias = "restore_backup",
        skip_serializing_if = "Option::is_none"
    )]
    pub restore_backup: Option<RestoreBackupCommand>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreBackupCommand {
    #[serde(
        default,
        alias = "cluster_spec",
        skip_serializing_if = "Option::is_none"
    )]
    pub cluster_spec: Option<ClusterSpec>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backup: String,
}

/// `control/etcd-cluster-created`: `{"timestamp":<unix nanos as a number>}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CreatedMarker {
    #[serde(default, deserialize_with = "int64::deserialize")]
    pub timestamp: i64,
}

/// Our side file in each backup we write, written before the meta.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupExtra {
    pub format: u32,
    /// Hex SHA-256 of the uncompressed etcd snapshot.
    pub snapshot_sha256: String,
    pub snapshot_size: u64,
    /// Hex SHA-256 of `etcd.backup.gz` as stored.
    pub compressed_sha256: String,
    pub compressed_size: u64,
    #[serde(default)]
    pub revision: Option<i64>,
    #[serde(default)]
    pub leader_epoch: Option<u64>,
    pub writer: String,
    /// `[compressed, uncompressed]` size of each gzip member of
    /// `etcd.backup.gz`, in order (see [`crate::gzip`]); empty for a single
    /// stream. Lets a restore inflate members in parallel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<[u64; 2]>,
    /// etcd's HashKV of the live cluster at `revision`, taken just before
    /// the snapshot: what a restore drill must find in the restored data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_hash: Option<KvHash>,
    /// The etcd cluster id the snapshot came from (16 hex digits): a
    /// continuous backup resumes a chain only on the cluster it began on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Made by replaying this backup's continuous-backup segments (a
    /// restore to a point), not read from a live cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_from: Option<String>,
    /// Set when `etcd.backup.gz` is an age file of the gzip stream (see
    /// [`crate::crypt`]); the checksum and size above are the ciphertext's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<BackupEncryption>,
    /// Taken for an operator's `backup-now` request: the request's stamp
    /// (ns since the epoch, as `etcd-manager-ctl` wrote it). The snapshot
    /// began after the leader read that request, so it holds every write
    /// acknowledged before the operator asked; the ctl waits for a backup
    /// with its stamp (or a later one), not for any new backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<u64>,
}

/// How a backup is encrypted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupEncryption {
    /// `age`.
    pub scheme: String,
    /// The public keys it was encrypted to (`age1…`): a replay encrypts its
    /// result to the same ones, and an operator sees which key restores it.
    pub recipients: Vec<String>,
}

/// What a backup's writer knows of it besides the snapshot, kept in its
/// side file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupFacts {
    /// The live cluster's HashKV at the backup's revision (restore drills).
    pub kv_hash: Option<KvHash>,
    /// The etcd cluster id, see [`BackupExtra::cluster_id`].
    pub cluster_id: Option<u64>,
    /// See [`BackupExtra::replayed_from`].
    pub replayed_from: Option<String>,
    /// See [`BackupExtra::requested_at`].
    pub requested_at: Option<u64>,
}

/// etcd's HashKV of a member at one revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KvHash {
    pub revision: i64,
    pub hash: u32,
    /// The member's compacted revision when it hashed.
    pub compact_revision: i64,
}

/// What a restore drill of a backup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrillVerdict {
    /// Restored, served by a throwaway etcd, and its HashKV at the
    /// backup's revision equals the live cluster's.
    Verified,
    /// Restored and served, but its HashKV differs: the data is not what
    /// the cluster held.
    Mismatch,
    /// Restored and served; the backup carries no HashKV to compare with
    /// (written by upstream or before drills existed).
    Restored,
    /// Could not be checked or restored (see the reason).
    Failed,
}

impl DrillVerdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            DrillVerdict::Verified => "verified",
            DrillVerdict::Mismatch => "mismatch",
            DrillVerdict::Restored => "restored",
            DrillVerdict::Failed => "failed",
        }
    }
}

/// The result of a restore drill, kept beside the backup
/// ([`crate::BACKUP_DRILL_FILE`]); the newest drill replaces the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillRecord {
    pub verdict: DrillVerdict,
    /// Why, in words (empty when verified).
    #[serde(default)]
    pub reason: String,
    /// When the drill ended, Unix seconds.
    pub at: i64,
    /// The manager (or `etcd-manager-ctl`) that ran it.
    pub by: String,
    /// How long it took, milliseconds.
    pub millis: u64,
    /// The etcd version that served the restored data.
    #[serde(default)]
    pub etcd_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<KvHash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found: Option<KvHash>,
}

/// Largest snapshot a backup may declare (etcd's own limit on a database is
/// far lower: 8 GiB is its suggested maximum quota).
pub const MAX_SNAPSHOT_SIZE: u64 = 64 << 30;
/// Largest uncompressed gzip member a backup's index may declare (ours are
/// [`crate::gzip::BLOCK_SIZE`]).
pub const MAX_MEMBER_SIZE: u64 = 64 << 20;

/// Why a backup's side file cannot be trusted
/// ([`BackupExtra::validate`]): a declaration that cannot be true of a
/// backup we wrote. Permanent; choose another backup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidExtra {
    #[error("a checksum is not 64 hex digits")]
    Checksum,
    #[error("clusterId is not 16 hex digits")]
    ClusterId,
    #[error("replayedFrom is not a backup name")]
    ReplayedFrom,
    /// `scheme`: at most its first 32 characters.
    #[error(
        "encryption scheme '{scheme}' is not one this version knows (age); a newer etcd-manager wrote it"
    )]
    UnknownScheme { scheme: String },
    #[error("encryption recipients: {0}")]
    Recipients(#[source] crate::crypt::KeyFileError),
    #[error("declares a snapshot of {size} bytes, more than the {MAX_SNAPSHOT_SIZE} accepted")]
    SnapshotTooLarge { size: u64 },
    #[error(
        "gzip member {index} declares {gz} compressed and {raw} uncompressed bytes, which cannot be"
    )]
    Member { index: usize, gz: u64, raw: u64 },
    #[error(
        "its gzip members add up to {gz_sum} compressed and {raw_sum} uncompressed bytes, \
         but it declares {compressed} and {snapshot}"
    )]
    Sizes {
        gz_sum: u64,
        raw_sum: u64,
        compressed: u64,
        snapshot: u64,
    },
}

impl BackupExtra {
    /// Check the declared sizes against each other before anything is
    /// allocated or inflated from them: every member within
    /// [`MAX_MEMBER_SIZE`] (compressed at most a stored block's overhead
    /// larger), the members adding up to the declared sizes, the snapshot
    /// within [`MAX_SNAPSHOT_SIZE`], checksums 64 hex digits.
    /// [`BackupExtra::cluster_id`] as a number.
    pub fn cluster_id_u64(&self) -> Option<u64> {
        let id = self.cluster_id.as_deref()?;
        (id.len() == 16).then(|| u64::from_str_radix(id, 16).ok())?
    }

    pub fn validate(&self) -> Result<(), InvalidExtra> {
        let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex64(&self.snapshot_sha256) || !hex64(&self.compressed_sha256) {
            return Err(InvalidExtra::Checksum);
        }
        if self.cluster_id.is_some() && self.cluster_id_u64().is_none() {
            return Err(InvalidExtra::ClusterId);
        }
        if let Some(b) = &self.replayed_from
            && crate::check_backup_name(b).is_err()
        {
            return Err(InvalidExtra::ReplayedFrom);
        }
        if let Some(e) = &self.encryption {
            if e.scheme != crate::crypt::SCHEME_AGE {
                return Err(InvalidExtra::UnknownScheme {
                    scheme: e.scheme.chars().take(32).collect(),
                });
            }
            crate::Recipients::parse(&e.recipients.join("\n")).map_err(InvalidExtra::Recipients)?;
        }
        if self.snapshot_size > MAX_SNAPSHOT_SIZE {
            return Err(InvalidExtra::SnapshotTooLarge {
                size: self.snapshot_size,
            });
        }
        if self.members.is_empty() {
            return Ok(());
        }
        let (mut gz_sum, mut raw_sum) = (0u64, 0u64);
        for (i, [gz, raw]) in self.members.iter().enumerate() {
            // A stored (level 0) member: header and trailer (18 bytes), 5
            // bytes per 64 KiB block; deflate never does worse.
            let worst = raw.saturating_add(raw / 1024 * 5 + 1024);
            if *raw > MAX_MEMBER_SIZE || *gz > worst {
                return Err(InvalidExtra::Member {
                    index: i,
                    gz: *gz,
                    raw: *raw,
                });
            }
            gz_sum = gz_sum.saturating_add(*gz);
            raw_sum = raw_sum.saturating_add(*raw);
        }
        // Encrypted, the stored file is the gzip plus age's header (a
        // stanza of about 100 bytes per recipient), its 16-byte nonce and a
        // 16-byte tag per 64 KiB chunk.
        let stored_fits = match &self.encryption {
            None => gz_sum == self.compressed_size,
            Some(e) => self
                .compressed_size
                .checked_sub(gz_sum)
                .is_some_and(|extra| {
                    extra
                        <= 16 * (gz_sum / (64 << 10) + 1)
                            + 16
                            + 256
                            + 160 * e.recipients.len() as u64
                }),
        };
        if !stored_fits || raw_sum != self.snapshot_size {
            return Err(InvalidExtra::Sizes {
                gz_sum,
                raw_sum,
                compressed: self.compressed_size,
                snapshot: self.snapshot_size,
            });
        }
        Ok(())
    }
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

/// int64 in proto3 JSON: written as a string, read from a string or a number.
mod int64 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            N(i64),
            F(f64),
            S(String),
        }
        match Either::deserialize(d)? {
            Either::N(n) => Ok(n),
            Either::F(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Ok(f as i64),
            Either::F(f) => Err(serde::de::Error::custom(format!("{f} is not an integer"))),
            Either::S(s) => s
                .trim()
                .parse()
                .map_err(|_| serde::de::Error::custom(format!("'{s}' is not an int64"))),
        }
    }
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn spec_fields(s: &ClusterSpec) -> Vec<String> {
    let mut f = vec![];
    if s.member_count != 0 {
        f.push(format!("member_count:{}", s.member_count));
    }
    if !s.etcd_version.is_empty() {
        f.push(format!("etcd_version:{}", quote(&s.etcd_version)));
    }
    f
}

fn nested(name: &str, fields: Vec<String>) -> String {
    let mut s = format!("{name}:<");
    for f in fields {
        s.push_str(&f);
        s.push(' ');
    }
    s.push('>');
    s
}

/// A spec in upstream's text form, as `etcd-manager-ctl get` prints it:
/// `member_count:3 etcd_version:"3.5.30"`.
pub fn spec_upstream_text(spec: &ClusterSpec) -> String {
    spec_fields(spec).join(" ")
}

impl Command {
    /// Upstream's compact text form, e.g. `timestamp:1547480961703914946
    /// restore_backup:<cluster_spec:<member_count:3 etcd_version:"2.2.1" > backup:"..." >`.
    pub fn to_upstream_text(&self) -> String {
        let mut f = vec![];
        if self.timestamp != 0 {
            f.push(format!("timestamp:{}", self.timestamp));
        }
        if let Some(r) = &self.restore_backup {
            let mut inner = vec![];
            if let Some(cs) = &r.cluster_spec {
                inner.push(nested("cluster_spec", spec_fields(cs)));
            }
            if !r.backup.is_empty() {
                inner.push(format!("backup:{}", quote(&r.backup)));
            }
            f.push(nested("restore_backup", inner));
        }
        f.join(" ")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn upstream_examples_parse_in_both_cases() {
        let spec: ClusterSpec =
            serde_json::from_str("{\n  \"memberCount\": 3,\n  \"etcdVersion\": \"3.5.30\"\n}")
                .unwrap();
        assert_eq!(
            spec,
            ClusterSpec {
                member_count: 3,
                etcd_version: "3.5.30".into()
            }
        );
        let snake: ClusterSpec =
            serde_json::from_str(r#"{"member_count":3,"etcd_version":"3.5.30","extra":1}"#)
                .unwrap();
        assert_eq!(snake, spec);

        let info: BackupInfo = serde_json::from_str(
            r#"{"etcdVersion":"3.4.13","timestamp":"1704067200","clusterSpec":{"memberCount":3,"etcdVersion":"3.4.13"}}"#,
        )
        .unwrap();
        assert_eq!(info.timestamp, 1704067200);
        assert_eq!(info.cluster_spec.unwrap().member_count, 3);
        let info: BackupInfo = serde_json::from_str(
            r#"{"etcd_version":"3.4.13","timestamp":1704067200,"cluster_spec":{"member_count":1}}"#,
        )
        .unwrap();
        assert_eq!(info.timestamp, 1704067200);

        let cmd: Command = serde_json::from_str(
            r#"{"timestamp":"1547480961703914946","restoreBackup":{"clusterSpec":{"memberCount":3,"etcdVersion":"3.4.13"},"backup":"2019-01-14T15:29:48Z-000003"}}"#,
        )
        .unwrap();
        assert_eq!(cmd.timestamp, 1547480961703914946);
        assert_eq!(
            cmd.to_upstream_text(),
            "timestamp:1547480961703914946 restore_backup:<cluster_spec:<member_count:3 etcd_version:\"3.4.13\" > \
             backup:\"2019-01-14T15:29:48Z-000003\" >"
        );
        let created: CreatedMarker =
            serde_json::from_str(r#"{"timestamp":1638935701000000000}"#).unwrap();
        assert_eq!(created.timestamp, 1638935701000000000);
    }

    #[test]
    fn writes_proto3_json() {
        let info = BackupInfo {
            etcd_version: "3.5.30".into(),
            timestamp: 1704067200,
            cluster_spec: Some(ClusterSpec {
                member_count: 3,
                etcd_version: "3.5.30".into(),
            }),
        };
        let text = String::from_utf8(serde_json::to_vec_pretty(&info).unwrap()).unwrap();
        assert!(text.contains("\n  \"etcdVersion\": \"3.5.30\""), "{text}");
        assert!(text.contains("\"timestamp\": \"1704067200\""), "{text}");
        assert!(text.contains("\"memberCount\": 3"), "{text}");
        let empty = serde_json::to_string(&ClusterSpec::default()).unwrap();
        assert_eq!(empty, "{}");
        let created = serde_json::to_string(&CreatedMarker { timestamp: 5 }).unwrap();
        assert_eq!(created, r#"{"timestamp":5}"#);
    }

    #[test]
    fn bad_int64_is_an_error_not_a_panic() {
        assert!(serde_json::from_str::<BackupInfo>(r#"{"timestamp":"soon"}"#).is_err());
        assert!(serde_json::from_str::<BackupInfo>(r#"{"timestamp":1.5}"#).is_err());
    }
}
