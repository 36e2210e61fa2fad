//! The tools' behaviour on QEMU's emulated NVMe, inside the test VM (one boot runs every test below; see
//! `nvkv_qemu::suite`). The guest carries `nvkv-setup`, `nvkv-identify` and nvme-cli (`nvme`).
//!
//! | controller | address | set-up |
//! | --- | --- | --- |
//! | K | 0000:00:10.0 | serial NVKV-TOOLS-K, on the kernel nvme driver at boot; 16 MiB PMR (a file beside the images); ns 1: 16 MiB file, 4 KiB LBAs; ns 2: 32 MiB file, 512 B LBAs (swap and a minix file system go there: minix needs 1 KiB blocks) |
//! | V | 0000:00:11.0 | serial NVKV-TOOLS-V, on vfio-pci at boot; ns 1: 16 MiB null-co, 4 KiB LBAs |
//! | D | 0000:00:12.0 | serial NVKV-TOOLS-D, on vfio-pci at boot; ns 1: 64 MiB file, 4 KiB LBAs (the `nvkv` shell's database) |
//!
//! The tests run in order and each leaves K on the kernel driver and V on vfio-pci.

use nvkv_qemu::suite::{self, GuestTest};
use nvkv_qemu::vm::Bind;
use nvkv_qemu::{guest, NvmeController, NvmeNamespace, Vm};
use serde_json::Value;
use std::error::Error as StdError;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type R = Result<(), Box<dyn StdError>>;

const K: &str = "0000:00:10.0";
const V: &str = "0000:00:11.0";
const D: &str = "0000:00:12.0";

use nvkv_qemu::check;

fn main() {
    let tests = [
        GuestTest {
            name: "list_shows_controllers_drivers_and_namespaces",
            run: list_shows_controllers_drivers_and_namespaces,
        },
        GuestTest {
            name: "check_passes_in_the_guest",
            run: check_passes_in_the_guest,
        },
        GuestTest {
            name: "bind_refused_while_a_process_holds_the_namespace",
            run: bind_refused_while_a_process_holds_the_namespace,
        },
        GuestTest {
            name: "bind_refused_while_a_namespace_is_swap",
            run: bind_refused_while_a_namespace_is_swap,
        },
        GuestTest {
            name: "bind_refused_while_a_namespace_is_mounted",
            run: bind_refused_while_a_namespace_is_mounted,
        },
        GuestTest {
            name: "bind_refused_while_a_namespace_is_held_by_md",
            run: bind_refused_while_a_namespace_is_held_by_md,
        },
        GuestTest {
            name: "bind_force_takes_a_held_namespace",
            run: bind_force_takes_a_held_namespace,
        },
        GuestTest {
            name: "release_refused_while_the_vfio_group_is_open",
            run: release_refused_while_the_vfio_group_is_open,
        },
        GuestTest {
            name: "bind_release_round_trip",
            run: bind_release_round_trip,
        },
        GuestTest {
            name: "identify_json_matches_nvme_cli",
            run: identify_json_matches_nvme_cli,
        },
        GuestTest {
            name: "identify_text_and_errors",
            run: identify_text_and_errors,
        },
        GuestTest {
            name: "hugepages_reserved_and_mounted",
            run: hugepages_reserved_and_mounted,
        },
        GuestTest {
            name: "kv_shell_round_trip_on_nvme",
            run: kv_shell_round_trip_on_nvme,
        },
    ];
    suite::main(&tests, || {
        let dir = std::env::temp_dir().join(format!("nvkv-tools-vm-{}", std::process::id()));
        Vm::builder()
            .controller(
                NvmeController::new("NVKV-TOOLS-K")
                    .bind(Bind::Kernel)
                    .pmr(dir.join("k.pmr"), 16 << 20)
                    .namespace(NvmeNamespace::file(dir.join("k1.img"), 16 << 20, 4096))
                    .namespace(NvmeNamespace::file(dir.join("k2.img"), 32 << 20, 512)),
            )
            .controller(
                NvmeController::new("NVKV-TOOLS-V").namespace(NvmeNamespace::null(16 << 20, 4096)),
            )
            .controller(
                NvmeController::new("NVKV-TOOLS-D").namespace(NvmeNamespace::file(
                    dir.join("d1.img"),
                    64 << 20,
                    4096,
                )),
            )
            .binary(env!("CARGO_BIN_EXE_nvkv-setup"), "nvkv-setup")
            .binary(env!("CARGO_BIN_EXE_nvkv-identify"), "nvkv-identify")
            .binary(env!("CARGO_BIN_EXE_nvkv"), "nvkv")
            .binary("/usr/sbin/nvme", "nvme")
            .file(MINIX_KO, kernel_module("minix"))
            .file(MD_KO, kernel_module("md-mod"))
    });
}

