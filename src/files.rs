//! Reading the files the server is configured with (the `--auth-file`
//! token, TLS certificates, keys and CA) without ever blocking its loop.
//!
//! They are read at start and again on SIGHUP, by the loop that handles
//! signals, between two turns: a read that blocks stops every connection of
//! that loop, and SIGTERM with them. `File::open` blocks forever on a FIFO
//! until some process opens it for writing, and reading a device may never
//! end. So a file is opened non-blocking (`O_NONBLOCK`: opening a FIFO then
//! returns at once), its type is checked on the open descriptor (`fstat`,
//! so that it cannot be swapped between the check and the read), and only a
//! regular file is read, at most a fixed number of bytes. Anything else
//! fails that start or reload with an error naming the file.

use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::path::Path;

/// What was read of a regular file.
#[derive(Debug)]
pub struct Contents {
    /// Its first bytes, up to the limit the caller gave.
    pub bytes: Vec<u8>,
    /// The file holds more than that.
    pub truncated: bool,
    /// Its metadata, read from the open descriptor (its mode, say).
    pub metadata: Metadata,
}

/// Why a configured file could not be read. Its `Display` never shows any
/// of the file's content (it may be a secret).
#[derive(Debug)]
pub enum FileError {
    /// It could not be opened or read.
    Io(io::Error),
    /// It is not a regular file: a FIFO, a directory, a device, a socket.
    NotRegular(&'static str),
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::Io(e) => write!(f, "{e}"),
            FileError::NotRegular(what) => write!(
                f,
                "not a regular file ({what}): only regular files are read, so that reading never blocks"
            ),
        }
    }
}

impl std::error::Error for FileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FileError::Io(e) => Some(e),
            FileError::NotRegular(_) => None,
        }
    }
}

/// Reads at most `limit` bytes of the regular file at `path`, without
/// blocking on anything that is not one (see the module documentation).
pub fn read_regular(path: &Path, limit: u64) -> Result<Contents, FileError> {
    let file = open_without_blocking(path).map_err(FileError::Io)?;
    let metadata = file.metadata().map_err(FileError::Io)?;
    if !metadata.is_file() {
        return Err(FileError::NotRegular(kind_of(&metadata)));
    }
    let mut bytes = Vec::new();
    // One byte past the limit tells whether there was more.
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(FileError::Io)?;
    let truncated = bytes.len() as u64 > limit;
    if truncated {
        bytes.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    Ok(Contents {
        bytes,
        truncated,
        metadata,
    })
}

#[cfg(unix)]
fn open_without_blocking(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK only changes how a FIFO or a device is opened (and read);
    // for a regular file it changes nothing.
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open_without_blocking(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).open(path)
}

/// What a file that is not regular is, in words.
fn kind_of(metadata: &Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = metadata.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if metadata.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

/// Whether users other than its owner may read the file (Unix: a group or
/// other read bit). Worth a warning for a file that holds a secret.
pub fn readable_by_others(metadata: &Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        metadata.permissions().mode() & 0o044 != 0
    }
    #[cfg(not(unix))]
    {
        let _ = metadata;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("loopline-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn a_regular_file_is_read_up_to_the_limit() {
        let path = temp("regular");
        std::fs::write(&path, b"hello world").unwrap();
        let all = read_regular(&path, 100).unwrap();
        assert_eq!(all.bytes, b"hello world");
        assert!(!all.truncated);
        let part = read_regular(&path, 5).unwrap();
        assert_eq!(part.bytes, b"hello");
        assert!(part.truncated);
    }

    #[test]
    fn a_directory_or_a_missing_file_is_refused_with_a_reason() {
        let dir = temp("a-dir");
        std::fs::create_dir_all(&dir).unwrap();
        let e = read_regular(&dir, 10).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        let e = read_regular(&temp("missing"), 10).unwrap_err();
        assert!(matches!(&e, FileError::Io(io) if io.kind() == io::ErrorKind::NotFound));
        assert!(e.to_string().contains("No such file"), "{e}");
    }

    /// Regression: a FIFO in place of a token file made SIGHUP block the
    /// loop forever in `open`. Opened non-blocking, it is refused at once.
    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let path = temp("fifo");
        let _ = std::fs::remove_file(&path);
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path only.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let started = std::time::Instant::now();
        let e = read_regular(&path, 10).unwrap_err();
        assert!(e.to_string().contains("a FIFO"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        std::fs::remove_file(&path).unwrap();
    }
}
