//! Fenced writes of the membership view.
//!
//! A write reads the stored view, refuses if it was written under a newer
//! fencing token, and replaces it with compare-and-set on the revision it
//! read. So a leader that lost the lease without knowing it (paused, cut
//! off) is stopped at the store: either it sees its successor's token, or
//! its compare-and-set fails because the successor wrote in between, and it
//! reads again and sees the token. Nothing it writes after its successor's
//! first write is accepted.

use async_nats::jetstream::kv;
use faultline_protocol::membership::MembershipView;
use faultline_protocol::subjects::VIEW_KEY;

/// Why a view was not written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The stored view was written under a newer token: we are stale.
    #[error("fenced: the stored view has token {stored}, ours is {ours}")]
    Fenced {
        /// The stored view's token.
        stored: u64,
        /// Ours.
        ours: u64,
    },
    /// The store could not be reached or kept changing under us.
    #[error("cannot write the membership view: {0}")]
    Store(String),
}

/// The stored view and its revision, if there is one.
pub async fn read(store: &kv::Store) -> Result<Option<(MembershipView, u64)>, WriteError> {
    let entry = store
        .entry(VIEW_KEY)
        .await
        .map_err(|e| WriteError::Store(e.to_string()))?;
    Ok(entry
        .filter(|e| e.operation == kv::Operation::Put)
        .and_then(|e| {
            let view = serde_json::from_slice(&e.value).ok()?;
            Some((view, e.revision))
        }))
}

/// Writes `view` unless the stored one has a newer token; returns the new
/// revision.
pub async fn write(store: &kv::Store, view: &MembershipView) -> Result<u64, WriteError> {
    let body: bytes::Bytes = serde_json::to_vec(view)
        .map_err(|e| WriteError::Store(e.to_string()))?
        .into();
    // A few rounds: a conflict means someone wrote between our read and our
    // write, and the next read tells us who.
    for _ in 0..5 {
        let written = match read(store).await? {
            Some((stored, _)) if stored.token > view.token => {
                return Err(WriteError::Fenced {
                    stored: stored.token,
                    ours: view.token,
                });
            }
            Some((_, revision)) => store
                .update(VIEW_KEY, body.clone(), revision)
                .await
                .map_err(|e| {
                    (
                        e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                        e.to_string(),
                    )
                }),
            None => store.create(VIEW_KEY, body.clone()).await.map_err(|e| {
                (
                    e.kind() == kv::CreateErrorKind::AlreadyExists,
                    e.to_string(),
                )
            }),
        };
        match written {
            Ok(revision) => return Ok(revision),
            Err((true, _)) => continue,
            Err((false, error)) => return Err(WriteError::Store(error)),
        }
    }
    Err(WriteError::Store(
        "the view kept changing during the write".to_owned(),
    ))
}