// ---------- helpers ----------

/// Where the guest finds the minix file system module (the guest kernel has no built-in file system that
/// mounts a block device, and busybox has no mkfs; minix.ko has no dependencies and its format is tiny).
const MINIX_KO: &str = "/lib/modules/nvkv/minix.ko";

/// md's module: an md array made through sysfs alone (no mdadm in busybox) holds its member devices.
const MD_KO: &str = "/lib/modules/nvkv/md-mod.ko";

/// A module of the guest kernel, read on the host; empty when it cannot be found (the test that needs it then
/// fails saying so).
fn kernel_module(name: &str) -> Vec<u8> {
    nvkv_qemu::host::find_kernel()
        .and_then(|k| k.module(name))
        .ok()
        .and_then(|p| std::fs::read(p).ok())
        .unwrap_or_default()
}

/// A minimal minix (v1, 14-character names) file system of 64 blocks of 1 KiB: boot block, superblock, one
/// inode-bitmap block, one zone-bitmap block, one block of 32 inodes, and the root directory in block 5.
fn minix_image() -> Vec<u8> {
    const BS: usize = 1024;
    let mut img = vec![0u8; 64 * BS];
    let put16 =
        |img: &mut [u8], off: usize, v: u16| img[off..off + 2].copy_from_slice(&v.to_le_bytes());
    let put32 =
        |img: &mut [u8], off: usize, v: u32| img[off..off + 4].copy_from_slice(&v.to_le_bytes());
    let sb = BS;
    put16(&mut img, sb, 32); // s_ninodes
    put16(&mut img, sb + 2, 64); // s_nzones
    put16(&mut img, sb + 4, 1); // s_imap_blocks
    put16(&mut img, sb + 6, 1); // s_zmap_blocks
    put16(&mut img, sb + 8, 5); // s_firstdatazone
    put16(&mut img, sb + 10, 0); // s_log_zone_size
    put32(&mut img, sb + 12, (7 + 512 + 512 * 512) * 1024); // s_max_size
    put16(&mut img, sb + 16, 0x137f); // s_magic: minix v1, 14-character names
    put16(&mut img, sb + 18, 1); // s_state: valid
    img[2 * BS] = 0b11; // inode bitmap: bit 0 reserved, inode 1 (root) used
    img[3 * BS] = 0b11; // zone bitmap: bit 0 reserved, zone 5 (root directory) used
    let ino = 4 * BS; // inode 1
    put16(&mut img, ino, 0o040755); // i_mode: directory
    put32(&mut img, ino + 4, 32); // i_size: two 16-byte entries
    img[ino + 13] = 2; // i_nlinks
    put16(&mut img, ino + 14, 5); // i_zone[0]
    let dir = 5 * BS;
    put16(&mut img, dir, 1);
    img[dir + 2] = b'.';
    put16(&mut img, dir + 16, 1);
    img[dir + 18..dir + 20].copy_from_slice(b"..");
    img
}

/// The block device of K's namespace `nsid`.
fn k_namespace(nsid: u64) -> Result<String, Box<dyn StdError>> {
    let l = list()?;
    let k = entry(&l, K)?;
    k["namespaces"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["nsid"] == nsid))
        .and_then(|n| n["name"].as_str())
        .map(str::to_string)
        .ok_or_else(|| format!("K has no namespace {nsid}: {k}").into())
}

/// Runs a busybox shell command that must succeed.
fn sh(cmd: &str) -> R {
    run_ok("sh", &["-c", cmd]).map(|_| ())
}

/// `nvkv-setup bind K` must fail naming each of `wants`, and leave K on nvme.
fn bind_k_refused(wants: &[&str]) -> R {
    let out = run("nvkv-setup", &["bind", K])?;
    check!(!out.ok, "bind succeeded:\n{}", out.stdout);
    for w in wants.iter().chain(&[K, "--force"]) {
        check!(out.stderr.contains(w), "{w:?} missing in:\n{}", out.stderr);
    }
    check!(
        guest::driver(K).as_deref() == Some("nvme"),
        "K left the nvme driver: {:?}",
        guest::driver(K)
    );
    Ok(())
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run(bin: &str, args: &[&str]) -> Result<Out, Box<dyn StdError>> {
    let o = Command::new(bin)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {bin}: {e}"))?;
    Ok(Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    })
}

