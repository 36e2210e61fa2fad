//! The QEMU command line and one boot: build the initramfs, start QEMU, wait for the framed exit status.

use crate::host::{self, Kernel};
use crate::initramfs::{self, Archive};
use crate::nvdimm::{self, Nvdimm};
use crate::{io_err, Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Marker lines written by the guest's `/init` around the command.
pub const BEGIN: &str = "@@NVKV-BEGIN";
pub const EXIT: &str = "@@NVKV-EXIT ";

/// How QEMU runs the guest's CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation: works everywhere, slow (the default; KVM hangs on the project's build machines).
    Tcg,
    /// Hardware virtualization: for bare-metal hosts where `/dev/kvm` works.
    Kvm,
}

impl std::str::FromStr for Accel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tcg" => Ok(Accel::Tcg),
            "kvm" => Ok(Accel::Kvm),
            _ => Err(Error::Config(format!(
                "unknown accelerator {s:?}: use tcg or kvm"
            ))),
        }
    }
}

/// Where a namespace's blocks live on the host.
#[derive(Debug, Clone)]
pub enum NsBackend {
    /// QEMU's `null-co`: no storage, reads return zeroes. Measures the software path.
    Null { size: u64 },
    /// A raw image file, created sparse with `size` bytes when missing; data survives a killed QEMU.
    File { path: PathBuf, size: u64 },
}

/// One namespace of an emulated controller.
#[derive(Debug, Clone)]
pub struct NvmeNamespace {
    pub backend: NsBackend,
    pub lba_size: u32,
    /// blkdebug rules (the text of a blkdebug config file); only with a `File` backend.
    pub blkdebug: Option<String>,
    /// Limit the namespace to this many I/Os per second (a QEMU throttle group): makes commands slow enough
    /// to exercise timeouts. Only with a `Null` backend.
    pub throttle_iops: Option<u32>,
}

impl NvmeNamespace {
    pub fn null(size: u64, lba_size: u32) -> Self {
        Self {
            backend: NsBackend::Null { size },
            lba_size,
            blkdebug: None,
            throttle_iops: None,
        }
    }
    pub fn file(path: impl Into<PathBuf>, size: u64, lba_size: u32) -> Self {
        Self {
            backend: NsBackend::File {
                path: path.into(),
                size,
            },
            lba_size,
            blkdebug: None,
            throttle_iops: None,
        }
    }
    pub fn with_throttle_iops(mut self, iops: u32) -> Self {
        self.throttle_iops = Some(iops);
        self
    }
    pub fn with_blkdebug(mut self, rules: impl Into<String>) -> Self {
        self.blkdebug = Some(rules.into());
        self
    }
}

/// Which guest driver a controller is bound to at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    Vfio,
    Kernel,
}

/// One emulated NVMe controller (QEMU `-device nvme`). Controller `i` sits at guest PCI address
/// `0000:00:{0x10+i}.0` (see [`NvmeController::guest_address`]).
#[derive(Debug, Clone)]
pub struct NvmeController {
    pub serial: String,
    pub mdts: Option<u8>,
    pub max_ioqpairs: Option<u32>,
    pub namespaces: Vec<NvmeNamespace>,
    /// Persistent memory region file and size in bytes (BAR 4 in the guest).
    pub pmr: Option<(PathBuf, u64)>,
    pub write_cache: Option<bool>,
    pub bind: Bind,
    /// Behind its own PCIe root port, so that it can be hot-removed (see [`crate::monitor`]).
    pub hotplug: bool,
}

impl NvmeController {
    pub fn new(serial: &str) -> Self {
        Self {
            serial: serial.into(),
            mdts: None,
            max_ioqpairs: None,
            namespaces: Vec::new(),
            pmr: None,
            write_cache: None,
            bind: Bind::Vfio,
            hotplug: false,
        }
    }
    pub fn namespace(mut self, ns: NvmeNamespace) -> Self {
        self.namespaces.push(ns);
        self
    }
    pub fn mdts(mut self, mdts: u8) -> Self {
        self.mdts = Some(mdts);
        self
    }
    pub fn max_ioqpairs(mut self, n: u32) -> Self {
        self.max_ioqpairs = Some(n);
        self
    }
    pub fn pmr(mut self, file: impl Into<PathBuf>, size: u64) -> Self {
        self.pmr = Some((file.into(), size));
        self
    }
    pub fn write_cache(mut self, on: bool) -> Self {
        self.write_cache = Some(on);
        self
    }
    pub fn bind(mut self, bind: Bind) -> Self {
        self.bind = bind;
        self
    }
    /// Puts the controller behind its own PCIe root port (`-device pcie-root-port`), so that QEMU's
    /// `device_del nvme<index>` can hot-remove it. The guest then sees it at
    /// [`VmBuilder::guest_address`] (on the port's bus, not at `0000:00:{0x10+i}.0`).
    pub fn hotpluggable(mut self) -> Self {
        self.hotplug = true;
        self
    }
    /// The PCI address the guest sees for controller number `index` (not hot-pluggable).
    pub fn guest_address(index: usize) -> String {
        format!("0000:00:{:02x}.0", 0x10 + index)
    }
}

