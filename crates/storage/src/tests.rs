use std::sync::atomic::Ordering;
use std::time::Duration;

use slipstream_protocol::{Hlc, Value};

use super::*;

fn open(dir: &Path) -> Storage {
    Storage::open(dir, None, StorageOptions::default()).unwrap()
}

/// Opens with marks held back (`defer_marks`) and rows held (`hold_for`) this long.
fn open_holding(dir: &Path, defer_marks: Duration, hold_for: Duration) -> Storage {
    let opts = StorageOptions {
        defer_marks,
        hold_for,
        ..StorageOptions::default()
    };
    Storage::open(dir, None, opts).unwrap()
}

const HOUR: Duration = Duration::from_secs(3600);

fn rec(id: &str, key: &str, value: &str, hlc: u64, origin: &str, recipients: &[&str]) -> Record {
    Record {
        message_id: id.into(),
        group: "singleton".into(),
        msg_type: "SK",
        origin: origin.into(),
        hlc: Hlc::new(hlc, 0),
        path: vec![origin.into()],
        body: format!(r#"{{"type":"SK","messageId":"{id}"}}"#).into(),
        apply: Some(Apply::Set {
            key: key.into(),
            value: Value::String(value.into()),
        }),
        queue_apply: false,
        recipients: recipients.iter().map(|s| s.to_string()).collect(),
        relay_to: Vec::new(),
    }
}

#[tokio::test]
async fn instance_id_is_generated_once_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let id = s.instance_id().to_owned();
    assert!(id.starts_with("con-"), "{id}");
    s.close().await;
    let s = open(dir.path());
    assert_eq!(s.instance_id(), id);
    s.close().await;
    let s = Storage::open(dir.path(), Some("con-given"), StorageOptions::default()).unwrap();
    assert_eq!(s.instance_id(), "con-given");
    s.close().await;
}

#[tokio::test]
async fn database_runs_in_wal_mode_with_full_sync() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (mode, sync) = s
        .read(|c| {
            let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
            let sync: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
            Ok((mode, sync))
        })
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(sync, 2, "synchronous=FULL");
    assert!(dir.path().join("slipstream.db").exists());
}

#[tokio::test]
async fn a_db_file_path_is_used_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sub/node.db");
    let s = Storage::open(&file, None, StorageOptions::default()).unwrap();
    assert!(file.exists());
    s.close().await;
}

#[tokio::test]
async fn records_once_and_reports_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let r = s
        .record(rec("m1", "k", "v", 10, "a", &["b", "c"]))
        .await
        .unwrap();
    let Recorded::New {
        changed,
        deliveries,
    } = r
    else {
        panic!("{r:?}")
    };
    assert!(changed);
    assert_eq!(
        deliveries
            .iter()
            .map(|(p, _)| p.as_str())
            .collect::<Vec<_>>(),
        vec!["b", "c"]
    );
    assert_eq!(
        s.record(rec("m1", "k", "other", 99, "a", &["b"]))
            .await
            .unwrap(),
        Recorded::Duplicate
    );
    let mut other_group = rec("m1", "k2", "v", 10, "a", &[]);
    other_group.group = "g2".into();
    assert!(matches!(
        s.record(other_group).await.unwrap(),
        Recorded::New { .. }
    ));
    assert_eq!(
        s.get("k").await.unwrap().unwrap().value,
        Value::String("v".into())
    );
    assert_eq!(s.message_count().await.unwrap(), 2);
}

#[tokio::test]
async fn embedded_store_keeps_the_last_writer_by_hlc_then_origin() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.record(rec("m2", "k", "newer", 20, "a", &[]))
        .await
        .unwrap();
    let r = s
        .record(rec("m1", "k", "older", 10, "z", &[]))
        .await
        .unwrap();
    assert_eq!(
        r,
        Recorded::New {
            changed: false,
            deliveries: vec![]
        }
    );
    assert_eq!(
        s.get("k").await.unwrap().unwrap().value,
        Value::String("newer".into())
    );
    s.record(rec("m3", "k", "tie-b", 20, "b", &[]))
        .await
        .unwrap();
    let got = s.get("k").await.unwrap().unwrap();
    assert_eq!(
        (got.value, got.origin, got.hlc),
        (Value::String("tie-b".into()), "b".into(), Hlc::new(20, 0))
    );
    let mut arr = rec("m4", "list", "", 30, "a", &[]);
    arr.apply = Some(Apply::Set {
        key: "list".into(),
        value: Value::Array(vec!["x".into(), "y".into()]),
    });
    s.record(arr).await.unwrap();
    assert_eq!(
        s.get("list").await.unwrap().unwrap().value,
        Value::Array(vec!["x".into(), "y".into()])
    );
    assert!(s.get("missing").await.unwrap().is_none());
}

