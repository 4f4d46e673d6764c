//! Stream sources: a command's output (`command = [...]`) or standard input (`--stdin`)
//! stored as the one file of a run, through the same chunking and dedup as a tree's
//! files. A command that fails or is killed, and an empty stream, commit no run: a
//! failed dump never looks like a good backup.

mod util;

use util::*;

/// The fixture's config with its source `home` replaced by `lines` (a command or stdin
/// source) under the name `db`, plus the tree source kept as `home`.
fn stream_config(fx: &Fixture, lines: &str) {
    let text = fx.config_text(&Settings::default());
    let tree = text
        .split("\n[target.local]")
        .next()
        .expect("the source section");
    let source = tree.split(&format!("[source.{SOURCE}]")).nth(1).unwrap();
    let stream: String = source
        .lines()
        .filter(|l| !l.starts_with("path ="))
        .map(|l| format!("{l}\n"))
        .collect();
    let text = text.replacen(
        "\n[target.local]",
        &format!("\n[source.db]\n{lines}\n{}\n[target.local]", stream.trim()),
        1,
    );
    std::fs::write(&fx.config, text).unwrap();
}

/// A SQL-like dump of `rows` rows; `changed` rows get another value.
fn dump(rows: usize, changed: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..rows {
        let value = if changed.contains(&i) {
            "changed"
        } else {
            "original"
        };
        out.extend_from_slice(
            format!(
                "INSERT INTO t VALUES ({i}, '{value}', {}, 'padding text');\n",
                i * 7919 % 10007
            )
            .as_bytes(),
        );
    }
    out
}

fn backup(fx: &Fixture, args: &[&str], stdin: Option<Vec<u8>>) -> Out {
    let mut cmd = fx.cmd();
    cmd.arg("backup").args(args);
    if let Some(input) = stdin {
        cmd.write_stdin(input);
    }
    run(cmd)
}