/// A VM to boot: see [`Vm::builder`].
#[derive(Clone)]
pub struct VmBuilder {
    accel: Accel,
    cpus: u32,
    mem_mib: u32,
    aw_bits: Option<u32>,
    controllers: Vec<NvmeController>,
    binaries: Vec<(PathBuf, String)>,
    files: Vec<(String, Vec<u8>)>,
    env: Vec<(String, String)>,
    timeout: Duration,
    boot_timeout: Duration,
    nvme_params: String,
    hugepages: u32,
    append: String,
    echo: bool,
    on_line: Option<LineCallback>,
    expect_power_off: bool,
    extra_modules: Vec<String>,
    qmp: Option<PathBuf>,
    nvdimm: Option<Nvdimm>,
}

/// Called with every console line as it arrives (for progress reports).
pub type LineCallback = Arc<dyn Fn(&str) + Send + Sync>;

/// The result of running one command in the guest.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// The command's exit status in the guest.
    pub exit_code: i32,
    /// What the command printed (console lines between the markers).
    pub output: String,
    /// The whole console, kernel messages included.
    pub console: String,
    /// From QEMU's start to the guest's command starting.
    pub boot_time: Duration,
    /// From QEMU's start to QEMU's exit.
    pub total_time: Duration,
    /// True when the first boot hung and was retried.
    pub retried: bool,
}

/// Entry point: `Vm::builder().controller(..).binary(..).run("cmd")`.
#[derive(Debug)]
pub struct Vm;

impl Vm {
    pub fn builder() -> VmBuilder {
        let accel = match std::env::var("NVKV_ACCEL").as_deref() {
            Ok("kvm") => Accel::Kvm,
            _ => Accel::Tcg,
        };
        VmBuilder {
            accel,
            cpus: 2,
            mem_mib: 2048,
            aw_bits: None,
            controllers: Vec::new(),
            binaries: Vec::new(),
            files: Vec::new(),
            env: Vec::new(),
            timeout: Duration::from_secs(1200),
            boot_timeout: Duration::from_secs(120),
            nvme_params: "poll_queues=2".into(),
            hugepages: 0,
            append: String::new(),
            echo: std::env::var("NVKV_VM_ECHO").is_ok_and(|v| v == "1"),
            on_line: None,
            expect_power_off: false,
            extra_modules: Vec::new(),
            qmp: None,
            nvdimm: None,
        }
    }
}

impl std::fmt::Debug for VmBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmBuilder")
            .field("accel", &self.accel)
            .field("cpus", &self.cpus)
            .field("controllers", &self.controllers)
            .finish_non_exhaustive()
    }
}

impl VmBuilder {
    /// The accelerator this VM will use.
    pub fn accel_kind(&self) -> Accel {
        self.accel
    }
    pub fn cpu_count(&self) -> u32 {
        self.cpus
    }

