//! The gossip key file (`--gossip-key-file`): format and errors.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use gossip::{Error, load_key_file, parse_key_line};

/// 32 bytes 0x00, 0x01, ..., 0x1f.
fn counting() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}

const COUNTING_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const COUNTING_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn key_lines_in_hex_and_base64() {
    assert_eq!(parse_key_line(COUNTING_HEX).unwrap(), counting());
    assert_eq!(
        parse_key_line(&COUNTING_HEX.to_uppercase()).unwrap(),
        counting()
    );
    assert_eq!(parse_key_line(COUNTING_B64).unwrap(), counting());
    // Without padding, and with surrounding whitespace.
    assert_eq!(
        parse_key_line(&format!("  {}\t", COUNTING_B64.trim_end_matches('='))).unwrap(),
        counting()
    );
    for bad in [
        "",
        "abc",
        &COUNTING_HEX[..62],
        &format!("{COUNTING_HEX}00"),
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==", // 31 bytes
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g", // 33 bytes
        "!!ECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= extra",
    ] {
        let err = parse_key_line(bad).unwrap_err();
        assert!(!err.is_empty(), "{bad:?}");
        assert!(
            !err.contains("AAEC") && !err.contains("000102"),
            "{bad:?} leaked into {err:?}"
        );
    }
}

#[test]
fn good_files_with_comments_blank_lines_and_both_encodings() {
    let dir = tempfile::tempdir().unwrap();
    let second = [0xEEu8; 32];
    let path = write(
        dir.path(),
        "keys",
        &format!(
            "# gossip keys: the first one sends\n\n  {COUNTING_B64}  \r\n   # old key, still accepted\n{}\n\n",
            "ee".repeat(32)
        ),
    );
    let keys = load_key_file(&path).unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys.keys(), &[counting(), second]);
    assert_eq!(keys.sending_key(), &counting());

    let path = write(dir.path(), "one", COUNTING_HEX);
    assert_eq!(load_key_file(&path).unwrap().keys(), &[counting()]);
}

#[test]
fn bad_files_name_the_file_and_line_and_never_the_key() {
    let dir = tempfile::tempdir().unwrap();
    // Line 4 is a 31-byte key; line 2 is fine.
    let short = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==";
    let path = write(
        dir.path(),
        "short",
        &format!("# keys\n{COUNTING_HEX}\n\n{short}\n"),
    );
    let err = load_key_file(&path).unwrap_err();
    assert!(
        matches!(err, Error::KeyFile { line: 4, ref path, .. } if path.ends_with("short")),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("line 4"), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("31 bytes"), "{message}");
    assert!(message.contains("64 hex digits"), "{message}");
    for secret in [short, &short[..12], COUNTING_HEX, &COUNTING_HEX[..12]] {
        assert!(!message.contains(secret), "key material in {message}");
    }

    // A key with a trailing comment is not a key.
    let path = write(
        dir.path(),
        "comment",
        &format!("{COUNTING_HEX}\n{COUNTING_B64} # new\n"),
    );
    let err = load_key_file(&path).unwrap_err();
    assert!(matches!(err, Error::KeyFile { line: 2, .. }), "{err:?}");
    assert!(!err.to_string().contains("AAEC"), "{err}");

    // Only comments: no key.
    let path = write(dir.path(), "empty", "# nothing yet\n\n");
    let err = load_key_file(&path).unwrap_err();
    assert!(matches!(err, Error::KeyFile { line: 0, .. }), "{err:?}");
    assert!(err.to_string().contains("no key"), "{err}");

    // Missing file.
    let missing = dir.path().join("missing");
    let err = load_key_file(&missing).unwrap_err();
    assert!(matches!(err, Error::KeyFileRead { .. }), "{err:?}");
    assert!(err.to_string().contains("--gossip-key-file"), "{err}");

    // An empty keyring is refused.
    assert!(gossip::GossipKeys::new(Vec::new()).is_err());
}
