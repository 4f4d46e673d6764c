//! One target of a run: what the reader feeds for it (a packer and an uploader of its
//! own, its dedup domain and digest cache in the local index, its presence checks), and
//! its commit. A run to several targets reads its source once and hands every lane the
//! same chunks (read.rs); each lane deduplicates, encrypts (its own pack sessions),
//! uploads, fails or commits on its own, and a lane that fails drops out while the
//! others go on.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::budget::Budget;
use super::reuse::{self, Presence};
use super::{commit, listing, packer, BackupOptions, BackupStats, READ_AHEAD_BYTES};
use crate::cancel::Cancel;
use crate::config::{Config, SourceConfig, TargetConfig};
use crate::crypto::{Encryptor, SigningKey};
use crate::error::Result;
use crate::format::refs::Chain;
use crate::ids::RunId;
use crate::index::Index;
use crate::progress::Progress;
use crate::store::{Creator, Store};

/// What every lane of a run shares.
pub(super) struct Shared<'a> {
    pub config: &'a Config,
    pub source: &'a SourceConfig,
    pub opts: &'a BackupOptions,
    pub progress: &'a dyn Progress,
    pub encryptor: &'a Encryptor,
    /// The recipients' fingerprints, joined: the dedup domain's key set.
    pub keyset: &'a str,
    pub start_time: DateTime<Utc>,
    /// Where the metafiles are written before they are uploaded.
    pub tmp_dir: &'a Path,
    /// With several targets: what one target's packer compressed, for the others.
    pub memo: Option<Arc<super::compress::Memo>>,
}

/// One target's share of a run.
pub(super) struct Lane<'a> {
    pub target: &'a TargetConfig,
    pub creator: Creator,
    /// The reader's lookups for this target (with its dedup horizon), then the commit.
    pub index: Index,
    pub target_id: i64,
    pub presence: Arc<Presence>,
    pub run: RunId,
    pub chain: Chain,
    /// Whether this host never committed a run of the source to this target before.
    pub first_run: bool,
    /// This lane's read-ahead: a slow target holds the reader back by this much at most
    /// before the reader waits for it.
    pub budget: Arc<Budget>,
    /// This lane's flag: a stage of it that fails stops this lane, not the others.
    pub cancel: Cancel,
}

impl<'a> Lane<'a> {
    /// Opens `target` for a run: its store, dedup domain, run id, place in the chain and
    /// metafile, and the packer that will fill them.
    pub fn open(
        s: &Shared<'_>,
        target: &'a TargetConfig,
        signing_key: Option<&SigningKey>,
    ) -> Result<(Lane<'a>, packer::Packer)> {
        let (config, source) = (s.config, s.source);
        let store = Store::open(target, target.create)?;
        let creator = store.creator(target);
        // Only a backup that may read the target gets a handle that can.
        let reader = target.can_read.then(|| store.reader());
        let mut index = Index::open(&config.state_dir)?;
        let target_id = reuse::domain(
            &mut index,
            &creator,
            reader.as_ref(),
            target,
            s.keyset,
            &config.host,
            s.opts.forget_cache,
            s.progress,
        )?;
        let presence = Arc::new(Presence::new(reader));
        let run = commit::next_run_id(&index, target_id, &source.name, s.start_time)?;
        let head = index.chain_head(&target.url, &config.host, &source.name)?;
        let first_run = head.is_none();
        let chain = match head {
            Some((head, link)) => head.next(link),
            None => Chain::start()?,
        };
        // gc's safety rule: reuse only what gc cannot have deleted (see index.rs).
        let horizon = s.start_time.timestamp() - target.dedup_max_age.as_secs() as i64;
        index.set_dedup_horizon(horizon);
        let mut writer_index = Index::open(&config.state_dir)?;
        writer_index.set_dedup_horizon(horizon);
        let mut header = super::header(config, source, &run, s.start_time, s.keyset.to_string());
        header.fields.push(("chain".into(), chain.field()));
        if let Some(k) = signing_key {
            header
                .fields
                .push(("signer".into(), k.fingerprint().to_string()));
        }
        let listing = listing::Listing::create(s.tmp_dir, s.encryptor, signing_key, &header)?;
        let cancel = s.opts.cancel.child();
        let budget = Arc::new(Budget::new(READ_AHEAD_BYTES, cancel.clone()));
        let packer = packer::Packer::new(packer::PackerSetup {
            encryptor: s.encryptor.clone(),
            index: writer_index,
            target_id,
            source: source.name.clone(),
            listing,
            pack_size: target.pack_size,
            budget: budget.clone(),
            cancel: cancel.clone(),
            racy_after_ns: s.start_time.timestamp_nanos_opt().unwrap_or(i64::MAX) - 2_000_000_000,
            presence: presence.clone(),
            memo: s.memo.clone(),
        })?;
        let lane = Lane {
            target,
            creator,
            index,
            target_id,
            presence,
            run,
            chain,
            first_run,
            budget,
            cancel,
        };
        Ok((lane, packer))
    }

    /// Settles this lane's stages and, if they all succeeded, commits the run.
    /// `stats` holds what the reader counted for every lane, completed here.
    pub fn finish(
        mut self,
        s: &Shared<'_>,
        signing_key: Option<&mut SigningKey>,
        stages: Stages,
        mut stats: BackupStats,
    ) -> Result<BackupStats> {
        let (output, uploaded) =
            super::settle(stages.read, stages.packed, stages.uploaded, &self.cancel)?;
        super::report_missing(&self.presence, self.target, &mut stats, s.progress);
        stats.target = self.target.name.clone();
        stats.chunks = output.chunks;
        stats.chunks_new = output.chunks_new;
        if s.source.input.path().is_none() {
            // A stream has no earlier stamp to compare: it is new in the first run this
            // host made of the source, else it changed if it stored anything new.
            stats.files_new = 0;
            stats.files_changed = 0;
            stats.files_unchanged = 0;
            if self.first_run {
                stats.files_new = stats.files;
            } else if output.chunks_new == 0 {
                stats.files_unchanged = stats.files;
            } else {
                stats.files_changed = stats.files;
            }
        }
        stats.bytes_new = output.bytes_new;
        stats.bytes_stored = uploaded.bytes;
        stats.packs_stored = uploaded.created;
        commit::Commit {
            creator: &self.creator,
            index: &mut self.index,
            target_id: self.target_id,
            target: self.target,
            host: &s.config.host,
            source: &s.source.name,
            run: &self.run,
            start_time: s.start_time,
            chain: &self.chain,
            signing_key,
        }
        .finish(output.metafile, &mut stats)?;
        stats.run = self.run.to_string();
        stats.requests = self.creator.requests();
        Ok(stats)
    }
}

/// How a lane's stages ended: the reader (shared by all lanes), its packer, its uploader.
pub(super) struct Stages {
    pub read: Result<()>,
    pub packed: Result<packer::PackerOutput>,
    pub uploaded: Result<super::upload::Uploaded>,
}
