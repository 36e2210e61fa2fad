//! report.html in a real browser: the report of a fixture (`fixtures/report.json`, a main-job report with
//! every table and plot: four contenders on six driver workloads, the key-value comparison at 100 B and
//! 4 KiB, the durable-put paths, the host CPU path, the embedding comparison, a failed run) is written as
//! the harness writes it, opened in Debian's headless chromium, and its screenshot must show the page: more than a few colours,
//! the plots' colours, and ink where the first plot is.
//!
//! With CI=true a missing chromium fails the test (`cargo run -p nvkv-qemu -- setup` installs it); outside
//! CI it skips, loudly.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 2000;

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVKV_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n)))
        .find(|p| p.is_file())
}

/// Runs chromium headless on `page` and waits for the screenshot (killed after two minutes).
fn screenshot(chromium: &Path, page: &Path, png: &Path, profile: &Path) {
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("--window-size={WIDTH},{HEIGHT}"))
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
    let start = Instant::now();
    loop {
        match child.try_wait().expect("waiting for chromium") {
            Some(_) => break,
            None if start.elapsed() > Duration::from_secs(120) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium did not finish in 120 s");
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let out = child.wait_with_output().expect("chromium's output");
    assert!(
        png.exists(),
        "chromium wrote no screenshot ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Image {
    width: u32,
    height: u32,
    rgb: Vec<[u8; 3]>,
}

fn decode(png_path: &Path) -> Image {
    let file = std::fs::File::open(png_path).expect("open the screenshot");
    let mut dec = png::Decoder::new(std::io::BufReader::new(file));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info().expect("a PNG");
    let size = reader.output_buffer_size().expect("PNG buffer size");
    let mut buf = vec![0; size];
    let info = reader.next_frame(&mut buf).expect("PNG frame");
    let channels = info.color_type.samples();
    let rgb = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .map(|p| match channels {
            1 | 2 => [p[0], p[0], p[0]],
            _ => [p[0], p[1], p[2]],
        })
        .collect();
    Image {
        width: info.width,
        height: info.height,
        rgb,
    }
}

#[test]
fn report_page_renders_in_headless_chromium() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report.json");
    let text = std::fs::read_to_string(&fixture).expect("read the fixture");
    let report: nvkv_bench::report::Report =
        serde_json::from_str(&text).expect("parse the fixture");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-page");
    let _ = std::fs::remove_dir_all(&dir);
    nvkv_bench::report::write(&report, &dir).expect("write the report");
    let page = dir.join("report.html");
    let html = std::fs::read_to_string(&page).expect("report.html beside report.json");
    assert!(dir.join("report.json").exists());
    // Self-contained: the plots inline, nothing fetched.
    assert!(html.matches("<svg").count() >= 8, "plots missing");
    assert!(!html.contains("<script") && !html.contains("src=\"http"));
    for t in [
        "Conditions",
        "What was measured",
        "durable puts",
        "kernel io_uring_cmd --hipri",
        "QEMU emulator version 7.2.19",
    ] {
        assert!(html.contains(t), "{t:?} not on the page");
    }
    // The failed run's message is escaped, not markup.
    assert!(html.contains(
        "&lt;fio: io_u error on file /dev/nvme0n1: Input/output error &amp; retrying&gt;"
    ));

    let Some(chromium) = chromium() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("chromium not found (CI=true): run `cargo run -p nvkv-qemu -- setup`, which installs Debian's chromium");
        }
        eprintln!("SKIPPED: chromium not found; the page was written to {} but not rendered (install Debian's chromium: `cargo run -p nvkv-qemu -- setup`)", page.display());
        return;
    };
    let png = dir.join("screenshot.png");
    let profile = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-page-chromium");
    screenshot(&chromium, &page, &png, &profile);
    let img = decode(&png);
    eprintln!("screenshot: {}", png.display());
    assert_eq!((img.width, img.height), (WIDTH, HEIGHT));

    let mut colours: Vec<[u8; 3]> = img.rgb.clone();
    colours.sort_unstable();
    colours.dedup();
    assert!(
        colours.len() > 16,
        "a blank page: {} colours",
        colours.len()
    );
    let ink = |y0: u32, y1: u32| {
        let (y0, y1) = (y0 as usize, y1.min(img.height) as usize);
        img.rgb[y0 * img.width as usize..y1 * img.width as usize]
            .iter()
            .filter(|p| p.iter().any(|&c| c < 200))
            .count()
    };
    // The first plot sits under the conditions; the lower half of the screenshot is plots too.
    let lower = ink(HEIGHT / 2, HEIGHT);
    assert!(
        lower > 20_000,
        "no ink in the plot area ({lower} dark pixels)"
    );
    // The plots' own colours: the first series is Tableau blue (#1f77b4), the second red (#d62728).
    let near = |p: &[u8; 3], c: [u8; 3]| p.iter().zip(c).all(|(&a, b)| a.abs_diff(b) < 24);
    for (name, c) in [("blue", [0x1f, 0x77, 0xb4]), ("red", [0xd6, 0x27, 0x28])] {
        let n = img.rgb.iter().filter(|p| near(p, c)).count();
        assert!(n > 500, "the plots' {name} is missing ({n} pixels)");
    }
}
