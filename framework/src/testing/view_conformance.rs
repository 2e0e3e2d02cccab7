//! The conformance suite every [`ViewStore`] implementation must pass:
//! each of its parts ([`Leases`](crate::Leases),
//! [`Checkpoints`](crate::Checkpoints), [`Documents`](crate::Documents),
//! [`Versions`](crate::Versions)) and how they agree on one subscriber's
//! checkpoint.
//!
//! Each function takes a fresh, empty view store and panics on a broken
//! rule. [`view_store_conformance_tests!`](crate::view_store_conformance_tests)
//! turns the whole suite into `#[tokio::test]`s for one implementation.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::views::store::{ActiveView, DeadLetter, DocChange, StoredDoc, SubscriberState};
use crate::{Position, ViewCommit, ViewError, ViewId, ViewStore};

fn vid(name: &str, version: u32) -> ViewId {
    ViewId::new(name, version).expect("valid view id")
}

fn put(key: &str, n: u64, position: u64) -> DocChange {
    DocChange::Put(doc(key, n, position))
}

fn doc(key: &str, n: u64, position: u64) -> StoredDoc {
    StoredDoc {
        key: key.to_owned(),
        doc: json!({ "key": key, "n": n }),
        position: Position(position),
    }
}

fn del(key: &str) -> DocChange {
    DocChange::Delete {
        key: key.to_owned(),
    }
}

fn letter(subscriber: &str, position: u64, error: &str) -> DeadLetter {
    DeadLetter {
        id: 0,
        subscriber: subscriber.to_owned(),
        position: Position(position),
        event_id: Uuid::new_v4(),
        stream_id: "thing-1".to_owned(),
        event_type: "Broken".to_owned(),
        error: error.to_owned(),
        attempts: 3,
        status: String::new(),
        created_at: chrono::Utc::now(),
    }
}

fn keys(docs: &[StoredDoc]) -> Vec<&str> {
    docs.iter().map(|d| d.key.as_str()).collect()
}

async fn position<V: ViewStore>(views: &V, subscriber: &str) -> Position {
    views.checkpoint(subscriber).await.unwrap().position
}

fn assert_fenced(result: Result<(), ViewError>, subscriber: &str, from: u64) {
    match result {
        Err(ViewError::Fenced {
            subscriber: s,
            expected,
        }) => {
            assert_eq!(s, subscriber);
            assert_eq!(expected, Position(from));
        }
        other => panic!("expected Fenced for {subscriber} from {from}, got {other:?}"),
    }
}

/// A new view and a new subscriber start at position 0, running, empty;
/// preparing again changes nothing; names are validated.
pub async fn prepare_starts_at_zero<V: ViewStore>(views: V) {
    let view = vid("things", 1);
    let cp = views.prepare(&view).await.unwrap();
    assert_eq!(cp.position, Position::START);
    assert_eq!(cp.state, SubscriberState::Running);
    assert_eq!(cp.error, None);
    assert_eq!(views.checkpoint("things_v1").await.unwrap(), cp);
    assert_eq!(views.prepare(&view).await.unwrap(), cp);

    let pm = views.checkpoint("a_process").await.unwrap();
    assert_eq!(pm.position, Position::START);
    assert_eq!(pm.state, SubscriberState::Running);

    let read = views.get(&view, "nothing").await.unwrap();
    assert_eq!((read.doc, read.checkpoint), (None, Position::START));
    assert!(views.list(&view, None, 10).await.unwrap().is_empty());
    assert!(views
        .load(&view, &["nothing".to_owned()])
        .await
        .unwrap()
        .is_empty());

    for bad in ["", "Upper", "9lives", "has-dash", &"x".repeat(41)] {
        assert!(
            matches!(views.checkpoint(bad).await, Err(ViewError::InvalidName(_))),
            "checkpoint({bad:?}) must be refused"
        );
        assert!(ViewId::new(bad, 1).is_err());
    }
}

/// Reads of a view version never prepared answer empty, at position 0,
/// rather than failing.
pub async fn unprepared_view_reads_empty<V: ViewStore>(views: V) {
    let view = vid("never_made", 3);
    assert!(views
        .load(&view, &["a".to_owned()])
        .await
        .unwrap()
        .is_empty());
    let read = views.get(&view, "a").await.unwrap();
    assert_eq!((read.doc, read.checkpoint), (None, Position::START));
    assert!(views.list(&view, None, 10).await.unwrap().is_empty());
}