#[tokio::test]
async fn an_outbox_read_stops_at_its_row_limit_or_once_its_bytes_are_reached() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    for i in 0..10 {
        s.record(rec(&format!("m{i}"), "k", "v", i, "a", &["b"]))
            .await
            .unwrap();
    }
    let ids = |rows: Vec<Outgoing>| {
        rows.iter()
            .map(|o| o.message_id.to_string())
            .collect::<Vec<_>>()
    };
    let all = s.open_deliveries("b", 0, 100).await.unwrap();
    let body = all[0].body.len();
    assert!(
        all.iter().all(|o| o.body.len() == body),
        "the bodies are alike"
    );
    assert_eq!(
        ids(s
            .open_deliveries_within("b", 0, 4, usize::MAX)
            .await
            .unwrap()),
        ["m0", "m1", "m2", "m3"]
    );
    // The row that reaches the byte bound is the last one read.
    assert_eq!(
        ids(s
            .open_deliveries_within("b", 0, 100, 2 * body + 1)
            .await
            .unwrap()),
        ["m0", "m1", "m2"]
    );
    assert_eq!(
        ids(s
            .open_deliveries_within("b", all[7].seq, 100, 3 * body)
            .await
            .unwrap()),
        ["m8", "m9"],
        "after a cursor, fewer rows than either bound: the outbox holds no more"
    );
}

#[tokio::test]
async fn delivery_rows_move_through_their_states_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    for i in 0..5 {
        s.record(rec(&format!("m{i}"), "k", "v", i, "a", &["b", "c"]))
            .await
            .unwrap();
    }
    let open_b = s.open_deliveries("b", 0, 100).await.unwrap();
    assert_eq!(
        open_b.iter().map(|o| &*o.message_id).collect::<Vec<_>>(),
        vec!["m0", "m1", "m2", "m3", "m4"]
    );
    assert!(open_b.windows(2).all(|w| w[0].seq < w[1].seq));
    let seqs: Vec<i64> = open_b.iter().map(|o| o.seq).collect();
    s.mark_sent(seqs.clone()).await.unwrap();
    s.mark_acked(seqs[..3].to_vec(), None).await.unwrap();
    s.flush().await.unwrap();
    let left = s.open_deliveries("b", 0, 100).await.unwrap();
    assert_eq!(
        left.iter().map(|o| &*o.message_id).collect::<Vec<_>>(),
        vec!["m3", "m4"]
    );
    assert_eq!(
        s.open_deliveries("b", seqs[3], 100).await.unwrap().len(),
        1,
        "after a cursor"
    );
    s.count_attempt(vec![seqs[3]]).await.unwrap();
    let again = s
        .open_deliveries_by_seq(vec![seqs[4], seqs[0], seqs[3]])
        .await
        .unwrap();
    assert_eq!(
        again
            .iter()
            .map(|o| (o.seq, o.attempts))
            .collect::<Vec<_>>(),
        vec![(seqs[4], 0), (seqs[3], 1)],
        "acked rows drop out"
    );
    s.mark_dead(vec![seqs[3]], "no ack after 3 sends".into())
        .await
        .unwrap();
    let counts: std::collections::HashMap<_, _> =
        s.peer_counts(true).await.unwrap().into_iter().collect();
    assert_eq!(
        counts["b"],
        PeerCounts {
            pending: 0,
            sent: 1,
            acked: 3,
            dead: 1
        }
    );
    assert_eq!(
        counts["c"],
        PeerCounts {
            pending: 5,
            sent: 0,
            acked: 0,
            dead: 0
        }
    );
    let dead = s.dead_letters(0, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (
            dead[0].message_id.as_str(),
            dead[0].attempts,
            dead[0].peer.as_str()
        ),
        ("m3", 2, "b"),
        "the final unanswered send counts too"
    );
    assert_eq!(
        s.dead_seqs(vec!["m3".into(), "m0".into()]).await.unwrap(),
        vec![seqs[3]]
    );
    assert_eq!(
        s.replay_dead(None).await.unwrap(),
        vec![("b".to_string(), 1)]
    );
    assert!(s.dead_letters(0, 10).await.unwrap().is_empty());
    assert_eq!(
        s.open_deliveries("b", 0, 100).await.unwrap()[0].attempts,
        0,
        "replay resets attempts"
    );
    s.mark_dead(vec![seqs[4]], "x".into()).await.unwrap();
    assert_eq!(s.purge_dead().await.unwrap(), 1);
}

#[tokio::test]
async fn meeting_a_configured_peer_moves_its_url_rows_to_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.record(rec("m1", "k", "v", 1, "a", &["url:ws://b:7600"]))
        .await
        .unwrap();
    let b = PeerRow {
        id: "b".into(),
        url: Some("ws://b:7600".into()),
        tags: vec!["aws".into()],
        last_seen: 0,
    };
    assert_eq!(s.peer_met(b.clone()).await.unwrap(), 1, "one row moved");
    assert_eq!(s.peer_met(b).await.unwrap(), 0, "nothing left to move");
    assert!(s
        .open_deliveries("url:ws://b:7600", 0, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.open_deliveries("b", 0, 10).await.unwrap().len(), 1);
    let peers = s.known_peers().await.unwrap();
    assert_eq!(peers[0].id, "b");
    assert_eq!(peers[0].tags, vec!["aws"]);
}

