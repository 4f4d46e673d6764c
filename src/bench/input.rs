//! What `bench` measures with: generated data, or a file or directory read into memory.

use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::{InputInfo, GENERATED_FILE, MAX_INPUT, MIN_GENERATED};
use crate::error::{Error, Result};
use crate::prng::Prng;

/// The input in memory: one buffer, and where each file is in it.
pub(super) struct Loaded {
    pub data: Vec<u8>,
    /// Each file's name (relative, for generated input) and bytes.
    pub files: Vec<(String, Range<usize>)>,
    pub info: InputInfo,
    /// A directory holding exactly the input's files, if there is one already.
    pub tree: Option<PathBuf>,
}

/// 512.0 KiB, 256.0 MiB, 1.0 GiB.
pub(super) fn mib(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.1} KiB", b as f64 / 1024.0),
    }
}

fn n_files(n: usize) -> String {
    if n == 1 {
        "1 file".into()
    } else {
        format!("{n} files")
    }
}

/// Half pseudo-random, half text-like, in files of up to [`GENERATED_FILE`] bytes that
/// alternate between the two kinds (`0000-random.bin`, `0000-text.txt`, `0001-...`).
pub(super) fn generate(size: u64) -> Result<Loaded> {
    if !(MIN_GENERATED..=MAX_INPUT).contains(&size) {
        return Err(Error::Usage(format!(
            "--size {}: generated input must be between {} and {}",
            mib(size),
            mib(MIN_GENERATED),
            mib(MAX_INPUT)
        )));
    }
    let random_total = size / 2;
    let text_total = size - random_total;
    let file = GENERATED_FILE.min(text_total);
    let mut data = Vec::with_capacity(size as usize);
    let mut files = Vec::new();
    let mut rng = Prng::new(1);
    let (mut random_left, mut text_left) = (random_total, text_total);
    let mut i = 0;
    while random_left > 0 || text_left > 0 {
        for (kind, left) in [
            ("random.bin", &mut random_left),
            ("text.txt", &mut text_left),
        ] {
            let n = file.min(*left) as usize;
            if n == 0 {
                continue;
            }
            let start = data.len();
            if kind == "random.bin" {
                rng.fill(&mut data, n);
            } else {
                text(&mut rng, &mut data, n);
            }
            files.push((format!("{i:04}-{kind}"), start..data.len()));
            *left -= n as u64;
        }
        i += 1;
    }
    let info = InputInfo {
        description: format!(
            "generated: {} ({} pseudo-random, {} text-like) in {} of up to {}",
            mib(size),
            mib(random_total),
            mib(text_total),
            n_files(files.len()),
            mib(file)
        ),
        bytes: size,
        files: files.len() as u64,
        generated: true,
    };
    Ok(Loaded {
        data,
        files,
        info,
        tree: None,
    })
}

/// `size` pseudo-random bytes in files of up to [`GENERATED_FILE`] bytes
/// (`0000-random.bin`, ...): nothing in them compresses or repeats.
pub(super) fn incompressible(size: u64) -> Loaded {
    let mut data = Vec::with_capacity(size as usize);
    let mut files = Vec::new();
    let mut rng = Prng::new(2);
    while (data.len() as u64) < size {
        let start = data.len();
        rng.fill(&mut data, GENERATED_FILE.min(size - start as u64) as usize);
        files.push((format!("{:04}-random.bin", files.len()), start..data.len()));
    }
    let info = InputInfo {
        description: format!(
            "generated: {} pseudo-random in {}",
            mib(size),
            n_files(files.len())
        ),
        bytes: size,
        files: files.len() as u64,
        generated: true,
    };
    Loaded {
        data,
        files,
        info,
        tree: None,
    }
}

/// Appends `n` bytes of log-like lines: words from a small vocabulary and numbers,
/// never repeating a line, so zstd compresses it (about 3:1) but no chunk repeats.
fn text(rng: &mut Prng, out: &mut Vec<u8>, n: usize) {
    const WORDS: [&str; 32] = [
        "backup",
        "server",
        "request",
        "user",
        "alice",
        "bob",
        "GET",
        "POST",
        "status",
        "ok",
        "failed",
        "retry",
        "connection",
        "timeout",
        "cache",
        "index",
        "chunk",
        "the",
        "of",
        "to",
        "and",
        "in",
        "is",
        "for",
        "on",
        "with",
        "/var/log/syslog",
        "/home/alice/notes.txt",
        "session",
        "opened",
        "closed",
        "bytes",
    ];
    const HOSTS: [&str; 4] = ["web1", "web2", "db1", "mail"];
    let end = out.len() + n;
    let mut seconds = 1_700_000_000u64;
    let mut line = String::with_capacity(160);
    while out.len() < end {
        use std::fmt::Write;
        let r = rng.next_u64();
        seconds += r % 3;
        line.clear();
        let _ = write!(
            line,
            "{seconds} {} app[{}]:",
            HOSTS[(r >> 8) as usize % HOSTS.len()],
            1000 + (r >> 16) % 9000
        );
        for k in 0..(4 + (r >> 32) % 8) {
            let w = WORDS[(r >> (36 + 2 * k)) as usize % WORDS.len()];
            line.push(' ');
            line.push_str(w);
        }
        let _ = writeln!(
            line,
            " id={:x} took={}ms",
            rng.next_u64() >> 24,
            (r >> 56) * 3
        );
        let take = (end - out.len()).min(line.len());
        out.extend_from_slice(&line.as_bytes()[..take]);
    }
}

