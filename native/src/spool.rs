//! Anonymous spool files for plaintext that must not be released before authentication. The file
//! has no name (O_TMPFILE or unlink-after-create), so a crash leaves nothing behind; it must never
//! be given a name or be reachable from another process.
use std::fs::File;
use std::path::Path;

use crate::error::Result;

/// Create an anonymous read-write file in `dir`, or in the system temp dir when `dir` is None.
pub fn anonymous(dir: Option<&Path>) -> Result<File> {
    Ok(match dir {
        Some(d) => tempfile::tempfile_in(d)?,
        None => tempfile::tempfile()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    #[test]
    fn spool_is_anonymous_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = anonymous(Some(dir.path())).unwrap();
        f.write_all(b"secret").unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "secret");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "spool file has a name"
        );
    }

    #[test]
    fn missing_dir_is_an_error() {
        assert!(anonymous(Some(Path::new("/nonexistent/kim-spool"))).is_err());
    }
}
