//! The state directory (`state_dir`): what may be in it and who may write it, and the
//! lock a backup holds on it. Whoever can write the local index can make later backups
//! record wrong chunk pointers for unchanged files, so the directory and its files must
//! be the running user's alone (docs/FORMAT.md, the threat model's hostile local user).

use std::path::Path;

use crate::error::{Error, Result};

/// The exclusive lock on a state directory, held by a backup; released when dropped.
#[derive(Debug)]
pub struct StateLock(#[allow(dead_code)] std::fs::File);

impl StateLock {
    /// Takes the state directory's lock, waiting for the backup that holds it (after
    /// calling `on_wait`). Backups hold it: the set of protected objects must not change
    /// while one runs.
    pub fn take(state_dir: &Path, on_wait: impl FnOnce(&Path)) -> Result<StateLock> {
        prepare_state_dir(state_dir)?;
        let path = state_dir.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(StateLock(file)),
            Err(std::fs::TryLockError::WouldBlock) => {
                on_wait(&path);
                file.lock().map_err(|e| Error::io(&path, e))?;
                Ok(StateLock(file))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }
}

/// The files of a state directory that must be the running user's alone.
const STATE_FILES: [&str; 5] = [
    "index.sqlite",
    "index.sqlite-wal",
    "index.sqlite-shm",
    "lock",
    "tmp",
];

/// Creates the state directory (mode 0700) or checks the one there: it and the files in
/// it must belong to the effective user and be writable by nobody else, since whoever
/// can write the index can make later backups record wrong chunk pointers for unchanged
/// files. Then it is made 0700 (the index lists paths and plaintext hashes).
pub(crate) fn prepare_state_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(dir, e))?;
    let me = nix::unistd::geteuid().as_raw();
    let refuse = |path: &Path, what: String| {
        Error::Usage(format!(
            "state directory {}: {} {what}; another user could have changed the local index. \
         Check it, then fix it with `chown -R {me} {dir} && chmod -R go-w {dir}`, or move \
         it away (it is only a cache: the next backup rebuilds it, uploading again what it \
         cannot prove is stored)",
            dir.display(),
            path.display(),
            dir = dir.display(),
        ))
    };
    let check = |path: &Path, m: &std::fs::Metadata| -> Result<()> {
        if m.uid() != me {
            return Err(refuse(
                path,
                format!("belongs to uid {}, not to uid {me} running coffer", m.uid()),
            ));
        }
        if m.mode() & 0o022 != 0 {
            return Err(refuse(
                path,
                format!("is writable by others (mode {:o})", m.mode() & 0o7777),
            ));
        }
        Ok(())
    };
    let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
    check(dir, &meta)?;
    for name in STATE_FILES {
        let path = dir.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(refuse(&path, "is a symbolic link".into()))
            }
            Ok(m) => check(&path, &m)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Index;

    #[test]
    fn a_state_dir_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        Index::open(&state).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&state), 0o700);
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = Index::open(&state).err().unwrap().to_string();
        assert!(
            err.contains("writable by others") && err.contains("chmod"),
            "{err}"
        );
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        let index = state.join("index.sqlite");
        std::fs::set_permissions(&index, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = StateLock::take(&state, |_| {}).unwrap_err().to_string();
        assert!(err.contains("index.sqlite"), "{err}");
        std::fs::set_permissions(&index, std::fs::Permissions::from_mode(0o644)).unwrap();
        Index::open(&state).unwrap();
        assert_eq!(mode(&state), 0o700, "made private again");
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&index, Some(4321), None).unwrap();
            let err = Index::open(&state).err().unwrap().to_string();
            assert!(err.contains("belongs to uid 4321"), "{err}");
        }
    }

    #[test]
    fn one_backup_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let held = StateLock::take(dir.path(), |_| panic!("free")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let path = dir.path().to_path_buf();
        let waiter = std::thread::spawn(move || {
            let _lock = StateLock::take(&path, |_| tx.send(()).unwrap()).unwrap();
        });
        rx.recv().unwrap(); // the second one waits ...
        drop(held);
        waiter.join().unwrap(); // ... and gets the lock once the first lets go
    }
}