/// A commit moves the checkpoint and writes the documents together; a
/// commit from any other position is fenced and writes nothing.
pub async fn commit_is_atomic_and_fenced<V: ViewStore>(views: V) {
    let view = vid("things", 1);
    let sub = view.subscriber();
    views.prepare(&view).await.unwrap();
    views
        .commit(
            &sub,
            Some(&view),
            vec![put("a", 1, 1), put("b", 1, 3)],
            Position(0),
            Position(3),
        )
        .await
        .unwrap();
    assert_eq!(position(&views, &sub).await, Position(3));
    let loaded = views
        .load(&view, &["a".to_owned(), "b".to_owned()])
        .await
        .unwrap();
    assert_eq!(loaded.get("a"), Some(&doc("a", 1, 1)));
    assert_eq!(loaded.get("b"), Some(&doc("b", 1, 3)));

    // Replace one, delete another; within one commit the last change to a
    // key wins.
    views
        .commit(
            &sub,
            Some(&view),
            vec![
                put("a", 2, 4),
                del("b"),
                put("c", 1, 4),
                put("a", 3, 5),
                put("d", 1, 5),
                del("d"),
            ],
            Position(3),
            Position(5),
        )
        .await
        .unwrap();
    assert_eq!(position(&views, &sub).await, Position(5));
    let all = views.list(&view, None, 100).await.unwrap();
    assert_eq!(all, vec![doc("a", 3, 5), doc("c", 1, 4)]);

    // From behind, from ahead: fenced, and nothing changes.
    for from in [3, 4, 6] {
        assert_fenced(
            views
                .commit(
                    &sub,
                    Some(&view),
                    vec![put("a", 99, 9), del("c"), put("z", 99, 9)],
                    Position(from),
                    Position(9),
                )
                .await,
            &sub,
            from,
        );
    }
    assert_eq!(position(&views, &sub).await, Position(5));
    assert_eq!(views.list(&view, None, 100).await.unwrap(), all);

    // A commit with no changes only moves the checkpoint.
    views
        .commit(&sub, Some(&view), vec![], Position(5), Position(7))
        .await
        .unwrap();
    assert_eq!(position(&views, &sub).await, Position(7));
    assert_eq!(views.list(&view, None, 100).await.unwrap(), all);

    // A commit that only deletes: fenced from a stale checkpoint, written
    // from the current one.
    assert_fenced(
        views
            .commit(&sub, Some(&view), vec![del("c")], Position(5), Position(8))
            .await,
        &sub,
        5,
    );
    assert_eq!(views.list(&view, None, 100).await.unwrap(), all);
    views
        .commit(&sub, Some(&view), vec![del("c")], Position(7), Position(8))
        .await
        .unwrap();
    assert_eq!(position(&views, &sub).await, Position(8));
    assert_eq!(
        views.list(&view, None, 100).await.unwrap(),
        vec![doc("a", 3, 5)]
    );
    views
        .commit(
            &sub,
            Some(&view),
            vec![put("c", 1, 4)],
            Position(8),
            Position(9),
        )
        .await
        .unwrap();
    assert_eq!(views.list(&view, None, 100).await.unwrap(), all);

    // A subscriber never prepared has no checkpoint to move from: fenced,
    // and nothing is written or recorded.
    assert_fenced(
        views
            .commit("a_process", None, vec![], Position(0), Position(1))
            .await,
        "a_process",
        0,
    );
    assert_fenced(
        views
            .park(letter("a_process", 1, "early"), Position(0), true)
            .await,
        "a_process",
        0,
    );
    assert!(views.dead_letters(None).await.unwrap().is_empty());

    // Subscribers without documents (process managers).
    views.checkpoint("a_process").await.unwrap();
    views
        .commit("a_process", None, vec![], Position(0), Position(4))
        .await
        .unwrap();
    assert_eq!(position(&views, "a_process").await, Position(4));
    assert_fenced(
        views
            .commit("a_process", None, vec![], Position(0), Position(5))
            .await,
        "a_process",
        0,
    );
    // Another subscriber's commits leave this view's checkpoint alone.
    assert_eq!(position(&views, &sub).await, Position(9));
}

