//! libnvkv from C on the host: install it with `install.sh` into a temporary prefix, compile the example
//! and the C test programs against the header with `cc` and pkg-config, linked against libnvkv.so and
//! against libnvkv.a, and run them on the memory and file backends.

mod common;

use common::{compile, needed, run, scratch, Link};
use std::process::Command;

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
}

fn programs(link: Link) {
    let tag = if link == Link::Shared {
        "shared"
    } else {
        "static"
    };
    let example = compile("examples/c/example.c", "nvkv-example", link);
    let api = compile("tests/c/api.c", "nvkv-api-test", link);
    let misuse = compile("tests/c/misuse.c", "nvkv-misuse-test", link);
    for bin in [&example, &api, &misuse] {
        let libs = needed(bin);
        assert_eq!(
            libs.contains("libnvkv.so"),
            link == Link::Shared,
            "{}: wrong linkage:\n{libs}",
            bin.display()
        );
    }

    let out = stdout(Command::new(&example).arg("memory"));
    assert!(out.contains("nvkv-example: ok"), "{out}");
    let img = scratch().join(format!("example-{tag}.img"));
    let out = stdout(Command::new(&example).arg("file").arg(&img));
    assert!(
        out.contains("reopened: 100 keys recovered") && out.contains("nvkv-example: ok"),
        "{out}"
    );

    let out = stdout(Command::new(&api).arg("memory"));
    assert!(out.contains("nvkv-api-test: ok"), "{out}");
    let img = scratch().join(format!("api-{tag}.img"));
    let out = stdout(Command::new(&api).arg("file").arg(&img));
    assert!(out.contains("nvkv-api-test: ok"), "{out}");

    let out = stdout(Command::new(&misuse).arg("memory"));
    assert!(out.contains("nvkv-misuse-test: ok"), "{out}");
    let img = scratch().join(format!("misuse-{tag}.img"));
    let out = stdout(Command::new(&misuse).arg("file").arg(&img));
    assert!(out.contains("nvkv-misuse-test: ok"), "{out}");
}

#[test]
fn c_programs_against_the_shared_library() {
    programs(Link::Shared);
}

#[test]
fn c_programs_against_the_static_library() {
    programs(Link::Static);
}

/// The header alone compiles as strict C99 (it needs nothing beyond the three standard headers it
/// includes), and the installed pkg-config files describe this version.
#[test]
fn header_is_strict_c99_and_pc_files_match() {
    let src = scratch().join("header_only.c");
    std::fs::write(
        &src,
        "#include <nvkv.h>\nint main(void) { return nvkv_abi_version() == NVKV_ABI_VERSION ? 0 : 1; }\n",
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", src.display()));
    let obj = scratch().join("header_only.o");
    run(Command::new("cc")
        .args(["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-c"])
        .arg(format!(
            "-I{}",
            common::crate_dir().join("include").display()
        ))
        .arg(&src)
        .arg("-o")
        .arg(&obj));
    for pc in ["nvkv", "nvkv-static"] {
        let v = stdout(
            Command::new("pkg-config")
                .env("PKG_CONFIG_PATH", common::prefix().join("lib/pkgconfig"))
                .args(["--modversion", pc]),
        );
        assert_eq!(v.trim(), env!("CARGO_PKG_VERSION"), "{pc}.pc");
    }
}