fn cat(fx: &Fixture, path: &str) -> Vec<u8> {
    let mut cmd = fx.cmd();
    cmd.arg("cat")
        .arg("--key")
        .arg(&fx.secret_key)
        .args(["--source", "db", path]);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn db_runs(fx: &Fixture) -> usize {
    fx.runs().iter().filter(|r| r["source"] == "db").count()
}

#[test]
fn a_command_source_stores_its_output_and_a_changed_dump_stores_a_few_chunks() {
    let fx = Fixture::new();
    let file = fx.path("dump.sql");
    let before = dump(60_000, &[]);
    std::fs::write(&file, &before).unwrap();
    stream_config(
        &fx,
        &format!(
            "command = [\"cat\", {}]\nstream_name = \"shop.sql\"",
            toml_str(&file)
        ),
    );
    let out = backup(&fx, &["db", "--json"], None).ok();
    let first = &out.json()["runs"][0];
    assert_eq!(as_u64(first, "files"), 1, "{out}");
    assert_eq!(as_u64(first, "files_new"), 1, "{out}");
    assert_eq!(as_u64(first, "bytes_total"), before.len() as u64, "{out}");
    assert_eq!(cat(&fx, "shop.sql"), before);

    // A few rows changed, spread over the dump: a few new chunks, not a new dump.
    let after = dump(60_000, &[100, 20_000, 45_000]);
    assert_eq!(
        after.len(),
        before.len() - 3 * ("original".len() - "changed".len())
    );
    std::fs::write(&file, &after).unwrap();
    let out = backup(&fx, &["db", "--json"], None).ok();
    let second = &out.json()["runs"][0];
    assert_eq!(as_u64(second, "files_changed"), 1, "{out}");
    let (chunks, new) = (as_u64(second, "chunks"), as_u64(second, "chunks_new"));
    assert!(
        chunks > 50 && new <= 6,
        "{new} of {chunks} chunks new\n{out}"
    );
    assert!(
        as_u64(second, "bytes_new") * 10 < after.len() as u64,
        "{out}"
    );
    assert_eq!(cat(&fx, "shop.sql"), after);

    // The run restores as a directory holding the one file.
    let to = fx.path("restored");
    let mut cmd = fx.cmd();
    cmd.arg("restore")
        .arg("--key")
        .arg(&fx.secret_key)
        .args(["--source", "db", "--to"])
        .arg(&to);
    run(cmd).ok();
    assert_eq!(relative_paths(&to), vec![b"shop.sql".to_vec()]);
    assert_eq!(read(&to.join("shop.sql")), after);
}

#[test]
fn a_failing_killed_or_missing_command_commits_no_run_and_shows_why() {
    let fx = Fixture::new();
    // Exits 2 after writing half a dump, as mysqldump does when the server goes away.
    stream_config(
        &fx,
        "command = [\"sh\", \"-c\", \"seq 1 50000; echo 'mysqldump: Error 2013: Lost \
         connection' >&2; exit 2\", \"--password=hunter2\"]",
    );
    let out = backup(&fx, &["db"], None)
        .expect(EXIT_ERROR)
        .stderr_has("exited with status 2")
        .stderr_has("no run was committed")
        .stderr_has("| mysqldump: Error 2013: Lost connection");
    assert!(
        !out.stderr.contains("hunter2"),
        "arguments stay out of messages\n{out}"
    );
    assert_eq!(db_runs(&fx), 0, "{out}");

    stream_config(
        &fx,
        "command = [\"sh\", \"-c\", \"seq 1 1000; kill -9 $$\"]",
    );
    backup(&fx, &["db"], None)
        .expect(EXIT_ERROR)
        .stderr_has("killed by signal 9");
    assert_eq!(db_runs(&fx), 0);

    stream_config(&fx, "command = [\"/nonexistent/mysqldump\"]");
    backup(&fx, &["db"], None)
        .expect(EXIT_ERROR)
        .stderr_has("cannot run command `/nonexistent/mysqldump`");
    // A command that succeeds with nothing to say is no backup either.
    stream_config(&fx, "command = [\"true\"]");
    backup(&fx, &["db"], None)
        .expect(EXIT_ERROR)
        .stderr_has("gave no data");
    assert_eq!(db_runs(&fx), 0);
    backup(&fx, &["db", "--allow-empty"], None)
        .ok()
        .stderr_has("gave no data");
    assert_eq!(db_runs(&fx), 1);
    assert_eq!(cat(&fx, "db"), b"");
}

#[test]
fn standard_input_is_stored_under_its_name_and_only_when_asked_for() {
    let fx = Fixture::new();
    small_tree(&fx.src);
    stream_config(&fx, "stdin = true\nstream_name = \"db.sql\"");
    let data = dump(5_000, &[]);
    backup(&fx, &["db", "--stdin"], Some(data.clone())).ok();
    assert_eq!(cat(&fx, "db.sql"), data);
    backup(
        &fx,
        &["db", "--stdin", "--stdin-name", "other.sql"],
        Some(b"x\n".to_vec()),
    )
    .ok();
    assert_eq!(cat(&fx, "other.sql"), b"x\n");

    // Zero bytes: refused, unless asked for.
    let out = backup(&fx, &["db", "--stdin"], Some(Vec::new()))
        .expect(EXIT_ERROR)
        .stderr_has("standard input gave no data")
        .stderr_has("pipefail");
    assert_eq!(db_runs(&fx), 2, "{out}");

    // A backup of every source leaves the stdin source out and says so; naming it
    // without --stdin, or --stdin with a tree source, is refused.
    let out = backup(&fx, &[], Some(b"ignored".to_vec()))
        .ok()
        .stderr_has("source db reads standard input and is left out");
    assert_eq!(db_runs(&fx), 2, "{out}");
    backup(&fx, &["db"], None)
        .expect(EXIT_ERROR)
        .stderr_has("--stdin");
    backup(&fx, &[SOURCE, "--stdin"], Some(b"x".to_vec()))
        .expect(EXIT_ERROR)
        .stderr_has("is not a stdin source");
    backup(
        &fx,
        &["db", "--stdin", "--stdin-name", "../x"],
        Some(b"x".to_vec()),
    )
    .expect(EXIT_ERROR)
    .stderr_has("one file name");
}
