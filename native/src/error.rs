//! The one error type of the native crate. Every module returns `Result<_, Error>`; the pyo3 glue
//! in `lib.rs` maps each variant to one Python exception class. Nothing here may panic.
use std::fmt;

/// What went wrong, with a message that names the field or the offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Misuse of a streaming object or a bad argument (-> `NativeError`).
    Usage(String),
    /// Malformed or truncated BER (-> `BerError`); `offset` is the stream offset of the problem.
    Ber { offset: u64, reason: String },
    /// AES-GCM authentication failed (-> `TagMismatchError`).
    TagMismatch,
    /// Malformed base64 (-> `Base64Error`); `offset` counts input bytes from the first `update`.
    Base64 { offset: u64, reason: String },
    /// An I/O failure of the spool file (-> `OSError`).
    Io(String),
    /// OpenSSL refused an operation that valid arguments never make it refuse, e.g. it could not
    /// allocate a context (-> `NativeError`); the message carries OpenSSL's error stack.
    Crypto(String),
}

impl Error {
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }
    pub fn ber(offset: u64, reason: impl Into<String>) -> Self {
        Error::Ber {
            offset,
            reason: reason.into(),
        }
    }
    pub fn base64(offset: u64, reason: impl Into<String>) -> Self {
        Error::Base64 {
            offset,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) => f.write_str(m),
            Error::Ber { offset, reason } => write!(f, "BER error at offset {offset}: {reason}"),
            Error::TagMismatch => f.write_str(
                "AES-GCM tag mismatch: wrong key, nonce, AAD or tag, or the ciphertext was altered",
            ),
            Error::Base64 { offset, reason } => {
                write!(f, "base64 error at offset {offset}: {reason}")
            }
            Error::Io(m) => write!(f, "spool file I/O failed: {m}"),
            Error::Crypto(m) => write!(f, "OpenSSL failed: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_offset_and_reason() {
        let e = Error::ber(17, "length runs past parent");
        assert_eq!(
            e.to_string(),
            "BER error at offset 17: length runs past parent"
        );
        let e = Error::base64(3, "character '!' outside the alphabet");
        assert!(e.to_string().contains("offset 3"));
    }
}
