//! nvkv as a non-root user, in the test VM (one boot; see `nvkv_qemu::suite`).
//!
//! Controller N (0000:00:10.0, serial NVKV-NONROOT, on the kernel nvme driver at boot; ns 1: 64 MiB file,
//! 4 KiB LBAs). The guest has three users besides root: `nvkvuser` (1000), `member` (1001, in group `nvkv`)
//! and `outsider` (1002, in no group of interest). Commands run as a user through busybox `su`, which sets
//! the user's groups from /etc/group; each sets its own RLIMIT_MEMLOCK with `ulimit -l` first (the guest's
//! init runs `ulimit -l unlimited` as root, and a user may lower a limit but not raise it).
//!
//! The tests run in order: the first binds N with `nvkv-setup bind --user nvkvuser`.

use nvkv_qemu::check;
use nvkv_qemu::suite::{self, GuestTest};
use nvkv_qemu::vm::Bind;
use nvkv_qemu::{guest, NvmeController, NvmeNamespace, Vm};
use std::error::Error as StdError;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

type R = Result<(), Box<dyn StdError>>;

const N: &str = "0000:00:10.0";

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                      nvkvuser:x:1000:1000::/tmp:/bin/sh\n\
                      member:x:1001:1001::/tmp:/bin/sh\n\
                      outsider:x:1002:1002::/tmp:/bin/sh\n";
const GROUP: &str = "root:x:0:\n\
                     nvkvuser:x:1000:\n\
                     member:x:1001:\n\
                     outsider:x:1002:\n\
                     nvkv:x:1100:member\n";

fn main() {
    let tests = [
        GuestTest {
            name: "bind_user_gives_the_node_and_says_what_memlock_it_needs",
            run: bind_user_gives_the_node_and_says_what_memlock_it_needs,
        },
        GuestTest {
            name: "user_runs_identify_driver_io_and_the_kv_shell",
            run: user_runs_identify_driver_io_and_the_kv_shell,
        },
        GuestTest {
            name: "user_without_access_is_told_what_is_missing",
            run: user_without_access_is_told_what_is_missing,
        },
        GuestTest {
            name: "low_memlock_is_told_what_is_missing",
            run: low_memlock_is_told_what_is_missing,
        },
        GuestTest {
            name: "bind_group_lets_its_members_in",
            run: bind_group_lets_its_members_in,
        },
    ];
    suite::main(&tests, || {
        let dir =
            std::env::temp_dir().join(format!("nvkv-tools-vm-nonroot-{}", std::process::id()));
        Vm::builder()
            .controller(
                NvmeController::new("NVKV-NONROOT")
                    .bind(Bind::Kernel)
                    .namespace(NvmeNamespace::file(dir.join("n1.img"), 64 << 20, 4096)),
            )
            .binary(env!("CARGO_BIN_EXE_nvkv-setup"), "nvkv-setup")
            .binary(env!("CARGO_BIN_EXE_nvkv-identify"), "nvkv-identify")
            .binary(env!("CARGO_BIN_EXE_nvkv"), "nvkv")
            .file("/etc/passwd", PASSWD.as_bytes().to_vec())
            .file("/etc/group", GROUP.as_bytes().to_vec())
    });
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Out {
    fn both(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr)
    }
}

fn output(c: &mut Command, what: &str) -> Result<Out, Box<dyn StdError>> {
    let o = c.output().map_err(|e| format!("cannot run {what}: {e}"))?;
    Ok(Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    })
}

/// Runs `cmd` (a shell command line) as `user` with RLIMIT_MEMLOCK set to `memlock_kib`.
fn as_user(user: &str, memlock_kib: u64, cmd: &str) -> Result<Out, Box<dyn StdError>> {
    let line = format!("ulimit -l {memlock_kib} && exec {cmd}");
    output(
        Command::new("su").args(["-s", "/bin/sh", "-c", &line, user]),
        &format!("`{cmd}` as {user}"),
    )
}

/// Runs a command as root.
fn root(bin: &str, args: &[&str]) -> Result<Out, Box<dyn StdError>> {
    output(Command::new(bin).args(args), bin)
}

