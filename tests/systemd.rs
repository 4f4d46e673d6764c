//! The systemd units in contrib/systemd: `systemd-analyze verify` accepts them (with the
//! man pages they name installed), they keep the hardening the README promises, and
//! their command lines work as systemd runs them (there is no systemd to start them here).

mod util;

use std::path::Path;
use std::process::Command;

use util::*;

#[test]
fn the_systemd_units_verify_and_are_hardened() {
    assert!(
        have_program("systemd-analyze"),
        "systemd-analyze is missing: scripts/setup.sh installs systemd"
    );
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let units = repo.join("contrib/systemd");
    let dir = tempfile::tempdir().unwrap();
    // The units as the package installs them, with this build's binary for
    // /usr/bin/coffer (verify checks that ExecStart's program exists), and an instance
    // of each template.
    let mut names = Vec::new();
    for e in std::fs::read_dir(&units).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let text = std::fs::read_to_string(e.path()).unwrap();
        let text = text.replace("/usr/bin/coffer", coffer_bin().to_str().unwrap());
        std::fs::write(dir.path().join(&name), &text).unwrap();
        let instance = name.replace("@.", "@web.");
        if instance != name {
            std::fs::write(dir.path().join(&instance), &text).unwrap();
        }
        names.push(instance);
    }
    names.sort();
    assert_eq!(
        names,
        [
            "coffer-backup@web.service",
            "coffer-backup@web.timer",
            "coffer-status.service",
            "coffer-status.timer"
        ]
    );
    // Documentation=man:coffer-backup(1) is checked against the man pages.
    let man1 = dir.path().join("man/man1");
    std::fs::create_dir_all(&man1).unwrap();
    for e in std::fs::read_dir(repo.join("man")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), man1.join(e.file_name())).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(names.iter().map(|n| dir.path().join(n)))
        .env("MANPATH", dir.path().join("man"))
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warns: {stderr}"
    );

    for service in ["coffer-backup@.service", "coffer-status.service"] {
        let text = std::fs::read_to_string(units.join(service)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for needed in [
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "NoNewPrivileges=yes",
            "MemoryDenyWriteExecute=yes",
            "Type=oneshot",
        ] {
            assert!(lines.contains(&needed), "{service} lacks {needed}");
        }
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("StateDirectory=coffer/")),
            "{service}: no state directory"
        );
        // No credential in a unit: they come from an EnvironmentFile.
        assert!(!text.contains("AWS_SECRET"), "{service}");
        assert!(lines
            .iter()
            .any(|l| l.starts_with("EnvironmentFile=-/etc/coffer/")));
    }
    let backup = std::fs::read_to_string(units.join("coffer-backup@.service")).unwrap();
    assert!(backup.contains("ReadOnlyPaths=/"));
    assert!(backup.contains("ExecStart=/usr/bin/coffer -c /etc/coffer/%i.toml backup"));
}

/// What a unit's `KEY=` line says (the first one).
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
        .to_string()
}

/// Runs a unit's ExecStart as systemd would for a system service: no terminal, no
/// HOME, the variables of its EnvironmentFile, with the file system's paths moved under
/// `root` (`%i` is `instance`). Its output.
fn run_as_systemd(unit: &str, root: &Path, instance: &str) -> std::process::Output {
    let moved = |s: &str| {
        s.replace("%i", instance)
            .replace("/usr/bin/coffer", coffer_bin().to_str().unwrap())
            .replace("/etc/", &format!("{}/etc/", root.display()))
            .replace("/var/", &format!("{}/var/", root.display()))
    };
    let exec = moved(&unit_value(unit, "ExecStart"));
    let env_file = moved(unit_value(unit, "EnvironmentFile").trim_start_matches('-'));
    let mut words = exec.split_whitespace();
    let mut cmd = Command::new(words.next().unwrap());
    cmd.args(words)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(std::process::Stdio::null());
    if let Ok(text) = std::fs::read_to_string(&env_file) {
        for (k, v) in text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
        {
            cmd.env(k.trim(), v.trim());
        }
    }
    cmd.output().unwrap()
}

/// The units' command lines work as systemd runs them: the backup service backs up the
/// config its instance names into the state directory it gets, the status service writes
/// the node exporter's textfile from the monitor's config; off a terminal, without HOME,
/// with their EnvironmentFile; and what they print is plain lines (no progress bar, no
/// escape codes) for the journal.
#[test]
fn the_units_commands_run_as_systemd_runs_them() {
    use std::os::unix::fs::DirBuilderExt;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit =
        |name: &str| std::fs::read_to_string(repo.join("contrib/systemd").join(name)).unwrap();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    for dir in [
        "etc/coffer",
        "var/lib/prometheus/node-exporter",
        "srv/src",
        "srv/backups",
    ] {
        std::fs::create_dir_all(at(dir)).unwrap();
    }
    // StateDirectory=coffer/%i and coffer/monitor, as systemd makes them (0700).
    for dir in ["var/lib/coffer/config", "var/lib/coffer/monitor"] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(at(dir))
            .unwrap();
    }
    std::fs::write(at("srv/src/hosts"), b"127.0.0.1 localhost\n").unwrap();
    let (public, _) = keygen(root, &at("keys"), "admin");
    let target = format!(
        "[target.usb]\nurl = \"file://{}\"\n",
        at("srv/backups").display()
    );
    std::fs::write(
        at("etc/coffer/config.toml"),
        format!(
            "host = \"web1\"\nstate_dir = {}\n\n[source.etc]\npath = {}\nrecipients = [{}]\n\
             targets = [\"usb\"]\n\n{target}",
            toml_str(&at("var/lib/coffer/config")),
            toml_str(&at("srv/src")),
            toml_str(&public)
        ),
    )
    .unwrap();
    std::fs::write(
        at("etc/coffer/config.env"),
        "# credentials would go here\nTZ=UTC\n",
    )
    .unwrap();
    std::fs::write(
        at("etc/coffer/monitor.toml"),
        format!(
            "host = \"monitor\"\nstate_dir = {}\n\n{target}",
            toml_str(&at("var/lib/coffer/monitor"))
        ),
    )
    .unwrap();
    let plain = |out: &std::process::Output| {
        let all = [&out.stdout[..], &out.stderr[..]].concat();
        assert!(
            !all.contains(&b'\r') && !all.contains(&0x1b),
            "no progress bar or escape code for the journal: {}",
            String::from_utf8_lossy(&all)
        );
    };
    let backup = run_as_systemd(&unit("coffer-backup@.service"), root, "config");
    assert!(
        backup.status.success(),
        "{}",
        String::from_utf8_lossy(&backup.stderr)
    );
    plain(&backup);
    assert!(
        std::fs::read_dir(at("srv/backups/runs")).is_ok(),
        "the backup stored a run"
    );
    let status = run_as_systemd(&unit("coffer-status.service"), root, "");
    assert!(
        status.status.success(),
        "{}{}",
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );
    plain(&status);
    let prom = std::fs::read_to_string(at("var/lib/prometheus/node-exporter/coffer.prom")).unwrap();
    assert!(
        prom.contains("coffer_source_health{target=\"usb\",host=\"web1\",source=\"etc\"} 0"),
        "{prom}"
    );
}
