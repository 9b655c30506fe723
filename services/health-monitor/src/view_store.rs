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
use faultline_protocol::membership::{MembershipEvent, MembershipView};
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

/// Writes `view` unless the stored one has a newer token; returns the view
/// it replaced, if there was one.
pub async fn write(
    store: &kv::Store,
    view: &MembershipView,
) -> Result<Option<MembershipView>, WriteError> {
    let body: bytes::Bytes = serde_json::to_vec(view)
        .map_err(|e| WriteError::Store(e.to_string()))?
        .into();
    // A few rounds: a conflict means someone wrote between our read and our
    // write, and the next read tells us who.
    for _ in 0..5 {
        let stored = read(store).await?;
        let written = match &stored {
            Some((stored, _)) if stored.token > view.token => {
                return Err(WriteError::Fenced {
                    stored: stored.token,
                    ours: view.token,
                });
            }
            Some((_, revision)) => store
                .update(VIEW_KEY, body.clone(), *revision)
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
            Ok(_) => return Ok(stored.map(|(replaced, _)| replaced)),
            Err((true, _)) => continue,
            Err((false, error)) => return Err(WriteError::Store(error)),
        }
    }
    Err(WriteError::Store(
        "the view kept changing during the write".to_owned(),
    ))
}

/// The changes from `replaced` to `written` that `announced` does not
/// tell of, as events of `written`'s leader and term: a term that ended
/// before its view was stored took its events with it, and the next
/// term's first write (the whole view) must still announce what changed.
pub fn unannounced(
    replaced: &MembershipView,
    written: &MembershipView,
    announced: &[MembershipEvent],
    at_ms: u64,
) -> Vec<MembershipEvent> {
    written
        .members
        .iter()
        .filter_map(|(id, record)| {
            let from = replaced.members.get(id).map(|old| old.state);
            let told = announced
                .iter()
                .any(|e| e.id == *id && e.to == record.state);
            (from != Some(record.state) && !told).then(|| MembershipEvent {
                id: id.clone(),
                role: record.role,
                from,
                to: record.state,
                reason: record.reason.clone(),
                leader: written.leader.clone(),
                token: written.token,
                at_ms,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_protocol::cluster::Role;
    use faultline_protocol::membership::{MemberRecord, State};

    fn view(token: u64, members: &[(&str, State)]) -> MembershipView {
        MembershipView {
            token,
            leader: format!("monitor-{token}"),
            members: members
                .iter()
                .map(|(id, state)| {
                    let record = MemberRecord {
                        role: Role::Worker,
                        state: *state,
                        reason: format!("{state:?} for a reason"),
                        incarnation: 1,
                        share_permille: 1000,
                    };
                    ((*id).to_owned(), record)
                })
                .collect(),
        }
    }

    #[test]
    fn a_new_term_announces_what_changed_since_the_stored_view() {
        let stored = view(1, &[("w1", State::Up), ("w2", State::Up)]);
        let written = view(
            2,
            &[("w1", State::Up), ("w2", State::Down), ("w3", State::Up)],
        );
        let events = unannounced(&stored, &written, &[], 7);
        let told: Vec<(&str, Option<State>, State)> = events
            .iter()
            .map(|e| (e.id.as_str(), e.from, e.to))
            .collect();
        assert_eq!(
            told,
            [
                ("w2", Some(State::Up), State::Down),
                ("w3", None, State::Up)
            ]
        );
        assert!(
            events
                .iter()
                .all(|e| e.token == 2 && e.leader == "monitor-2" && e.at_ms == 7)
        );
        assert_eq!(events[0].reason, "Down for a reason");
    }

    #[test]
    fn a_change_already_announced_is_not_told_twice() {
        let stored = view(1, &[("w2", State::Up)]);
        let written = view(1, &[("w2", State::Down)]);
        let announced = unannounced(&stored, &written, &[], 1);
        assert_eq!(unannounced(&stored, &written, &announced, 2), vec![]);
    }
}
