//! Stream sources: what a command writes to its standard output, or standard input,
//! stored as the one file of a run. The bytes go through the same chunker, dedup, packer
//! and uploads as a tree's files (read.rs), so a nightly dump that changed in a few
//! places stores a few new chunks.
//!
//! A stream has no size to check and no second read: what makes it whole is how it
//! ended. A command must exit with status 0; one that exits otherwise, or is killed,
//! fails the run, which then commits nothing, and its standard error is shown. Standard
//! input must reach its end without an error (whether the program that writes into the
//! pipe succeeded, the shell knows and coffer does not: a `command` source is the way to
//! have it checked).
//!
//! Reads wait in `poll` with a short timeout, so a stop (SIGINT, SIGTERM, another
//! stage failing) is seen while a slow producer writes nothing; the command is then
//! killed. A command runs without a shell, with standard input from `/dev/null`.

use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cancel::Cancel;
use crate::config::Input;
use crate::error::{Error, Result};

/// How much of a command's standard error is kept to show.
const STDERR_KEPT: usize = 16 << 10;

/// How often a read waiting for data looks at the cancellation flag.
const POLL_MS: u16 = 200;

/// How long to wait, once the command has exited, for whatever still holds its
/// standard error (a process it left behind) to let go.
const STDERR_GRACE: Duration = Duration::from_secs(2);

/// A stream being read, and what produces it.
pub(super) struct Stream {
    reader: Polled,
    producer: Producer,
}

enum Producer {
    Stdin,
    Command {
        child: Child,
        program: String,
        stderr: Arc<Mutex<Captured>>,
        stderr_done: std::sync::mpsc::Receiver<()>,
    },
}

/// The start of a command's standard error, and how much there was.
#[derive(Default)]
struct Captured {
    kept: Vec<u8>,
    total: u64,
}

impl Stream {
    /// Opens the stream of a command or stdin source: starts the command, or takes
    /// standard input (refused if it is a terminal: the data must be piped in).
    pub fn open(input: &Input) -> Result<Stream> {
        match input {
            Input::Tree(_) => Err(Error::Internal("a tree is not a stream".into())),
            Input::Stdin { .. } => {
                let stdin = io::stdin();
                if io::IsTerminal::is_terminal(&stdin) {
                    return Err(Error::Usage(
                        "standard input is a terminal: pipe the data in, e.g. `mysqldump \
                         shop | coffer backup SOURCE --stdin`, or give the source a command \
                         = [...] so that coffer runs it and checks how it ended"
                            .into(),
                    ));
                }
                let fd = stdin
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| Error::io("standard input", e))?;
                Ok(Stream {
                    reader: Polled::new(fd),
                    producer: Producer::Stdin,
                })
            }
            Input::Command { argv, .. } => {
                let program = argv[0].clone();
                let mut child = Command::new(&program)
                    .args(&argv[1..])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| {
                        Error::Input(format!(
                            "cannot run command {}: {e}; no run was committed",
                            quoted(&program)
                        ))
                    })?;
                let stdout = OwnedFd::from(child.stdout.take().expect("piped above"));
                let mut pipe = child.stderr.take().expect("piped above");
                let stderr = Arc::new(Mutex::new(Captured::default()));
                let (done_tx, stderr_done) = std::sync::mpsc::channel();
                let kept = stderr.clone();
                // Drains standard error so the command never blocks on it; ends when the
                // pipe closes.
                std::thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    while let Ok(n @ 1..) = pipe.read(&mut buf) {
                        if let Ok(mut c) = kept.lock() {
                            let room = STDERR_KEPT.saturating_sub(c.kept.len()).min(n);
                            c.kept.extend_from_slice(&buf[..room]);
                            c.total += n as u64;
                        }
                    }
                    let _ = done_tx.send(());
                });
                Ok(Stream {
                    reader: Polled::new(stdout),
                    producer: Producer::Command {
                        child,
                        program,
                        stderr,
                        stderr_done,
                    },
                })
            }
        }
    }

    /// The stream's bytes, read in a way that sees `cancel`.
    pub fn reader<'a>(&'a mut self, cancel: &'a Cancel) -> impl Read + 'a {
        Watched {
            inner: &mut self.reader,
            cancel,
        }
    }

    /// What produced the stream, for messages: "standard input", "command `mysqldump`".
    pub fn what(&self) -> String {
        match &self.producer {
            Producer::Stdin => "standard input".into(),
            Producer::Command { program, .. } => format!("command {}", quoted(program)),
        }
    }

    /// After the stream ended: whether what produced it succeeded. A command must have
    /// exited with status 0. Its standard error, if it wrote any, is returned to show.
    pub fn finish(mut self) -> Result<Option<String>> {
        let Producer::Command {
            child,
            program,
            stderr,
            stderr_done,
        } = &mut self.producer
        else {
            return Ok(None);
        };
        let status = child
            .wait()
            .map_err(|e| Error::Input(format!("command {}: {e}", quoted(program))))?;
        let _ = stderr_done.recv_timeout(STDERR_GRACE);
        let said = stderr.lock().ok().and_then(|c| shown(&c));
        if status.success() {
            return Ok(said);
        }
        let how = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!(
                "was killed by signal {sig}{}",
                nix::sys::signal::Signal::try_from(sig)
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            ),
            (None, None) => format!("ended with {status}"),
        };
        Err(Error::Input(format!(
            "command {} {how}: its output is not a good backup, and no run was committed{}",
            quoted(program),
            match said {
                Some(text) => format!(". Its standard error:\n{text}"),
                None => " (it wrote nothing to standard error)".into(),
            }
        )))
    }
}

impl Drop for Stream {
    /// A stream dropped before it was finished (the run stopped): the command is killed
    /// and reaped, never left running.
    fn drop(&mut self) {
        if let Producer::Command { child, .. } = &mut self.producer {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A program's name for a message. Only the program: arguments may hold a password.
fn quoted(program: &str) -> String {
    format!("`{}`", crate::text::escape(program.as_bytes()))
}

/// A command's standard error as lines for a message, control characters escaped.
fn shown(c: &Captured) -> Option<String> {
    if c.total == 0 {
        return None;
    }
    let mut lines: Vec<String> = c
        .kept
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| format!("  | {}", crate::text::escape(l)))
        .collect();
    if c.total > c.kept.len() as u64 {
        lines.push(format!(
            "  | ... ({} more bytes not shown)",
            c.total - c.kept.len() as u64
        ));
    }
    Some(lines.join("\n"))
}

/// A pipe or file read without a user-space buffer, waiting in `poll` so that a wait
/// can be given up.
struct Polled {
    file: std::fs::File,
}

impl Polled {
    fn new(fd: OwnedFd) -> Self {
        Polled {
            file: std::fs::File::from(fd),
        }
    }
}

/// A [`Polled`] stream that stops with an error once `cancel` is set.
struct Watched<'a> {
    inner: &'a mut Polled,
    cancel: &'a Cancel,
}

impl Read for Watched<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        loop {
            if self.cancel.is_cancelled() {
                return Err(io::Error::other("the backup was stopped"));
            }
            let mut fds = [PollFd::new(self.inner.file.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(POLL_MS)) {
                Ok(0) => continue,
                Ok(_) => return self.inner.file.read(buf),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}
