//! The systemd units in contrib/systemd: `systemd-analyze verify` accepts them (with the
//! man pages they name installed), and they keep the hardening the README promises.

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
