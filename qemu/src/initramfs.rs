//! The guest's initramfs: a `newc` cpio archive (written here, no staging directory) holding busybox, the kernel
//! modules, `/init`, and the host binaries handed in with their shared libraries. Archives are cached by content:
//! the same inputs give the same file name, so a second boot does not rebuild.

use crate::{io_err, Result};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One entry of the archive.
#[derive(Debug, Clone)]
pub enum Entry {
    Dir,
    /// File contents and permission bits.
    File(Vec<u8>, u32),
    Symlink(String),
}

/// An archive being assembled: guest path → entry. Parent directories are added on write.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_file(&mut self, guest_path: &str, data: Vec<u8>, mode: u32) {
        self.entries
            .insert(normalize(guest_path), Entry::File(data, mode));
    }

    /// Copies a host file into the archive at `guest_path`, following symlinks on the host.
    pub fn add_host_file(&mut self, host: &Path, guest_path: &str) -> Result<()> {
        let data = std::fs::read(host).map_err(io_err(host))?;
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(host)
                .map_err(io_err(host))?
                .permissions()
                .mode()
                & 0o7777
        };
        self.add_file(guest_path, data, mode);
        Ok(())
    }

    pub fn add_symlink(&mut self, guest_path: &str, target: &str) {
        self.entries
            .insert(normalize(guest_path), Entry::Symlink(target.to_string()));
    }

    pub fn add_dir(&mut self, guest_path: &str) {
        self.entries.insert(normalize(guest_path), Entry::Dir);
    }

    /// A hash of every path and byte in the archive: the cache key.
    pub fn content_hash(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (path, e) in &self.entries {
            path.hash(&mut h);
            match e {
                Entry::Dir => 0u8.hash(&mut h),
                Entry::File(d, m) => {
                    1u8.hash(&mut h);
                    d.hash(&mut h);
                    m.hash(&mut h);
                }
                Entry::Symlink(t) => {
                    2u8.hash(&mut h);
                    t.hash(&mut h);
                }
            }
        }
        h.finish()
    }

    /// Writes the archive in `newc` format (what the kernel unpacks into its rootfs).
    pub fn write_newc(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut all: BTreeMap<String, Entry> = BTreeMap::new();
        for (path, e) in &self.entries {
            let mut p = path.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                if parent.is_empty() {
                    break;
                }
                all.entry(parent.to_string()).or_insert(Entry::Dir);
                p = parent;
            }
            all.insert(path.clone(), e.clone());
        }
        // BTreeMap order puts every directory before its children.
        for (ino, (path, e)) in all.iter().enumerate() {
            let (mode, data): (u32, &[u8]) = match e {
                Entry::Dir => (0o040755, &[]),
                Entry::File(d, m) => (0o100000 | m, d),
                Entry::Symlink(t) => (0o120777, t.as_bytes()),
            };
            write_header(out, ino as u32 + 1, mode, data.len(), &path[1..])?;
            out.write_all(data)?;
            pad4(out, data.len())?;
        }
        write_header(out, 0, 0, 0, "TRAILER!!!")
    }
}

fn normalize(p: &str) -> String {
    format!("/{}", p.trim_start_matches('/'))
}

fn write_header(
    out: &mut impl Write,
    ino: u32,
    mode: u32,
    size: usize,
    name: &str,
) -> std::io::Result<()> {
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let namesize = name.len() + 1;
    write!(
        out,
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
        0, 0, 0, 0, 0, 0, 0, 0
    )?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad4(out, 110 + namesize)
}

fn pad4(out: &mut impl Write, len: usize) -> std::io::Result<()> {
    let pad = (4 - len % 4) % 4;
    out.write_all(&[0u8; 3][..pad])
}

/// Where built archives are kept: `NVKV_CACHE_DIR`, else `$XDG_CACHE_HOME/nvkv`, else `~/.cache/nvkv`.
pub fn cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("NVKV_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Ok(d) = std::env::var("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("nvkv");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into());
    PathBuf::from(home).join(".cache/nvkv")
}

/// Writes `archive` to the cache unless an archive with the same content is already there; returns its path.
/// Keeps the newest few archives and deletes older ones.
pub fn cached(archive: &Archive) -> Result<PathBuf> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let path = dir.join(format!("initrd-{:016x}.cpio", archive.content_hash()));
    if path.exists() {
        // Touch, so pruning keeps what is in use.
        let _ = std::fs::File::options()
            .append(true)
            .open(&path)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        return Ok(path);
    }
    let tmp = dir.join(format!(".initrd-{}.tmp", std::process::id()));
    {
        let f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        let mut w = std::io::BufWriter::new(f);
        archive.write_newc(&mut w).map_err(io_err(&tmp))?;
        w.flush().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    prune(&dir, 12);
    Ok(path)
}

fn prune(dir: &Path, keep: usize) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("initrd-"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort();
    let n = files.len();
    for (_, p) in files.into_iter().take(n.saturating_sub(keep)) {
        let _ = std::fs::remove_file(p);
    }
}

/// Strips debug info from a copy of `bin` when `strip` exists and the file is large: a debug test binary
/// shrinks from tens of MB to a few, which the guest unpacks much faster under TCG.
pub fn stripped_bytes(bin: &Path) -> Result<Vec<u8>> {
    let len = std::fs::metadata(bin).map_err(io_err(bin))?.len();
    if len > 4 << 20 {
        let tmp = std::env::temp_dir().join(format!("nvkv-strip-{}-{}", std::process::id(), len));
        let ok = std::process::Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&tmp)
            .arg(bin)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            let data = std::fs::read(&tmp).map_err(io_err(&tmp));
            let _ = std::fs::remove_file(&tmp);
            return data;
        }
    }
    std::fs::read(bin).map_err(io_err(bin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_headers_are_aligned_and_complete() {
        let mut a = Archive::new();
        a.add_file("/bin/x", b"hello".to_vec(), 0o755);
        a.add_symlink("/bin/sh", "busybox");
        let mut out = Vec::new();
        a.write_newc(&mut out).expect("write to Vec");
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        // "/bin" is added as a directory, then the two entries, then the trailer.
        assert_eq!(text.matches("070701").count(), 4);
        assert!(text.contains("bin/x\0"));
        assert!(text.contains("hello"));
        assert!(text.ends_with("TRAILER!!!\0\0\0\0") || text.contains("TRAILER!!!\0"));
    }

    #[test]
    fn cpio_tool_reads_our_archive() {
        if !Path::new("/usr/bin/cpio").exists() {
            assert!(std::env::var("CI").is_err(), "cpio missing under CI");
            return;
        }
        let mut a = Archive::new();
        a.add_file("/etc/nvkv/cmd", b"echo hi\n".to_vec(), 0o644);
        a.add_symlink("/bin/sh", "busybox");
        let mut out = Vec::new();
        a.write_newc(&mut out).expect("write to Vec");
        let mut child = std::process::Command::new("cpio")
            .arg("-t")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn cpio");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&out)
            .expect("feed cpio");
        let listed = child.wait_with_output().expect("cpio output");
        let names = String::from_utf8_lossy(&listed.stdout);
        let names: Vec<&str> = names.lines().collect();
        assert_eq!(names, ["bin", "bin/sh", "etc", "etc/nvkv", "etc/nvkv/cmd"]);
    }

    #[test]
    fn hash_changes_with_content() {
        let mut a = Archive::new();
        a.add_file("/x", vec![1], 0o644);
        let h1 = a.content_hash();
        a.add_file("/x", vec![2], 0o644);
        assert_ne!(h1, a.content_hash());
    }
}
