//! Packs: where each chunk of a run is, how a pack's chunks are compressed and encrypted
//! (on the thread pool, in batches of consecutive slots), and how a full pack is sealed.
//!
//! A chunk new in this run gets a slot in the open pack the moment it is read; its
//! message (offset and length in the pack) is known only once the pack is sealed, after
//! every batch came back from the pool. Until then its [`Location`] is `Open`: the pack's
//! number in this run and the slot. Sealing a pack turns those into `Stored` locations
//! ([`SealedPack::place`]), wherever they are held (the dedup map, the file being read,
//! entries waiting to be written to the metafile).

use std::sync::Arc;

use bytes::Bytes;

use super::budget::Budget;
use crate::cancel::Cancel;
use crate::crypto::{Encryptor, PackSession};
use crate::error::{Error, Result};
use crate::format::metafile::{ChunkRef, Encoding};
use crate::ids::{ChunkHash, ObjectKey};

/// Where a stored chunk's message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stored {
    pub object: ObjectKey,
    pub offset: u64,
    pub length: u64,
    pub encoding: Encoding,
}

/// Where a chunk of this run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Location {
    /// In pack number `pack` of this run, not sealed yet, at slot `slot`.
    Open { pack: u64, slot: usize },
    /// In a sealed pack (this run's or an earlier one's).
    Stored(Stored),
}

/// A chunk of the run: what it is and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Placed {
    pub hash: ChunkHash,
    pub size: u64,
    pub at: Location,
}

impl Placed {
    /// A chunk the index says is stored.
    pub fn stored(c: &ChunkRef) -> Placed {
        Placed {
            hash: c.hash,
            size: c.size,
            at: Location::Stored(Stored {
                object: c.object,
                offset: c.offset,
                length: c.length,
                encoding: c.encoding,
            }),
        }
    }

    /// Its metafile record, once its pack is sealed.
    pub fn chunk_ref(&self) -> Option<ChunkRef> {
        match self.at {
            Location::Stored(s) => Some(ChunkRef {
                object: s.object,
                offset: s.offset,
                length: s.length,
                size: self.size,
                hash: self.hash,
                encoding: s.encoding,
            }),
            Location::Open { .. } => None,
        }
    }

    /// Whether it waits for a pack to be sealed.
    pub fn is_open(&self) -> bool {
        matches!(self.at, Location::Open { .. })
    }
}

/// A batch of chunk messages, compressed and encrypted by the pool: consecutive slots of
/// one pack, laid end to end.
pub(super) struct SealedBatch {
    pub bytes: Vec<u8>,
    /// Each message's length and encoding, in slot order.
    pub messages: Vec<(u64, Encoding)>,
}

/// A batch back from the pool: its pack's number, its batch number, the result.
pub(super) type Returned = (u64, usize, Result<SealedBatch>);

/// The pack being filled (or closed, waiting for its last batches).
pub(super) struct OpenPack {
    pub seq: u64,
    pub session: Arc<PackSession>,
    /// Slots (new chunks) so far.
    pub slots: usize,
    /// Each batch sent to the pool, once the pool has returned it.
    pub batches: Vec<Option<SealedBatch>>,
    /// Batches that have not come back yet.
    pub outstanding: usize,
    pub plain_bytes: u64,
    /// Its chunks, in slot order.
    pub chunks: Vec<Placed>,
}

impl OpenPack {
    /// Pack number `seq` of the run, with a fresh session key (the public-key work).
    pub fn new(seq: u64, encryptor: &Encryptor) -> Result<OpenPack> {
        Ok(OpenPack {
            seq,
            session: Arc::new(encryptor.session()?),
            slots: 0,
            batches: Vec::new(),
            outstanding: 0,
            plain_bytes: 0,
            chunks: Vec::new(),
        })
    }

