//! The C programs on the nvme backend: the example and the C API test, compiled on the host against
//! libnvkv.a (static, so the guest needs no libnvkv.so; the C library and friends come along as `ldd`
//! lists them), run in the test VM on QEMU's NVMe through nvkv's driver. One boot runs both.
//!
//! | controller | address | namespace |
//! | --- | --- | --- |
//! | E | 0000:00:10.0 | 64 MiB file, 4 KiB LBAs: the example's database |
//! | A | 0000:00:11.0 | 64 MiB file, 512 B LBAs: the API test's database |

mod common;

use common::{compile, Link};
use nvkv_qemu::suite::{self, GuestTest};
use nvkv_qemu::{NvmeController, NvmeNamespace, Vm};
use std::error::Error;
use std::process::Command;

type R = Result<(), Box<dyn Error>>;

fn main() {
    let tests = [
        GuestTest {
            name: "c_example_on_nvme",
            run: c_example_on_nvme,
        },
        GuestTest {
            name: "c_api_test_on_nvme",
            run: c_api_test_on_nvme,
        },
    ];
    suite::main(&tests, || {
        // Host side only: build the C programs the guest runs.
        let example = compile("examples/c/example.c", "nvkv-example", Link::Static);
        let api = compile("tests/c/api.c", "nvkv-api-test", Link::Static);
        let dir = common::scratch();
        Vm::builder()
            .controller(
                NvmeController::new("NVKV-CAPI-E").namespace(NvmeNamespace::file(
                    dir.join("e.img"),
                    64 << 20,
                    4096,
                )),
            )
            .controller(
                NvmeController::new("NVKV-CAPI-A").namespace(NvmeNamespace::file(
                    dir.join("a.img"),
                    64 << 20,
                    512,
                )),
            )
            .binary(example, "nvkv-example")
            .binary(api, "nvkv-api-test")
    });
}

/// Runs a guest program; its output when it exits 0 and prints `ok_line`.
fn run(bin: &str, args: &[&str], ok_line: &str) -> Result<String, Box<dyn Error>> {
    let out = Command::new(bin).args(args).output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || !text.contains(ok_line) {
        return Err(format!("{bin} {args:?}: {}\n{text}", out.status).into());
    }
    Ok(text)
}

fn c_example_on_nvme() -> R {
    let out = run(
        "/bin/nvkv-example",
        &["nvme", "0000:00:10.0"],
        "nvkv-example: ok",
    )?;
    if !out.contains("reopened: 100 keys recovered") {
        return Err(format!("the reopen did not recover the 100 keys:\n{out}").into());
    }
    Ok(())
}

fn c_api_test_on_nvme() -> R {
    run(
        "/bin/nvkv-api-test",
        &["nvme", "0000:00:11.0"],
        "nvkv-api-test: ok",
    )?;
    Ok(())
}
