//! Safe archive extraction (zip, tar, tar.gz). Nothing is written outside the destination:
//! absolute paths, `..`, links and special files are refused, and sizes, counts and the
//! compression ratio are capped on the bytes actually written, not on the headers' claims.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

/// Caps applied while extracting.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Total uncompressed bytes.
    pub max_total_bytes: u64,
    /// Number of files.
    pub max_files: u64,
    /// Uncompressed/compressed ratio of the whole archive (zip bombs).
    pub max_ratio: u64,
    /// Bytes of any one file.
    pub max_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_total_bytes: 20 << 30, max_files: 2_000_000, max_ratio: 100, max_file_bytes: 2 << 30 }
    }
}

/// Why an archive was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArchiveError {
    /// An entry would land outside the destination.
    #[error("archive entry {0:?} escapes the extraction directory (absolute path or '..')")]
    PathTraversal(String),
    /// Symbolic or hard link.
    #[error("archive entry {0:?} is a link; links are not allowed in datasets")]
    Link(String),
    /// Device, FIFO or other special file.
    #[error("archive entry {0:?} is not a regular file or directory")]
    SpecialFile(String),
    /// Too many files.
    #[error("archive has more than {0} files")]
    TooManyFiles(u64),
    /// Too many bytes in total or in one file.
    #[error("archive expands to more than {0} bytes")]
    TooLarge(u64),
    /// Compression ratio above the cap.
    #[error("archive expands more than {limit}x its compressed size (zip bomb?)")]
    Ratio {
        /// The cap.
        limit: u64,
    },
    /// The archive is damaged.
    #[error("archive is corrupt: {0}")]
    Corrupt(String),
    /// Not zip, tar or gzip'd tar.
    #[error("unsupported archive format (expected .zip, .tar, .tar.gz or .tgz)")]
    Unsupported,
    /// Local I/O failed.
    #[error("i/o while extracting: {0}")]
    Io(String),
}

impl From<std::io::Error> for ArchiveError {
    fn from(e: std::io::Error) -> Self {
        ArchiveError::Io(e.to_string())
    }
}

/// What was extracted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extracted {
    /// Files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// Archive kinds recognised by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// PKZIP.
    Zip,
    /// gzip (assumed to wrap a tar).
    TarGz,
    /// POSIX tar.
    Tar,
}

/// Recognises an archive by its magic bytes.
pub fn sniff(path: &Path) -> Result<Option<Kind>, ArchiveError> {
    let mut head = [0u8; 512];
    let mut f = File::open(path)?;
    let mut n = 0;
    while n < head.len() {
        let r = f.read(&mut head[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(if n >= 4 && (head[..4] == *b"PK\x03\x04" || head[..4] == *b"PK\x05\x06") {
        Some(Kind::Zip)
    } else if n >= 2 && head[..2] == [0x1f, 0x8b] {
        Some(Kind::TarGz)
    } else if n >= 262 && &head[257..262] == b"ustar" {
        Some(Kind::Tar)
    } else {
        None
    })
}

/// The safe relative path of an entry name, or an error if it escapes.
pub fn safe_relative(name: &str) -> Result<Option<PathBuf>, ArchiveError> {
    let normalized = name.replace('\\', "/");
    if normalized.starts_with('/')
        || normalized.contains('\0')
        || (normalized.len() > 1 && normalized.as_bytes()[1] == b':')
    {
        return Err(ArchiveError::PathTraversal(name.to_string()));
    }
    let mut out = PathBuf::new();
    for c in Path::new(&normalized).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::PathTraversal(name.to_string()));
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

struct Budget {
    limits: Limits,
    compressed: u64,
    files: u64,
    bytes: u64,
}

impl Budget {
    fn file(&mut self) -> Result<(), ArchiveError> {
        self.files += 1;
        if self.files > self.limits.max_files {
            return Err(ArchiveError::TooManyFiles(self.limits.max_files));
        }
        Ok(())
    }

    /// Copies `r` to a new file at `dest`, counting bytes against the caps as they are written.
    fn copy(&mut self, r: &mut dyn Read, dest: &Path) -> Result<(), ArchiveError> {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // create_new: never overwrite (or follow) something already there.
        let mut out = std::fs::OpenOptions::new().write(true).create_new(true).open(dest).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                ArchiveError::Corrupt(format!("duplicate entry {}", dest.display()))
            } else {
                e.into()
            }
        })?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut this_file = 0u64;
        loop {
            let n = r.read(&mut buf).map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
            if n == 0 {
                break;
            }
            this_file += n as u64;
            self.bytes += n as u64;
            if this_file > self.limits.max_file_bytes {
                return Err(ArchiveError::TooLarge(self.limits.max_file_bytes));
            }
            if self.bytes > self.limits.max_total_bytes {
                return Err(ArchiveError::TooLarge(self.limits.max_total_bytes));
            }
            if self.bytes > 1 << 20 && self.bytes > self.compressed.saturating_mul(self.limits.max_ratio) {
                return Err(ArchiveError::Ratio { limit: self.limits.max_ratio });
            }
            out.write_all(&buf[..n])?;
        }
        Ok(())
    }
}

