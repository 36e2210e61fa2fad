//! Boots the test VM with an NVDIMM and runs a shell script in the guest (for exploring the
//! NVDIMM's modes by hand; `docs/nvdimm.md` says what was found with `nvdimm_probe.sh`).
//!
//!     cargo run -p nvkv-qemu --example nvdimm_shell -- SCRIPT NVDIMM_FILE [BINARY...]
//!
//! The NVDIMM is 128 MiB over NVDIMM_FILE (created sparse when missing; reused as it is otherwise).
//! Each BINARY is carried in as `/bin/nvkv-guest-tests` (the first) or `/bin/<file name>`;
//! e2fsprogs' `mke2fs` and the ext4 modules come along for an fsdax mount.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(script), Some(file)) = (args.first(), args.get(1)) else {
        return Err("usage: nvdimm_shell SCRIPT NVDIMM_FILE [BINARY...]".into());
    };
    let mut vm = nvkv_qemu::Vm::builder()
        .nvdimm(file, 128 << 20)
        .binary("/usr/sbin/mke2fs", "mke2fs")
        .modules(&["crc32c_generic", "crc16", "mbcache", "jbd2", "ext4"])
        .echo(true)
        .timeout(std::time::Duration::from_secs(600));
    for (i, b) in args[2..].iter().enumerate() {
        let name = match i {
            0 => "nvkv-guest-tests".to_string(),
            _ => Path::new(b)
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .ok_or("binary without a file name")?,
        };
        vm = vm.binary(b, &name);
    }
    let out = vm.run(&std::fs::read_to_string(script)?)?;
    println!("guest exit status {}", out.exit_code);
    Ok(())
}
