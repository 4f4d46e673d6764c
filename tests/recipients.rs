//! Which keys back up and restore, and what GnuPG makes of what coffer writes: a key pair
//! made by gpg, one with a passphrase, a public certificate alone, another pair's secret
//! key, several recipients, and `gpg -d` of the metafile and of each chunk.

mod util;

use std::ffi::OsStr;
use std::path::PathBuf;

use util::*;

/// The decrypted metafile's `chunk` lines of the file `path`, split into fields.
fn chunk_lines_of(metafile: &str, path: &str) -> Vec<Vec<String>> {
    let mut lines = metafile.lines();
    while let Some(line) = lines.next() {
        let f: Vec<&str> = line.split(' ').collect();
        if f[0] == "file" && f[1] == path {
            assert_eq!(f.len(), 11, "file line: {line}");
            let n: usize = f[10].parse().unwrap();
            return (0..n)
                .map(|_| {
                    let c = lines.next().expect("chunk line");
                    let fields: Vec<String> = c.split(' ').map(str::to_string).collect();
                    assert_eq!(fields.len(), 7, "chunk line: {c}");
                    assert_eq!(fields[0], "chunk", "chunk line: {c}");
                    fields
                })
                .collect();
        }
    }
    panic!("no file line for {path} in\n{metafile}");
}

/// A metafile larger than one 64 KiB part of its three streamed packets (literal,
/// compressed, SEIPD) decrypts with gpg, and coffer restores from it.
#[test]
fn a_metafile_of_many_parts_decrypts_with_gpg_and_restores() {
    let fx = Fixture::new();
    // Random names and contents: every entry adds ~70 bytes the compression cannot save.
    for i in 0..3000u64 {
        let name = hex::encode(pseudo_random(i + 10, 12));
        write(&fx.src.join(&name[..2]).join(&name), &pseudo_random(i, 40));
    }
    fx.backup_ok();
    let metas = fx.metafiles();
    let stored = read(&metas[0]);
    assert!(stored.len() > 3 * 65536, "{} bytes", stored.len());

    let gpg = Gpg::new();
    gpg.run(&[OsStr::new("--import"), fx.secret_key.as_os_str()], None);
    let text = String::from_utf8(gpg.decrypt(&stored)).expect("metafile is text");
    assert!(text.starts_with("coffer-metafile 1\n"), "{}", &text[..100]);
    assert!(text.ends_with('\n') && text.lines().last().unwrap().starts_with("end "));
    assert_eq!(text.matches("\nfile ").count(), 3000);

    let dest = fx.path("restored");
    fx.restore(&dest, &[]).ok();
    assert_same_tree(&fx.src, &dest);
}

#[test]
fn gpg_decrypts_the_metafile_and_each_chunk() {
    let fx = Fixture::new();
    let data = pseudo_random(3, 300_000);
    write(&fx.src.join("data.bin"), &data);
    write(&fx.src.join("note.txt"), b"a note\n");
    fx.backup_ok();

    let gpg = Gpg::new();
    gpg.run(&[OsStr::new("--import"), fx.secret_key.as_os_str()], None);

    let metas = fx.metafiles();
    assert_eq!(metas.len(), 1);
    let text = String::from_utf8(gpg.decrypt(&read(&metas[0]))).expect("metafile is text");
    assert!(text.starts_with("coffer-metafile 1\n"), "{text}");
    assert!(text.contains(&format!("\nhost {HOST}\n")), "{text}");
    assert!(text.contains(&format!("\nsource {SOURCE}\n")), "{text}");

    let chunks = chunk_lines_of(&text, "data.bin");
    assert!(
        chunks.len() >= 4,
        "300 kB in 16 KiB chunks: {}",
        chunks.len()
    );
    let mut whole = Vec::new();
    for c in &chunks {
        let (object, offset, length) = (
            &c[1],
            c[2].parse::<usize>().unwrap(),
            c[3].parse::<usize>().unwrap(),
        );
        let (size, hash, encoding) = (c[4].parse::<usize>().unwrap(), &c[5], &c[6]);
        let pack_path = fx.target.join("data").join(&object[..2]).join(object);
        let pack = read(&pack_path);
        assert_eq!(
            &blake3::hash(&pack).to_hex().to_string(),
            object,
            "an object is named by the BLAKE3 of its bytes"
        );
        let plain = gpg.decrypt(&pack[offset..offset + length]);
        let plain = match encoding.as_str() {
            "raw" => plain,
            "zstd" => zstd::decode_all(&plain[..]).unwrap(),
            other => panic!("unknown encoding {other}"),
        };
        assert_eq!(plain.len(), size);
        assert_eq!(&blake3::hash(&plain).to_hex().to_string(), hash);
        whole.extend_from_slice(&plain);
    }
    assert!(whole == data, "the chunks, in order, are the file");

    // coffer restores from the gpg-decrypted metafile too, given only the target's URL.
    let decrypted = fx.path("decrypted.meta");
    std::fs::write(&decrypted, &text).unwrap();
    let dest = fx.path("restored");
    let mut cmd = coffer(&fx.home);
    cmd.arg("restore")
        .arg("--key")
        .arg(&fx.secret_key)
        .args(["--target", &fx.target_url()])
        .arg("--index")
        .arg(&decrypted)
        .arg("--to")
        .arg(&dest);
    run(cmd).ok();
    assert_same_tree(&fx.src, &dest);
}

