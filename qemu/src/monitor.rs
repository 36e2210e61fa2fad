//! QEMU's machine monitor (QMP) from the host: a controller can be hot-removed from a running guest
//! (`device_del`), as a user pulling a drive would. Give the VM a socket with [`crate::VmBuilder::qmp`] and put
//! the controller behind a PCIe root port with [`crate::NvmeController::hotpluggable`] (devices on q35's root
//! bus cannot be unplugged).

use crate::{io_err, Error, Result};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// A QMP connection, past the capabilities negotiation.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to the QMP socket at `path`, waiting up to `wait` for QEMU to create it.
    pub fn connect(path: &Path, wait: Duration) -> Result<Self> {
        let deadline = Instant::now() + wait;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(io_err(path)(e)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(io_err(path))?;
        let writer = stream.try_clone().map_err(io_err(path))?;
        let mut q = Self {
            reader: BufReader::new(stream),
            writer,
        };
        q.read_line()?; // the greeting
        q.execute(r#"{"execute":"qmp_capabilities"}"#)?;
        Ok(q)
    }

    fn read_line(&mut self) -> Result<String> {
        let mut l = String::new();
        let n = self
            .reader
            .read_line(&mut l)
            .map_err(io_err("QMP socket"))?;
        if n == 0 {
            return Err(Error::Config("QMP: QEMU closed the monitor".into()));
        }
        Ok(l)
    }

    /// Sends one command (a JSON object) and waits for its `return` (events that arrive first are skipped);
    /// an `error` answer is an error.
    pub fn execute(&mut self, json: &str) -> Result<String> {
        writeln!(self.writer, "{json}").map_err(io_err("QMP socket"))?;
        loop {
            let l = self.read_line()?;
            if l.contains("\"return\"") {
                return Ok(l);
            }
            if l.contains("\"error\"") {
                return Err(Error::Config(format!("QMP {json}: {}", l.trim())));
            }
        }
    }

    /// Asks QEMU to unplug device `id` (the guest is notified and releases it; QEMU then removes it).
    pub fn device_del(&mut self, id: &str) -> Result<()> {
        self.execute(&format!(
            r#"{{"execute":"device_del","arguments":{{"id":"{id}"}}}}"#
        ))
        .map(drop)
    }
}
