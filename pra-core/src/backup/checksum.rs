//! Backup checksums: BLAKE3, what pra writes (manifest format 2), and SHA-256, what format 1
//! manifests hold and pra still verifies. BLAKE3 hashes at several GB/s on one core (SHA-256 at
//! about 2 with the CPU's SHA extensions): a backup hashes as it copies without the hash being
//! what it waits for.

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A checksum algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// SHA-256 (manifest format 1).
    Sha256,
    /// BLAKE3 (manifest format 2: what pra writes).
    Blake3,
}

impl Algorithm {
    /// Its name, as in manifests: `sha256`, `blake3`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Blake3 => "blake3",
        }
    }
}

/// A file's checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksum {
    /// How it was computed.
    pub algorithm: Algorithm,
    /// The digest, lower-case hex.
    pub hex: String,
}

impl Checksum {
    /// The first `n` hex digits, for messages.
    pub fn short(&self, n: usize) -> &str {
        &self.hex[..n.min(self.hex.len())]
    }
}

impl fmt::Display for Checksum {
    /// `blake3:<hex>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

/// A running checksum.
pub(crate) enum Hasher {
    Sha256(Sha256),
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    pub(crate) fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
        }
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Blake3(h) => {
                h.update(bytes);
            }
        }
    }

    pub(crate) fn finish(self) -> Checksum {
        match self {
            Hasher::Sha256(h) => Checksum {
                algorithm: Algorithm::Sha256,
                hex: hex::encode(h.finalize()),
            },
            Hasher::Blake3(h) => Checksum {
                algorithm: Algorithm::Blake3,
                hex: h.finalize().to_hex().to_string(),
            },
        }
    }
}

/// The checksum of the file at `path` by `algorithm`, read in 1 MiB pieces (bounded memory).
pub(crate) fn of_file(path: &Path, algorithm: Algorithm) -> Result<Checksum> {
    let mut f = super::open_regular(path).map_err(|e| Error::io("open", path, e))?;
    let mut h = Hasher::new(algorithm);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("read", path, e)),
        };
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_algorithms_match_their_reference_vectors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            of_file(&p, Algorithm::Sha256).unwrap().hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let b3 = of_file(&p, Algorithm::Blake3).unwrap();
        assert_eq!(
            b3.hex,
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        assert_eq!(b3.to_string(), format!("blake3:{}", b3.hex));
    }
}
