//! Compression before encryption: zstd (level 1) where it saves at least a tenth, tried
//! cheaply so that incompressible data (media, archives, encrypted files) costs little.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;

use crate::format::metafile::Encoding;
use crate::ids::ChunkHash;

/// Chunks up to this size are compressed whole to see whether it pays; larger ones are
/// first tried on a sample of this size.
const COMPRESSION_SAMPLE: usize = 64 << 10;

/// The chunk as it is encrypted: compressed with zstd when that saves at least a tenth,
/// else as it is.
pub(crate) fn encode(data: &[u8]) -> (std::borrow::Cow<'_, [u8]>, Encoding) {
    encode_with(data, None, &ChunkHash([0; 32]))
}

/// [`encode`], through `memo` when the run has several targets: a chunk another target's
/// packer already compressed is taken from there, and one compressed here is left there
/// for the others.
pub(super) fn encode_with<'d>(
    data: &'d [u8],
    memo: Option<&Memo>,
    hash: &ChunkHash,
) -> (std::borrow::Cow<'d, [u8]>, Encoding) {
    let Some(memo) = memo else {
        return encode_once(data);
    };
    if let Some(found) = memo.take(hash) {
        return match found {
            Some(payload) => (std::borrow::Cow::Owned(payload.to_vec()), Encoding::Zstd),
            None => (std::borrow::Cow::Borrowed(data), Encoding::Raw),
        };
    }
    let (payload, encoding) = encode_once(data);
    let kept = match encoding {
        Encoding::Zstd => Some(Bytes::copy_from_slice(&payload)),
        _ => None,
    };
    memo.put(*hash, kept);
    (payload, encoding)
}

/// What one target's packer compressed, for the other targets of the run (each
/// compresses the same new chunks, and zstd is the costliest stage of a backup of a
/// source tree). Entries are kept until as many other packers took them as there are,
/// and at most [`Memo::LIMIT`] bytes of them, the oldest dropped first: the packers go
/// at the reader's pace, so what one made is soon needed by the others or never.
pub(super) struct Memo {
    others: usize,
    inner: Mutex<MemoInner>,
}

#[derive(Default)]
struct MemoInner {
    /// Hash -> (the compressed bytes, or `None`: stored raw), packers yet to take it.
    entries: HashMap<ChunkHash, (Option<Bytes>, usize)>,
    order: VecDeque<ChunkHash>,
    bytes: usize,
}

impl Memo {
    /// Bytes of compressed chunks kept at most.
    const LIMIT: usize = 32 << 20;

    /// A memo for a run whose chunks `others` more packers will compress.
    pub(super) fn new(others: usize) -> Self {
        Memo {
            others,
            inner: Mutex::new(MemoInner::default()),
        }
    }

    fn take(&self, hash: &ChunkHash) -> Option<Option<Bytes>> {
        let mut m = self.inner.lock().ok()?;
        let (payload, left) = m.entries.get_mut(hash)?;
        let payload = payload.clone();
        *left -= 1;
        if *left == 0 {
            m.entries.remove(hash);
            m.bytes -= payload.as_ref().map_or(0, Bytes::len);
        }
        Some(payload)
    }

    fn put(&self, hash: ChunkHash, payload: Option<Bytes>) {
        let Ok(mut m) = self.inner.lock() else { return };
        if self.others == 0 || m.entries.contains_key(&hash) {
            return;
        }
        m.bytes += payload.as_ref().map_or(0, Bytes::len);
        m.entries.insert(hash, (payload, self.others));
        m.order.push_back(hash);
        while m.bytes > Self::LIMIT || m.order.len() > 1 << 16 {
            let Some(old) = m.order.pop_front() else {
                break;
            };
            if let Some((p, _)) = m.entries.remove(&old) {
                m.bytes -= p.as_ref().map_or(0, Bytes::len);
            }
        }
        // Entries taken by every other packer are gone from `entries`; their keys leave
        // `order` as they come up.
        while let Some(front) = m.order.front() {
            if m.entries.contains_key(front) {
                break;
            }
            m.order.pop_front();
        }
    }
}

/// Compresses `data` where it pays (the work [`encode`] does).
fn encode_once(data: &[u8]) -> (std::borrow::Cow<'_, [u8]>, Encoding) {
    use std::borrow::Cow;
    if data.len() < 256 {
        return (Cow::Borrowed(data), Encoding::Raw);
    }
    match compress_if_it_pays(data) {
        Some(c) => (Cow::Owned(c), Encoding::Zstd),
        None => (Cow::Borrowed(data), Encoding::Raw),
    }
}

