//! Encryption at rest of offsite backups with age: to X25519 recipients (a recipients file), or
//! with a passphrase (a passphrase file, scrypt). Keys are loaded and checked before anything is
//! written; a configured key that cannot be used is an error, never a plaintext upload.

use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::SecretString;

use crate::error::{Error, Result};

/// How uploads are encrypted (paths of key files; nothing secret is kept here).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encryption {
    /// A file of `age1…` X25519 public keys, one a line (`#` comments allowed).
    pub recipients_file: Option<PathBuf>,
    /// A file whose first line is the passphrase (scrypt): for both encryption and decryption.
    pub passphrase_file: Option<PathBuf>,
    /// An age identity file (`AGE-SECRET-KEY-1…`) to decrypt with.
    pub identity_file: Option<PathBuf>,
}

/// A loaded encryption key: what encrypts an upload, and what the manifest says about it.
pub(crate) enum Sealer {
    Recipients(Vec<age::x25519::Recipient>),
    Passphrase(SecretString),
}

fn read_key_file(path: &Path, what: &str) -> Result<String> {
    let bytes =
        crate::fsutil::read_regular(path, crate::fsutil::SMALL_FILE_LIMIT).map_err(|e| {
            Error::InvalidArgument(format!(
                "the age {what} file {} cannot be used: {e}",
                path.display()
            ))
        })?;
    String::from_utf8(bytes).map_err(|_| {
        Error::InvalidArgument(format!(
            "the age {what} file {} is not UTF-8 text",
            path.display()
        ))
    })
}

impl Encryption {
    /// Whether uploads are to be encrypted.
    pub fn enabled(&self) -> bool {
        self.recipients_file.is_some() || self.passphrase_file.is_some()
    }

    /// Checks that the configured keys can be used (files readable, keys well-formed), before
    /// anything is written.
    pub fn validate(&self) -> Result<()> {
        self.sealer().map(drop)
    }

    /// Loads the encryption key; `None` when none is configured. Both kinds at once, an
    /// unreadable file, an empty one or a malformed key are errors.
    pub(crate) fn sealer(&self) -> Result<Option<Sealer>> {
        match (&self.recipients_file, &self.passphrase_file) {
            (Some(_), Some(_)) => Err(Error::InvalidArgument(
                "configure either backup_age_recipients_file or backup_age_passphrase_file, not both"
                    .into(),
            )),
            (Some(path), None) => {
                let text = read_key_file(path, "recipients")?;
                let mut out = Vec::new();
                for (i, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    out.push(age::x25519::Recipient::from_str(line).map_err(|e| {
                        Error::InvalidArgument(format!(
                            "the age recipients file {} line {}: not an X25519 recipient (age1…): {e}",
                            path.display(),
                            i + 1
                        ))
                    })?);
                }
                if out.is_empty() {
                    return Err(Error::InvalidArgument(format!(
                        "the age recipients file {} names no recipient",
                        path.display()
                    )));
                }
                Ok(Some(Sealer::Recipients(out)))
            }
            (None, Some(path)) => Ok(Some(Sealer::Passphrase(passphrase(path)?))),
            (None, None) => Ok(None),
        }
    }

    /// Decrypts `input` (an age file) with the configured identity or passphrase.
    pub(crate) fn open<'a>(&self, input: Box<dyn Read + Send + 'a>) -> Result<Box<dyn Read + 'a>> {
        // No matching key is the reader's problem (a wrong key); anything else is the object's.
        let wrong = |e: age::DecryptError| match e {
            age::DecryptError::NoMatchingKeys => Error::Refused(
                "cannot decrypt the backup: none of the configured keys opens it".into(),
            ),
            e => Error::Corrupt {
                what: "offsite backup".into(),
                detail: format!("cannot decrypt: {e}"),
            },
        };
        let dec = age::Decryptor::new(BufReader::new(input)).map_err(wrong)?;
        let identities: Vec<Box<dyn age::Identity>> = if dec.is_scrypt() {
            let path = self.passphrase_file.as_ref().ok_or_else(|| {
                Error::InvalidArgument(
                    "the backup is encrypted with a passphrase: set backup_age_passphrase_file"
                        .into(),
                )
            })?;
            vec![Box::new(age::scrypt::Identity::new(passphrase(path)?))]
        } else {
            let path = self.identity_file.as_ref().ok_or_else(|| {
                Error::InvalidArgument(
                    "the backup is encrypted to age recipients: set backup_age_identity_file"
                        .into(),
                )
            })?;
            let text = read_key_file(path, "identity")?;
            age::IdentityFile::from_buffer(text.as_bytes())
                .and_then(|f| {
                    f.into_identities()
                        .map_err(|e| std::io::Error::other(e.to_string()))
                })
                .map_err(|e| {
                    Error::InvalidArgument(format!(
                        "the age identity file {} cannot be used: {e}",
                        path.display()
                    ))
                })?
        };
        let r = dec
            .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
            .map_err(wrong)?;
        Ok(Box::new(r))
    }
}

fn passphrase(path: &Path) -> Result<SecretString> {
    let text = read_key_file(path, "passphrase")?;
    let line = text.lines().next().unwrap_or("").to_string();
    if line.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "the age passphrase file {} is empty",
            path.display()
        )));
    }
    Ok(SecretString::from(line))
}

impl Sealer {
    /// What the manifest records: the recipients' public keys, or "scrypt" for a passphrase.
    pub(crate) fn describe(&self) -> Vec<String> {
        match self {
            Sealer::Recipients(r) => r.iter().map(|r| r.to_string()).collect(),
            Sealer::Passphrase(_) => vec!["scrypt (passphrase)".into()],
        }
    }

    /// Wraps `out`: what is written to the result is encrypted into `out`; `finish` it.
    pub(crate) fn seal<W: Write>(&self, out: W) -> Result<age::stream::StreamWriter<W>> {
        let enc = match self {
            Sealer::Recipients(r) => {
                age::Encryptor::with_recipients(r.iter().map(|r| r as &dyn age::Recipient))
                    .map_err(|e| Error::Internal(format!("age: {e}")))?
            }
            Sealer::Passphrase(p) => age::Encryptor::with_user_passphrase(p.clone()),
        };
        enc.wrap_output(out)
            .map_err(|e| Error::Internal(format!("age: {e}")))
    }
}