/// `advance` moves a checkpoint without documents, with the same fence as a
/// commit: never prepared, moved elsewhere, halted or retired subscribers
/// are fenced and nothing moves; a view's documents stay as they are.
pub async fn advance_moves_only_the_checkpoint<V: ViewStore>(views: V) {
    // Never created: fenced, nothing recorded.
    assert_fenced(
        views.advance("a_process", Position(0), Position(1)).await,
        "a_process",
        0,
    );
    views.checkpoint("a_process").await.unwrap();
    views
        .advance("a_process", Position(0), Position(4))
        .await
        .unwrap();
    assert_eq!(position(&views, "a_process").await, Position(4));
    for from in [0, 3, 5] {
        assert_fenced(
            views
                .advance("a_process", Position(from), Position(9))
                .await,
            "a_process",
            from,
        );
    }
    assert_eq!(position(&views, "a_process").await, Position(4));

    // A commit without a view and an advance are the same move.
    views
        .commit("a_process", None, vec![], Position(4), Position(6))
        .await
        .unwrap();
    views
        .advance("a_process", Position(6), Position(7))
        .await
        .unwrap();
    assert_eq!(position(&views, "a_process").await, Position(7));

    // Halted: fenced until resumed.
    views
        .park(letter("a_process", 8, "boom"), Position(7), false)
        .await
        .unwrap();
    assert_fenced(
        views.advance("a_process", Position(7), Position(8)).await,
        "a_process",
        7,
    );
    views.resume("a_process").await.unwrap();
    views
        .advance("a_process", Position(7), Position(8))
        .await
        .unwrap();
    assert_eq!(position(&views, "a_process").await, Position(8));

    // On a view's subscriber: the checkpoint moves, the documents stay.
    let view = vid("things", 1);
    let sub = view.subscriber();
    views.prepare(&view).await.unwrap();
    views
        .commit(
            &sub,
            Some(&view),
            vec![put("a", 1, 2)],
            Position(0),
            Position(2),
        )
        .await
        .unwrap();
    views.advance(&sub, Position(2), Position(5)).await.unwrap();
    let read = views.get(&view, "a").await.unwrap();
    assert_eq!(read.doc, Some(doc("a", 1, 2)));
    assert_eq!(read.checkpoint, Position(5));
}

/// `get` returns the document and the view's checkpoint as of one read.
pub async fn get_reads_doc_and_checkpoint<V: ViewStore>(views: V) {
    let view = vid("things", 2);
    let sub = view.subscriber();
    views.prepare(&view).await.unwrap();
    views
        .commit(
            &sub,
            Some(&view),
            vec![put("a", 1, 2)],
            Position(0),
            Position(2),
        )
        .await
        .unwrap();
    views
        .commit(
            &sub,
            Some(&view),
            vec![put("b", 1, 6)],
            Position(2),
            Position(8),
        )
        .await
        .unwrap();
    let read = views.get(&view, "a").await.unwrap();
    assert_eq!(read.doc, Some(doc("a", 1, 2)));
    assert_eq!(read.checkpoint, Position(8));
    let read = views.get(&view, "missing").await.unwrap();
    assert_eq!((read.doc, read.checkpoint), (None, Position(8)));
    // Another version of the same view has its own documents and checkpoint.
    let read = views.get(&vid("things", 1), "a").await.unwrap();
    assert_eq!((read.doc, read.checkpoint), (None, Position::START));
}

/// `list` pages through the documents in key order (byte order of the
/// keys) with `after` and `limit`.
pub async fn list_in_key_order<V: ViewStore>(views: V) {
    let view = vid("things", 1);
    let sub = view.subscriber();
    views.prepare(&view).await.unwrap();
    let order = ["B", "a", "a-1", "a1", "a_2", "aa", "b"];
    let shuffled = ["aa", "b", "a_2", "B", "a", "a1", "a-1"];
    views
        .commit(
            &sub,
            Some(&view),
            shuffled.iter().map(|k| put(k, 1, 1)).collect(),
            Position(0),
            Position(1),
        )
        .await
        .unwrap();
    let all = views.list(&view, None, 100).await.unwrap();
    assert_eq!(keys(&all), order);

    // Page through two at a time.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = views.list(&view, after.as_deref(), 2).await.unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        seen.extend(page.into_iter().map(|d| d.key));
    }
    assert_eq!(seen, order);

    assert_eq!(
        keys(&views.list(&view, Some("a1"), 2).await.unwrap()),
        ["a_2", "aa"]
    );
    // `after` need not be a stored key.
    assert_eq!(
        keys(&views.list(&view, Some("a0"), 1).await.unwrap()),
        ["a1"]
    );
    assert!(views.list(&view, Some("b"), 10).await.unwrap().is_empty());
    assert!(views.list(&view, None, 0).await.unwrap().is_empty());
}

