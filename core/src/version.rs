//! etcd versions.

use std::fmt;
use std::str::FromStr;

/// A version string that is not `MAJOR.MINOR.PATCH`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid etcd version {version:?}: expected MAJOR.MINOR.PATCH such as 3.5.30 (a leading `v` is allowed)"
)]
pub struct InvalidVersion {
    /// The text that failed to parse.
    pub version: String,
}

/// An etcd release, `"3.5.30"` -> `(3, 5, 30)`. Ordered by (major, minor, patch);
/// `Display` prints `3.5.30`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EtcdVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
}

impl EtcdVersion {
    /// Builds a version from its parts.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// Learner members (`member add --learner`, `member promote`) exist from 3.4.
    pub fn supports_learners(&self) -> bool {
        (self.major, self.minor) >= (3, 4)
    }

    /// `etcdutl` (offline snapshot restore with `--bump-revision`) ships from 3.5.
    pub fn has_etcdutl(&self) -> bool {
        (self.major, self.minor) >= (3, 5)
    }
}

impl fmt::Display for EtcdVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl FromStr for EtcdVersion {
    type Err = InvalidVersion;

    /// Accepts `3.5.30` and `v3.5.30`.
    fn from_str(s: &str) -> Result<Self, InvalidVersion> {
        let invalid = || InvalidVersion {
            version: s.to_string(),
        };
        let body = s.strip_prefix('v').unwrap_or(s);
        let mut parts = body.split('.');
        let mut next = || -> Result<u32, InvalidVersion> {
            let p = parts.next().ok_or_else(invalid)?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            p.parse().map_err(|_| invalid())
        };
        let v = EtcdVersion {
            major: next()?,
            minor: next()?,
            patch: next()?,
        };
        if parts.next().is_some() {
            return Err(invalid());
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_with_and_without_v() {
        assert_eq!(
            "3.5.30".parse::<EtcdVersion>().unwrap(),
            EtcdVersion::new(3, 5, 30)
        );
        assert_eq!(
            "v3.4.23".parse::<EtcdVersion>().unwrap(),
            EtcdVersion::new(3, 4, 23)
        );
        assert_eq!(EtcdVersion::new(3, 5, 30).to_string(), "3.5.30");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "3",
            "3.5",
            "3.5.",
            "3.5.30.1",
            "x3.5.30",
            "3.5.-1",
            "3.5.30-rc1",
            "vv3.5.1",
            "3. 5.1",
            "99999999999.1.1",
        ] {
            let e = bad.parse::<EtcdVersion>().unwrap_err();
            assert!(
                matches!(e, InvalidVersion { ref version } if version == bad),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn ordering_and_features() {
        let v33: EtcdVersion = "3.3.25".parse().unwrap();
        let v34: EtcdVersion = "3.4.23".parse().unwrap();
        let v35: EtcdVersion = "3.5.16".parse().unwrap();
        let v3530: EtcdVersion = "3.5.30".parse().unwrap();
        assert!(v33 < v34 && v34 < v35 && v35 < v3530);
        assert!(EtcdVersion::new(3, 5, 9) < EtcdVersion::new(3, 5, 10));
        assert!(!v33.supports_learners() && v34.supports_learners() && v35.supports_learners());
        assert!(!v33.has_etcdutl() && !v34.has_etcdutl() && v35.has_etcdutl());
        assert!(EtcdVersion::new(4, 0, 0).has_etcdutl());
    }
}
