//! Identifiers that arrive from outside (peer requests, gossip, the store,
//! the state file) and end up in paths, etcd member names or log lines.
//!
//! One check for all of them: 1 to [`MAX_IDENT_LEN`] characters of
//! `[A-Za-z0-9_.-]`, not starting with `.`. That covers our node ids (22
//! characters of base64url, which may start with `-` or `_`), cluster tokens,
//! member names and upstream's volume names (`metal.k8s.local--main--0`), and
//! rules out `/`, `.`, `..`, hidden names, whitespace and control
//! characters, so a checked identifier joined into a path stays one path
//! segment. (Identifiers are passed to etcd's tools only as values of flags,
//! never where a leading `-` could read as an option.)

/// Longest identifier accepted.
pub const MAX_IDENT_LEN: usize = 128;

/// What an identifier names, for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentKind {
    /// A manager's node id (also its etcd member name).
    NodeId,
    /// An etcd cluster token (also the folder of its data dir).
    ClusterToken,
    /// An etcd member name.
    MemberName,
}

impl IdentKind {
    fn as_str(self) -> &'static str {
        match self {
            IdentKind::NodeId => "node id",
            IdentKind::ClusterToken => "cluster token",
            IdentKind::MemberName => "member name",
        }
    }
}

/// An identifier that failed [`check_ident`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {shown:?} {reason}")]
pub struct InvalidIdent {
    kind: &'static str,
    /// The value, cut to 80 characters for the message.
    shown: String,
    reason: &'static str,
}

/// Check an identifier from outside before it is used in a path, a member
/// name or a log field.
pub fn check_ident(kind: IdentKind, value: &str) -> Result<(), InvalidIdent> {
    let fail = |reason| InvalidIdent {
        kind: kind.as_str(),
        shown: value.chars().take(80).collect(),
        reason,
    };
    if value.is_empty() {
        return Err(fail("is empty"));
    }
    if value.len() > MAX_IDENT_LEN {
        return Err(fail("is longer than 128 characters"));
    }
    if value.starts_with('.') {
        return Err(fail("starts with '.'"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(fail("may hold only letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_tokens_and_names_pass_and_paths_do_not() {
        for ok in [
            "Zq3-x_9aBcDeFgHiJkLmNo",
            "4f1c2a9be0d34c56",
            "etcd-a",
            "a",
            "metal.k8s.local--main--0",
            "a..b",
            "-dwVI8-aeZj3UYvqeWzZlf",
            "_F_55cFZuwPlyz8ClPwl7d",
            &"x".repeat(128),
        ] {
            assert_eq!(check_ident(IdentKind::ClusterToken, ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "..",
            ".",
            "../x",
            "a/b",
            "a b",
            "a\nb",
            ".hidden",
            "é",
            &"x".repeat(129),
        ] {
            let err = check_ident(IdentKind::ClusterToken, bad).expect_err(bad);
            assert!(
                err.to_string().starts_with("invalid cluster token"),
                "{err}"
            );
        }
    }
}