/// Runs a command that must succeed; returns its stdout.
fn run_ok(bin: &str, args: &[&str]) -> Result<String, Box<dyn StdError>> {
    let o = run(bin, args)?;
    if !o.ok {
        return Err(format!(
            "`{bin} {}` failed:\nstdout: {}\nstderr: {}",
            args.join(" "),
            o.stdout,
            o.stderr
        )
        .into());
    }
    Ok(o.stdout)
}

fn json(text: &str) -> Result<Value, Box<dyn StdError>> {
    serde_json::from_str(text).map_err(|e| format!("not JSON ({e}): {text}").into())
}

fn list() -> Result<Vec<Value>, Box<dyn StdError>> {
    let v = json(&run_ok("nvkv-setup", &["list", "--json"])?)?;
    Ok(v.as_array().ok_or("list --json is not an array")?.clone())
}

fn entry<'a>(l: &'a [Value], addr: &str) -> Result<&'a Value, Box<dyn StdError>> {
    l.iter()
        .find(|c| c["addr"] == addr)
        .ok_or_else(|| format!("{addr} missing from `nvkv-setup list --json`: {l:?}").into())
}

/// The kernel's controller name (`nvme0`) of a controller bound to nvme.
fn kernel_name(addr: &str) -> Result<String, Box<dyn StdError>> {
    let dir = Path::new("/sys/bus/pci/devices").join(addr).join("nvme");
    let e = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .next()
        .ok_or_else(|| format!("{} is empty", dir.display()))?;
    Ok(e.file_name().to_string_lossy().into_owned())
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) -> R {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Puts K back on the kernel driver with the sysfs helpers (not the tool under test), for clean-up.
fn restore_k() {
    if guest::driver(K).as_deref() != Some("nvme") {
        let _ = guest::bind_kernel(K);
    }
}

// ---------- tests ----------

fn list_shows_controllers_drivers_and_namespaces() -> R {
    let l = list()?;
    check!(
        l.len() == 3,
        "expected 3 controllers (K, V, D), got {}: {l:?}",
        l.len()
    );
    let d = entry(&l, D)?;
    check!(d["driver"] == "vfio-pci", "D driver: {}", d["driver"]);
    let k = entry(&l, K)?;
    check!(k["driver"] == "nvme", "K driver: {}", k["driver"]);
    check!(k["vendor"] == 0x1b36 && k["device"] == 0x0010, "K id: {k}");
    let group = k["iommu_group"].as_str().ok_or("K has no IOMMU group")?;
    check!(
        std::fs::read_link(format!("/sys/bus/pci/devices/{K}/iommu_group"))?.ends_with(group),
        "K group {group} differs from sysfs"
    );
    let ns = k["namespaces"].as_array().ok_or("K namespaces")?;
    check!(ns.len() == 2, "K namespaces: {ns:?}");
    let kn = kernel_name(K)?;
    for (i, n) in ns.iter().enumerate() {
        let name = n["name"].as_str().ok_or("ns name")?;
        check!(
            Path::new("/dev").join(name).exists(),
            "/dev/{name} does not exist"
        );
        check!(n["nsid"] == i as u64 + 1, "nsid of {name}: {}", n["nsid"]);
        check!(name.starts_with("nvme"), "{name}");
    }
    check!(
        ns[0]["size_bytes"] == 16u64 << 20,
        "ns1 size {}",
        ns[0]["size_bytes"]
    );
    check!(
        ns[1]["size_bytes"] == 32u64 << 20,
        "ns2 size {}",
        ns[1]["size_bytes"]
    );
    check!(
        k["kernel_name"] == kn.as_str(),
        "kernel name {}",
        k["kernel_name"]
    );
    check!(
        k["in_use"].as_array().is_some_and(Vec::is_empty),
        "K in use: {}",
        k["in_use"]
    );
    let v = entry(&l, V)?;
    check!(v["driver"] == "vfio-pci", "V driver: {}", v["driver"]);
    check!(
        v["namespaces"].as_array().is_some_and(Vec::is_empty),
        "V has block devices: {v}"
    );
    // The table.
    let text = run_ok("nvkv-setup", &["list"])?;
    let line = |a: &str| text.lines().find(|l| l.starts_with(a)).map(str::to_string);
    let kl = line(K).ok_or_else(|| format!("no line for {K}:\n{text}"))?;
    check!(
        kl.contains("1b36:0010") && kl.contains(" nvme ") && kl.contains("(16.00 MiB)"),
        "{kl}"
    );
    let vl = line(V).ok_or_else(|| format!("no line for {V}:\n{text}"))?;
    check!(vl.contains("vfio-pci"), "{vl}");
    Ok(())
}

fn check_passes_in_the_guest() -> R {
    let out = run("nvkv-setup", &["check"])?;
    check!(out.ok, "check failed:\n{}\n{}", out.stdout, out.stderr);
    for want in [
        "[ok  ] iommu",
        "[ok  ] vfio",
        "[ok  ] memlock",
        "/dev/vfio/vfio",
    ] {
        check!(
            out.stdout.contains(want),
            "{want:?} missing:\n{}",
            out.stdout
        );
    }
    check!(
        out.stdout
            .contains(&format!("{K} (nvme) is in IOMMU group")),
        "{}",
        out.stdout
    );
    Ok(())
}

fn bind_refused_while_a_process_holds_the_namespace() -> R {
    let dev = guest::block_device(K).ok_or("K has no block device")?;
    let name = dev
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or("block device name")?;
    let f = std::fs::File::open(&dev)?;
    let mut child = Command::new("sleep")
        .arg("600")
        .stdin(Stdio::from(f))
        .spawn()?;
    let pid = child.id();
    // The generic character device (NVMe passthrough, as fio's io_uring_cmd uses it) counts too.
    let ng = name.replacen("nvme", "ng", 1);
    let mut child2 = match std::fs::File::open(Path::new("/dev").join(&ng)) {
        Ok(g) => Some(
            Command::new("sleep")
                .arg("601")
                .stdin(Stdio::from(g))
                .spawn()?,
        ),
        Err(_) => None,
    };
    let pid2 = child2.as_ref().map(|c| c.id());
    let res = (|| -> R {
        check!(pid2.is_some(), "/dev/{ng} could not be opened");
        let out = run("nvkv-setup", &["bind", K])?;
        check!(
            !out.ok,
            "bind succeeded while {name} was open:\n{}",
            out.stdout
        );
        let want = format!("/dev/{name} is open by process {pid} (sleep)");
        let want2 = format!("/dev/{ng} is open by process {} (sleep)", pid2.unwrap_or(0));
        for w in [want.as_str(), want2.as_str(), K, "--force"] {
            check!(out.stderr.contains(w), "{w:?} missing in:\n{}", out.stderr);
        }
        check!(
            guest::driver(K).as_deref() == Some("nvme"),
            "K left the nvme driver: {:?}",
            guest::driver(K)
        );
        check!(dev.exists(), "{} vanished", dev.display());
        // The listing says so too.
        let l = list()?;
        let k = entry(&l, K)?;
        let uses = k["in_use"].as_array().ok_or("in_use")?;
        check!(
            uses.iter()
                .any(|u| u["kind"] == "open" && u["pid"] == pid && u["device"] == name.as_str()),
            "in_use: {uses:?}"
        );
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    if let Some(c) = child2.as_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    restore_k();
    res
}

fn bind_refused_while_a_namespace_is_swap() -> R {
    let name = k_namespace(2)?;
    sh(&format!("mkswap /dev/{name} && swapon /dev/{name}"))?;
    let res = (|| -> R {
        let swaps = std::fs::read_to_string("/proc/swaps")?;
        check!(swaps.contains(&name), "swapon did not take: {swaps}");
        let want = format!("/dev/{name} is in use as swap");
        let fix = format!("swapoff /dev/{name}");
        bind_k_refused(&[&want, &fix])
    })();
    let off = sh(&format!("swapoff /dev/{name}"));
    restore_k();
    res.and(off)
}

fn bind_refused_while_a_namespace_is_mounted() -> R {
    check!(
        std::fs::metadata(MINIX_KO).is_ok_and(|m| m.len() > 0),
        "{MINIX_KO} is missing in the guest (minix.ko of the guest kernel was not found on the host)"
    );
    let name = k_namespace(2)?;
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/dev/{name}"))?;
        f.write_all(&minix_image())?;
        f.sync_all()?;
    }
    // insmod fails harmlessly when a previous run in this boot loaded it.
    let _ = run("insmod", &[MINIX_KO]);
    sh("mkdir -p /mnt/nvkv")?;
    sh(&format!("mount -t minix /dev/{name} /mnt/nvkv"))?;
    let res = (|| -> R {
        std::fs::write("/mnt/nvkv/hello", b"minix on nvme")?;
        let want = format!("/dev/{name} is mounted on /mnt/nvkv (minix)");
        bind_k_refused(&[&want, "umount /mnt/nvkv"])?;
        let l = list()?;
        let uses = entry(&l, K)?["in_use"].clone();
        check!(
            uses.as_array().is_some_and(|a| a
                .iter()
                .any(|u| u["kind"] == "mounted" && u["mountpoint"] == "/mnt/nvkv")),
            "list in_use: {uses}"
        );
        Ok(())
    })();
    let off = sh("umount /mnt/nvkv");
    restore_k();
    res.and(off)
}

fn bind_refused_while_a_namespace_is_held_by_md() -> R {
    check!(
        std::fs::metadata(MD_KO).is_ok_and(|m| m.len() > 0),
        "{MD_KO} is missing in the guest (md-mod.ko of the guest kernel was not found on the host)"
    );
    let name = k_namespace(2)?;
    let dev = std::fs::read_to_string(format!("/sys/class/block/{name}/dev"))?;
    let _ = run("insmod", &[MD_KO]);
    // An array without metadata, assembled through sysfs: md claims the member and becomes its holder.
    sh(&format!(
        "echo md9 > /sys/module/md_mod/parameters/new_array && \
         echo none > /sys/block/md9/md/metadata_version && \
         echo {} > /sys/block/md9/md/new_dev",
        dev.trim()
    ))?;
    let res = (|| -> R {
        let holders: Vec<String> = std::fs::read_dir(format!("/sys/class/block/{name}/holders"))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        check!(holders == ["md9"], "holders of {name}: {holders:?}");
        let want = format!("/dev/{name} is held by md9, an md RAID array");
        bind_k_refused(&[&want, "mdadm --stop /dev/md9"])
    })();
    let off = sh("echo clear > /sys/block/md9/md/array_state");
    restore_k();
    res.and(off)
}

fn bind_force_takes_a_held_namespace() -> R {
    let dev = guest::block_device(K).ok_or("K has no block device")?;
    let f = std::fs::File::open(&dev)?;
    let mut child = Command::new("sleep")
        .arg("600")
        .stdin(Stdio::from(f))
        .spawn()?;
    let pid = child.id();
    let res = (|| -> R {
        let out = run_ok("nvkv-setup", &["bind", "--force", K])?;
        let want = format!(
            "forced despite: {} is open by process {pid} (sleep)",
            dev.display()
        );
        check!(out.contains(&want), "{want:?} missing in:\n{out}");
        check!(
            guest::driver(K).as_deref() == Some("vfio-pci"),
            "driver after bind --force: {:?}",
            guest::driver(K)
        );
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    let back = run("nvkv-setup", &["release", K]);
    restore_k();
    res?;
    let back = back?;
    check!(back.ok, "release after --force failed: {}", back.stderr);
    Ok(())
}

fn release_refused_while_the_vfio_group_is_open() -> R {
    let group = guest::iommu_group(V)?;
    let node = format!("/dev/vfio/{group}");
    let held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&node)?;
    let out = run("nvkv-setup", &["release", V])?;
    drop(held);
    check!(
        !out.ok,
        "release succeeded while {node} was open:\n{}",
        out.stdout
    );
    let me = format!("pid {}", std::process::id());
    for w in [node.as_str(), me.as_str(), V, "--force"] {
        check!(out.stderr.contains(w), "{w:?} missing in:\n{}", out.stderr);
    }
    check!(
        guest::driver(V).as_deref() == Some("vfio-pci"),
        "V left vfio-pci: {:?}",
        guest::driver(V)
    );
    Ok(())
}

fn bind_release_round_trip() -> R {
    let res = (|| -> R {
        let group = guest::iommu_group(K)?;
        let before: Vec<String> = entry(&list()?, K)?["namespaces"]
            .as_array()
            .ok_or("namespaces")?
            .iter()
            .filter_map(|n| n["name"].as_str().map(str::to_string))
            .collect();
        let out = run_ok("nvkv-setup", &["bind", K])?;
        check!(
            out.contains(&format!("{K}: nvme -> vfio-pci (/dev/vfio/{group})")),
            "bind said: {out}"
        );
        check!(
            guest::driver(K).as_deref() == Some("vfio-pci"),
            "driver after bind: {:?}",
            guest::driver(K)
        );
        check!(
            Path::new(&format!("/dev/vfio/{group}")).exists(),
            "no /dev/vfio/{group}"
        );
        for n in &before {
            wait_for(&format!("/dev/{n} to go"), || {
                !Path::new("/dev").join(n).exists()
            })?;
        }
        // A second bind is a no-op.
        let out = run_ok("nvkv-setup", &["bind", K])?;
        check!(
            out.contains("already on vfio-pci"),
            "second bind said: {out}"
        );
        let k = entry(&list()?, K)?.clone();
        check!(k["driver"] == "vfio-pci", "list after bind: {k}");
        // Back to the kernel, with the alias.
        let out = run_ok("nvkv-setup", &["unbind", K])?;
        check!(
            out.contains(&format!("{K}: vfio-pci -> nvme")),
            "release said: {out}"
        );
        check!(
            guest::driver(K).as_deref() == Some("nvme"),
            "driver after release: {:?}",
            guest::driver(K)
        );
        for n in &before {
            check!(
                out.contains(&format!("/dev/{n}")) && Path::new("/dev").join(n).exists(),
                "/dev/{n} not back after release: {out}"
            );
        }
        check!(
            std::fs::read_to_string(format!("/sys/bus/pci/devices/{K}/driver_override"))?.trim()
                == "(null)",
            "driver_override not cleared"
        );
        Ok(())
    })();
    restore_k();
    res
}

/// Fields of `nvme id-ctrl -o json` that nvkv-identify prints.
const CTRL_FIELDS: &[&str] = &[
    "vid", "ssvid", "sn", "mn", "fr", "rab", "ieee", "cmic", "mdts", "cntlid", "ver", "oacs",
    "acl", "aerl", "frmw", "lpa", "elpe", "npss", "sqes", "cqes", "maxcmd", "nn", "oncs", "fuses",
    "fna", "vwc", "awun", "awupf", "sgls", "subnqn",
];
/// Fields of `nvme show-regs -o json` that nvkv-identify prints under "pmr", in register order.
const PMR_FIELDS: &[&str] = &[
    "pmrcap", "pmrctl", "pmrsts", "pmrebs", "pmrswtp", "pmrmscl", "pmrmscu",
];
/// Fields of `nvme id-ns -o json` that nvkv-identify prints (lbafs compared entry by entry).
const NS_FIELDS: &[&str] = &[
    "nsze", "ncap", "nuse", "nsfeat", "nlbaf", "flbas", "mc", "dpc", "dps", "nmic", "dlfeat",
    "nawun", "nawupf", "nguid", "eui64",
];

fn compare(what: &str, cli: &Value, ours: &Value, fields: &[&str]) -> Vec<String> {
    fields
        .iter()
        // A field absent from both would compare equal: every field must be in nvme-cli's output.
        .filter(|f| cli.get(**f).is_none() || cli.get(**f) != ours.get(**f))
        .map(|f| {
            format!(
                "{what}.{f}: nvme-cli {:?}, nvkv-identify {:?}",
                cli.get(*f),
                ours.get(*f)
            )
        })
        .collect()
}

fn identify_json_matches_nvme_cli() -> R {
    let res = (|| -> R {
        // 1. nvme-cli, through the kernel driver.
        let kn = kernel_name(K)?;
        let cdev = format!("/dev/{kn}");
        let cli_ctrl = json(&run_ok("nvme", &["id-ctrl", &cdev, "-o", "json"])?)?;
        let mut cli_ns = Vec::new();
        for nsid in 1..=2u32 {
            cli_ns.push(json(&run_ok(
                "nvme",
                &["id-ns", &cdev, "-n", &nsid.to_string(), "-o", "json"],
            )?)?);
        }
        // 2. nvkv-identify, through nvkv's driver.
        run_ok("nvkv-setup", &["bind", K])?;
        let ours = json(&run_ok("nvkv-identify", &[K, "--json"])?)?;
        check!(ours["address"] == K, "address: {}", ours["address"]);
        let mut diffs = compare("id-ctrl", &cli_ctrl, &ours["controller"], CTRL_FIELDS);
        // K has QEMU's PMR, not enabled. nvme-cli cannot be the reference here: its `show-regs` mmaps
        // resource0, which this guest kernel refuses while the nvme driver holds the BAR
        // (CONFIG_IO_STRICT_DEVMEM=y); nvme-cli 2.3 then tries the fabrics get-property, fails with EINVAL
        // and aborts ("double free"). So the raw values are checked against QEMU 7.2's `nvme_init_pmr`.
        let pmr = &ours["pmr"];
        let want = [0x0100_0898u32, 0, 0, 0, 0, 0, 0];
        for (f, w) in PMR_FIELDS.iter().zip(want) {
            if pmr[*f] != w {
                diffs.push(format!("pmr.{f}: QEMU's {w:#x}, nvkv-identify {}", pmr[*f]));
            }
        }
        let text = run_ok("nvkv-identify", &[K])?;
        for want in [
            "pmrcap  : 0x1000898",
            "PMR time unit is 500 milliseconds",
            "PMR is Disabled",
        ] {
            check!(text.contains(want), "{want:?} missing:\n{text}");
        }
        check!(
            ours["controller"]["sn"]
                .as_str()
                .is_some_and(|s| s.trim_end() == "NVKV-TOOLS-K"),
            "sn: {}",
            ours["controller"]["sn"]
        );
        let nss = ours["namespaces"].as_array().ok_or("namespaces")?;
        check!(nss.len() == 2, "namespaces: {nss:?}");
        for (i, (cli, ns)) in cli_ns.iter().zip(nss).enumerate() {
            let what = format!("id-ns {}", i + 1);
            check!(ns["nsid"] == i as u64 + 1, "{what}: nsid {}", ns["nsid"]);
            diffs.extend(compare(&what, cli, ns, NS_FIELDS));
            let (a, b) = (
                cli["lbafs"].as_array().ok_or("nvme-cli lbafs")?,
                ns["lbafs"].as_array().ok_or("our lbafs")?,
            );
            if a.len() != b.len() {
                diffs.push(format!("{what}.lbafs: {} vs {} entries", a.len(), b.len()));
            }
            for (j, (x, y)) in a.iter().zip(b).enumerate() {
                diffs.extend(compare(
                    &format!("{what}.lbafs[{j}]"),
                    x,
                    y,
                    &["ms", "ds", "rp"],
                ));
            }
        }
        // The QEMU configuration shows through: 16 MiB of 4 KiB blocks, 32 MiB of 512 B blocks.
        check!(
            nss[0]["nsze"] == 4096 && nss[1]["nsze"] == 65536,
            "nsze: {} {}",
            nss[0]["nsze"],
            nss[1]["nsze"]
        );
        check!(
            diffs.is_empty(),
            "{} field(s) differ:\n{}",
            diffs.len(),
            diffs.join("\n")
        );
        run_ok("nvkv-setup", &["release", K])?;
        Ok(())
    })();
    restore_k();
    res
}

fn identify_text_and_errors() -> R {
    let text = run_ok("nvkv-identify", &[V])?;
    for want in [
        "sn        : NVKV-TOOLS-V",
        "vid       : 0x1b36",
        "NVMe Identify Namespace 1:",
        "(in use)",
        "16.00 MiB",
        "Persistent Memory Region: no PMR (CAP.PMRS = 0)",
    ] {
        check!(text.contains(want), "{want:?} missing:\n{text}");
    }
    let one = json(&run_ok("nvkv-identify", &[V, "--json", "--nsid", "1"])?)?;
    check!(
        one["namespaces"].as_array().map(Vec::len) == Some(1),
        "--nsid 1: {one}"
    );
    check!(one["pmr"].is_null(), "pmr without a PMR: {}", one["pmr"]);
    // A controller on the kernel driver: the error names it and the fix.
    let out = run("nvkv-identify", &[K])?;
    check!(!out.ok, "identify of a kernel-bound controller succeeded");
    for w in [K, "nvme", "nvkv-setup bind"] {
        check!(out.stderr.contains(w), "{w:?} missing:\n{}", out.stderr);
    }
    // No such device.
    let out = run("nvkv-identify", &["0000:00:1f.7"])?;
    check!(!out.ok, "identify of a missing device succeeded");
    check!(
        out.stderr.contains("0000:00:1f.7") && out.stderr.contains("nvkv-setup list"),
        "{}",
        out.stderr
    );
    let out = run("nvkv-setup", &["bind", "0000:00:1f.7"])?;
    check!(
        !out.ok && out.stderr.contains("0000:00:1f.7 does not exist"),
        "{}",
        out.stderr
    );
    Ok(())
}

fn hugepages_reserved_and_mounted() -> R {
    let out = run_ok("nvkv-setup", &["hugepages", "16"])?;
    check!(out.contains("16 hugepages"), "{out}");
    let nr = std::fs::read_to_string("/proc/sys/vm/nr_hugepages")?;
    check!(nr.trim() == "16", "nr_hugepages {nr}");
    let mi = std::fs::read_to_string("/proc/self/mountinfo")?;
    check!(
        mi.lines()
            .any(|l| l.contains(" /dev/hugepages ") && l.contains(" - hugetlbfs ")),
        "no hugetlbfs on /dev/hugepages:\n{mi}"
    );
    let out = run_ok("nvkv-setup", &["hugepages", "16"])?;
    check!(out.contains("already on /dev/hugepages"), "{out}");
    let out = run_ok("nvkv-setup", &["check"])?;
    check!(out.contains("[ok  ] hugepages"), "{out}");
    Ok(())
}

/// The `nvkv` shell on nvkv's driver: format, put, get, scan, delete, stats, check, each a separate process
/// (so every command reopens and recovers the database from the device); refusals have their exit codes.
fn kv_shell_round_trip_on_nvme() -> R {
    let kv = |args: &[&str]| {
        let mut a = vec!["--nvme", D, "--shards", "2"];
        a.extend_from_slice(args);
        run("nvkv", &a)
    };
    let out = kv(&["format", "--force"])?;
    check!(
        out.ok && out.stdout.contains("formatted"),
        "format: {}{}",
        out.stdout,
        out.stderr
    );
    for (k, v) in [("alpha", "1"), ("beta", "two"), ("gamma", "3 3 3")] {
        let o = kv(&["put", k, v])?;
        check!(o.ok, "put {k}: {}", o.stderr);
    }
    let o = kv(&["get", "beta"])?;
    check!(
        o.ok && o.stdout == "two\n",
        "get beta: {:?} {}",
        o.stdout,
        o.stderr
    );
    let o = kv(&["scan"])?;
    check!(
        o.stdout == "alpha\t1\nbeta\ttwo\ngamma\t3 3 3\n",
        "scan: {:?}",
        o.stdout
    );
    let o = kv(&["scan", "b", "c"])?;
    check!(o.stdout == "beta\ttwo\n", "bounded scan: {:?}", o.stdout);
    check!(kv(&["delete", "alpha"])?.ok, "delete alpha failed");
    let o = kv(&["get", "alpha"])?;
    check!(
        !o.ok && o.stderr.contains("not found"),
        "get after delete: {:?} {}",
        o.stdout,
        o.stderr
    );
    let o = kv(&["stats"])?;
    check!(
        o.ok && o
            .stdout
            .lines()
            .filter(|l| l.starts_with("shard ") && l.contains(" keys, "))
            .count()
            == 2
            && o.stdout
                .lines()
                .filter(|l| l.contains("durable writes: persistence cycle"))
                .count()
                == 2,
        "stats: {}",
        o.stdout
    );
    let o = kv(&["check"])?;
    check!(
        o.ok && o.stdout.contains("2 records verified, 0 bad"),
        "check: {}{}",
        o.stdout,
        o.stderr
    );
    let o = kv(&["format"])?;
    check!(
        !o.ok && o.stderr.contains("--force") && o.stderr.contains("2 keys"),
        "format over data: {}",
        o.stderr
    );
    let o = run("nvkv", &["--nvme", "0000:00:1e.0", "get", "x"])?;
    check!(
        !o.ok && o.stderr.contains("0000:00:1e.0"),
        "bad address: {}",
        o.stderr
    );
    let o = run("nvkv", &["--nvme", K, "get", "x"])?;
    check!(
        !o.ok && o.stderr.contains("vfio-pci"),
        "kernel-bound controller: {}",
        o.stderr
    );
    Ok(())
}