/// Extracts `archive` into `dest` (which should be empty). On error, `dest` may hold a partial
/// extraction: callers remove it.
pub fn extract(archive: &Path, dest: &Path, limits: Limits) -> Result<Extracted, ArchiveError> {
    let kind = sniff(archive)?.ok_or(ArchiveError::Unsupported)?;
    let compressed = std::fs::metadata(archive)?.len().max(1);
    std::fs::create_dir_all(dest)?;
    let mut budget = Budget { limits, compressed, files: 0, bytes: 0 };
    match kind {
        Kind::Zip => extract_zip(archive, dest, &mut budget)?,
        Kind::TarGz => {
            let gz = flate2::read::GzDecoder::new(BufReader::new(File::open(archive)?));
            extract_tar(gz, dest, &mut budget)?
        }
        Kind::Tar => extract_tar(BufReader::new(File::open(archive)?), dest, &mut budget)?,
    }
    Ok(Extracted { files: budget.files, bytes: budget.bytes })
}

fn extract_zip(archive: &Path, dest: &Path, budget: &mut Budget) -> Result<(), ArchiveError> {
    let mut zip =
        zip::ZipArchive::new(BufReader::new(File::open(archive)?)).map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
    if zip.len() as u64 > budget.limits.max_files {
        return Err(ArchiveError::TooManyFiles(budget.limits.max_files));
    }
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
        let name = entry.name().to_string();
        let Some(rel) = safe_relative(&name)? else { continue };
        // Unix mode bits: 0o120000 is a symlink; anything but a file or directory is refused.
        if let Some(mode) = entry.unix_mode() {
            match mode & 0o170000 {
                0o120000 => return Err(ArchiveError::Link(name)),
                0 | 0o100000 | 0o040000 => {}
                _ => return Err(ArchiveError::SpecialFile(name)),
            }
        }
        if entry.is_dir() {
            std::fs::create_dir_all(dest.join(&rel))?;
            continue;
        }
        budget.file()?;
        budget.copy(&mut entry, &dest.join(&rel))?;
    }
    Ok(())
}

fn extract_tar<R: Read>(r: R, dest: &Path, budget: &mut Budget) -> Result<(), ArchiveError> {
    let mut tar = tar::Archive::new(r);
    let entries = tar.entries().map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
        {
            continue;
        }
        let Some(rel) = safe_relative(&name)? else { continue };
        if kind.is_symlink() || kind.is_hard_link() {
            return Err(ArchiveError::Link(name));
        }
        if kind.is_dir() {
            std::fs::create_dir_all(dest.join(&rel))?;
            continue;
        }
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            return Err(ArchiveError::SpecialFile(name));
        }
        budget.file()?;
        budget.copy(&mut entry, &dest.join(&rel))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_checked() {
        assert_eq!(safe_relative("a/b.jpg").expect("ok"), Some(PathBuf::from("a/b.jpg")));
        assert_eq!(safe_relative("./a/./b.jpg").expect("ok"), Some(PathBuf::from("a/b.jpg")));
        assert_eq!(safe_relative("./").expect("ok"), None);
        for bad in ["../x", "a/../../x", "/etc/passwd", "a\\..\\..\\x", "C:\\x", "a/\0b"] {
            assert!(matches!(safe_relative(bad), Err(ArchiveError::PathTraversal(_))), "{bad}");
        }
    }
}
