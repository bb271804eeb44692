//! Member ids as they arrive from the network or a discovery file.
//!
//! A member id ends up in log fields, file names of the discovery folder,
//! peer names in `/etc/hosts` (with `--dns-suffix`) and etcd member names, so
//! every id is checked where it enters (the codec, hellos, discovery
//! records): 1 to [`MAX_ID_LEN`] characters of `[A-Za-z0-9_.-]`, not
//! starting with `.`. This is the rule of `etcd::check_ident`, the one the
//! rest of the manager applies to identifiers from outside (a test in the
//! root package holds the two to the same answers).

/// Longest member id accepted.
pub const MAX_ID_LEN: usize = 128;

/// Why `id` is not a valid member id, or `Ok`.
pub fn check_member_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("is empty");
    }
    if id.len() > MAX_ID_LEN {
        return Err("is longer than 128 characters");
    }
    if id.starts_with('.') {
        return Err("starts with '.'");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err("may hold only letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_managers_pass_and_anything_that_could_break_a_line_does_not() {
        for ok in [
            "Zq3-x_9aBcDeFgHiJkLmNo",
            "etcd-a",
            "metal.k8s.local--main--0",
            "-dwVI8-aeZj3UYvqeWzZlf",
            &"x".repeat(128),
        ] {
            assert_eq!(check_member_id(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a b",
            "a\tb",
            "a\nb",
            "a\n# End host entries managed by etcd-manager[etcd]\n10.6.6.6\tkubernetes.default.svc etcd-a",
            "a/b",
            "a#b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(check_member_id(bad).is_err(), "{bad:?}");
        }
    }
}
