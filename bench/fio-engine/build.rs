//! With the `fio` feature: finds (or fetches) Debian's fio source package, configures it once into OUT_DIR (for
//! `config-host.h`) and generates Rust bindings of fio's engine ABI (`struct ioengine_ops`, `struct io_u`,
//! `struct fio_file`, `struct thread_data`) with bindgen. Without the feature: nothing.
//!
//! Where the source comes from, in order: `$NVKV_FIO_SRC` (an unpacked fio source tree), then
//! `${NVKV_CACHE:-$HOME/.cache/nvkv}/fio-src/fio-*/`, then `apt-get source fio` into that cache (needs a `deb-src`
//! entry and the network; `bench/fio-engine/setup.sh` adds the entry and installs libclang/clang/dpkg-dev).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=NVKV_FIO_SRC");
    println!("cargo:rerun-if-env-changed=NVKV_CACHE");
    #[cfg(feature = "fio")]
    fio::generate();
}

#[cfg(feature = "fio")]
mod fio {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    const HELP: &str = "run `bash bench/fio-engine/setup.sh` as root once (adds a deb-src entry for the suites of \
         the existing deb entries, installs libclang-dev, clang, dpkg-dev and fio, and fetches Debian's fio source \
         package), or set NVKV_FIO_SRC to an unpacked fio source tree of the fio version that will load the engine";

    fn fail(what: impl std::fmt::Display) -> ! {
        // A build script's panic message is shown by cargo; make it one readable paragraph.
        panic!("\n\nnvkv-fio (feature `fio`): {what}\n\nFix: {HELP}\n\n");
    }