/// A fixture whose only recipient is a GnuPG-made key; returns the secret key file.
fn fixture_with_gpg_key(fx: &Fixture, user_id: &str, passphrase: &str) -> PathBuf {
    let gpg = Gpg::new();
    gpg.generate(user_id, passphrase);
    let (public, secret) = gpg.export(passphrase);
    let public_path = fx.path("gpg.pub.asc");
    let secret_path = fx.path("gpg.key.asc");
    write(&public_path, &public);
    write(&secret_path, &secret);
    fx.write_config(&Settings {
        recipients: vec![public_path],
        ..Settings::default()
    });
    secret_path
}

#[test]
fn gpg_made_key_pair_backs_up_and_restores() {
    let fx = Fixture::new();
    small_tree(&fx.src);
    let secret = fixture_with_gpg_key(&fx, "Test <t@example.org>", "");
    fx.backup_ok();
    let dest = fx.path("restored");
    fx.restore_with(&secret, &dest, &[]).ok();
    assert_same_tree(&fx.src, &dest);
    // The fixture's own key is not a recipient any more.
    fx.restore(&fx.path("other"), &[])
        .expect(EXIT_ERROR)
        .stderr_has("can decrypt");
}

#[test]
fn gpg_made_key_with_passphrase_needs_the_right_one() {
    let fx = Fixture::new();
    small_tree(&fx.src);
    let secret = fixture_with_gpg_key(&fx, "Protected <p@example.org>", "correct horse");
    fx.backup_ok();

    let good = fx.path("good-pass");
    std::fs::write(&good, "correct horse\n").unwrap();
    let dest = fx.path("restored");
    fx.restore_with(
        &secret,
        &dest,
        &[OsStr::new("--passphrase-file"), good.as_os_str()],
    )
    .ok();
    assert_same_tree(&fx.src, &dest);

    let bad = fx.path("bad-pass");
    std::fs::write(&bad, "battery staple\n").unwrap();
    let wrong = fx.path("wrong");
    fx.restore_with(
        &secret,
        &wrong,
        &[OsStr::new("--passphrase-file"), bad.as_os_str()],
    )
    .expect(EXIT_ERROR)
    .stderr_has("passphrase");
    assert!(
        !wrong.exists() || relative_paths(&wrong).is_empty(),
        "nothing restored with a wrong passphrase"
    );

    // No passphrase at all, and no terminal to ask on.
    fx.restore_with(&secret, &fx.path("none"), &[])
        .expect(EXIT_ERROR)
        .stderr_has("passphrase");
}

#[test]
fn public_certificate_backs_up_but_cannot_restore() {
    let fx = Fixture::new();
    small_tree(&fx.src);
    // The config names only the host's copy of the public certificate.
    assert!(!read(&fx.config).windows(7).any(|w| w == b"key.asc"));
    fx.backup_ok();
    let dest = fx.path("restored");
    fx.restore_with(&fx.public_key, &dest, &[])
        .expect(EXIT_ERROR)
        .stderr_has("public certificate");
    assert!(!dest.exists(), "nothing restored");
}

#[test]
fn another_key_pairs_secret_key_cannot_restore() {
    let fx = Fixture::new();
    small_tree(&fx.src);
    fx.backup_ok();
    let (_, other) = keygen(&fx.home, &fx.path("other-keys"), "other");
    let dest = fx.path("restored");
    fx.restore_with(&other, &dest, &[])
        .expect(EXIT_ERROR)
        .stderr_has("none of the given secret keys")
        .stderr_has("can decrypt");
    assert!(
        !dest.exists() || relative_paths(&dest).is_empty(),
        "nothing restored"
    );
}

/// A source encrypted to two recipients (an admin key and an offline recovery key, one
/// of them RSA): either secret key alone restores the run.
#[test]
fn any_one_of_several_recipients_can_restore() {
    let fx = Fixture::new();
    let recovery_dir = fx.path("recovery");
    let mut cmd = coffer(&fx.home);
    cmd.args([
        "keygen",
        "--no-passphrase",
        "--rsa",
        "3072",
        "--name",
        "recovery",
        "--out",
    ])
    .arg(&recovery_dir);
    run(cmd).ok();
    let recovery_pub = recovery_dir.join("recovery.pub.asc");
    fx.write_config(&Settings {
        recipients: vec![fx.public_key.clone(), recovery_pub],
        ..Settings::default()
    });
    small_tree(&fx.src);
    fx.backup_ok();
    for key in [fx.secret_key.clone(), recovery_dir.join("recovery.key.asc")] {
        let dest = fx.path(&format!(
            "with-{}",
            key.file_stem().unwrap().to_string_lossy()
        ));
        fx.restore_with(&key, &dest, &[]).ok();
        assert_same_tree(&fx.src, &dest);
    }
}