/// `load` returns the documents asked for, leaving out missing keys.
pub async fn load_several_keys<V: ViewStore>(views: V) {
    let view = vid("things", 1);
    let sub = view.subscriber();
    views.prepare(&view).await.unwrap();
    views
        .commit(
            &sub,
            Some(&view),
            vec![put("a", 1, 1), put("b", 2, 2), put("c", 3, 3)],
            Position(0),
            Position(3),
        )
        .await
        .unwrap();
    let loaded = views
        .load(
            &view,
            &["c".to_owned(), "missing".to_owned(), "a".to_owned()],
        )
        .await
        .unwrap();
    let expected: HashMap<String, StoredDoc> = [("a", doc("a", 1, 1)), ("c", doc("c", 3, 3))]
        .into_iter()
        .map(|(k, d)| (k.to_owned(), d))
        .collect();
    assert_eq!(loaded, expected);
    assert!(views.load(&view, &[]).await.unwrap().is_empty());
}

/// Parking with `skip` records the letter and moves past the event;
/// without, it halts the subscriber, whose commits are then fenced until
/// it is resumed. A park from the wrong position is fenced and records
/// nothing.
pub async fn park_skip_and_halt<V: ViewStore>(views: V) {
    let view = vid("things", 1);
    let sub = view.subscriber();
    views.prepare(&view).await.unwrap();
    views
        .commit(
            &sub,
            Some(&view),
            vec![put("a", 1, 2)],
            Position(0),
            Position(2),
        )
        .await
        .unwrap();

    views
        .park(letter(&sub, 3, "bad payload"), Position(2), true)
        .await
        .unwrap();
    let cp = views.checkpoint(&sub).await.unwrap();
    assert_eq!(cp.position, Position(3));
    assert_eq!(cp.state, SubscriberState::Running);

    assert_fenced(
        views
            .park(letter(&sub, 5, "wrong position"), Position(2), false)
            .await,
        &sub,
        2,
    );

    let halting = letter(&sub, 4, "still broken");
    views
        .park(halting.clone(), Position(3), false)
        .await
        .unwrap();
    let cp = views.checkpoint(&sub).await.unwrap();
    assert_eq!(cp.position, Position(3));
    assert_eq!(cp.state, SubscriberState::Halted);
    assert_eq!(cp.error.as_deref(), Some("still broken"));
    assert_fenced(
        views
            .commit(
                &sub,
                Some(&view),
                vec![put("a", 9, 4)],
                Position(3),
                Position(4),
            )
            .await,
        &sub,
        3,
    );
    assert_eq!(
        views.get(&view, "a").await.unwrap().doc,
        Some(doc("a", 1, 2))
    );

    // Another subscriber's letter.
    views.checkpoint("a_process").await.unwrap();
    views
        .park(letter("a_process", 1, "elsewhere"), Position(0), true)
        .await
        .unwrap();

    let mine = views.dead_letters(Some(&sub)).await.unwrap();
    let summary: Vec<(u64, &str, &str)> = mine
        .iter()
        .map(|d| (d.position.0, d.status.as_str(), d.error.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![(4, "parked", "still broken"), (3, "skipped", "bad payload")],
        "newest first, without the fenced one"
    );
    let parked = &mine[0];
    assert_eq!(parked.subscriber, sub);
    assert_eq!(parked.event_id, halting.event_id);
    assert_eq!(parked.stream_id, halting.stream_id);
    assert_eq!(parked.event_type, halting.event_type);
    assert_eq!(parked.attempts, halting.attempts);
    assert_ne!(mine[0].id, mine[1].id);
    let all = views.dead_letters(None).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].subscriber, "a_process");
    assert_eq!(all[1..], mine[..]);

    views.resume(&sub).await.unwrap();
    let cp = views.checkpoint(&sub).await.unwrap();
    assert_eq!(
        (cp.position, cp.state, cp.error),
        (Position(3), SubscriberState::Running, None)
    );
    views
        .commit(
            &sub,
            Some(&view),
            vec![put("a", 2, 4)],
            Position(3),
            Position(4),
        )
        .await
        .unwrap();
    assert_eq!(
        views.get(&view, "a").await.unwrap().doc,
        Some(doc("a", 2, 4))
    );
}

