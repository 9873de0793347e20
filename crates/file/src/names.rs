//! Lock names to safe file names.
//!
//! Any string is a valid lock name, but a file name must avoid path separators, control
//! characters, names like `..` and lengths the file system refuses. The file name keeps a
//! readable, sanitized prefix of the lock name (so `ls` of the lock directory means something)
//! and ends with a hash of the whole name, so two distinct names never share a file, even when
//! they sanitize to the same prefix or differ only in case (macOS and Windows file systems fold
//! case).

use sha1::{Digest, Sha1};

/// The longest readable prefix kept from a name, in characters (each one ASCII byte once
/// sanitized).
const MAX_PREFIX: usize = 64;

/// The file name of the lock (and reader-writer lock) `name`: `<stem>.lock`.
pub fn lock_file_name(name: &str) -> String {
    format!("{}.lock", file_stem(name))
}

/// The file name of slot `slot` of the semaphore whose stem is `stem`: `<stem>.sem<slot>`.
pub fn slot_file_name(stem: &str, slot: u32) -> String {
    format!("{stem}.sem{slot}")
}

/// The file name of the fencing counter of the semaphore whose stem is `stem`.
pub fn semaphore_counter_file_name(stem: &str) -> String {
    format!("{stem}.semtoken")
}

/// The stem of the files for `name`: `<prefix>-<hash>`, where `<prefix>` is the first 64
/// characters (Unicode scalar values) of `name`, each ASCII letter, digit, `-`, `_` and `.` kept
/// and every other character replaced by one `_`, then a leading `.` replaced by `_`; and
/// `<hash>` is the first 8 bytes of SHA-1 of the whole name's UTF-8 bytes, as 16 lowercase hex
/// digits. At most 81 bytes.
pub fn file_stem(name: &str) -> String {
    let mut stem: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_PREFIX)
        .collect();
    // A leading dot would hide the file and `.`/`..` would name directories.
    if stem.starts_with('.') {
        stem.replace_range(0..1, "_");
    }
    let digest = Sha1::digest(name.as_bytes());
    stem.push('-');
    for byte in &digest[..8] {
        stem.push_str(&format!("{byte:02x}"));
    }
    stem
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn stems_are_safe() {
        for name in [
            "a/b",
            "..",
            ".",
            "../../etc/passwd",
            "C:\\x",
            "con",
            "\0",
            "a b\nc",
            &"x".repeat(10_000),
            "漢字",
        ] {
            let stem = file_stem(name);
            assert!(stem.len() <= MAX_PREFIX + 17, "{stem}");
            assert!(!stem.starts_with('.'), "{stem}");
            assert!(
                stem.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
                "{stem}"
            );
        }
    }

    #[test]
    fn distinct_names_get_distinct_stems() {
        let mut names: Vec<String> = ["a/b", "a_b", "a?b", "A_B", "a_B", "漢", "字", "", " "]
            .map(String::from)
            .to_vec();
        names.push("x".repeat(64) + "1");
        names.push("x".repeat(64) + "2");
        let stems: HashSet<String> = names.iter().map(|n| file_stem(n)).collect();
        assert_eq!(stems.len(), names.len());
        let lower: HashSet<String> = stems.iter().map(|s| s.to_lowercase()).collect();
        assert_eq!(
            lower.len(),
            names.len(),
            "must stay distinct on case-insensitive file systems"
        );
    }

    /// The examples the README gives, computed independently (`printf %s NAME | sha1sum`).
    #[test]
    fn documented_examples() {
        assert_eq!(
            lock_file_name("orders:42"),
            "orders_42-0fa4753944a29a4c.lock"
        );
        assert_eq!(file_stem(".hidden/x"), "_hidden_x-b9bef903a19597f2");
        assert_eq!(slot_file_name("s-00", 3), "s-00.sem3");
    }

    #[test]
    fn readable_prefix() {
        assert!(file_stem("orders:42").starts_with("orders_42-"));
    }
}