#[tokio::test]
async fn prune_keeps_what_is_still_owed() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.record(rec("done", "k", "v", 1, "a", &["b"]))
        .await
        .unwrap();
    s.record(rec("owed", "k", "v", 2, "a", &["b"]))
        .await
        .unwrap();
    let rows = s.open_deliveries("b", 0, 10).await.unwrap();
    s.mark_acked(vec![rows[0].seq], None).await.unwrap();
    let pruned = s.prune(now_ms() + 1000).await.unwrap();
    assert_eq!(pruned, 1);
    assert_eq!(s.message_count().await.unwrap(), 1);
    assert_eq!(
        &*s.open_deliveries("b", 0, 10).await.unwrap()[0].message_id,
        "owed"
    );
    // The pruned message's dedup entry went with it: a copy now is new again.
    assert!(matches!(
        s.record(rec("done", "k", "v", 1, "a", &[])).await.unwrap(),
        Recorded::New { .. }
    ));
}

#[tokio::test]
async fn many_queued_writes_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let mut waiting = Vec::new();
    for i in 0..500 {
        waiting.push(
            s.submit(rec(&format!("m{i}"), &format!("k{i}"), "v", i, "a", &["b"]))
                .await
                .unwrap(),
        );
    }
    for w in waiting {
        assert!(matches!(w.await.unwrap().0.unwrap(), Recorded::New { .. }));
    }
    let commits = s.stats().commits.load(Ordering::Relaxed);
    assert!(commits < 500, "500 writes took {commits} commits");
    assert_eq!(s.message_count().await.unwrap(), 500);
}

#[tokio::test]
async fn committed_writes_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        s.record(rec("m1", "k", "v", 1, "a", &["b"])).await.unwrap();
        s.close().await;
    }
    let s = open(dir.path());
    assert_eq!(s.max_hlc().await.unwrap(), Some(Hlc::new(1, 0)));
    assert_eq!(s.get("k").await.unwrap().unwrap().message_id, "m1");
    assert_eq!(s.open_deliveries("b", 0, 10).await.unwrap().len(), 1);
    assert_eq!(
        s.record(rec("m1", "k", "v", 1, "a", &["b"])).await.unwrap(),
        Recorded::Duplicate
    );
}

/// Adds a journal row behind the node's back, as a commit just before a crash would have
/// left it: the writer had not stored its clock mark yet.
fn add_journal_row(dir: &Path, id: &str, hlc: u64) {
    let c = behind_its_back(dir);
    let next = journal::last_id(&c).unwrap() + 1;
    let mut row = Vec::new();
    journal::Entry {
        message_id: id,
        group: "singleton",
        msg_type: "SK",
        origin: "a",
        hlc: Hlc::new(hlc, 0).to_text().as_str(),
        path: r#"["a"]"#,
        body: "{}",
        recipients: None,
    }
    .encode(&mut row);
    c.execute(
        "INSERT INTO seen (message_id, cluster_group, id) VALUES (?1, 'singleton', ?2)",
        rusqlite::params![id, next],
    )
    .unwrap();
    c.execute(
        "INSERT INTO journal (first, count, received_at, entries) VALUES (?1, 1, 0, ?2)",
        rusqlite::params![next, row],
    )
    .unwrap();
}

/// A connection of its own to a closed node's database, to change it behind the node's back.
fn behind_its_back(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("slipstream.db")).unwrap()
}

/// A restarted node's clock starts past the greatest stamp its journal ever held: the stamp
/// is kept in `meta` (see `clock_mark.rs`), so it outlives its row's pruning, and the rows
/// recorded after the stored mark are read too.
#[tokio::test]
async fn the_clock_starts_past_pruned_stamps_and_past_rows_recorded_after_its_mark() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        for (id, hlc) in [("m1", 5), ("m2", 9), ("m3", 7)] {
            s.record(rec(id, id, "v", hlc, "a", &[])).await.unwrap();
        }
        s.close().await;
    }
    // Opening reads the journal and stores its mark.
    open(dir.path()).close().await;
    behind_its_back(dir.path())
        .execute(
            "DELETE FROM journal WHERE first = (SELECT id FROM seen WHERE message_id = 'm2')",
            [],
        )
        .unwrap();
    let s = open(dir.path());
    assert_eq!(
        s.max_hlc().await.unwrap(),
        Some(Hlc::new(9, 0)),
        "the pruned row's stamp"
    );
    s.close().await;
    // Rows past the stored mark: a greater stamp counts, a lower one does not lower it.
    add_journal_row(dir.path(), "m4", 6);
    assert_eq!(
        open(dir.path()).max_hlc().await.unwrap(),
        Some(Hlc::new(9, 0))
    );
    add_journal_row(dir.path(), "m5", 11);
    add_journal_row(dir.path(), "m6", 10);
    let s = open(dir.path());
    assert_eq!(s.max_hlc().await.unwrap(), Some(Hlc::new(11, 0)));
}

