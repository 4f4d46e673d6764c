//! Reading a sparse file without reading its holes.
//!
//! A file whose allocated blocks cover less than its size has holes. The file system
//! says where they are (`lseek` with `SEEK_DATA` and `SEEK_HOLE`), and a hole reads as
//! zeros, so the reader hands on zeros for it without a read: a 10 GiB VM image that
//! holds 1 GiB of data costs 1 GiB of disk reads. The zeros still go through chunking and
//! hashing (the format records content, not holes), where they cost CPU only and
//! deduplicate to one stored chunk; restore writes runs of zero blocks back as holes.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::unistd::{lseek, Whence};

/// A reader of a regular file from its start, producing holes as zeros.
pub(crate) struct SparseReader<'a> {
    file: &'a File,
    pos: u64,
    /// The current region: data up to `data_end`, or a hole up to `hole_end`.
    data_end: u64,
    hole_end: u64,
    /// Whether the file system answers `SEEK_DATA` (if not, everything is read).
    seekable: bool,
    /// Zeros produced for holes, not read.
    pub zeros: u64,
}

impl<'a> SparseReader<'a> {
    /// Reads `file`; with `sparse` false it is read as a whole (no `lseek` at all).
    pub(crate) fn new(file: &'a File, sparse: bool) -> Self {
        SparseReader {
            file,
            pos: 0,
            data_end: if sparse { 0 } else { u64::MAX },
            hole_end: 0,
            seekable: sparse,
            zeros: 0,
        }
    }

    /// Finds the region at `pos`: where the next data starts and where it ends.
    fn locate(&mut self) -> io::Result<bool> {
        let at = i64::try_from(self.pos).map_err(|_| io::Error::other("file too large"))?;
        match lseek(self.file, at, Whence::SeekData) {
            Ok(data) if data as u64 > self.pos => {
                self.hole_end = data as u64;
            }
            Ok(_) => {
                let hole = lseek(self.file, at, Whence::SeekHole).map_err(io::Error::from)?;
                self.data_end = (hole as u64).max(self.pos + 1);
            }
            // No data at or after `pos`: a hole up to the end of the file.
            Err(Errno::ENXIO) => {
                let size = self.file.metadata()?.len();
                if self.pos >= size {
                    return Ok(false);
                }
                self.hole_end = size;
            }
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) => {
                self.seekable = false;
                self.data_end = u64::MAX;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(true)
    }
}

impl Read for SparseReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos < self.hole_end {
                let n = buf.len().min((self.hole_end - self.pos) as usize);
                buf[..n].fill(0);
                self.pos += n as u64;
                self.zeros += n as u64;
                return Ok(n);
            }
            if self.pos < self.data_end {
                let n = buf
                    .len()
                    .min((self.data_end - self.pos).min(usize::MAX as u64) as usize);
                let got = self.file.read_at(&mut buf[..n], self.pos)?;
                if got == 0 && self.seekable {
                    // The data region ended early (the file changed): look again.
                    self.data_end = self.pos;
                    continue;
                }
                self.pos += got as u64;
                return Ok(got);
            }
            if !self.locate()? {
                return Ok(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn holes_read_as_zeros_without_reading_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let mut f = File::create(&path).unwrap();
        f.seek(SeekFrom::Start(8 << 20)).unwrap();
        f.write_all(b"middle").unwrap();
        f.set_len(32 << 20).unwrap();
        drop(f);
        let f = File::open(&path).unwrap();
        let mut r = SparseReader::new(&f, true);
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all.len(), 32 << 20);
        assert_eq!(&all[8 << 20..(8 << 20) + 6], b"middle");
        assert!(all[..8 << 20].iter().all(|&b| b == 0));
        // On a file system with holes, almost everything came from them.
        if f.metadata()
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .unwrap()
            < 1 << 20
        {
            assert!(r.zeros >= (32 << 20) - (1 << 20), "{}", r.zeros);
        }
        let mut plain = Vec::new();
        SparseReader::new(&f, false)
            .read_to_end(&mut plain)
            .unwrap();
        assert!(plain == all);
    }
}