    pub fn accel(mut self, a: Accel) -> Self {
        self.accel = a;
        self
    }
    pub fn cpus(mut self, n: u32) -> Self {
        self.cpus = n;
        self
    }
    pub fn memory_mib(mut self, m: u32) -> Self {
        self.mem_mib = m;
        self
    }
    /// Intel IOMMU address width (QEMU's default is 39; 48 also works).
    pub fn aw_bits(mut self, bits: u32) -> Self {
        self.aw_bits = Some(bits);
        self
    }
    pub fn controller(mut self, c: NvmeController) -> Self {
        self.controllers.push(c);
        self
    }
    /// A host executable to carry into the guest as `/bin/<name>`, with its shared libraries.
    pub fn binary(mut self, host: impl Into<PathBuf>, name: &str) -> Self {
        self.binaries.push((host.into(), name.to_string()));
        self
    }
    /// A file to place in the guest.
    pub fn file(mut self, guest_path: &str, data: impl Into<Vec<u8>>) -> Self {
        self.files.push((guest_path.to_string(), data.into()));
        self
    }
    /// An environment variable for the guest command.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    /// Parameters for the kernel `nvme` module (default `poll_queues=2`: one per vCPU, so two polled fio jobs do
    /// not share one; see QEMU.md trap 1).
    pub fn nvme_params(mut self, p: &str) -> Self {
        self.nvme_params = p.into();
        self
    }
    /// Number of 2 MiB hugepages to reserve in the guest (mounted at /dev/hugepages).
    pub fn hugepages(mut self, n: u32) -> Self {
        self.hugepages = n;
        self
    }
    /// Extra kernel command line.
    pub fn append(mut self, a: &str) -> Self {
        self.append = a.into();
        self
    }
    /// Calls `f` with each console line as it arrives.
    pub fn on_line(mut self, f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.on_line = Some(Arc::new(f));
        self
    }

    /// More kernel modules of the guest kernel to load at boot, after the NVMe modules, in this order
    /// (e.g. `["crc32c_generic", "crc16", "mbcache", "jbd2", "ext4"]` for an ext4 mount).
    pub fn modules(mut self, names: &[&str]) -> Self {
        self.extra_modules
            .extend(names.iter().map(|n| n.to_string()));
        self
    }

    /// The guest command may end by powering the machine off itself (a simulated power loss): then a QEMU exit
    /// without the exit marker is a result (`exit_code` -1), not an error.
    pub fn expect_power_off(mut self, on: bool) -> Self {
        self.expect_power_off = on;
        self
    }

    /// A QMP monitor socket at `path` (`-qmp unix:PATH,server=on,wait=off`), for [`crate::monitor::Qmp`].
    pub fn qmp(mut self, path: impl Into<PathBuf>) -> Self {
        self.qmp = Some(path.into());
        self
    }

    /// An NVDIMM of `size` bytes (a multiple of 2 MiB, at least 16 MiB) backed by `host_file` (created
    /// sparse or extended when smaller), with its guest modules ([`nvdimm::MODULES`]) loaded at boot;
    /// in the guest, [`nvdimm::devdax`] makes it `/dev/daxX.Y`. See [`crate::nvdimm`].
    pub fn nvdimm(mut self, host_file: impl Into<PathBuf>, size: u64) -> Self {
        self.nvdimm = Some(Nvdimm {
            file: host_file.into(),
            size,
        });
        self
    }

    /// The PCI address the guest sees for controller `index`: `0000:00:{0x10+i}.0`, or for a hot-pluggable one
    /// `0000:BB:00.0` on its root port's bus (the ports get buses 1, 2, ... in order).
    pub fn guest_address(&self, index: usize) -> String {
        match self.controllers.get(index) {
            Some(c) if c.hotplug => {
                let bus = 1 + self.controllers[..index]
                    .iter()
                    .filter(|c| c.hotplug)
                    .count();
                format!("0000:{bus:02x}:00.0")
            }
            _ => NvmeController::guest_address(index),
        }
    }

    /// Copy console lines to stderr as they arrive.
    pub fn echo(mut self, on: bool) -> Self {
        self.echo = on;
        self
    }

    fn init_script(&self, kernel_modules: &[(String, String)]) -> String {
        let mut s = String::from(
            "#!/bin/busybox sh\n\
             /bin/busybox mkdir -p /proc /sys /dev /tmp /run /mnt /sbin /usr/bin /usr/sbin\n\
             /bin/busybox mount -t proc proc /proc\n\
             /bin/busybox mount -t sysfs sysfs /sys\n\
             /bin/busybox mount -t devtmpfs devtmpfs /dev\n\
             /bin/busybox --install -s /bin\n\
             export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/tmp NVKV_GUEST=1\n\
             mount -t tmpfs tmpfs /tmp\n\
             ip link set lo up || echo 'nvkv-init: no loopback interface'\n\
             ulimit -l unlimited\n",
        );
        for (name, args) in kernel_modules
            .iter()
            .filter(|(n, _)| host::VFIO_MODULES.contains(&n.as_str()))
        {
            s += &format!("insmod /lib/modules/nvkv/{name}.ko {args} || echo 'nvkv-init: insmod {name} failed'\n");
        }
        for (i, c) in self.controllers.iter().enumerate() {
            if c.bind == Bind::Vfio {
                let a = self.guest_address(i);
                s += &format!(
                    "echo vfio-pci > /sys/bus/pci/devices/{a}/driver_override && echo {a} > /sys/bus/pci/drivers_probe || echo 'nvkv-init: bind {a} to vfio-pci failed'\n"
                );
            }
        }
        for (name, args) in kernel_modules
            .iter()
            .filter(|(n, _)| !host::VFIO_MODULES.contains(&n.as_str()))
        {
            s += &format!("insmod /lib/modules/nvkv/{name}.ko {args} || echo 'nvkv-init: insmod {name} failed'\n");
        }
        if self.hugepages > 0 {
            s += &format!(
                "echo {} > /proc/sys/vm/nr_hugepages; mkdir -p /dev/hugepages; mount -t hugetlbfs none /dev/hugepages\n",
                self.hugepages
            );
        }
        for (k, v) in &self.env {
            s += &format!("export {k}='{}'\n", v.replace('\'', "'\\''"));
        }
        s += &format!("cd /tmp\necho {BEGIN}\nsh /etc/nvkv/cmd\necho \"{EXIT}$?\"\npoweroff -f\n");
        s
    }