/// Pruning keeps the newest journal row, so journal ids never go back: a row recorded after
/// an emptied journal, and lost to a crash before the next clock mark, still gets an id past
/// the stored mark and is read at the next start.
#[tokio::test]
async fn pruning_keeps_the_newest_row_so_journal_ids_never_go_back() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        s.record(rec("m1", "m1", "v", 5, "a", &[])).await.unwrap();
        s.record(rec("m2", "m2", "v", 9, "a", &[])).await.unwrap();
        s.close().await;
    }
    {
        // Opening stores the mark, through journal id 2; then everything is past retention.
        let s = open(dir.path());
        assert_eq!(s.prune(now_ms() + 1000).await.unwrap(), 1);
        assert_eq!(s.message_count().await.unwrap(), 1, "the newest row stays");
        s.close().await;
    }
    add_journal_row(dir.path(), "m3", 12);
    let s = open(dir.path());
    assert_eq!(s.max_hlc().await.unwrap(), Some(Hlc::new(12, 0)));
}

/// A clock mark that counts ids no journal row holds (a batch that failed had handed them
/// out) does not hide the rows recorded under those ids after a restart, when the ids are
/// handed out again.
#[tokio::test]
async fn a_clock_mark_past_the_last_journal_id_does_not_hide_rows_recorded_under_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        s.record(rec("m1", "m1", "v", 5, "a", &[])).await.unwrap();
        s.close().await;
    }
    // The mark counts ids 2 to 9 as well.
    behind_its_back(dir.path())
        .execute(
            "INSERT INTO meta (key, value) VALUES ('hlc_through', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [format!("{} 9", Hlc::new(5, 0).to_text().as_str())],
        )
        .unwrap();
    // A restart; then id 2 is handed out again, and its commit is the last before a crash.
    open(dir.path()).close().await;
    add_journal_row(dir.path(), "m2", 8);
    let s = open(dir.path());
    assert_eq!(s.max_hlc().await.unwrap(), Some(Hlc::new(8, 0)));
}

/// A database written before the clock mark existed opens with the greatest stamp of its
/// whole journal, and stores the mark then.
#[tokio::test]
async fn a_journal_without_a_clock_mark_is_read_whole_once() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).close().await;
    add_journal_row(dir.path(), "m1", 4);
    add_journal_row(dir.path(), "m2", 8);
    add_journal_row(dir.path(), "m3", 6);
    behind_its_back(dir.path())
        .execute("DELETE FROM meta WHERE key = 'hlc_through'", [])
        .unwrap();
    let s = open(dir.path());
    assert_eq!(s.max_hlc().await.unwrap(), Some(Hlc::new(8, 0)));
    s.close().await;
    let mark = clock_mark::stored_mark(&behind_its_back(dir.path())).unwrap();
    assert_eq!(
        mark,
        clock_mark::Mark {
            max: Some(Hlc::new(8, 0)),
            through: 3
        }
    );
}

#[tokio::test]
async fn deletes_leave_tombstones_that_win_or_lose_by_version() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.record(rec("set1", "k", "v1", 10, "a", &[]))
        .await
        .unwrap();
    let mut del = rec("del", "k", "", 20, "b", &[]);
    del.apply = Some(Apply::Delete { key: "k".into() });
    assert_eq!(
        s.record(del).await.unwrap(),
        Recorded::New {
            changed: true,
            deliveries: vec![]
        }
    );
    assert_eq!(s.get("k").await.unwrap(), None, "deleted");
    // A set older than the delete, arriving late, stays deleted; a newer one wins.
    assert_eq!(
        s.record(rec("set0", "k", "old", 15, "z", &[]))
            .await
            .unwrap(),
        Recorded::New {
            changed: false,
            deliveries: vec![]
        }
    );
    assert_eq!(s.get("k").await.unwrap(), None);
    s.record(rec("set2", "k", "v2", 30, "a", &[]))
        .await
        .unwrap();
    assert_eq!(
        s.get("k").await.unwrap().unwrap().value,
        Value::String("v2".into())
    );
    // Tombstones are pruned after retention.
    let mut del2 = rec("del2", "k2", "", 40, "b", &[]);
    del2.apply = Some(Apply::Delete { key: "k2".into() });
    s.record(del2).await.unwrap();
    s.prune(now_ms() + 1000).await.unwrap();
    let tombstones: i64 = s
        .read(|c| {
            Ok(
                c.query_row("SELECT COUNT(*) FROM kv WHERE kind = 'deleted'", [], |r| {
                    r.get(0)
                })?,
            )
        })
        .await
        .unwrap();
    assert_eq!(tombstones, 0);
}

#[tokio::test]
async fn expire_hides_a_key_once_due() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.record(rec("set", "k", "v", 10, "a", &[])).await.unwrap();
    let mut exp = rec("exp", "k", "", 20, "a", &[]);
    exp.apply = Some(Apply::Expire {
        key: "k".into(),
        seconds: 0,
    });
    assert!(matches!(
        s.record(exp).await.unwrap(),
        Recorded::New { changed: true, .. }
    ));
    assert_eq!(s.get("k").await.unwrap(), None, "expired at once");
}

