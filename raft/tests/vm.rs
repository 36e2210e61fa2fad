//! nvkv-raft on the `nvme` backend, in the test VM: openraft's storage suite on nvkv's own driver with
//! the durable log in the controller's PMR, and the three-node scenario of `common/mod.rs` with one
//! emulated NVMe controller (and its PMR) per node.
//!
//! Controllers 0000:00:10.0, 11.0 and 12.0: 64 MiB raw files, 4 KiB LBAs, a 4 MiB PMR each.

mod common;

use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nvkv::bdev::{DeviceFactory, NvmeFactory};
use nvkv::DurableLogDevice;
use nvkv_qemu::suite::{self, GuestTest};
use nvkv_qemu::{NvmeController, NvmeNamespace, Vm};
use nvkv_raft::{LogStore, NodeStore, StateMachine, StoreBackend, StoreOptions, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};

type R = Result<(), Box<dyn Error>>;

const NODES: usize = 3;

fn main() {
    let tests = [
        GuestTest {
            name: "openraft_suite_on_nvme_with_the_pmr_log",
            run: openraft_suite_on_nvme_with_the_pmr_log,
        },
        GuestTest {
            name: "three_nodes_on_three_controllers_survive_kill_and_stop",
            run: three_nodes_on_three_controllers_survive_kill_and_stop,
        },
    ];
    suite::main(&tests, || {
        let dir = std::env::temp_dir().join(format!("nvkv-raft-vm-{}", std::process::id()));
        let mut vm = Vm::builder()
            .binary(env!("CARGO_BIN_EXE_nvkv-server"), "nvkv-server")
            .timeout(Duration::from_secs(1500));
        for i in 0..NODES {
            vm = vm.controller(
                NvmeController::new(&format!("NVKV-RAFT-{i}"))
                    .namespace(NvmeNamespace::file(
                        dir.join(format!("node{i}.img")),
                        64 << 20,
                        4096,
                    ))
                    .pmr(dir.join(format!("node{i}.pmr")), 4 << 20),
            );
        }
        vm
    });
}

/// Zeroes the controller's namespace, so the next open formats a blank device, as `nvkv format --force`
/// does.
fn zero(addr: &str) -> R {
    let f = NvmeFactory::open(addr, 1)?;
    let mut d = f.open(0)?;
    nvkv::bdev::zero_all(&mut d, Duration::from_secs(60)).map_err(|e| format!("{addr}: {e}"))?;
    Ok(())
}

/// The store of one suite case; dropping it closes the database and releases the controller.
struct Guard {
    _store: NodeStore,
    _dir: tempfile::TempDir,
}

/// Builds each store on the next of the three controllers: the suite's snapshot transfer holds two
/// stores at once, and a controller has one owner at a time.
struct OnNvme(AtomicUsize);

impl StoreBuilder<TypeConfig, LogStore, StateMachine, Guard> for OnNvme {
    async fn build(&self) -> Result<(Guard, LogStore, StateMachine), openraft::StorageError<u64>> {
        let addr = NvmeController::guest_address(self.0.fetch_add(1, Ordering::Relaxed) % NODES);
        let io = |e: &dyn std::fmt::Display| {
            openraft::StorageIOError::write(&std::io::Error::other(e.to_string()))
        };
        // Each case starts from a blank device; the PMR keeps the previous case's log, which the new
        // volume must not replay.
        let a = addr.clone();
        tokio::task::spawn_blocking(move || zero(&a).map_err(|e| e.to_string()))
            .await
            .map_err(|e| io(&e))?
            .map_err(|e| io(&e))?;
        let dir = tempfile::tempdir().map_err(|e| io(&e))?;
        let mut opts = StoreOptions::new(
            StoreBackend::Nvme { pci: addr },
            dir.path().join("snapshots"),
        );
        opts.durable_log = DurableLogDevice::Pmr;
        let (store, log, sm) = NodeStore::open(opts).await.map_err(|e| io(&e))?;
        Ok((
            Guard {
                _store: store,
                _dir: dir,
            },
            log,
            sm,
        ))
    }
}

fn openraft_suite_on_nvme_with_the_pmr_log() -> R {
    Suite::test_all(OnNvme(AtomicUsize::new(0)))?;
    Ok(())
}

fn three_nodes_on_three_controllers_survive_kill_and_stop() -> R {
    let mut nodes = Vec::new();
    for i in 0..NODES {
        let addr = NvmeController::guest_address(i);
        zero(&addr)?;
        nodes.push(common::Node::new(
            i as u64 + 1,
            [
                "--nvme",
                &addr,
                "--durable-log",
                "pmr",
                "--snapshot-dir",
                &format!("/tmp/snapshots-{i}"),
                "--snapshot-every",
                "64",
                // Under TCG a heartbeat round trip takes tens of milliseconds: elections only after
                // a second of silence.
                "--heartbeat-ms",
                "100",
                "--election-ms",
                "1000",
            ]
            .map(String::from)
            .to_vec(),
        ));
    }
    let setup = common::Setup {
        server: "/bin/nvkv-server".into(),
        slow: 10,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let out = rt.block_on(common::run(&setup, nodes));
    suite::note(&format!(
        "three nodes on three NVMe controllers, durable log in each PMR (TCG): kill -9 of the leader to \
         the first acknowledged write {} ms; SIGSTOP of the leader to the first acknowledged write {} ms \
         (client exchange timeout {} ms); {} acknowledged keys on all three nodes",
        out.failover.as_millis(),
        out.stopped_leader.as_millis(),
        500 * setup.slow,
        out.keys
    ));
    Ok(())
}
