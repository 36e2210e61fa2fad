//! The KV shell on a file, on the host: format refuses what is not blank, and `salvage` copies what the
//! segments of a database `open` refuses still hold into a new one.

use std::path::Path;
use std::process::Command;

fn nvkv(file: &Path, args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_nvkv"))
        .arg("--file")
        .arg(file)
        .args(args)
        .output()
        .expect("run nvkv");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn format_refuses_foreign_data_and_salvage_recovers_keys() {
    let dir = std::env::temp_dir().join(format!("nvkv-shell-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let db = dir.join("db");
    let (ok, out, err) = nvkv(&db, &["--size", "16M", "format"]);
    assert!(ok && out.contains("formatted"), "{out}{err}");
    for i in 0..20 {
        let (ok, _, err) = nvkv(&db, &["put", &format!("key{i:02}"), &format!("value {i}")]);
        assert!(ok, "put: {err}");
    }
    let (ok, _, err) = nvkv(&db, &["format"]);
    assert!(
        !ok && err.contains("20 keys") && err.contains("--force"),
        "{err}"
    );

    // Foreign data: not formatted without --force, and left as it was.
    let foreign = dir.join("foreign");
    let text = b"a file someone cares about\n".repeat(200_000);
    std::fs::write(&foreign, &text).expect("write");
    let (ok, _, err) = nvkv(&foreign, &["format"]);
    assert!(
        !ok && err.contains("not an nvkv database") && err.contains("--force"),
        "{err}"
    );
    assert!(std::fs::read(&foreign).expect("read") == text);

    // Both superblock copies destroyed: open refuses; salvage copies every key into a new file.
    let mut img = std::fs::read(&db).expect("read");
    img[..8192].fill(0x5a);
    std::fs::write(&db, &img).expect("write");
    let (ok, _, err) = nvkv(&db, &["check"]);
    assert!(!ok && err.contains("not an nvkv database"), "{err}");
    let new = dir.join("salvaged");
    let (ok, out, err) = nvkv(&db, &["salvage", new.to_str().expect("utf8")]);
    assert!(ok && out.contains("20 keys copied"), "{out}{err}");
    assert!(
        std::fs::read(&db).expect("read") == img,
        "salvage wrote to its source"
    );
    for i in [0, 7, 19] {
        let (ok, out, err) = nvkv(&new, &["get", &format!("key{i:02}")]);
        assert!(ok && out == format!("value {i}\n"), "{out}{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