#[tokio::test]
async fn queued_applies_wait_in_order_until_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    for i in 0..3 {
        let mut r = rec(&format!("q{i}"), "k", "v", i, "a", &[]);
        r.queue_apply = true;
        assert_eq!(
            s.record(r).await.unwrap(),
            Recorded::New {
                changed: false,
                deliveries: vec![]
            }
        );
    }
    assert_eq!(
        s.get("k").await.unwrap(),
        None,
        "not applied to the embedded store"
    );
    let pending = s.pending_applies(10).await.unwrap();
    assert_eq!(pending.len(), 3);
    assert!(pending[0].body.contains("q0") && pending[2].body.contains("q2"));
    // Queued messages are not pruned while they wait.
    s.prune(now_ms() + 1000).await.unwrap();
    assert_eq!(s.apply_backlog().await.unwrap(), 3);
    s.applied(vec![pending[0].seq, pending[1].seq])
        .await
        .unwrap();
    let left = s.pending_applies(10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert!(left[0].body.contains("q2"));
}

#[tokio::test]
async fn a_failing_operation_fails_alone_and_the_rest_of_its_batch_commits() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    // Sabotage one table from outside, so operations on it fail with an SQL error.
    rusqlite::Connection::open(database_file(dir.path()))
        .unwrap()
        .execute_batch("DROP TABLE apply_queue")
        .unwrap();
    let first = s.submit(rec("r1", "k1", "v", 1, "a", &[])).await.unwrap();
    let (failed, second) = tokio::join!(
        s.applied(vec![1]),
        s.submit(rec("r2", "k2", "v", 2, "a", &[]))
    );
    assert!(failed.is_err(), "the sabotaged operation reports its error");
    assert!(matches!(
        first.await.unwrap().0.unwrap(),
        Recorded::New { .. }
    ));
    assert!(matches!(
        second.unwrap().await.unwrap().0.unwrap(),
        Recorded::New { .. }
    ));
    assert_eq!(s.message_count().await.unwrap(), 2, "both writes committed");
}

#[tokio::test]
async fn a_relay_request_adds_deliveries_to_a_recorded_write_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.record(rec("m1", "k", "v", 1, "a", &[])).await.unwrap();
    let mut again = rec("m1", "k", "v", 1, "a", &["c"]);
    assert_eq!(
        s.record(again.clone()).await.unwrap(),
        Recorded::Duplicate,
        "a plain copy changes nothing"
    );
    again.relay_to = vec!["c".into()];
    let Recorded::Relayed { deliveries } = s.record(again.clone()).await.unwrap() else {
        panic!("expected Relayed")
    };
    assert_eq!(deliveries.len(), 1);
    assert_eq!(
        &*s.open_deliveries("c", 0, 10).await.unwrap()[0].message_id,
        "m1"
    );
    // Asked again while that delivery is open: no second row.
    assert_eq!(
        s.record(again).await.unwrap(),
        Recorded::Relayed { deliveries: vec![] }
    );
    assert_eq!(s.open_deliveries("c", 0, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn take_over_owes_an_origins_recent_untargeted_writes_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.record(rec("a1", "k1", "v", 1, "a", &[])).await.unwrap();
    s.record(rec("a2", "k2", "v", 2, "a", &["c"]))
        .await
        .unwrap();
    s.record(rec("x1", "k3", "v", 3, "x", &[])).await.unwrap();
    let mut targeted = rec("a3", "k4", "v", 4, "a", &[]);
    targeted.body = r#"{"type":"SK","messageId":"a3","targetedTags":["gcp"]}"#.into();
    s.record(targeted).await.unwrap();

    let added = s
        .take_over("a", 0, vec!["c".into(), "d".into()])
        .await
        .unwrap();
    assert_eq!(
        added,
        vec![("c".to_string(), 1), ("d".to_string(), 2)],
        "c already had a2; x1 is another origin's; a3 was targeted"
    );
    assert_eq!(
        owed(s.open_deliveries("c", 0, 10).await.unwrap()),
        ["a2", "a1"]
    );
    assert_eq!(
        owed(s.open_deliveries("d", 0, 10).await.unwrap()),
        ["a1", "a2"]
    );
    assert!(
        s.take_over("a", 0, vec!["c".into()])
            .await
            .unwrap()
            .is_empty(),
        "a second take-over adds nothing"
    );
    assert!(
        s.take_over("a", now_ms() + 1000, vec!["e".into()])
            .await
            .unwrap()
            .is_empty(),
        "nothing from a since then"
    );
}

/// Polls `check` every 10 ms, for up to 10 s.
async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

/// Waits until the writer has taken every queued operation off its queue.
async fn writer_took_everything(s: &Storage) {
    wait_until("the writer took its queued operations", || {
        s.tx.capacity() == s.tx.max_capacity()
    })
    .await;
}

/// Marks alone wait for the next commit instead of committing on their own: a mark the
/// writer has taken, followed by a flush, costs one commit, not two.
#[tokio::test]
async fn marks_alone_wait_to_commit_with_the_next_operation() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_holding(dir.path(), HOUR, HOLD_FOR);
    let rows = match s.record(rec("m1", "k", "v", 1, "a", &["b"])).await.unwrap() {
        Recorded::New { deliveries, .. } => deliveries,
        other => panic!("{other:?}"),
    };
    let commits = s.stats().commits.load(Ordering::Relaxed);
    s.mark_acked(vec![rows[0].1], None).await.unwrap();
    writer_took_everything(&s).await;
    assert_eq!(
        s.stats().commits.load(Ordering::Relaxed),
        commits,
        "held back"
    );
    s.flush().await.unwrap();
    assert_eq!(s.stats().commits.load(Ordering::Relaxed), commits + 1);
    assert!(s.open_deliveries("b", 0, 10).await.unwrap().is_empty());
    let counts = s.peer_counts(true).await.unwrap();
    assert_eq!(counts[0].1.acked, 1, "{counts:?}");
}

