//! Compression before encryption: zstd (level 1) where it saves at least a tenth, tried
//! cheaply so that incompressible data (media, archives, encrypted files) costs little.

use crate::format::metafile::Encoding;

/// Chunks up to this size are compressed whole to see whether it pays; larger ones are
/// first tried on a sample of this size.
const COMPRESSION_SAMPLE: usize = 64 << 10;

/// The chunk as it is encrypted: compressed with zstd when that saves at least a tenth,
/// else as it is.
pub(crate) fn encode(data: &[u8]) -> (std::borrow::Cow<'_, [u8]>, Encoding) {
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