    fn cache_dir() -> PathBuf {
        if let Some(c) = std::env::var_os("NVKV_CACHE") {
            return PathBuf::from(c).join("fio-src");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        PathBuf::from(home).join(".cache/nvkv/fio-src")
    }

    /// The newest `fio-*` directory holding `ioengines.h` under `dir`.
    fn find_in(dir: &Path) -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("fio-"))
                    && p.join("ioengines.h").is_file()
            })
            .collect();
        found.sort();
        found.pop()
    }

    fn source() -> PathBuf {
        if let Some(s) = std::env::var_os("NVKV_FIO_SRC") {
            let s = PathBuf::from(s);
            if !s.join("ioengines.h").is_file() {
                fail(format!("NVKV_FIO_SRC={} has no ioengines.h", s.display()));
            }
            return s;
        }
        let cache = cache_dir();
        if let Some(s) = find_in(&cache) {
            return s;
        }
        // Fetch into a private directory, then move the tree into place, so that two builds racing here never
        // see a half-unpacked tree.
        let tmp = cache.join(format!(".fetch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        if let Err(e) = std::fs::create_dir_all(&tmp) {
            fail(format!("cannot create {}: {e}", tmp.display()));
        }
        println!(
            "cargo:warning=nvkv-fio: fetching Debian's fio source package into {}",
            cache.display()
        );
        let out = Command::new("apt-get")
            .args(["source", "-q", "fio"])
            .current_dir(&tmp)
            .output();
        let ok = match &out {
            Ok(o) if o.status.success() => true,
            Ok(o) => {
                eprintln!("{}", String::from_utf8_lossy(&o.stderr));
                false
            }
            Err(e) => {
                eprintln!("apt-get: {e}");
                false
            }
        };
        let Some(src) = find_in(&tmp).filter(|_| ok) else {
            let why = match &out {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => format!("cannot run apt-get: {e}"),
            };
            let _ = std::fs::remove_dir_all(&tmp);
            fail(format!(
                "fio's source (headers) not found in {} and `apt-get source fio` failed: {why}",
                cache.display()
            ));
        };
        let dest = cache.join(src.file_name().unwrap_or_default());
        if std::fs::rename(&src, &dest).is_err() && !dest.join("ioengines.h").is_file() {
            fail(format!(
                "cannot move {} to {}",
                src.display(),
                dest.display()
            ));
        }
        let _ = std::fs::remove_dir_all(&tmp);
        dest
    }

    /// fio's `./configure`, run out of tree into OUT_DIR: its `config-host.h` is what fio's headers expect.
    /// (The fields the engine touches do not depend on it; the headers just do not parse without it.)
    fn configure(src: &Path, out: &Path) -> PathBuf {
        let dir = out.join("fio-config");
        if dir.join("config-host.h").is_file() {
            return dir;
        }
        let _ = std::fs::create_dir_all(&dir);
        let r = Command::new("sh")
            .arg(src.join("configure"))
            .arg("--disable-native")
            .current_dir(&dir)
            .output();
        match r {
            Ok(o) if o.status.success() && dir.join("config-host.h").is_file() => dir,
            Ok(o) => fail(format!(
                "fio's ./configure failed in {}:\n{}{}",
                dir.display(),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )),
            Err(e) => fail(format!("cannot run fio's ./configure: {e}")),
        }
    }

    /// FIO_IOOPS_VERSION as the header defines it.
    fn ioops_version(src: &Path) -> u32 {
        let text = std::fs::read_to_string(src.join("ioengines.h")).unwrap_or_default();
        text.lines()
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some("#define") && w.next() == Some("FIO_IOOPS_VERSION"))
                    .then(|| w.next().and_then(|v| v.parse().ok()))
                    .flatten()
            })
            .unwrap_or_else(|| fail("ioengines.h defines no FIO_IOOPS_VERSION"))
    }

    pub fn generate() {
        let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
        let src = source();
        let cfg = configure(&src, &out);
        let version = ioops_version(&src);
        let fio_version = src
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("fio-?")
            .to_string();
        // The installed fio should be the same version as the headers (both come from the same Debian release).
        if let Ok(o) = Command::new("fio").arg("--version").output() {
            let installed = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if !installed.is_empty() && installed != fio_version {
                println!(
                    "cargo:warning=nvkv-fio: building against {fio_version}'s headers but the installed fio is \
                     {installed}: fio refuses an engine whose FIO_IOOPS_VERSION differs, and struct layouts may too"
                );
            }
        }
        println!("cargo:rustc-env=NVKV_FIO_HEADERS={fio_version}");
        println!("cargo:rustc-env=NVKV_FIO_SRC_DIR={}", src.display());
        println!(
            "cargo:rerun-if-changed={}",
            src.join("ioengines.h").display()
        );
        println!("cargo:rerun-if-changed={}", src.join("io_u.h").display());
        println!("cargo:rerun-if-changed={}", src.join("file.h").display());
        println!("cargo:rerun-if-changed={}", src.join("fio.h").display());

        let wrapper = out.join("nvkv_fio_wrapper.h");
        let header = "#include \"config-host.h\"\n#include \"fio.h\"\n#include \"ioengines.h\"\n";
        if let Err(e) = std::fs::write(&wrapper, header) {
            fail(format!("cannot write {}: {e}", wrapper.display()));
        }
        let bindings = bindgen::Builder::default()
            .header(wrapper.to_string_lossy())
            .clang_arg(format!("-I{}", cfg.display()))
            .clang_arg(format!("-I{}", src.display()))
            // As fio's Makefile compiles everything.
            .clang_arg("-D_GNU_SOURCE")
            .clang_arg("-D_LARGEFILE_SOURCE")
            .clang_arg("-D_FILE_OFFSET_BITS=64")
            .clang_arg("-std=gnu99")
            .allowlist_type("ioengine_ops")
            .allowlist_type("thread_data")
            .allowlist_type("io_u")
            .allowlist_type("fio_file")
            .allowlist_type("fio_q_status")
            .allowlist_type("fio_ddir")
            .allowlist_type("fio_filetype")
            .allowlist_type("fio_file_flags")
            .allowlist_type("fio_ioengine_flags")
            .allowlist_var("FIO_IOOPS_VERSION")
            // Packed in C with an 8-aligned member (so 8-aligned, padded to 8): Rust cannot say that of a packed
            // struct. The engine never looks inside; opaque keeps its size and alignment, hence the offsets after it.
            .opaque_type("thread_stat")
            .default_enum_style(bindgen::EnumVariation::Consts)
            .derive_debug(false)
            .derive_default(false)
            .layout_tests(true)
            .generate_comments(false)
            .generate()
            .unwrap_or_else(|e| {
                fail(format!(
                    "bindgen could not parse fio's headers in {}: {e} (is libclang-dev installed?)",
                    src.display()
                ))
            });
        if let Err(e) = bindings.write_to_file(out.join("fio_sys.rs")) {
            fail(format!("cannot write the bindings: {e}"));
        }
        println!("cargo:rustc-env=NVKV_FIO_IOOPS_VERSION={version}");
    }
}