/// With nothing else to commit, held-back marks commit on their own once the delay is over,
/// and a writer that stops commits the marks it holds.
#[tokio::test]
async fn held_back_marks_commit_after_the_delay_and_at_stop() {
    let dir = tempfile::tempdir().unwrap();
    // Rows stay held, so no write-out commits while the test watches the commits.
    let s = open_holding(dir.path(), Duration::from_millis(20), HOUR);
    let mut seqs = Vec::new();
    for i in 0..2 {
        if let Recorded::New { deliveries, .. } = s
            .record(rec(&format!("m{i}"), "k", "v", i, "a", &["b"]))
            .await
            .unwrap()
        {
            seqs.push(deliveries[0].1);
        }
    }
    let commits = s.stats().commits.load(Ordering::Relaxed);
    s.mark_acked(vec![seqs[0]], None).await.unwrap();
    wait_until("the mark committed without another operation", || {
        s.stats().commits.load(Ordering::Relaxed) == commits + 1
    })
    .await;
    assert_eq!(owed(s.open_deliveries("b", 0, 10).await.unwrap()), ["m1"]);

    let stopping = open_holding(dir.path(), HOUR, HOLD_FOR);
    s.close().await;
    stopping.mark_acked(vec![seqs[1]], None).await.unwrap();
    writer_took_everything(&stopping).await;
    stopping.close().await;
    let reopened = open(dir.path());
    assert!(reopened
        .open_deliveries("b", 0, 10)
        .await
        .unwrap()
        .is_empty());
}

/// The database files as a crash would leave them: copied while the writer still runs.
fn crash_copy(from: &Path, to: &Path) {
    for suffix in ["", "-wal"] {
        let name = format!("slipstream.db{suffix}");
        if from.join(&name).exists() {
            std::fs::copy(from.join(&name), to.join(&name)).unwrap();
        }
    }
}

/// The message ids of outbox rows, in their order.
fn owed(rows: Vec<Outgoing>) -> Vec<String> {
    rows.into_iter().map(|o| o.message_id.to_string()).collect()
}

/// Delivery rows held in memory when the process dies come back from the journal: every
/// recipient of every write past the watermark is owed its row again, those acknowledged just
/// before included (they are sent once more). Once every held row is settled, the watermark
/// moves past them and nothing comes back.
#[tokio::test]
async fn held_rows_lost_in_a_crash_are_owed_again_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_holding(dir.path(), DEFER_MARKS, HOUR);
    let mut seqs = Vec::new();
    for id in ["m1", "m2"] {
        if let Recorded::New { deliveries, .. } = s
            .record(rec(id, id, "v", 1, "a", &["b", "c"]))
            .await
            .unwrap()
        {
            seqs.extend(deliveries.into_iter().map(|(_, seq)| seq));
        }
    }
    // m1's row to b is acknowledged while held: it is never written.
    s.mark_acked(vec![seqs[0]], None).await.unwrap();
    s.flush().await.unwrap();
    let raw = Connection::open(database_file(dir.path())).unwrap();
    let written: i64 = raw
        .query_row("SELECT count(*) FROM deliveries", [], |r| r.get(0))
        .unwrap();
    assert_eq!(written, 0, "rows are held, not written");

    let crashed = tempfile::tempdir().unwrap();
    crash_copy(dir.path(), crashed.path());
    let after = open(crashed.path());
    assert_eq!(
        owed(after.open_deliveries("b", 0, 10).await.unwrap()),
        ["m1", "m2"]
    );
    assert_eq!(
        owed(after.open_deliveries("c", 0, 10).await.unwrap()),
        ["m1", "m2"]
    );
    after.close().await;

    // Every held row acknowledged: the watermark passes them, and a crash now owes nothing.
    s.mark_acked(seqs[1..].to_vec(), None).await.unwrap();
    s.flush().await.unwrap();
    let crashed = tempfile::tempdir().unwrap();
    crash_copy(dir.path(), crashed.path());
    let after = open(crashed.path());
    assert!(after.open_deliveries("b", 0, 10).await.unwrap().is_empty());
    assert!(after.open_deliveries("c", 0, 10).await.unwrap().is_empty());
    let counts = s.peer_counts(true).await.unwrap();
    assert_eq!(
        counts.iter().map(|(_, c)| c.acked).sum::<u64>(),
        4,
        "{counts:?}"
    );
}