    fn build_initramfs(&self, kernel: &Kernel, cmd: &str) -> Result<PathBuf> {
        let mut a = Archive::new();
        a.add_host_file(Path::new("/bin/busybox"), "/bin/busybox")
            .map_err(|_| Error::Missing {
                what: "/bin/busybox".into(),
                fix: "run `cargo run -p nvkv-qemu -- setup` (installs Debian's busybox-static)"
                    .into(),
            })?;
        let mut mods = Vec::new();
        for m in host::VFIO_MODULES.iter().chain(host::NVME_MODULES) {
            let p = kernel.module(m)?;
            a.add_host_file(&p, &format!("/lib/modules/nvkv/{m}.ko"))?;
            let args = if *m == "nvme" {
                self.nvme_params.clone()
            } else {
                String::new()
            };
            mods.push((m.to_string(), args));
        }
        let nvdimm_modules = self.nvdimm.as_ref().map_or(&[][..], |_| nvdimm::MODULES);
        for m in nvdimm_modules
            .iter()
            .copied()
            .chain(self.extra_modules.iter().map(|m| m.as_str()))
        {
            let p = kernel.module(m)?;
            a.add_host_file(&p, &format!("/lib/modules/nvkv/{m}.ko"))?;
            mods.push((m.to_string(), String::new()));
        }
        for (host_path, name) in &self.binaries {
            let data = initramfs::stripped_bytes(host_path)?;
            a.add_file(&format!("/bin/{name}"), data, 0o755);
            for lib in host::shared_libraries(host_path)? {
                let guest = lib.display().to_string();
                a.add_host_file(&lib, &guest)?;
            }
        }
        for (p, d) in &self.files {
            a.add_file(p, d.clone(), 0o644);
        }
        a.add_file("/init", self.init_script(&mods).into_bytes(), 0o755);
        a.add_file("/etc/nvkv/cmd", cmd.as_bytes().to_vec(), 0o644);
        initramfs::cached(&a)
    }

