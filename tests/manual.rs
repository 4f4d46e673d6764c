//! The manual and the shell: the man pages in `man/` are the ones `coffer man` makes from
//! the same definitions as `--help` (regenerate them with `cargo run -- man man`), `man -l`
//! renders each, and the completion scripts work in the shells they are for.

mod util;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use util::*;

fn pages(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), read(&e.path()))
        })
        .collect()
}

#[test]
fn the_man_pages_are_current_and_render() {
    let home = tempfile::tempdir().unwrap();
    let made = home.path().join("man");
    let mut cmd = coffer(home.path());
    cmd.arg("man").arg(&made);
    run(cmd).ok();
    let made = pages(&made);
    let kept = pages(&Path::new(env!("CARGO_MANIFEST_DIR")).join("man"));
    let names: Vec<&String> = made.keys().collect();
    assert_eq!(
        names,
        kept.keys().collect::<Vec<_>>(),
        "man/ is stale: run `cargo run -- man man` and commit it"
    );
    for (name, text) in &made {
        assert!(
            kept[name] == *text,
            "man/{name} is stale: run `cargo run -- man man` and commit it"
        );
    }
    // A page for the program and one for every command.
    for page in [
        "coffer.1",
        "coffer-backup.1",
        "coffer-restore.1",
        "coffer-status.1",
    ] {
        assert!(made.contains_key(page), "{names:?}");
    }
    assert!(!made.contains_key("coffer-help.1"));

    // man renders each (scripts/setup.sh installs man-db), with its options and text.
    assert!(
        have_program("man"),
        "`man` is missing: scripts/setup.sh installs man-db"
    );
    for name in made.keys() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("man").join(name);
        let out = Command::new("man")
            .arg("-l")
            .arg(&path)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "man -l {name}: {stderr}");
        assert!(!stderr.contains("warning"), "man -l {name} warns: {stderr}");
        assert!(
            text.contains("NAME") && text.contains("SYNOPSIS"),
            "{name}:\n{text}"
        );
    }
    let backup = Command::new("man")
        .args(["-l", "man/coffer-backup.1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&backup.stdout);
    assert!(
        text.contains("--dry-run") || text.contains("--json"),
        "{text}"
    );
    assert!(text.contains("coffer-backup"), "{text}");
}

/// bash completes a command, then an option of it, through the script coffer prints.
#[test]
fn bash_completes_commands_and_options() {
    let home = tempfile::tempdir().unwrap();
    let script = home.path().join("coffer.bash");
    let mut cmd = coffer(home.path());
    cmd.args(["completions", "bash"]);
    let out = run(cmd).ok();
    std::fs::write(&script, &out.stdout).unwrap();
    let complete = |words: &[&str]| -> Vec<String> {
        let shell = format!(
            "source {}; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE=\"{}\"; COMP_POINT=${{#COMP_LINE}}; \
             _coffer coffer \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display(),
            words.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" "),
            words.len() - 1,
            words.join(" "),
        );
        let out = Command::new("bash").args(["-c", &shell]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(complete(&["coffer", "bac"]), ["backup"]);
    let options = complete(&["coffer", "restore", "--to"]);
    assert!(options.iter().any(|o| o == "--to"), "{options:?}");
    let options = complete(&["coffer", "status", "--max"]);
    assert!(options.iter().any(|o| o == "--max-age"), "{options:?}");
}

/// zsh and fish scripts name every command; a shell that is installed also parses
/// them (`zsh -n`, `fish -n`).
#[test]
fn zsh_and_fish_scripts_name_every_command() {
    let home = tempfile::tempdir().unwrap();
    for (shell, check) in [("zsh", ["-n"]), ("fish", ["-n"])] {
        let mut cmd = coffer(home.path());
        cmd.args(["completions", shell]);
        let out = run(cmd).ok();
        for command in [
            "backup", "restore", "runs", "prune", "gc", "verify", "status",
        ] {
            assert!(out.stdout.contains(command), "{shell}: {command}");
        }
        if have_program(shell) {
            let path = home.path().join(format!("coffer.{shell}"));
            std::fs::write(&path, &out.stdout).unwrap();
            let parsed = Command::new(shell).args(check).arg(&path).output().unwrap();
            assert!(
                parsed.status.success(),
                "{shell} -n: {}",
                String::from_utf8_lossy(&parsed.stderr)
            );
        }
    }
    // fish completes with the script loaded, as a person pressing Tab would.
    if have_program("fish") {
        let path = home.path().join("coffer.fish");
        let script = format!(
            "source {}; complete -C 'coffer bac'; complete -C 'coffer restore --t'",
            path.display()
        );
        let out = Command::new("fish").args(["-c", &script]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let first: Vec<&str> = text.lines().filter_map(|l| l.split('\t').next()).collect();
        assert!(
            first.contains(&"backup") && first.contains(&"--to") && first.contains(&"--target"),
            "{text}"
        );
    }
    // An unknown shell is a usage error.
    let mut cmd = coffer(home.path());
    cmd.args(["completions", "tcsh"]);
    run(cmd).expect(2);
}