    /// Gives a new chunk the next slot; returns its location.
    pub fn add(&mut self, hash: ChunkHash, size: u64) -> Placed {
        let placed = Placed {
            hash,
            size,
            at: Location::Open {
                pack: self.seq,
                slot: self.slots,
            },
        };
        self.slots += 1;
        self.plain_bytes += size;
        self.chunks.push(placed);
        placed
    }

    /// Takes in a batch the pool returned.
    pub fn returned(&mut self, number: usize, batch: SealedBatch) -> Result<()> {
        let slot = self
            .batches
            .get_mut(number)
            .ok_or_else(|| Error::Internal(format!("no batch {number} in pack {}", self.seq)))?;
        *slot = Some(batch);
        self.outstanding -= 1;
        Ok(())
    }

    /// Concatenates the batches (all returned) into the pack: its name is the BLAKE3 of
    /// its bytes, and each slot's message gets its offset.
    pub fn seal(self, sealed_at: i64) -> Result<SealedPack> {
        let mut hasher = blake3::Hasher::new();
        let mut places = Vec::with_capacity(self.slots);
        let mut parts = Vec::with_capacity(self.batches.len());
        let mut offset = 0u64;
        for batch in self.batches {
            let batch =
                batch.ok_or_else(|| Error::Internal(format!("pack {} sealed early", self.seq)))?;
            for (length, encoding) in batch.messages {
                places.push((offset, length, encoding));
                offset += length;
            }
            hasher.update(&batch.bytes);
            parts.push(Bytes::from(batch.bytes));
        }
        if places.len() != self.slots {
            return Err(Error::Internal(format!(
                "pack {} has {} messages for {} slots",
                self.seq,
                places.len(),
                self.slots
            )));
        }
        let mut sealed = SealedPack {
            seq: self.seq,
            key: ObjectKey::from(hasher.finalize()),
            places,
            parts,
            chunks: Vec::new(),
            sealed_at,
        };
        let chunks: Vec<ChunkRef> = self
            .chunks
            .into_iter()
            .filter_map(|mut c| {
                sealed.place(&mut c);
                c.chunk_ref()
            })
            .collect();
        sealed.chunks = chunks;
        Ok(sealed)
    }
}

/// A sealed pack: its name, bytes (its messages in slot order, uploaded without
/// concatenating them) and chunks.
pub(super) struct SealedPack {
    pub seq: u64,
    pub key: ObjectKey,
    /// Each slot's message: offset, length, encoding.
    places: Vec<(u64, u64, Encoding)>,
    pub parts: Vec<Bytes>,
    pub chunks: Vec<ChunkRef>,
    /// When it was sealed (unix seconds): before its upload began, so never later than
    /// the object's creation on the target; recorded as the chunks' `stored_at`.
    pub sealed_at: i64,
}

impl SealedPack {
    /// Resolves `c` if it lies in this pack (a slot of pack `seq`); other locations are
    /// left as they are.
    pub fn place(&self, c: &mut Placed) {
        if let Location::Open { pack, slot } = c.at {
            if pack == self.seq {
                if let Some(&(offset, length, encoding)) = self.places.get(slot) {
                    c.at = Location::Stored(Stored {
                        object: self.key,
                        offset,
                        length,
                        encoding,
                    });
                }
            }
        }
    }

    /// The pack's size in bytes.
    pub fn len(&self) -> u64 {
        self.parts.iter().map(|p| p.len() as u64).sum()
    }
}

