//! Shared by the host and VM tests: install libnvkv with `install.sh` into a temporary prefix and compile
//! C programs against it with the system C compiler and pkg-config, as a user would.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// This crate's folder.
pub fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Builds libnvkv.so and libnvkv.a (once per process) and returns their folder. Cargo does not build a
/// cdylib/staticlib-only library for the package's integration tests, so the test asks for it: a nested
/// `cargo build` into the same target directory and profile as this test binary (which runs from
/// `<target>/<profile>/deps`; cargo has released the build lock by the time tests run).
pub fn built_libs() -> &'static Path {
    static LIBS: OnceLock<PathBuf> = OnceLock::new();
    LIBS.get_or_init(|| {
        let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .unwrap_or_else(|| panic!("{} has no grandparent", exe.display()));
        let target = profile_dir
            .parent()
            .unwrap_or_else(|| panic!("{} has no parent", profile_dir.display()));
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_string(),
            Some(p) => p.to_string(),
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
        run(Command::new(cargo)
            .args(["build", "-q", "-p", "nvkv-capi", "--profile", &profile])
            .arg("--target-dir")
            .arg(target)
            .current_dir(crate_dir()));
        for f in ["libnvkv.so", "libnvkv.a"] {
            assert!(
                profile_dir.join(f).exists(),
                "{} missing after cargo build",
                profile_dir.join(f).display()
            );
        }
        profile_dir.to_path_buf()
    })
}

/// A scratch folder for this test process (a prefix, binaries, images: about 130 MB). There is no hook at
/// the end of a test run, so each run removes the folders of earlier runs whose process is gone.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        const STEM: &str = "nvkv-capi-test-";
        if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix(STEM) {
                    if !Path::new("/proc").join(pid).exists() {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let d = std::env::temp_dir().join(format!("{STEM}{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        d
    })
}

/// Runs a command; panics with its output when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The prefix libnvkv was installed into (once per process) with `install.sh PREFIX LIBDIR`.
pub fn prefix() -> &'static Path {
    static PREFIX: OnceLock<PathBuf> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let p = scratch().join("prefix");
        run(Command::new("sh")
            .arg(crate_dir().join("install.sh"))
            .arg(&p)
            .arg(built_libs()));
        p
    })
}

/// `pkg-config --cflags --libs <pc>` against the temporary prefix.
pub fn pkg_config(pc: &str) -> Vec<String> {
    let out = run(Command::new("pkg-config")
        .env("PKG_CONFIG_PATH", prefix().join("lib/pkgconfig"))
        .args(["--cflags", "--libs", pc]));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// How a program is linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Against libnvkv.so (found through an rpath to the prefix).
    Shared,
    /// Against libnvkv.a.
    Static,
}

/// Compiles `src` (relative to this crate) with `cc` into the scratch folder.
pub fn compile(src: &str, name: &str, link: Link) -> PathBuf {
    let out = scratch().join(format!(
        "{name}-{}",
        if link == Link::Shared {
            "shared"
        } else {
            "static"
        }
    ));
    let mut cmd = Command::new("cc");
    cmd.args([
        "-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pthread",
    ])
    .arg(crate_dir().join(src))
    .arg("-o")
    .arg(&out);
    match link {
        Link::Shared => {
            cmd.args(pkg_config("nvkv"));
            cmd.arg(format!("-Wl,-rpath,{}", prefix().join("lib").display()));
        }
        Link::Static => {
            cmd.args(pkg_config("nvkv-static"));
        }
    }
    run(&mut cmd);
    out
}

/// The shared libraries a binary needs (its DT_NEEDED entries, by `ldd`).
pub fn needed(bin: &Path) -> String {
    String::from_utf8_lossy(&run(Command::new("ldd").arg(bin)).stdout).into_owned()
}