/// A parked letter is retried (the subscriber runs again at the same
/// position) or skipped (the checkpoint moves past it), once.
pub async fn resolve_dead_letters<V: ViewStore>(views: V) {
    let sub = "a_process";
    views.checkpoint(sub).await.unwrap();
    views
        .commit(sub, None, vec![], Position(0), Position(3))
        .await
        .unwrap();
    views
        .park(letter(sub, 4, "first"), Position(3), false)
        .await
        .unwrap();
    let id = views.dead_letters(Some(sub)).await.unwrap()[0].id;

    assert!(views.resolve_dead_letter(id, false).await.unwrap());
    let cp = views.checkpoint(sub).await.unwrap();
    assert_eq!(
        (cp.position, cp.state, cp.error),
        (Position(3), SubscriberState::Running, None)
    );
    assert_eq!(
        views.dead_letters(Some(sub)).await.unwrap()[0].status,
        "retried"
    );
    assert!(
        !views.resolve_dead_letter(id, false).await.unwrap(),
        "a letter is resolved once"
    );
    assert!(!views.resolve_dead_letter(id, true).await.unwrap());
    assert_eq!(position(&views, sub).await, Position(3));

    views
        .park(letter(sub, 4, "second"), Position(3), false)
        .await
        .unwrap();
    let id2 = views.dead_letters(Some(sub)).await.unwrap()[0].id;
    assert_ne!(id2, id);
    assert!(views.resolve_dead_letter(id2, true).await.unwrap());
    let cp = views.checkpoint(sub).await.unwrap();
    assert_eq!(
        (cp.position, cp.state, cp.error),
        (Position(4), SubscriberState::Running, None)
    );
    let statuses: Vec<String> = views
        .dead_letters(Some(sub))
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.status)
        .collect();
    assert_eq!(statuses, ["skipped", "retried"]);
    assert!(!views.resolve_dead_letter(id2 + 1_000, false).await.unwrap());
    views
        .commit(sub, None, vec![], Position(4), Position(5))
        .await
        .unwrap();
}

/// `active` only reads: an unknown view is `None`, and asking (or reading
/// its documents) never registers it. `active_version` registers the
/// default once.
pub async fn active_is_read_only<V: ViewStore>(views: V) {
    assert_eq!(views.active("orders").await.unwrap(), None);
    let v1 = vid("orders", 1);
    views.get(&v1, "a").await.unwrap();
    views.list(&v1, None, 10).await.unwrap();
    views.load(&v1, &["a".to_owned()]).await.unwrap();
    assert_eq!(views.active("orders").await.unwrap(), None);
    assert!(matches!(
        views.active("Bad Name").await,
        Err(ViewError::InvalidName(_))
    ));

    assert_eq!(views.active_version("orders", 1).await.unwrap(), 1);
    assert_eq!(
        views.active("orders").await.unwrap(),
        Some(ActiveView {
            version: 1,
            checkpoint: Position::START
        })
    );
    // The default counts only the first time.
    assert_eq!(views.active_version("orders", 4).await.unwrap(), 1);
    views.prepare(&v1).await.unwrap();
    views
        .commit(
            &v1.subscriber(),
            Some(&v1),
            vec![],
            Position(0),
            Position(6),
        )
        .await
        .unwrap();
    assert_eq!(
        views.active("orders").await.unwrap(),
        Some(ActiveView {
            version: 1,
            checkpoint: Position(6)
        })
    );
    assert_eq!(views.active("other").await.unwrap(), None);
}