    fn qemu_args(&self, kernel: &Kernel, initrd: &Path, scratch: &Path) -> Result<Vec<String>> {
        let mut args: Vec<String> = Vec::new();
        let accel = match self.accel {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        };
        let mut iommu = "intel-iommu,intremap=on,caching-mode=on".to_string();
        if let Some(b) = self.aw_bits {
            iommu += &format!(",aw-bits={b}");
        }
        let (machine_nvdimm, mem, nvdimm_args) = match &self.nvdimm {
            Some(n) => n.qemu_args(self.mem_mib)?,
            None => ("", self.mem_mib.to_string(), Vec::new()),
        };
        let machine = format!("q35,kernel-irqchip=split{machine_nvdimm}");
        for a in [
            "-accel",
            accel,
            "-cpu",
            "max",
            "-machine",
            &machine,
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
            "-device",
        ] {
            args.push(a.into());
        }
        args.push(iommu);
        args.extend(["-m".into(), mem, "-smp".into(), self.cpus.to_string()]);
        args.extend(nvdimm_args);
        args.extend(["-kernel".into(), kernel.image.display().to_string()]);
        args.extend(["-initrd".into(), initrd.display().to_string()]);
        let append = format!(
            "console=ttyS0 intel_iommu=on quiet loglevel=4 panic=-1 clocksource=tsc tsc=reliable no_timer_check {}",
            self.append
        );
        args.extend(["-append".into(), append]);
        if let Some(q) = &self.qmp {
            args.extend([
                "-qmp".into(),
                format!("unix:{},server=on,wait=off", q.display()),
            ]);
        }
        for (ci, c) in self.controllers.iter().enumerate() {
            if c.namespaces.is_empty() {
                return Err(Error::Config(format!(
                    "controller {} has no namespace",
                    c.serial
                )));
            }
            let mut dev = if c.hotplug {
                let port = self.controllers[..ci].iter().filter(|c| c.hotplug).count();
                args.extend([
                    "-device".into(),
                    format!(
                        "pcie-root-port,id=rp{ci},chassis={},slot={},addr=0x{:02x}",
                        port + 1,
                        port + 1,
                        0x1c + port
                    ),
                ]);
                format!("nvme,id=nvme{ci},serial={},bus=rp{ci}", c.serial)
            } else {
                format!(
                    "nvme,id=nvme{ci},serial={},addr=0x{:02x}",
                    c.serial,
                    0x10 + ci
                )
            };
            if let Some(m) = c.mdts {
                dev += &format!(",mdts={m}");
            }
            if let Some(q) = c.max_ioqpairs {
                dev += &format!(",max_ioqpairs={q}");
            }
            if let Some((file, size)) = &c.pmr {
                ensure_file(file, *size)?;
                args.extend([
                    "-object".into(),
                    format!(
                        "memory-backend-file,id=pmr{ci},share=on,mem-path={},size={size}",
                        file.display()
                    ),
                ]);
                dev += &format!(",pmrdev=pmr{ci}");
            }
            args.extend(["-device".into(), dev]);
            for (ni, ns) in c.namespaces.iter().enumerate() {
                let id = format!("nvm{ci}n{ni}");
                let drive = match (&ns.backend, &ns.blkdebug) {
                    (NsBackend::Null { size }, None) if ns.throttle_iops.is_some() => {
                        let iops = ns.throttle_iops.unwrap_or(1);
                        args.extend([
                            "-object".into(),
                            format!("throttle-group,id=tg{ci}n{ni},x-iops-total={iops}"),
                        ]);
                        format!(
                            "driver=throttle,throttle-group=tg{ci}n{ni},file.driver=null-co,file.size={size},file.read-zeroes=on,if=none,id={id}"
                        )
                    }
                    (NsBackend::Null { size }, None) => {
                        format!("driver=null-co,size={size},read-zeroes=on,if=none,id={id}")
                    }
                    (NsBackend::Null { .. }, Some(_)) => {
                        return Err(Error::Config("blkdebug rules need a file backend".into()));
                    }
                    (NsBackend::File { .. }, _) if ns.throttle_iops.is_some() => {
                        return Err(Error::Config(
                            "throttling is implemented for null-co namespaces only".into(),
                        ));
                    }
                    (NsBackend::File { path, size }, None) => {
                        ensure_file(path, *size)?;
                        format!(
                            "file={},format=raw,if=none,id={id},cache=writeback,discard=unmap",
                            path.display()
                        )
                    }
                    (NsBackend::File { path, size }, Some(rules)) => {
                        ensure_file(path, *size)?;
                        let rf = scratch.join(format!("blkdebug-{ci}-{ni}.conf"));
                        std::fs::write(&rf, rules).map_err(io_err(&rf))?;
                        format!(
                            "driver=raw,file.driver=blkdebug,file.config={},file.image.driver=file,file.image.filename={},if=none,id={id},discard=unmap",
                            rf.display(),
                            path.display()
                        )
                    }
                };
                args.extend(["-drive".into(), drive]);
                let mut nsdev = format!(
                    "nvme-ns,drive={id},bus=nvme{ci},nsid={},logical_block_size={},physical_block_size={}",
                    ni + 1,
                    ns.lba_size,
                    ns.lba_size
                );
                // The volatile write cache is a block-device property of each namespace in QEMU.
                if let Some(wc) = c.write_cache {
                    nsdev += if wc {
                        ",write-cache=on"
                    } else {
                        ",write-cache=off"
                    };
                }
                args.extend(["-device".into(), nsdev]);
            }
        }
        Ok(args)
    }

