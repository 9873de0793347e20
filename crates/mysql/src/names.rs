//! Lock names on the server, by the rule of .NET DistributedLock's MySQL lock, so a .NET
//! process and a Node process using the same name contend on the same server lock.
//!
//! MySQL caps a lock name at 64 characters, and older servers compared names without regard to
//! case. So a name is sent unchanged only when it is non-empty, already lowercase and at most
//! 64 UTF-16 code units long. Any other name becomes its lowercased first 32 UTF-16 units
//! (`__empty__` for the empty name) followed by a 32-character hash: the first 160 bits of the
//! SHA-512 of the original name's UTF-8, in a lowercase base-32 alphabet read least significant
//! bit first. Lengths are counted in UTF-16 units and lowercasing maps each character to one
//! character (as .NET's `ToLowerInvariant` does), because that is what .NET computes.

use sha2::{Digest, Sha512};

/// The longest lock name MySQL accepts, in characters.
pub const MAX_LEN: usize = 64;
const PREFIX_LEN: usize = 32;
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// The server lock name of `name`.
pub fn lock_name(name: &str) -> String {
    let lower = lowercase(name);
    let units = name.encode_utf16().count();
    if !name.is_empty() && lower == name && units <= MAX_LEN {
        return name.to_owned();
    }
    let prefix = if name.is_empty() {
        String::from("__empty__")
    } else {
        let wide: Vec<u16> = lower.encode_utf16().take(PREFIX_LEN).collect();
        // A cut through a surrogate pair leaves half a character, as .NET's Substring would;
        // the lossy decoding turns it into U+FFFD (.NET would send the lone surrogate, which
        // no server stores as is either).
        String::from_utf16_lossy(&wide)
    };
    prefix + &hash(name)
}

/// Each character lowercased to exactly one character: the invariant-culture mapping, where a
/// character whose lowercase form is several characters (or differs by context, like the
/// final sigma) keeps a one-character mapping.
fn lowercase(s: &str) -> String {
    s.chars()
        .map(|c| {
            let mut lower = c.to_lowercase();
            match (lower.next(), lower.next()) {
                (Some(l), None) => l,
                // 'İ' lowercases to "i̇" (two characters); invariant culture maps it to 'i̇'s
                // first character, which is what .NET's one-to-one table does.
                (Some(l), Some(_)) if c == '\u{130}' => l,
                _ => c,
            }
        })
        .collect()
}

/// The first 160 bits of SHA-512(`name`), as 32 base-32 characters, least significant bit
/// first within the stream of bytes.
fn hash(name: &str) -> String {
    let digest = Sha512::digest(name.as_bytes());
    let mut out = String::with_capacity(32);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in &digest[..20] {
        buffer |= u32::from(byte) << bits;
        bits += 8;
        while bits >= 5 {
            out.push(char::from(ALPHABET[(buffer & 31) as usize]));
            buffer >>= 5;
            bits -= 5;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The upstream library's own compatibility vectors, and a few of ours computed by its rule.
    #[test]
    fn matches_the_dotnet_rule() {
        let cases: &[(&str, &str)] = &[
            ("", "__empty__p6ad62yppho33ytkibum5wbqhqvbcsxa"),
            ("abc", "abc"),
            ("ABC", "abczj4qr6tvn4a3kmgq4bukhowqyfrlxsb3"),
            ("\\", "\\"),
            (
                "My/Lock Name",
                "my/lock namevephxicaotvl44x7ci5p244injeygtai",
            ),
            (
                "Ünïcode-Lock",
                "ünïcode-lockqmla7p3sf3eu52dqol4jylywslzuntyw",
            ),
        ];
        for (name, want) in cases {
            assert_eq!(lock_name(name), *want, "name {name:?}");
        }
        let a64 = "a".repeat(64);
        assert_eq!(lock_name(&a64), a64);
        let slashes = "\\".repeat(64);
        assert_eq!(lock_name(&slashes), slashes);
        assert_eq!(
            lock_name(&"x".repeat(65)),
            format!("{}gkd2zq6c6ey6mhs45clqg7vij6ycgo43", "x".repeat(32))
        );
        assert_eq!(
            lock_name(&format!("{}B", "a".repeat(33))),
            format!("{}4uolvkckt5vl63r5nrspont2vm53m7s3", "a".repeat(32))
        );
    }

    #[test]
    fn every_name_fits_the_server_limit() {
        for name in [
            "x",
            &"漢".repeat(40),
            &"Z".repeat(200),
            "😀".repeat(33).as_str(),
        ] {
            let n = lock_name(name);
            assert!(n.chars().count() <= MAX_LEN, "{name:?} -> {n:?}");
        }
    }
}