/// A rebuild gets a new version; switching to it refuses a version behind
/// the active one and changes nothing; a switch retires the old version,
/// whose commits are then fenced; the old version can be dropped.
pub async fn rebuild_and_switch_versions<V: ViewStore>(views: V) {
    let (v1, v2) = (vid("orders", 1), vid("orders", 2));
    assert_eq!(views.active_version("orders", 1).await.unwrap(), 1);
    views.prepare(&v1).await.unwrap();
    views
        .commit(
            &v1.subscriber(),
            Some(&v1),
            vec![put("a", 1, 10)],
            Position(0),
            Position(10),
        )
        .await
        .unwrap();

    assert_eq!(views.start_rebuild("orders", 1).await.unwrap(), 2);
    assert_eq!(
        views.start_rebuild("orders", 1).await.unwrap(),
        2,
        "an interrupted rebuild resumes its version"
    );
    assert_eq!(
        views.active("orders").await.unwrap().map(|a| a.version),
        Some(1)
    );
    views.prepare(&v2).await.unwrap();
    views
        .commit(
            &v2.subscriber(),
            Some(&v2),
            vec![put("a", 2, 4)],
            Position(0),
            Position(4),
        )
        .await
        .unwrap();

    // Behind: refused, nothing changes, the old version keeps committing.
    assert!(!views.switch_version("orders", 2).await.unwrap());
    assert_eq!(
        views.active("orders").await.unwrap(),
        Some(ActiveView {
            version: 1,
            checkpoint: Position(10)
        })
    );
    views
        .commit(
            &v1.subscriber(),
            Some(&v1),
            vec![],
            Position(10),
            Position(12),
        )
        .await
        .unwrap();
    assert_eq!(
        views.checkpoint(&v1.subscriber()).await.unwrap().state,
        SubscriberState::Running
    );

    views
        .commit(
            &v2.subscriber(),
            Some(&v2),
            vec![put("a", 3, 11)],
            Position(4),
            Position(12),
        )
        .await
        .unwrap();
    assert!(views.switch_version("orders", 2).await.unwrap());
    assert_eq!(
        views.active("orders").await.unwrap(),
        Some(ActiveView {
            version: 2,
            checkpoint: Position(12)
        })
    );
    assert_eq!(views.active_version("orders", 1).await.unwrap(), 2);
    assert_eq!(
        views.checkpoint(&v1.subscriber()).await.unwrap().state,
        SubscriberState::Retired
    );
    assert_fenced(
        views
            .commit(
                &v1.subscriber(),
                Some(&v1),
                vec![put("a", 9, 13)],
                Position(12),
                Position(13),
            )
            .await,
        &v1.subscriber(),
        12,
    );
    assert_eq!(
        views.get(&v1, "a").await.unwrap().doc,
        Some(doc("a", 1, 10))
    );
    assert_eq!(
        views.get(&v2, "a").await.unwrap().doc,
        Some(doc("a", 3, 11))
    );
    // The new version goes on.
    views
        .commit(
            &v2.subscriber(),
            Some(&v2),
            vec![],
            Position(12),
            Position(13),
        )
        .await
        .unwrap();

    // The next rebuild goes above every version.
    assert_eq!(views.start_rebuild("orders", 1).await.unwrap(), 3);

    views.drop_version(&v1).await.unwrap();
    assert!(views.list(&v1, None, 10).await.unwrap().is_empty());
    assert_eq!(views.get(&v1, "a").await.unwrap().doc, None);
    assert_eq!(
        views.get(&v2, "a").await.unwrap().doc,
        Some(doc("a", 3, 11))
    );
    // A late commit of the dropped version's projector, from any position
    // (its checkpoint is gone), is fenced and brings nothing back.
    for from in [0, 12] {
        assert_fenced(
            views
                .commit(
                    &v1.subscriber(),
                    Some(&v1),
                    vec![put("z", 1, 14)],
                    Position(from),
                    Position(14),
                )
                .await,
            &v1.subscriber(),
            from,
        );
    }
    assert!(views.list(&v1, None, 10).await.unwrap().is_empty());
    assert_eq!(
        views.active("orders").await.unwrap().map(|a| a.version),
        Some(2)
    );
    // Asking for the checkpoint again starts it afresh.
    assert_eq!(position(&views, &v1.subscriber()).await, Position::START);

    // An unknown view has nothing to switch.
    assert!(!views.switch_version("unknown", 2).await.unwrap());
    assert_eq!(views.active("unknown").await.unwrap(), None);
}