/// Compresses and encrypts a batch of chunks, one message each, end to end into one
/// buffer of exactly their size; then gives their bytes back to the read-ahead budget.
/// Skipped (an error) once the run is cancelled.
pub(super) fn seal_batch(
    session: &PackSession,
    batch: Vec<(ChunkHash, Bytes)>,
    bytes: usize,
    budget: &Budget,
    cancel: &Cancel,
    memo: Option<&super::compress::Memo>,
) -> Result<SealedBatch> {
    let result = (|| {
        cancel.check()?;
        let encoded: Vec<_> = batch
            .iter()
            .map(|(hash, data)| super::compress::encode_with(data, memo, hash))
            .collect();
        let size = encoded
            .iter()
            .map(|(p, _)| session.message_len(p.len()))
            .sum();
        let mut out = Vec::with_capacity(size);
        let mut messages = Vec::with_capacity(batch.len());
        for (payload, encoding) in &encoded {
            let start = out.len();
            session.encrypt_into(payload, &mut out)?;
            messages.push(((out.len() - start) as u64, *encoding));
        }
        Ok(SealedBatch {
            bytes: out,
            messages,
        })
    })();
    drop(batch);
    budget.release(bytes as u64);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encryptor() -> Encryptor {
        let key =
            crate::crypto::generate_key("t", crate::crypto::KeyAlgorithm::Cv25519, None).unwrap();
        let certs = crate::crypto::keys::parse_certs_for_test(&key.public_armored);
        Encryptor::from_certs(&certs).unwrap()
    }

    #[test]
    fn sealing_places_every_slot_at_its_message_and_nothing_else() {
        let enc = encryptor();
        let budget = Budget::new(1 << 20, Cancel::new());
        let mut pack = OpenPack::new(7, &enc).unwrap();
        let data: Vec<Bytes> = (0..5u8)
            .map(|i| Bytes::from(vec![i; 100 + i as usize * 1000]))
            .collect();
        let placed: Vec<Placed> = data
            .iter()
            .map(|d| pack.add(ChunkHash::of(d), d.len() as u64))
            .collect();
        // Two batches: slots 0-1 and 2-4, returned in the other order.
        pack.batches = vec![None, None];
        pack.outstanding = 2;
        let hashed: Vec<(ChunkHash, Bytes)> =
            data.iter().map(|d| (ChunkHash::of(d), d.clone())).collect();
        let first = seal_batch(
            &pack.session,
            hashed[..2].to_vec(),
            0,
            &budget,
            &Cancel::new(),
            None,
        );
        let second = seal_batch(
            &pack.session,
            hashed[2..].to_vec(),
            0,
            &budget,
            &Cancel::new(),
            None,
        );
        pack.returned(1, second.unwrap()).unwrap();
        pack.returned(0, first.unwrap()).unwrap();
        let sealed = pack.seal(1000).unwrap();
        let bytes: Vec<u8> = sealed.parts.concat();
        assert_eq!(sealed.key, ObjectKey::of(&bytes));
        assert_eq!(sealed.len(), bytes.len() as u64);
        let mut at = 0;
        for (i, mut p) in placed.into_iter().enumerate() {
            sealed.place(&mut p);
            let c = p.chunk_ref().expect("placed");
            assert_eq!((c.object, c.offset), (sealed.key, at), "slot {i}");
            at += c.length;
            assert_eq!(sealed.chunks[i], c);
        }
        assert_eq!(at, bytes.len() as u64, "the messages fill the pack");
        // A chunk of another pack, and one stored before, stay as they are.
        let mut other = Placed {
            hash: ChunkHash::of(b"x"),
            size: 1,
            at: Location::Open { pack: 8, slot: 0 },
        };
        sealed.place(&mut other);
        assert!(other.is_open());
        let old = ChunkRef {
            object: ObjectKey::of(b"old"),
            offset: 5,
            length: 6,
            size: 1,
            hash: ChunkHash::of(b"y"),
            encoding: Encoding::Raw,
        };
        let mut stored = Placed::stored(&old);
        sealed.place(&mut stored);
        assert_eq!(stored.chunk_ref(), Some(old));
    }

    #[test]
    fn a_pack_with_a_missing_batch_is_not_sealed() {
        let enc = encryptor();
        let mut pack = OpenPack::new(0, &enc).unwrap();
        pack.add(ChunkHash::of(b"a"), 1);
        pack.batches = vec![None];
        assert!(matches!(pack.seal(0), Err(Error::Internal(_))));
    }
}