/// zstd level 1 in one pass, given up as soon as it cannot save a tenth: the first
/// [`COMPRESSION_SAMPLE`] bytes are compressed and flushed first, and if they did not
/// shrink by a tenth the rest is not tried (so incompressible data costs little); then
/// the output may not grow past nine tenths of the input. Uses this thread's context: a
/// new one per chunk costs more than compressing a small chunk.
fn compress_if_it_pays(data: &[u8]) -> Option<Vec<u8>> {
    use std::cell::RefCell;
    use zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::{ZSTD_e_end, ZSTD_e_flush};
    use zstd::zstd_safe::{CCtx, CParameter, InBuffer, OutBuffer, ResetDirective};
    thread_local! {
        static CONTEXT: RefCell<Option<CCtx<'static>>> = const { RefCell::new(None) };
    }
    let pays = |compressed: usize, original: usize| compressed * 10 <= original * 9;
    CONTEXT.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            let mut cctx = CCtx::try_create()?;
            cctx.set_parameter(CParameter::CompressionLevel(1)).ok()?;
            *cell = Some(cctx);
        }
        let cctx = cell.as_mut()?;
        let mut out = Vec::with_capacity(data.len() * 9 / 10);
        if data.len() <= COMPRESSION_SAMPLE {
            // In one call: no staging through the stream's buffers. It fails when the
            // output does not fit in nine tenths of the input, i.e. when it does not pay.
            let written = cctx.compress2(&mut out, data).ok()?;
            return pays(written, data.len()).then_some(out);
        }
        // A previous chunk may have been given up half way.
        cctx.reset(ResetDirective::SessionOnly).ok()?;
        cctx.set_pledged_src_size(Some(data.len() as u64)).ok()?;
        let mut output = OutBuffer::around(&mut out);
        let sample = COMPRESSION_SAMPLE;
        // Compresses `input` and flushes or ends the frame; `None` once `output` is full.
        let step = |cctx: &mut CCtx, output: &mut OutBuffer<'_, Vec<u8>>, input, end| {
            let mut input = InBuffer::around(input);
            loop {
                let left = cctx.compress_stream2(output, &mut input, end).ok()?;
                if left == 0 && input.pos() == input.src.len() {
                    return Some(());
                }
                if output.pos() == output.capacity() {
                    return None; // it would not pay
                }
            }
        };
        step(cctx, &mut output, &data[..sample], ZSTD_e_flush)?;
        if !pays(output.pos(), sample) {
            return None;
        }
        step(cctx, &mut output, &data[sample..], ZSTD_e_end)?;
        let written = output.pos();
        pays(written, data.len()).then_some(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memo_gives_each_other_packer_what_one_compressed_then_forgets_it() {
        let text = b"compressible text, compressible text. ".repeat(2000);
        let noise = crate::prng::noise(50_000, 9);
        let (ht, hn) = (ChunkHash::of(&text), ChunkHash::of(&noise));
        let memo = Memo::new(2);
        // The first packer compresses; two others take it; a fourth compresses again.
        let (first, e) = encode_with(&text, Some(&memo), &ht);
        assert_eq!(e, Encoding::Zstd);
        for _ in 0..2 {
            assert_eq!(memo.take(&ht), Some(Some(Bytes::copy_from_slice(&first))));
        }
        assert_eq!(memo.take(&ht), None);
        // Raw chunks are remembered as raw, without their bytes.
        let (_, e) = encode_with(&noise, Some(&memo), &hn);
        assert_eq!(e, Encoding::Raw);
        assert_eq!(memo.take(&hn), Some(None));
        let (again, e) = encode_with(&noise, Some(&memo), &hn);
        assert_eq!((&again[..], e), (&noise[..], Encoding::Raw));
        // Bounded: the oldest go first.
        let big = Memo::new(1);
        let chunk = Bytes::from(vec![1u8; 1 << 20]);
        for i in 0..40u8 {
            big.put(ChunkHash([i; 32]), Some(chunk.clone()));
        }
        assert!(big.inner.lock().unwrap().bytes <= Memo::LIMIT);
        assert_eq!(
            big.take(&ChunkHash([0; 32])),
            None,
            "the oldest was dropped"
        );
        assert!(big.take(&ChunkHash([39; 32])).is_some());
        // Nothing is kept without other packers.
        let alone = Memo::new(0);
        alone.put(ht, None);
        assert_eq!(alone.take(&ht), None);
    }

    use crate::prng::noise as random;

    fn round_trips(data: &[u8]) -> Encoding {
        let (out, enc) = encode(data);
        match enc {
            Encoding::Zstd => {
                assert!(out.len() * 10 <= data.len() * 9, "saves a tenth");
                assert_eq!(zstd::bulk::decompress(&out, data.len()).unwrap(), data);
            }
            Encoding::Raw => assert_eq!(&out[..], data),
        }
        enc
    }

    #[test]
    fn compresses_only_when_it_pays() {
        let text = b"backup server config value ".repeat(10_000);
        assert!(text.len() > COMPRESSION_SAMPLE);
        assert_eq!(round_trips(&text), Encoding::Zstd);
        assert!(encode(&text).0.len() < text.len() / 10);
        assert_eq!(
            round_trips(&text[..1000]),
            Encoding::Zstd,
            "below the sample"
        );
        assert_eq!(round_trips(&random(200_000, 1)), Encoding::Raw);
        assert_eq!(round_trips(&random(1000, 2)), Encoding::Raw);
        assert_eq!(round_trips(b"tiny"), Encoding::Raw);

        // Incompressible at first: given up after the sample, whatever follows.
        let mut mixed = random(COMPRESSION_SAMPLE, 3);
        mixed.extend_from_slice(&text);
        assert_eq!(round_trips(&mixed), Encoding::Raw);
        // Compressible at first but not overall: given up when the output is too long.
        let mut mixed = text[..COMPRESSION_SAMPLE].to_vec();
        mixed.extend(random(COMPRESSION_SAMPLE * 20, 4));
        assert_eq!(round_trips(&mixed), Encoding::Raw);
        // Compressible overall although the end is not.
        let mut mixed = text.clone();
        mixed.extend(random(COMPRESSION_SAMPLE, 5));
        assert_eq!(round_trips(&mixed), Encoding::Zstd);
        // The thread's context works again after a chunk was given up half way, in one
        // call and streamed.
        let mut mixed = text[..COMPRESSION_SAMPLE].to_vec();
        mixed.extend(random(COMPRESSION_SAMPLE * 20, 6));
        assert_eq!(round_trips(&mixed), Encoding::Raw);
        assert_eq!(round_trips(&text[..5000]), Encoding::Zstd);
        assert_eq!(round_trips(&mixed), Encoding::Raw);
        assert_eq!(round_trips(&text), Encoding::Zstd);
        assert_eq!(round_trips(&random(COMPRESSION_SAMPLE, 7)), Encoding::Raw);
    }
}
