//! Stage 2: content-defined chunking (FastCDC, 2020 variant) of a file as it is read.
//!
//! The file is read in large pieces (most files in one) and its chunks are slices of those
//! pieces ([`Bytes`]), handed on without copying: FastCDC's own `StreamCDC` moves the
//! rest of its buffer to the front after every chunk and copies each chunk out, which
//! cost a tenth of a backup of large files in `memmove`.
//!
//! The cuts are exactly those FastCDC makes on the whole input at once: a cut found
//! before the end of a piece is the one a longer input would give (the search only moves
//! forward, and it looks at no byte past the cut), so only a cut at the very end of a
//! piece is put off until more of the file is read. The tests check this against
//! `FastCDC::new` on the whole input.

use std::io::{self, Read};

use bytes::Bytes;

use crate::config::Chunking;

/// Bytes read at a time (files up to this size are read in one piece).
pub(crate) const PIECE_SIZE: usize = 4 << 20;

/// Cuts what a reader yields into chunks, as [`fastcdc::v2020::FastCDC`] cuts it whole.
pub(crate) struct Chunker<R> {
    reader: R,
    chunking: Chunking,
    piece_size: usize,
    /// How many more bytes the file is expected to hold (its size when it was listed),
    /// so that a small file is read into a buffer of its size.
    expected: u64,
    piece: Bytes,
    /// Where the next chunk starts in `piece`.
    pos: usize,
    eof: bool,
}

impl<R: Read> Chunker<R> {
    /// A chunker for a file expected to hold `expected` bytes (it may turn out shorter or
    /// longer).
    pub(crate) fn new(reader: R, chunking: Chunking, expected: u64) -> Self {
        // A piece holds a largest chunk and more, so that most cuts are found in one.
        let piece_size = PIECE_SIZE.max(chunking.max as usize + 1);
        Self::with_piece_size(reader, chunking, expected, piece_size)
    }

    fn with_piece_size(reader: R, chunking: Chunking, expected: u64, piece_size: usize) -> Self {
        Chunker {
            reader,
            chunking,
            piece_size: piece_size.max(1),
            expected,
            piece: Bytes::new(),
            pos: 0,
            eof: false,
        }
    }

    /// The reader it reads from.
    pub(crate) fn reader(&self) -> &R {
        &self.reader
    }

    /// Whether the last chunk returned was the input's last (a file's only chunk, say).
    pub(crate) fn finished(&self) -> bool {
        self.eof && self.pos == self.piece.len()
    }

    /// Reads the next piece: what is left of this one, then up to `piece_size` more bytes
    /// (no more than one past what the file is expected to hold, to see it end).
    fn refill(&mut self) -> io::Result<()> {
        let rest = &self.piece[self.pos..];
        let want = self.expected.saturating_add(1).min(self.piece_size as u64) as usize;
        let mut buf = Vec::with_capacity(rest.len() + want);
        buf.extend_from_slice(rest);
        let got = (&mut self.reader).take(want as u64).read_to_end(&mut buf)?;
        self.eof = got < want;
        self.expected = self.expected.saturating_sub(got as u64);
        if !self.eof && self.expected == 0 {
            // Longer than it was: read on in whole pieces.
            self.expected = u64::MAX;
        }
        self.piece = Bytes::from(buf);
        self.pos = 0;
        Ok(())
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = io::Result<Bytes>;

    fn next(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            let rest = &self.piece[self.pos..];
            if !rest.is_empty() {
                let Chunking { min, avg, max } = self.chunking;
                let length =
                    fastcdc::v2020::FastCDC::new(rest, min as usize, avg as usize, max as usize)
                        .next()
                        .map_or(rest.len(), |c| c.length);
                // A cut at the end of the piece may only be where the piece ends.
                if length < rest.len() || self.eof {
                    let chunk = self.piece.slice(self.pos..self.pos + length);
                    self.pos += length;
                    return Some(Ok(chunk));
                }
            } else if self.eof {
                return None;
            }
            if let Err(e) = self.refill() {
                self.eof = true;
                self.piece = Bytes::new();
                self.pos = 0;
                return Some(Err(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SMALL: Chunking = Chunking {
        min: 64,
        avg: 256,
        max: 1024,
    };

    fn whole(data: &[u8], c: Chunking) -> Vec<usize> {
        fastcdc::v2020::FastCDC::new(data, c.min as usize, c.avg as usize, c.max as usize)
            .map(|c| c.length)
            .collect()
    }

    /// Hands out at most `step` bytes per read, like a pipe or a slow file system.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn streamed(data: &[u8], c: Chunking, expected: u64, piece: usize, step: usize) -> Vec<Bytes> {
        Chunker::with_piece_size(Trickle(data, step), c, expected, piece)
            .collect::<io::Result<_>>()
            .unwrap()
    }

    use crate::prng::noise as random;

    proptest! {
        #[test]
        fn cuts_as_fastcdc_cuts_the_whole_input(
            len in 0usize..20_000,
            seed in any::<u64>(),
            piece in 1usize..5000,
            step in 1usize..3000,
            expected in prop_oneof![Just(None), Just(Some(0u64)), (0u64..30_000).prop_map(Some)],
        ) {
            let data = random(len, seed);
            let expected = expected.unwrap_or(len as u64);
            let chunks = streamed(&data, SMALL, expected, piece, step);
            let lengths: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
            prop_assert_eq!(&lengths, &whole(&data, SMALL));
            prop_assert_eq!(chunks.concat(), data);
        }
    }

    #[test]
    fn default_settings_on_a_file_larger_than_a_piece() {
        let c = crate::config::DEFAULT_CHUNKING;
        let data = random(3 * (8 << 20) + 12_345, 7);
        for expected in [data.len() as u64, 0, 1 << 20] {
            let chunks = streamed(&data, c, expected, PIECE_SIZE, 1 << 20);
            let lengths: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
            assert_eq!(lengths, whole(&data, c), "expected size {expected}");
            assert_eq!(chunks.concat(), data);
        }
    }

    #[test]
    fn knows_when_the_last_chunk_was_returned() {
        let data = random(5000, 3);
        let mut chunker = Chunker::with_piece_size(Trickle(&data, 700), SMALL, 5000, 1000);
        let mut flags = Vec::new();
        while let Some(chunk) = chunker.next() {
            chunk.unwrap();
            flags.push(chunker.finished());
        }
        assert!(flags.len() > 2);
        assert_eq!(flags.iter().filter(|f| **f).count(), 1);
        assert!(flags.last().unwrap());
        let mut one = Chunker::with_piece_size(Trickle(&data[..50], 7), SMALL, 50, 1000);
        assert_eq!(one.next().unwrap().unwrap().len(), 50);
        assert!(one.finished());
    }

    #[test]
    fn empty_and_tiny_inputs() {
        assert!(streamed(b"", SMALL, 0, 100, 10).is_empty());
        assert!(streamed(b"", SMALL, 50, 100, 10).is_empty());
        assert_eq!(
            streamed(b"abc", SMALL, 3, 100, 1),
            vec![Bytes::from_static(b"abc")]
        );
    }

    #[test]
    fn a_read_error_is_returned_once() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("disk on fire"));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(1);
                self.0 -= n;
                Ok(n)
            }
        }
        let mut chunker = Chunker::with_piece_size(Failing(5000), SMALL, 1 << 20, 4096);
        let results: Vec<_> = chunker.by_ref().collect();
        let errors = results.iter().filter(|r| r.is_err()).count();
        assert_eq!(errors, 1);
        assert!(results.last().unwrap().is_err());
        assert!(chunker.next().is_none());
    }
}