    /// Boots the VM, runs `cmd` (a busybox `sh` script) in the guest, and returns its status and output.
    /// A boot that prints nothing within the boot timeout is retried once (QEMU.md: a rare hang at boot).
    pub fn run(&self, cmd: &str) -> Result<RunOutput> {
        let qemu = host::qemu_binary()?;
        let kernel = host::find_kernel()?;
        let initrd = self.build_initramfs(&kernel, cmd)?;
        let scratch = initramfs::cache_dir().join(format!("run-{}", std::process::id()));
        std::fs::create_dir_all(&scratch).map_err(io_err(&scratch))?;
        let args = self.qemu_args(&kernel, &initrd, &scratch)?;
        let first = self.boot_once(&qemu, &args);
        let result = match first {
            Err(Error::Timeout { phase: "boot", .. }) => {
                eprintln!("nvkv-qemu: the guest did not reach its command within {} s; retrying the boot once", self.boot_timeout.as_secs());
                self.boot_once(&qemu, &args).map(|mut o| {
                    o.retried = true;
                    o
                })
            }
            other => other,
        };
        let _ = std::fs::remove_dir_all(&scratch);
        result
    }

    fn boot_once(&self, qemu: &Path, args: &[String]) -> Result<RunOutput> {
        let start = Instant::now();
        let mut child = Command::new(qemu)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(Error::Spawn)?;
        let console = Arc::new(Mutex::new(String::new()));
        let began: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::Config("no stdout pipe".into()))?;
        let mut stderr = child
            .stderr
            .take()
            .ok_or_else(|| Error::Config("no stderr pipe".into()))?;
        let (c2, b2, echo, on_line) = (
            console.clone(),
            began.clone(),
            self.echo,
            self.on_line.clone(),
        );
        let out_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut line = Vec::new();
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                for &b in &buf[..n] {
                    if b == b'\r' {
                        continue;
                    }
                    line.push(b);
                    if b == b'\n' {
                        let l = String::from_utf8_lossy(&line).to_string();
                        if l.trim_end().ends_with(BEGIN) {
                            if let Ok(mut g) = b2.lock() {
                                *g = Some(Instant::now());
                            }
                        }
                        if echo {
                            eprint!("[guest] {l}");
                        }
                        if let Some(f) = &on_line {
                            f(l.trim_end());
                        }
                        if let Ok(mut c) = c2.lock() {
                            c.push_str(&l);
                        }
                        line.clear();
                    }
                }
            }
            if let Ok(mut c) = c2.lock() {
                c.push_str(&String::from_utf8_lossy(&line));
            }
        });
        let err_thread = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let status = loop {
            if let Some(st) = child.try_wait().map_err(Error::Spawn)? {
                break Some(st);
            }
            let elapsed = start.elapsed();
            let has_begun = began.lock().map(|g| g.is_some()).unwrap_or(false);
            if (!has_begun && elapsed > self.boot_timeout) || elapsed > self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = out_thread.join();
        let stderr_text = err_thread.join().unwrap_or_default();
        let console = console.lock().map(|c| c.clone()).unwrap_or_default();
        let tail = tail_lines(&console, 40);
        let began_at = began.lock().ok().and_then(|g| *g);
        let Some(status) = status else {
            let (secs, phase) = if began_at.is_none() {
                (self.boot_timeout.as_secs(), "boot")
            } else {
                (self.timeout.as_secs(), "guest command")
            };
            return Err(Error::Timeout {
                secs,
                phase,
                stderr: stderr_text,
                console: tail,
            });
        };
        let exit_code = console.lines().rev().find_map(|l| {
            l.trim_end()
                .strip_prefix(EXIT)
                .and_then(|c| c.trim().parse::<i32>().ok())
        });
        let exit_code = match exit_code {
            Some(c) => Some(c),
            None if self.expect_power_off && status.success() && began_at.is_some() => Some(-1),
            None => None,
        };
        let Some(exit_code) = exit_code else {
            return Err(Error::QemuExited {
                status: status.to_string(),
                stderr: stderr_text,
                console: tail,
            });
        };
        let output = console
            .split_once(&format!("{BEGIN}\n"))
            .map(|(_, rest)| rest.rsplit_once(EXIT).map(|(o, _)| o).unwrap_or(rest))
            .unwrap_or("")
            .to_string();
        Ok(RunOutput {
            exit_code,
            output,
            console,
            boot_time: began_at.map(|b| b - start).unwrap_or_default(),
            total_time: start.elapsed(),
            retried: false,
        })
    }
}

fn ensure_file(path: &Path, size: u64) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len();
    if len < size {
        f.set_len(size).map_err(io_err(path))?;
    }
    Ok(())
}

fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