/// A held row nobody acknowledges is written to the outbox once it is due (`HOLD_FOR`),
/// without any other operation, where another connection finds it.
#[tokio::test]
async fn an_unacknowledged_held_row_is_written_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.record(rec("m1", "k", "v", 1, "a", &["b"])).await.unwrap();
    let counts = s.peer_counts(false).await.unwrap();
    assert_eq!(
        counts[0].1.pending, 1,
        "held rows count as pending: {counts:?}"
    );
    let raw = Connection::open(database_file(dir.path())).unwrap();
    wait_until("the row is in the outbox", || {
        let written: i64 = raw
            .query_row(
                "SELECT count(*) FROM deliveries WHERE state = 'pending'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        written == 1
    })
    .await;
    assert_eq!(
        s.peer_counts(false).await.unwrap()[0].1.pending,
        1,
        "counted once"
    );
}

/// Rows inserted through the table's own sequence (a relay) get seqs past every seq handed
/// to held rows, acknowledged and dropped ones included, and held rows after them past those.
#[tokio::test]
async fn seqs_are_never_reused_between_held_and_written_rows() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let first = match s.record(rec("m1", "k", "v", 1, "a", &["b"])).await.unwrap() {
        Recorded::New { deliveries, .. } => deliveries[0].1,
        other => panic!("{other:?}"),
    };
    s.mark_acked(vec![first], None).await.unwrap();
    s.flush().await.unwrap();
    let mut again = rec("m1", "k", "v", 1, "a", &[]);
    again.relay_to = vec!["c".into()];
    let relayed = match s.record(again).await.unwrap() {
        Recorded::Relayed { deliveries } => deliveries[0].1,
        other => panic!("{other:?}"),
    };
    assert!(relayed > first, "{relayed} after {first}");
    let next = match s
        .record(rec("m2", "k2", "v", 2, "a", &["b"]))
        .await
        .unwrap()
    {
        Recorded::New { deliveries, .. } => deliveries[0].1,
        other => panic!("{other:?}"),
    };
    assert!(next > relayed, "{next} after {relayed}");
    assert_eq!(owed(s.open_deliveries("c", 0, 10).await.unwrap()), ["m1"]);
    assert_eq!(owed(s.open_deliveries("b", 0, 10).await.unwrap()), ["m2"]);
}

/// A database of a closed node as written before `seen` and `journal`: the journal was one
/// row per write, in the table `messages`, and `recipients` came later than its other columns.
fn old_database(dir: &Path, recipients: bool) -> Connection {
    let c = Connection::open(database_file(dir)).unwrap();
    c.execute_batch(crate::schema::SCHEMA).unwrap();
    c.execute_batch(&format!(
        "CREATE TABLE messages (
             id            INTEGER PRIMARY KEY,
             message_id    TEXT NOT NULL,
             cluster_group TEXT NOT NULL,
             msg_type      TEXT NOT NULL,
             origin        TEXT NOT NULL,
             hlc           TEXT NOT NULL,
             path          TEXT NOT NULL,
             body          TEXT NOT NULL,
             received_at   INTEGER NOT NULL,
             {}
             UNIQUE (message_id, cluster_group)
         );
         CREATE INDEX messages_received ON messages (received_at);",
        if recipients { "recipients TEXT," } else { "" }
    ))
    .unwrap();
    c
}

/// A database written before journal rows listed their recipients opens: its rows owe
/// nothing new (they were all written then), and new writes hold their rows.
#[tokio::test]
async fn a_database_from_before_held_rows_opens_and_keeps_its_outbox() {
    let dir = tempfile::tempdir().unwrap();
    {
        // The journal as it was, without `recipients`, with one write owed to b.
        let c = old_database(dir.path(), false);
        c.execute_batch(
            "INSERT INTO messages (id, message_id, cluster_group, msg_type, origin, hlc, path, body, received_at)
             VALUES (1, 'old', 'singleton', 'SK', 'a', '0000000000010000', '[\"a\"]', '{}', 1);
             INSERT INTO deliveries (msg, peer, state, attempts, updated_at) VALUES (1, 'b', 'pending', 0, 1);",
        )
        .unwrap();
    }
    let s = open(dir.path());
    assert_eq!(owed(s.open_deliveries("b", 0, 10).await.unwrap()), ["old"]);
    s.record(rec("new", "k", "v", 2, "a", &["b"]))
        .await
        .unwrap();
    assert_eq!(
        owed(s.open_deliveries("b", 0, 10).await.unwrap()),
        ["old", "new"]
    );
}