/// Reads a file, or every regular file below a directory (walk order, as backup).
pub(super) fn load(path: &Path) -> Result<Loaded> {
    let path = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
    let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
    let too_large = |bytes: u64| {
        Error::Usage(format!(
            "{}: {} of files or more, larger than the {} bench reads into memory; \
             name a smaller file or directory, or measure generated data (--size)",
            path.display(),
            mib(bytes),
            mib(MAX_INPUT)
        ))
    };
    let mut data = Vec::new();
    let mut files = Vec::new();
    let mut read = |abs: &Path, rel: String, expected: u64, data: &mut Vec<u8>| {
        if data.len() as u64 + expected > MAX_INPUT {
            return Err(too_large(data.len() as u64 + expected));
        }
        let start = data.len();
        std::fs::File::open(abs)
            .and_then(|f| f.take(MAX_INPUT + 1 - start as u64).read_to_end(data))
            .map_err(|e| Error::io(abs, e))?;
        if data.len() as u64 > MAX_INPUT {
            return Err(too_large(data.len() as u64));
        }
        files.push((rel, start..data.len()));
        Ok(())
    };
    let tree = if meta.is_dir() {
        let rules = crate::source::IgnoreRules::new(&[])?;
        for item in crate::source::walk(&path, false, rules)? {
            let item = item.map_err(|s| s.error)?;
            if item.stat.is_file() {
                let rel = String::from_utf8_lossy(&item.rel).into_owned();
                read(&item.abs, rel, item.stat.size, &mut data)?;
            }
        }
        Some(path.clone())
    } else if meta.is_file() {
        let name = path
            .file_name()
            .map_or_else(|| "input".to_string(), |n| n.to_string_lossy().into_owned());
        read(&path, name, meta.len(), &mut data)?;
        None // backup walks directories: the pipeline gets a copy in one
    } else {
        return Err(Error::Usage(format!(
            "{} is neither a regular file nor a directory",
            path.display()
        )));
    };
    if data.is_empty() {
        return Err(Error::Usage(format!(
            "{}: no data to measure with (no regular file, or only empty ones)",
            path.display()
        )));
    }
    let info = InputInfo {
        description: format!(
            "{}: {} in {}",
            path.display(),
            mib(data.len() as u64),
            n_files(files.len())
        ),
        bytes: data.len() as u64,
        files: files.len() as u64,
        generated: false,
    };
    Ok(Loaded {
        data,
        files,
        info,
        tree,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_input_is_deterministic_and_half_compressible() {
        let a = generate(3 << 20).unwrap();
        let b = generate(3 << 20).unwrap();
        assert_eq!(a.data, b.data);
        assert_eq!(a.data.len(), 3 << 20);
        let names: Vec<&str> = a.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["0000-random.bin", "0000-text.txt"]);
        let random = &a.data[a.files[0].1.clone()];
        let text = &a.data[a.files[1].1.clone()];
        assert_eq!(random.len() + text.len(), 3 << 20);
        let ratio = |d: &[u8]| d.len() as f64 / zstd::bulk::compress(d, 3).unwrap().len() as f64;
        assert!(ratio(random) < 1.01, "{}", ratio(random));
        assert!(ratio(text) > 2.0, "{}", ratio(text));
        assert!(generate(1000).is_err());
    }

    #[test]
    fn loads_a_directory_in_walk_order() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("b")).unwrap();
        std::fs::write(d.path().join("b/x"), b"second").unwrap();
        std::fs::write(d.path().join("a"), b"first").unwrap();
        std::os::unix::fs::symlink("a", d.path().join("c")).unwrap();
        let l = load(d.path()).unwrap();
        assert_eq!(l.data, b"firstsecond");
        assert_eq!(l.info.files, 2);
        assert!(l.tree.is_some());
        let f = load(&d.path().join("a")).unwrap();
        assert_eq!(f.files.len(), 1);
        assert!(f.tree.is_none());
        std::fs::write(d.path().join("a"), b"").unwrap();
        std::fs::remove_dir_all(d.path().join("b")).unwrap();
        assert!(load(d.path()).is_err(), "no data");
    }
}
