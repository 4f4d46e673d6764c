//! Rendering results for people (text) and machines (JSON), and the progress bar.

use std::io::IsTerminal;
use std::sync::Mutex;

use coffer::{BackupStats, Progress, RestoreStats};
use indicatif::{ProgressBar, ProgressStyle};

/// Human-readable bytes.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn backup_summary(s: &BackupStats) -> String {
    format!(
        "{} -> {}: run {} by {}\n\
         \x20 files          {} (new {}, changed {}, unchanged {}, skipped {})\n\
         \x20 other entries  {}\n\
         \x20 size           {} ({} read)\n\
         \x20 chunks         {} ({} new, {})\n\
         \x20 stored         {} in {} objects\n\
         \x20 dedup ratio    {}\n\
         \x20 elapsed        {:.2}s ({}/s read)\n",
        s.source,
        s.target,
        s.run,
        s.host,
        s.files,
        s.files_new,
        s.files_changed,
        s.files_unchanged,
        s.files_skipped,
        s.other_entries,
        bytes(s.bytes_total),
        bytes(s.bytes_read),
        s.chunks,
        s.chunks_new,
        bytes(s.bytes_new),
        bytes(s.bytes_stored),
        s.objects_stored,
        if s.dedup_ratio > 0.0 {
            format!("{:.2}", s.dedup_ratio)
        } else {
            "- (nothing new)".into()
        },
        s.elapsed_secs,
        bytes(s.read_bytes_per_sec as u64),
    )
}

pub fn restore_summary(s: &RestoreStats) -> String {
    format!(
        "restored run {}: {} files ({}), {} other entries, {} failed, {:.2}s\n",
        s.run,
        s.files,
        bytes(s.bytes),
        s.other_entries,
        s.failed,
        s.elapsed_secs
    )
}

/// A progress bar on a terminal; warnings go to standard error either way.
pub struct Bar {
    bar: Option<ProgressBar>,
    command: &'static str,
    lock: Mutex<()>,
}

impl Bar {
    pub fn new(command: &'static str, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix} {bytes} {bytes_per_sec} {wide_msg}",
                )
                .expect("valid template"),
            );
            b.enable_steady_tick(std::time::Duration::from_millis(200));
            b
        });
        Bar {
            bar,
            command,
            lock: Mutex::new(()),
        }
    }
}

impl Progress for Bar {
    fn phase(&self, name: &str, _total: Option<u64>) {
        if let Some(b) = &self.bar {
            b.reset();
            b.set_prefix(name.to_string());
        }
    }
    fn bytes(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }
    fn item(&self, name: &str) {
        if let Some(b) = &self.bar {
            b.set_message(name.to_string());
        }
    }
    fn warn(&self, message: &str) {
        let _g = self.lock.lock();
        let line = format!("coffer {}: {message}", self.command);
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }
    fn done(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
