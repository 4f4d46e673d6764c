//! Object Lock retention of stored objects (S3): read, and extended where it ends too
//! soon. What `prune` asks of the target for [`crate::lock`].

use super::{runtime, s3api, Admin};
use crate::error::{Error, Result};
use object_store::path::Path as StorePath;

/// One object whose Object Lock must last at least until `need`: when it ends sooner,
/// it is set to `set` (never shortened).
#[derive(Debug, Clone)]
pub(crate) struct LockWork {
    pub path: StorePath,
    pub need: chrono::DateTime<chrono::Utc>,
    pub set: chrono::DateTime<chrono::Utc>,
}

/// What checking one object's lock found (or did).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockOutcome {
    /// Locked long enough already.
    Enough,
    /// Extended (in a dry run: would be).
    Extended,
    /// No such object.
    Missing,
}

/// Objects whose locks are checked at once: each is a HEAD, and maybe a PUT.
const LOCK_CONCURRENCY: usize = 16;

impl Admin {
    /// Checks the Object Lock of each object of `work` (a HEAD each, 16 at a time) and
    /// extends those that end too soon (PutObjectRetention; not in a dry run), in mode
    /// COMPLIANCE if `compliance` or the object's lock already is. `each` gets every
    /// object's outcome, on this thread.
    ///
    /// # Errors
    ///
    /// Not an S3 target, or the credential may not read or set retention (what is wrong
    /// with one object is its outcome).
    pub(crate) fn extend_locks(
        &self,
        work: Vec<LockWork>,
        compliance: bool,
        dry_run: bool,
        mut each: impl FnMut(&LockWork, Result<LockOutcome>),
    ) -> Result<()> {
        use futures::StreamExt;
        let core = &self.reader.core;
        let fail = |message: String| Error::Store {
            target: core.name.clone(),
            message,
            source: None,
        };
        let Some(api) = core.s3api.as_deref() else {
            return Err(fail(
                "Object Lock is an S3 feature: this target has none".into(),
            ));
        };
        let one = |w: LockWork| async move {
            let outcome = async {
                let current = match api.retention(w.path.as_ref()).await {
                    Ok(c) => c,
                    Err(s3api::ApiError::NotFound(_)) => return Ok(LockOutcome::Missing),
                    Err(e) => return Err(e),
                };
                if current.is_some_and(|c| c.until >= w.need) {
                    return Ok(LockOutcome::Enough);
                }
                if !dry_run {
                    let retention = s3api::Retention {
                        compliance: compliance || current.is_some_and(|c| c.compliance),
                        until: current.map_or(w.set, |c| c.until.max(w.set)),
                    };
                    api.set_retention(w.path.as_ref(), retention).await?;
                }
                Ok(LockOutcome::Extended)
            }
            .await;
            (w, outcome)
        };
        runtime().block_on(async {
            let mut results = futures::stream::iter(work)
                .map(one)
                .buffer_unordered(LOCK_CONCURRENCY);
            while let Some((w, outcome)) = results.next().await {
                match outcome {
                    Err(s3api::ApiError::Refused(m)) => {
                        return Err(fail(format!(
                            "{}: {m}: the credential may not read or extend Object Lock \
                             retention; the admin's needs s3:GetObjectRetention and \
                             s3:PutObjectRetention on the prefix (`coffer init --policies` \
                             writes them)",
                            w.path
                        )))
                    }
                    Err(e) => each(&w, Err(fail(format!("{}: {e}", w.path)))),
                    Ok(o) => each(&w, Ok(o)),
                }
            }
            Ok(())
        })
    }
}
