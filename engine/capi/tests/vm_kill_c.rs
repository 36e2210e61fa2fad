//! Stacked `kill -9` of QEMU while a C program writes through libnvkv (static) on QEMU's NVMe: the C
//! side of `engine/tests/vm_kill.rs` (same protocol, `nvkv_qemu::kill`). Each round the C program
//! (`tests/c/kill_writer.c`) recovers, checks every key against the acknowledged writes, and writes
//! durable puts and deletes until QEMU is killed.

mod common;

use common::{compile, Link};
use nvkv_qemu::{NvmeController, NvmeNamespace, Vm};

const NAME: &str = "kill_9_of_qemu_under_a_c_program_loses_no_acknowledged_write";

fn main() {
    nvkv_qemu::kill::host_test(NAME, host);
}

fn host() -> Result<(), String> {
    let kills = std::env::var("NVKV_KILLS_C")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    println!("running 1 test ({kills} kills of QEMU under a C program, then a check)");
    let writer = compile("tests/c/kill_writer.c", "nvkv-kill-writer", Link::Static);
    let img = common::scratch().join("kill.img");
    let serial = format!("NVKVKILLC{}", std::process::id());
    let seed = 0x5eed ^ u64::from(std::process::id());
    let s = nvkv_qemu::kill::run_rounds(kills, 400, &serial, seed, |round, last| {
        let vm = Vm::builder()
            .controller(NvmeController::new(&serial).namespace(NvmeNamespace::file(
                &img,
                128 << 20,
                4096,
            )))
            .binary(&writer, "nvkv-kill-writer");
        let cmd = format!(
            "/bin/nvkv-kill-writer {round}{}\n",
            if last { " last" } else { "" }
        );
        (vm, cmd)
    })?;
    println!(
        "kills {}, acknowledged writes {}, keys checked {}, lost: 0",
        s.kills, s.acked, s.checked
    );
    Ok(())
}
