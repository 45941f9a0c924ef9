//! Sizes in bytes as people write them in configuration: `536870912`,
//! `"512 MiB"`, `"2GiB"` (binary units only: `KiB`, `MiB`, `GiB`, `TiB`, so
//! `MB` never means two different things).

use serde::Deserialize;

/// A size as written: a number of bytes, or a number with a unit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ByteSize {
    Bytes(u64),
    Text(String),
}

impl ByteSize {
    /// The size in bytes, or why it is not one (for a message naming the key).
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            Self::Bytes(bytes) => Ok(*bytes),
            Self::Text(text) => parse_bytes(text),
        }
    }
}

/// `"512 MiB"` → 536870912; a bare number is bytes.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let factor: u64 = match unit.trim() {
        "" | "B" | "bytes" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => {
            return Err(format!(
                "{text:?} is not a size (a number of bytes, or with KiB, MiB, GiB or TiB: \"512 MiB\")"
            ));
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| {
            format!("{text:?} is not a size (a whole number, then the unit: \"512 MiB\")")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_bytes("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(ByteSize::Bytes(7).bytes(), Ok(7));
        for bad in ["", "MiB", "1.5 GiB", "2 GB", "-1", "99999999999 TiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }
}
