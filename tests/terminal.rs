//! What a person sees in a real terminal: coffer runs in a tmux pane and the pane is
//! captured while it works. A backup shows its phase, bytes, rate and files; from its
//! second run on (the last run's size is the estimate) a bar with the total and the time
//! left; then its last uploads and commit; and when it ends, no bar is left on the
//! screen, only the summary (a restore from a folder is too quick to catch mid-way: it is
//! run in the pane for its outcome). Off a terminal (standard error a
//! pipe, as under systemd or cron) nothing is drawn: no carriage return, no escape.

mod util;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use util::*;

/// A tmux session running one command line in a 150x30 pane; killed when dropped.
struct Pane {
    name: String,
}

impl Pane {
    fn start(fx: &Fixture, name: &str, command: &str) -> Pane {
        assert!(
            have_program("tmux"),
            "tmux is missing: scripts/setup.sh installs it"
        );
        let name = format!(
            "coffer-{name}-{}",
            fx.dir.path().file_name().unwrap().to_string_lossy()
        );
        let status = Command::new("tmux")
            .args(["new-session", "-d", "-s", &name, "-x", "150", "-y", "30"])
            .arg(format!(
                "env -i HOME={} PATH={} TERM=xterm-256color sh -c '{command}; echo EXIT=$?; sleep 600'",
                fx.home.display(),
                std::env::var("PATH").unwrap()
            ))
            .status()
            .unwrap();
        assert!(status.success());
        Pane { name }
    }

    fn capture(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every distinct screen until the command has exited (at most `limit`).
    fn frames_until_exit(&self, limit: Duration) -> Vec<String> {
        let start = Instant::now();
        let mut frames: Vec<String> = Vec::new();
        loop {
            let screen = self.capture();
            if frames.last() != Some(&screen) {
                frames.push(screen.clone());
            }
            if screen.contains("EXIT=") {
                return frames;
            }
            assert!(
                start.elapsed() < limit,
                "still running after {limit:?}:\n{}",
                frames.join("\n----\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .status();
    }
}

fn sh_quote(p: &Path) -> String {
    p.display().to_string().replace('\'', "")
}

/// The frames in which some line holds all of `needles`.
fn showing<'a>(frames: &'a [String], needles: &[&str]) -> Vec<&'a str> {
    frames
        .iter()
        .filter(|f| f.lines().any(|l| needles.iter().all(|n| l.contains(n))))
        .map(String::as_str)
        .collect()
}

#[test]
fn a_person_sees_progress_and_then_only_the_summary() {
    let fx = Fixture::with(Settings {
        pack_size: Some("1MiB".into()),
        ..Settings::default()
    });
    // Uploads held to 4 MiB/s: a 24 MB file takes seconds, and reading waits for them.
    let mut config = std::fs::read_to_string(&fx.config).unwrap();
    config += "upload_rate_limit = \"4MiB\"\n";
    std::fs::write(&fx.config, config).unwrap();
    write(&fx.src.join("small.txt"), b"small\n");
    write(&fx.src.join("big.bin"), &pseudo_random(1, 24_000_000));
    let backup = format!(
        "{} -c {} backup",
        sh_quote(&coffer_bin()),
        sh_quote(&fx.config)
    );

    // A first run: no estimate, so bytes, rate and files; then the last uploads.
    let pane = Pane::start(&fx, "first", &backup);
    let frames = pane.frames_until_exit(Duration::from_secs(120));
    let all = frames.join("\n----\n");
    let reading = showing(
        &frames,
        &[&format!("{SOURCE} -> local"), "MiB", "/s", "files"],
    );
    assert!(!reading.is_empty(), "no reading progress seen:\n{all}");
    assert!(
        !showing(&frames, &["last uploads, then the commit"]).is_empty(),
        "no upload phase seen:\n{all}"
    );
    let last = frames.last().unwrap();
    assert!(last.contains("EXIT=0") && last.contains(" run "), "{last}");
    assert!(
        !last.contains("/s  ") && !last.contains("last uploads"),
        "a bar was left on the screen:\n{last}"
    );
    drop(pane);

    // A second run knows the last run's size: a bar with the total and the time left.
    write(&fx.src.join("big.bin"), &pseudo_random(2, 24_000_000));
    let pane = Pane::start(&fx, "second", &backup);
    let frames = pane.frames_until_exit(Duration::from_secs(120));
    let all = frames.join("\n----\n");
    let bar = showing(
        &frames,
        &[&format!("{SOURCE} -> local ["), "/22.89 MiB", "ETA"],
    );
    assert!(!bar.is_empty(), "no bar with a total and ETA:\n{all}");
    assert!(frames.last().unwrap().contains("EXIT=0"), "{all}");
    drop(pane);

    // A restore in the terminal.
    let to = fx.path("restored");
    let restore = format!(
        "{} -c {} restore --key {} --source {SOURCE} --to {}",
        sh_quote(&coffer_bin()),
        sh_quote(&fx.config),
        sh_quote(&fx.secret_key),
        sh_quote(&to)
    );
    let pane = Pane::start(&fx, "restore", &restore);
    let frames = pane.frames_until_exit(Duration::from_secs(120));
    let all = frames.join("\n----\n");
    assert!(frames.last().unwrap().contains("EXIT=0"), "{all}");
    assert_eq!(read(&to.join("big.bin")), pseudo_random(2, 24_000_000));

    // Off a terminal: the same backup draws nothing.
    write(&fx.src.join("big.bin"), &pseudo_random(3, 4_000_000));
    let mut cmd = fx.cmd();
    cmd.arg("backup");
    let out = run(cmd).ok();
    for stream in [&out.stdout, &out.stderr] {
        assert!(
            !stream.contains('\r') && !stream.contains('\u{1b}'),
            "terminal control codes off a terminal: {out}"
        );
    }
}