/// `retire_active` freezes the active version at its checkpoint: its
/// commits are fenced from then on, while reads still see it.
pub async fn retire_active_freezes<V: ViewStore>(views: V) {
    let (v1, v2) = (vid("stock", 1), vid("stock", 2));
    views.active_version("stock", 1).await.unwrap();
    views.prepare(&v1).await.unwrap();
    views
        .commit(
            &v1.subscriber(),
            Some(&v1),
            vec![put("s", 1, 7)],
            Position(0),
            Position(7),
        )
        .await
        .unwrap();
    assert_eq!(views.start_rebuild("stock", 1).await.unwrap(), 2);

    assert_eq!(views.retire_active("stock").await.unwrap(), Position(7));
    assert_eq!(
        views.checkpoint(&v1.subscriber()).await.unwrap().state,
        SubscriberState::Retired
    );
    assert_fenced(
        views
            .commit(
                &v1.subscriber(),
                Some(&v1),
                vec![put("s", 2, 8)],
                Position(7),
                Position(8),
            )
            .await,
        &v1.subscriber(),
        7,
    );
    let read = views.get(&v1, "s").await.unwrap();
    assert_eq!(
        (read.doc, read.checkpoint),
        (Some(doc("s", 1, 7)), Position(7))
    );
    assert_eq!(
        views.active("stock").await.unwrap(),
        Some(ActiveView {
            version: 1,
            checkpoint: Position(7)
        })
    );

    views.prepare(&v2).await.unwrap();
    views
        .commit(
            &v2.subscriber(),
            Some(&v2),
            vec![put("s", 1, 7)],
            Position(0),
            Position(7),
        )
        .await
        .unwrap();
    assert!(views.switch_version("stock", 2).await.unwrap());
    assert_eq!(
        views.active("stock").await.unwrap().map(|a| a.version),
        Some(2)
    );

    // A registered view whose projector never committed: retired at 0,
    // and its first commit is fenced too.
    let w1 = vid("fresh", 1);
    views.active_version("fresh", 1).await.unwrap();
    assert_eq!(views.retire_active("fresh").await.unwrap(), Position::START);
    let cp = views.prepare(&w1).await.unwrap();
    assert_eq!(
        (cp.position, cp.state),
        (Position::START, SubscriberState::Retired)
    );
    assert_fenced(
        views
            .commit(
                &w1.subscriber(),
                Some(&w1),
                vec![put("s", 1, 1)],
                Position(0),
                Position(1),
            )
            .await,
        &w1.subscriber(),
        0,
    );
    assert!(views.list(&w1, None, 10).await.unwrap().is_empty());

    // Retiring does not register an unknown view.
    assert_eq!(
        views.retire_active("unknown").await.unwrap(),
        Position::START
    );
    assert_eq!(views.active("unknown").await.unwrap(), None);
}

/// `reset` moves the checkpoint (either way), marks the subscriber running
/// and keeps the documents.
pub async fn reset_moves_checkpoint<V: ViewStore>(views: V) {
    let view = vid("things", 1);
    let sub = view.subscriber();
    views.prepare(&view).await.unwrap();
    views
        .commit(
            &sub,
            Some(&view),
            vec![put("a", 1, 9)],
            Position(0),
            Position(9),
        )
        .await
        .unwrap();
    views
        .park(letter(&sub, 10, "broken"), Position(9), false)
        .await
        .unwrap();

    views.reset(&sub, Position(3)).await.unwrap();
    let cp = views.checkpoint(&sub).await.unwrap();
    assert_eq!(
        (cp.position, cp.state, cp.error),
        (Position(3), SubscriberState::Running, None)
    );
    assert_eq!(
        views.get(&view, "a").await.unwrap().doc,
        Some(doc("a", 1, 9))
    );
    views
        .commit(&sub, Some(&view), vec![], Position(3), Position(4))
        .await
        .unwrap();
    views.reset(&sub, Position(20)).await.unwrap();
    assert_eq!(position(&views, &sub).await, Position(20));

    // A subscriber not seen before starts where it is reset to.
    views.reset("a_process", Position(5)).await.unwrap();
    assert_eq!(position(&views, "a_process").await, Position(5));
    assert!(matches!(
        views.reset("Bad Name", Position(1)).await,
        Err(ViewError::InvalidName(_))
    ));
}

/// A lease is held by one instance at a time; the next one gets it when
/// the first is dropped.
pub async fn leases_are_exclusive<V: ViewStore>(views: V) {
    let mut first = views.acquire("things_v1").await.unwrap();
    assert!(first.still_held().await);
    let other = views.clone();
    let mut second = tokio::spawn(async move { other.acquire("things_v1").await });
    // A different subscriber's lease is independent.
    let mut unrelated = tokio::time::timeout(Duration::from_secs(10), views.acquire("stock_v1"))
        .await
        .expect("another subscriber's lease is free")
        .unwrap();
    assert!(unrelated.still_held().await);
    // While the first is held, the second waits (checked over a window: a
    // second lease appearing at any point in it would be the bug).
    assert!(
        tokio::time::timeout(Duration::from_millis(600), &mut second)
            .await
            .is_err(),
        "a second instance got the lease while the first held it"
    );
    drop(first);
    let mut lease = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the lease passes on within 10 s")
        .unwrap()
        .unwrap();
    assert!(lease.still_held().await);
}

