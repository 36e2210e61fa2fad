//! The child processes the bench starts (etcd members, nvkv-server nodes).
//!
//! Each [`Proc`] stops its process when dropped (SIGTERM, a bounded wait, then SIGKILL, always to the PID it
//! started), so neither an error nor a panic leaves a member running. The children also get
//! `PR_SET_PDEATHSIG = SIGKILL`: if the bench itself is killed (no destructor runs then), the kernel kills them.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a child gets between SIGTERM and SIGKILL: etcd and nvkv-server both exit in well under a second.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
    stopped: bool,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr both appended to `log` (the readiness line of nvkv-server and the
    /// error of a member that did not come up are read back from there).
    ///
    /// Call this from the thread that lives as long as the children should (the main thread): the parent-death
    /// signal fires when the thread that forked exits, not the process.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Proc> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log file handle")?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: the closure runs in the forked child before exec and calls only prctl, which is
        // async-signal-safe; it touches no memory of the parent's.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            stopped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("waiting for {}", self.name))
    }

    /// An error if the process has exited, with the end of its log (the usual reason a member is gone).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(st) = self.exited()? {
            bail!(
                "{} (pid {}) exited ({st}); the end of {}:\n{}",
                self.name,
                self.pid(),
                self.log.display(),
                self.log_tail(20)
            );
        }
        Ok(())
    }

    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// User + system CPU seconds the process has used so far (from /proc/PID/stat), to see what each cluster
    /// costs per operation and what the idle one takes from the other's turn on a shared machine.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds_of(&format!("/proc/{}/stat", self.pid()))
    }

    /// SIGTERM, up to [`STOP_GRACE`] for it to exit, then SIGKILL. Idempotent.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return;
        };
        // SAFETY: kill(2) with the PID of our own child, which has not been reaped yet (try_wait said it is
        // running), so the PID cannot have been reused by another process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "nvkv-raft-bench: {} (pid {}) did not exit within {STOP_GRACE:?} of SIGTERM: SIGKILL",
            self.name,
            self.pid()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Fields 14 and 15 of a /proc/PID/stat file (utime, stime), in seconds.
pub fn cpu_seconds_of(stat_path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    parse_stat_cpu_ticks(&text).map(|t| t as f64 / clock_ticks_per_second())
}

/// utime + stime in clock ticks. The command name (field 2) is in parentheses and may hold spaces, so the
/// fields are counted from the last ')'.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')': field 3 (state) is index 0, so utime (field 14) is index 11 and stime index 12.
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Removes a data directory when dropped (unless kept): three nvkv databases and three etcd data dirs would
/// otherwise pile up in the output dir, or in memory under /dev/shm.
#[derive(Debug)]
pub struct DirGuard {
    pub path: PathBuf,
    pub keep: bool,
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!(
                        "nvkv-raft-bench: could not remove {}: {e}",
                        self.path.display()
                    );
                }
            }
        }
    }
}

/// An error naming the port if something on this machine already listens on 127.0.0.1:`port`.
pub fn check_port_free(port: u16) -> Result<()> {
    match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(()),
        Err(e) => bail!(
            "127.0.0.1:{port} is not free ({e}): another etcd or nvkv-server still running? \
             Pick other ports with --port-base"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_spaces() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
        let s = "1234 (etcd (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 12 0";
        assert_eq!(parse_stat_cpu_ticks(s), Some(300));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }
}