/// `nvkv-setup bind N --user nvkvuser --shards 1` (a no-op bind after the first, the grant again) and the
/// RLIMIT_MEMLOCK figure it prints, in KiB.
fn bind_for_nvkvuser() -> Result<(Out, u64), Box<dyn StdError>> {
    let out = root(
        "nvkv-setup",
        &["bind", N, "--user", "nvkvuser", "--shards", "1"],
    )?;
    check!(out.ok, "bind --user failed:\n{}", out.both());
    let kib = out
        .stdout
        .split("MiB (")
        .nth(1)
        .and_then(|r| r.split(" KiB)").next())
        .and_then(|n| n.trim().parse::<u64>().ok())
        .ok_or_else(|| format!("no memlock figure in:\n{}", out.stdout))?;
    Ok((out, kib))
}

fn group_node() -> Result<String, Box<dyn StdError>> {
    Ok(format!("/dev/vfio/{}", guest::iommu_group(N)?))
}

fn bind_user_gives_the_node_and_says_what_memlock_it_needs() -> R {
    check!(
        guest::driver(N).as_deref() == Some("nvme"),
        "N is not on nvme at the start: {:?}",
        guest::driver(N)
    );
    let (out, kib) = bind_for_nvkvuser()?;
    let node = group_node()?;
    let group = guest::iommu_group(N)?;
    check!(
        guest::driver(N).as_deref() == Some("vfio-pci"),
        "driver after bind: {:?}",
        guest::driver(N)
    );
    let m = std::fs::metadata(&node)?;
    check!(
        m.uid() == 1000 && m.mode() & 0o777 == 0o600,
        "{node}: uid {} mode {:o}",
        m.uid(),
        m.mode() & 0o777
    );
    for want in [
        format!("{N}: nvme -> vfio-pci ({node})"),
        format!("{node}: owner nvkvuser:root, mode 0600 (was root:root 0600)"),
        format!(r#"SUBSYSTEM=="vfio", KERNEL=="{group}", OWNER="nvkvuser", MODE="0600""#),
        "/etc/udev/rules.d/70-nvkv-vfio.rules".to_string(),
        "RLIMIT_MEMLOCK: nvkvuser needs at least".to_string(),
        format!("ulimit -l {kib}"),
        format!("nvkvuser - memlock {kib}"),
        "LimitMEMLOCK=".to_string(),
    ] {
        check!(
            out.stdout.contains(&want),
            "{want:?} missing:\n{}",
            out.stdout
        );
    }
    check!(
        (1024..=16 * 1024).contains(&kib),
        "memlock figure {kib} KiB"
    );
    suite::note(&format!("bind --user said:\n{}", out.stdout));
    Ok(())
}

fn user_runs_identify_driver_io_and_the_kv_shell() -> R {
    let (_, kib) = bind_for_nvkvuser()?;
    let id = as_user("nvkvuser", kib, &format!("nvkv-identify {N}"))?;
    check!(
        id.ok && id.stdout.contains("sn        : NVKV-NONROOT"),
        "identify as nvkvuser:\n{}",
        id.both()
    );
    let chk = as_user("nvkvuser", kib, "nvkv-setup check --shards 1")?;
    for want in ["[ok  ] memlock", "is readable and writable by uid 1000"] {
        check!(
            chk.stdout.contains(want),
            "{want:?} missing:\n{}",
            chk.both()
        );
    }
    let kv = |args: &str| {
        as_user(
            "nvkvuser",
            kib,
            &format!("nvkv --nvme {N} --shards 1 {args}"),
        )
    };
    // format --force zeroes the namespace (Write Zeroes), put writes a segment, get reopens, recovers (reads)
    // and reads the record back: the driver's I/O, as the user, within the figure bind printed.
    let o = kv("format --force")?;
    check!(
        o.ok && o.stdout.contains("formatted"),
        "format:\n{}",
        o.both()
    );
    let o = kv("put hello world")?;
    check!(o.ok, "put:\n{}", o.both());
    let o = kv("get hello")?;
    check!(o.ok && o.stdout == "world\n", "get:\n{}", o.both());
    let o = kv("check")?;
    check!(
        o.ok && o.stdout.contains("1 records verified, 0 bad"),
        "check:\n{}",
        o.both()
    );
    suite::note(&format!(
        "as nvkvuser with ulimit -l {kib}: identify, format, put, get, check passed"
    ));
    Ok(())
}

fn user_without_access_is_told_what_is_missing() -> R {
    bind_for_nvkvuser()?;
    let node = group_node()?;
    let id = as_user("outsider", 1 << 20, &format!("nvkv-identify {N}"))?;
    check!(!id.ok, "identify as outsider succeeded:\n{}", id.both());
    for want in [
        format!("no access to {node}"),
        format!("{node} is owned by nvkvuser:root with mode 0600"),
        "user outsider (uid 1002) is in group(s) outsider".to_string(),
        format!("nvkv-setup bind {N} --user outsider"),
    ] {
        check!(
            id.stderr.contains(&want),
            "{want:?} missing:\n{}",
            id.both()
        );
    }
    suite::note(&format!("outsider's identify said: {}", id.stderr.trim()));
    let o = as_user("outsider", 1 << 20, &format!("nvkv --nvme {N} get hello"))?;
    check!(
        !o.ok && o.stderr.contains(&format!("no access to {node}")),
        "shell as outsider:\n{}",
        o.both()
    );
    let chk = as_user("outsider", 1 << 20, "nvkv-setup check")?;
    check!(
        !chk.ok
            && chk
                .stdout
                .contains(&format!("[FAIL] /dev/vfio  no access to {node}"))
            && chk
                .stdout
                .contains(&format!("nvkv-setup bind {N} --user outsider")),
        "check as outsider:\n{}",
        chk.both()
    );
    let b = as_user(
        "outsider",
        1 << 20,
        &format!("nvkv-setup bind {N} --user outsider"),
    )?;
    check!(
        !b.ok && b.stderr.contains("needs root") && b.stderr.contains("sudo"),
        "bind as outsider:\n{}",
        b.both()
    );
    Ok(())
}

fn low_memlock_is_told_what_is_missing() -> R {
    let (_, kib) = bind_for_nvkvuser()?;
    // 8 KiB: the admin queues fit, the admin data page does not.
    let id = as_user("nvkvuser", 8, &format!("nvkv-identify {N}"))?;
    check!(!id.ok, "identify with 8 KiB succeeded:\n{}", id.both());
    for want in [
        "RLIMIT_MEMLOCK is too low",
        "the limit is 8 KiB",
        "8 KiB are locked already",
        "needs 4 KiB more",
        "at least 12 KiB in all",
        "nvkv-setup check --shards N",
        "ulimit -l",
        "/etc/security/limits.d/nvkv.conf",
        "LimitMEMLOCK=",
    ] {
        check!(id.stderr.contains(want), "{want:?} missing:\n{}", id.both());
    }
    suite::note(&format!(
        "identify with ulimit -l 8 said: {}",
        id.stderr.trim()
    ));
    // 64 KiB: the controller opens, the shard's queue pair (its PRP lists) does not fit.
    let o = as_user(
        "nvkvuser",
        64,
        &format!("nvkv --nvme {N} --shards 1 get hello"),
    )?;
    check!(
        !o.ok
            && o.stderr.contains("RLIMIT_MEMLOCK is too low")
            && o.stderr.contains("the limit is 64 KiB"),
        "shell with 64 KiB:\n{}",
        o.both()
    );
    suite::note(&format!(
        "the shell with ulimit -l 64 said: {}",
        o.stderr.trim()
    ));
    let chk = as_user("nvkvuser", 64, "nvkv-setup check --shards 1")?;
    check!(
        !chk.ok
            && chk
                .stdout
                .contains("[FAIL] memlock    RLIMIT_MEMLOCK is 64 KiB")
            && chk.stdout.contains(&format!("ulimit -l {kib}")),
        "check with 64 KiB:\n{}",
        chk.both()
    );
    Ok(())
}

fn bind_group_lets_its_members_in() -> R {
    let out = root(
        "nvkv-setup",
        &["bind", N, "--group", "nvkv", "--shards", "1"],
    )?;
    check!(out.ok, "bind --group:\n{}", out.both());
    let node = group_node()?;
    check!(
        out.stdout
            .contains(&format!("{node}: owner root:nvkv, mode 0660"))
            && out.stdout.contains("RLIMIT_MEMLOCK: @nvkv needs at least")
            && out.stdout.contains("@nvkv - memlock"),
        "bind --group said:\n{}",
        out.stdout
    );
    let id = as_user("member", 1 << 20, &format!("nvkv-identify {N}"))?;
    check!(id.ok, "identify as member of nvkv:\n{}", id.both());
    let id = as_user("outsider", 1 << 20, &format!("nvkv-identify {N}"))?;
    check!(
        !id.ok
            && id.stderr.contains("owned by root:nvkv with mode 0660")
            && id.stderr.contains("`adduser outsider nvkv`"),
        "identify as outsider:\n{}",
        id.both()
    );
    Ok(())
}