/// Several views' commits at once: each one written with its documents,
/// or fenced alone (a stale checkpoint writes nothing of its view), and a
/// view with no document changes only moves its checkpoint.
pub async fn commit_all_fences_each_view_alone<V: ViewStore>(views: V) {
    let (a, b, c) = (vid("alpha", 1), vid("beta", 2), vid("gamma", 1));
    for v in [&a, &b, &c] {
        views.prepare(v).await.unwrap();
    }
    let commit = |view: &ViewId, changes: Vec<DocChange>, from: u64, to: u64| ViewCommit {
        subscriber: view.subscriber(),
        view: view.clone(),
        changes,
        from: Position(from),
        to: Position(to),
    };
    let results = views
        .commit_all(vec![
            commit(&a, vec![put("a1", 1, 2), put("a2", 1, 4)], 0, 5),
            commit(&b, vec![put("b1", 1, 3)], 0, 5),
            commit(&c, vec![], 0, 5),
        ])
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    for v in [&a, &b, &c] {
        assert_eq!(position(&views, &v.subscriber()).await, Position(5));
    }
    assert_eq!(keys(&views.list(&a, None, 10).await.unwrap()), ["a1", "a2"]);
    assert_eq!(
        views.get(&b, "b1").await.unwrap().doc,
        Some(doc("b1", 1, 3))
    );

    // beta's commit comes from a stale checkpoint: fenced alone.
    let results = views
        .commit_all(vec![
            commit(&a, vec![put("a1", 2, 7), del("a2")], 5, 8),
            commit(&b, vec![put("b1", 9, 7), put("b2", 9, 7)], 3, 8),
            commit(&c, vec![put("c1", 1, 6)], 5, 8),
        ])
        .await
        .unwrap();
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    let mut results = results;
    assert_fenced(results.remove(1), &b.subscriber(), 3);
    assert_eq!(keys(&views.list(&a, None, 10).await.unwrap()), ["a1"]);
    assert_eq!(
        views.get(&a, "a1").await.unwrap().doc,
        Some(doc("a1", 2, 7))
    );
    assert_eq!(keys(&views.list(&c, None, 10).await.unwrap()), ["c1"]);
    assert_eq!(position(&views, &b.subscriber()).await, Position(5));
    assert_eq!(keys(&views.list(&b, None, 10).await.unwrap()), ["b1"]);
    assert_eq!(
        views.get(&b, "b1").await.unwrap().doc,
        Some(doc("b1", 1, 3))
    );

    // Mixed shapes: a view that only deletes, a stale one that only
    // deletes (fenced alone: nothing of it is deleted), and one that
    // deletes and writes.
    let results = views
        .commit_all(vec![
            commit(&a, vec![del("a1")], 8, 9),
            commit(&b, vec![del("b1")], 3, 9),
            commit(&c, vec![del("c1"), put("c2", 2, 9)], 8, 9),
        ])
        .await
        .unwrap();
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    let mut results = results;
    assert_fenced(results.remove(1), &b.subscriber(), 3);
    assert!(views.list(&a, None, 10).await.unwrap().is_empty());
    assert_eq!(keys(&views.list(&b, None, 10).await.unwrap()), ["b1"]);
    assert_eq!(keys(&views.list(&c, None, 10).await.unwrap()), ["c2"]);
    assert_eq!(position(&views, &a.subscriber()).await, Position(9));
    assert_eq!(position(&views, &c.subscriber()).await, Position(9));
    assert!(views.commit_all(vec![]).await.unwrap().is_empty());
}

/// Generates one `#[tokio::test]` per view-store conformance check.
///
/// `$make` is an expression evaluating to a future of a fresh, empty view
/// store; it is evaluated once per test.
#[macro_export]
macro_rules! view_store_conformance_tests {
    ($make:expr) => {
        $crate::view_store_conformance_tests!(@each $make;
            prepare_starts_at_zero,
            unprepared_view_reads_empty,
            commit_is_atomic_and_fenced,
            commit_all_fences_each_view_alone,
            advance_moves_only_the_checkpoint,
            get_reads_doc_and_checkpoint,
            list_in_key_order,
            load_several_keys,
            park_skip_and_halt,
            resolve_dead_letters,
            active_is_read_only,
            rebuild_and_switch_versions,
            retire_active_freezes,
            reset_moves_checkpoint,
            leases_are_exclusive);
    };
    (@each $make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::testing::view_conformance::$name($make.await).await;
            }
        )*
    };
}