/// A journal of one row per write moves to one row per commit when the node opens it: every
/// write keeps its id (the outbox still finds it), its dedup key (a copy is still a
/// duplicate) and its recipients (held rows lost in a crash still come back), and new writes
/// get ids after the greatest.
#[tokio::test]
async fn a_journal_of_one_row_per_write_moves_to_one_row_per_commit() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = old_database(dir.path(), true);
        // Ids 1, 2 and 5 (3 and 4 were pruned). b acknowledged 1 and 2 and is owed 5, whose
        // row was held when the node stopped: the watermark says so.
        c.execute_batch(
            "INSERT INTO messages (id, message_id, cluster_group, msg_type, origin, hlc, path, body, received_at, recipients) VALUES
               (1, 'm1', 'singleton', 'SK', 'a', '0000000000010000', '[\"a\"]', '{\"n\":1}', 1, '[\"b\"]'),
               (2, 'm2', 'singleton', 'SK', 'a', '0000000000020000', '[\"a\"]', '{\"n\":2}', 1, NULL),
               (5, 'm5', 'g2', 'SK', 'a', '0000000000050000', '[\"a\"]', '{\"n\":5}', 2, '[\"b\"]');
             INSERT INTO meta (key, value) VALUES ('held_through', '2');",
        )
        .unwrap();
    }
    let s = open(dir.path());
    let rows = s.open_deliveries("b", 0, 10).await.unwrap();
    assert_eq!(owed(rows.clone()), ["m5"], "the held row came back");
    assert_eq!(&*rows[0].body, r#"{"n":5}"#);
    assert_eq!(s.message_count().await.unwrap(), 3);
    assert_eq!(s.max_hlc().await.unwrap(), Some(Hlc::new(5, 0)));
    assert_eq!(
        s.record(rec("m1", "k", "v", 1, "a", &[])).await.unwrap(),
        Recorded::Duplicate
    );
    s.record(rec("m6", "k", "v", 6, "a", &["c"])).await.unwrap();
    s.close().await;
    let c = behind_its_back(dir.path());
    let old: bool = c
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'messages')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!old, "the old table is gone");
    let id_of = |m: &str| journal::id_of(&c, m, if m == "m5" { "g2" } else { "singleton" });
    let ids: Vec<Option<i64>> = ["m1", "m2", "m5", "m6"]
        .iter()
        .map(|m| id_of(m).unwrap())
        .collect();
    assert_eq!(ids, [Some(1), Some(2), Some(5), Some(6)]);
}

/// Large writes moved from the old journal go into rows of about `ROW_BYTES`, as new ones do.
#[tokio::test]
async fn large_writes_moved_from_the_old_journal_fill_rows_of_bounded_size() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = old_database(dir.path(), true);
        let body = "x".repeat(journal::ROW_BYTES / 2);
        for id in 1..=5 {
            c.execute(
                "INSERT INTO messages (id, message_id, cluster_group, msg_type, origin, hlc, path, body, received_at)
                 VALUES (?1, ?2, 'singleton', 'SK', 'a', '0000000000010000', '[\"a\"]', ?3, 1)",
                rusqlite::params![id, format!("m{id}"), body],
            )
            .unwrap();
        }
    }
    open(dir.path()).close().await;
    let c = behind_its_back(dir.path());
    let rows: Vec<(i64, i64)> = c
        .prepare("SELECT first, count FROM journal ORDER BY first")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(rows, [(1, 2), (3, 2), (5, 1)]);
}

/// The writes that changed the store are handed over after their commit, in the order they
/// were committed, and only those: not a duplicate, not a write that lost to a newer version,
/// not one with nothing to apply here.
#[tokio::test]
async fn the_writes_that_changed_the_store_are_handed_over_in_commit_order() {
    let dir = tempfile::tempdir().unwrap();
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let observe = seen.clone();
    let opts = StorageOptions {
        on_changed: Some(Arc::new(move |bodies| {
            let mut seen = observe.lock().unwrap();
            seen.extend(bodies.iter().map(|b| b.to_string()));
        })),
        ..StorageOptions::default()
    };
    let s = Storage::open(dir.path(), None, opts).unwrap();
    let mut nothing_to_apply = rec("m5", "k9", "x", 50, "a", &[]);
    nothing_to_apply.apply = None;
    // Submitted together, so that they share commits as the writer takes them.
    let mut waiting = Vec::new();
    for r in [
        rec("m1", "k1", "new", 20, "a", &[]),
        rec("m2", "k2", "new", 20, "a", &[]),
        rec("m3", "k1", "older", 10, "b", &[]),
        rec("m1", "k1", "again", 30, "a", &[]),
        nothing_to_apply,
        rec("m6", "k2", "newer", 40, "a", &[]),
    ] {
        waiting.push(s.submit(r).await.unwrap());
    }
    for w in waiting {
        w.await.unwrap().0.unwrap();
    }
    let body = |id: &str| format!(r#"{{"type":"SK","messageId":"{id}"}}"#);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![body("m1"), body("m2"), body("m6")]
    );
}
