//! The store's queries on rusqlite: what each writes and reads, and its cost.

use super::host::HostSql;
use super::*;

#[test]
fn a_project_reached_through_two_groups_is_one_row() {
    let db = HostSql::in_memory();
    let store = Store::open(&db).unwrap();
    let run = store
        .start_run(
            1_000,
            &[("a".into(), "u1".into()), ("b".into(), "u2".into())],
        )
        .unwrap();
    assert_eq!(
        store
            .record_only_page(run.id, 0, &[(1, "a/x"), (2, "a/y")])
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .record_only_page(run.id, 1, &[(2, "a/y"), (3, "b/z")])
            .unwrap(),
        1
    );
    assert_eq!(store.active_run().unwrap().unwrap().listed, 3);
    assert_eq!(store.open_listings(run.id, 10).unwrap(), vec![]);
}

#[test]
fn claims_go_in_id_order_and_never_repeat() {
    let db = HostSql::in_memory();
    let store = Store::open(&db).unwrap();
    let run = store.start_run(0, &[("a".into(), "u".into())]).unwrap();
    store
        .record_only_page(run.id, 0, &[(9, "a/9"), (3, "a/3"), (5, "a/5")])
        .unwrap();
    let claimed: Vec<u64> = std::iter::from_fn(|| store.claim_next(run.id, 0).unwrap())
        .map(|p| p.project_id)
        .collect();
    assert_eq!(claimed, vec![3, 5, 9]);
}

#[test]
fn interrupted_claims_are_requeued() {
    let db = HostSql::in_memory();
    let store = Store::open(&db).unwrap();
    let run = store.start_run(0, &[("a".into(), "u".into())]).unwrap();
    store.record_only_page(run.id, 0, &[(1, "a/1")]).unwrap();
    store.claim_next(run.id, 0).unwrap().unwrap();
    assert!(store.claim_next(run.id, 0).unwrap().is_none());
    assert_eq!(store.requeue_interrupted(run.id).unwrap(), 1);
    assert_eq!(store.claim_next(run.id, 0).unwrap().unwrap().project_id, 1);
}

/// Counts the statements run through it.
struct Counting<'a>(&'a HostSql, std::cell::Cell<u64>);

impl Sql for &Counting<'_> {
    fn exec(&self, query: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        self.1.set(self.1.get() + 1);
        self.0.exec(query, params)
    }

    fn rows_written(&self) -> u64 {
        self.0.rows_written()
    }

    fn transaction(
        &self,
        body: &mut dyn FnMut() -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.0.transaction(body)
    }
}

#[test]
fn an_opened_store_checks_its_schema_in_one_statement_and_applies_only_the_steps_it_lacks() {
    let db = HostSql::in_memory();
    let counting = Counting(&db, std::cell::Cell::new(0));
    let opened = |expected: u64, why: &str| {
        counting.1.set(0);
        let store = Store::open(&counting).unwrap();
        assert_eq!(counting.1.get(), expected, "{why}");
        store
    };
    // The version read (no `meta` yet), the tables looked at, the schema created, the version
    // noted (and the digest of older workers deleted).
    opened(4 + schema::SCHEMA.len() as u64, "a new store");
    opened(1, "a store in this version: checked only");
    // Only the number is checked: a store without a trigger but at this version is left so.
    db.0.execute_batch("DROP TRIGGER count_outcome").unwrap();
    opened(1, "the version is what is checked");
    // At version 6 (without the column of step 9), steps 7 (the triggers, the dropped one
    // restored), 8 and 9 run, each in its transaction with the number and the digest's deletion.
    db.0.execute_batch(
        "UPDATE meta SET value = 6 WHERE key = 'schema_number';
         ALTER TABLE runs DROP COLUMN settings;",
    )
    .unwrap();
    let steps_7_to_9 = 2 + 3 + 1;
    let store = opened(1 + steps_7_to_9 + 3 * 2, "version 6: steps 7, 8 and 9");
    let run = store.start_run(0, &[("a".into(), "u".into())]).unwrap();
    store.record_only_page(run.id, 0, &[(1, "a/1")]).unwrap();
    store.record_failure(run.id, 1, "gone", None).unwrap();
    assert_eq!(store.active_run().unwrap().unwrap().failed, 1);
    opened(1, "then checked only");
}

#[test]
fn a_transaction_that_fails_leaves_none_of_its_statements() {
    let db = HostSql::in_memory();
    Store::open(&db).unwrap();
    let sql = &db;
    let insert = |key: &str| sql.exec("INSERT INTO meta (key, value) VALUES (?, 1)", &[key.into()]);
    let failed = sql.transaction(&mut || {
        insert("written then undone")?;
        Err(StoreError("the batch fails".into()))
    });
    assert_eq!(failed, Err(StoreError("the batch fails".into())));
    sql.transaction(&mut || insert("kept").map(drop)).unwrap();
    let keys: Vec<Row> = sql
        .exec("SELECT key FROM meta WHERE value = 1", &[])
        .unwrap();
    assert_eq!(keys, vec![vec![Value::Text("kept".into())]]);
}

#[test]
fn a_store_that_kept_its_window_in_a_table_keeps_its_requests_in_meta() {
    let db = HostSql::in_memory();
    Store::open(&db).unwrap();
    // As the earlier schema left it: the window in `export_log`.
    db.0.execute_batch(
        "CREATE TABLE export_log (id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL);
         INSERT INTO export_log (id, at_ms) VALUES (41, 1000), (42, 2000);
         ALTER TABLE runs DROP COLUMN settings;
         DELETE FROM meta;",
    )
    .unwrap();
    let store = Store::open(&db).unwrap();
    let window = store
        .meta(&[MetaKey::ExportWindow])
        .unwrap()
        .text(MetaKey::ExportWindow)
        .unwrap()
        .unwrap();
    let window: serde_json::Value = serde_json::from_str(&window).unwrap();
    assert_eq!(
        window,
        serde_json::json!({"next": 43, "requests": [[41, 1000], [42, 2000]]})
    );
    let tables = (&db)
        .exec(
            "SELECT name FROM sqlite_master WHERE name = 'export_log'",
            &[],
        )
        .unwrap();
    assert!(tables.is_empty(), "the old table is gone");
}

#[test]
fn checks_go_most_overdue_first_each_once_a_tick_and_write_nothing() {
    let db = HostSql::in_memory();
    let store = Store::open(&db).unwrap();
    let run = store.start_run(0, &[("a".into(), "u".into())]).unwrap();
    store
        .record_only_page(run.id, 0, &[(1, "a/1"), (2, "a/2"), (3, "a/3"), (4, "a/4")])
        .unwrap();
    for (id, due) in [(1, 50), (2, 20), (3, 20), (4, 500)] {
        store.record_exported(run.id, id, 0, due).unwrap();
    }
    let changes = db.0.total_changes();
    let mut after = (0, 0);
    let mut checked = Vec::new();
    while let Some((project, due)) = store.next_check(run.id, 100, after).unwrap() {
        after = (due, project.project_id);
        checked.push(project.project_id);
    }
    assert_eq!(
        checked,
        vec![2, 3, 1],
        "by due time, then id; not yet due: none"
    );
    assert_eq!(db.0.total_changes(), changes, "nothing written");
    // The next tick starts over: unchanged projects are due again.
    let (first, _) = store.next_check(run.id, 100, (0, 0)).unwrap().unwrap();
    assert_eq!(first.project_id, 2);
}

#[test]
fn pruning_keeps_the_newest_runs_in_detail_and_says_when_it_is_done() {
    let db = HostSql::in_memory();
    let store = Store::open(&db).unwrap();
    let ids: Vec<(u64, String)> = (1..=25).map(|i| (i, format!("a/{i}"))).collect();
    let page: Vec<(u64, &str)> = ids.iter().map(|(i, p)| (*i, p.as_str())).collect();
    for day in 0..4 {
        let run = store.start_run(day, &[("a".into(), "u".into())]).unwrap();
        store.record_only_page(run.id, 0, &page).unwrap();
        store.stop_run(run.id, "done", day + 1).unwrap();
    }
    let count = |query: &str| -> u64 {
        let rows = (&db).exec(query, &[]).unwrap();
        rows[0][0].as_u64().unwrap()
    };
    // Keep 2 runs in detail and 3 runs at all, 20 projects at a time: runs 1 and 2 hold
    // 50 projects, so three calls, the last one done.
    assert!(!store.prune(4, 2, 3, 20, 0).unwrap());
    assert_eq!(count("SELECT COUNT(*) FROM projects"), 80);
    assert_eq!(
        count("SELECT MIN(id) FROM runs"),
        2,
        "run 1 goes, runs 2 to 4 stay"
    );
    assert!(!store.prune(4, 2, 3, 20, 0).unwrap());
    assert!(store.prune(4, 2, 3, 20, 0).unwrap());
    assert_eq!(count("SELECT COUNT(*) FROM projects"), 50);
    assert_eq!(count("SELECT MIN(run_id) FROM projects"), 3);
    assert_eq!(count("SELECT COUNT(*) FROM listings WHERE run_id < 3"), 0);
    assert!(store.prune(4, 2, 3, 20, 0).unwrap(), "nothing more to do");
}

#[test]
fn run_counters_follow_project_states_once_each() {
    let db = HostSql::in_memory();
    let store = Store::open(&db).unwrap();
    let run = store.start_run(0, &[("a".into(), "u".into())]).unwrap();
    store
        .record_only_page(run.id, 0, &[(1, "a/1"), (2, "a/2"), (3, "a/3")])
        .unwrap();
    let counts = || {
        let run = store.active_run().unwrap().unwrap();
        (run.exported, run.verified, run.failed, run.manifest_waiting)
    };
    // Project 1: exported, checked, a second export (a retry), verified twice over.
    store.record_exported(run.id, 1, 10, 20).unwrap();
    assert_eq!(counts(), (1, 0, 0, 0));
    store
        .record_failure(run.id, 1, "not there", Some(30))
        .unwrap();
    store.record_exported(run.id, 1, 40, 50).unwrap();
    assert_eq!(counts(), (1, 0, 0, 0), "exported once, at the first export");
    store.record_verified(run.id, 1, 100).unwrap();
    store.record_verified(run.id, 1, 100).unwrap();
    assert_eq!(counts(), (1, 1, 0, 1), "verified once");
    // Project 2: failed for good without an export; project 3 untouched.
    store.record_failure(run.id, 2, "refused", None).unwrap();
    store.record_failure(run.id, 2, "refused", None).unwrap();
    assert_eq!(counts(), (1, 1, 1, 2));
    // Moving a project between waiting states counts nothing.
    store.claim_next(run.id, 100).unwrap().unwrap();
    store.requeue_interrupted(run.id).unwrap();
    assert_eq!(counts(), (1, 1, 1, 2));
}

#[test]
fn remaining_says_what_the_run_still_waits_for() {
    let db = HostSql::in_memory();
    let store = Store::open(&db).unwrap();
    let run = store.start_run(0, &[("a".into(), "u".into())]).unwrap();
    let nothing = Remaining {
        pending_due: None,
        exporting: false,
        exported_due: None,
        exported_due_last: None,
    };
    assert_eq!(store.remaining(run.id, 10).unwrap().0, nothing);
    store
        .record_only_page(run.id, 0, &[(1, "a/1"), (2, "a/2")])
        .unwrap();
    store.claim_next(run.id, 0).unwrap().unwrap();
    assert_eq!(
        store.remaining(run.id, 10).unwrap().0,
        Remaining {
            pending_due: Some(0),
            exporting: true,
            exported_due: None,
            exported_due_last: None,
        }
    );
    store.record_exported(run.id, 1, 5, 65).unwrap();
    store.reschedule(run.id, 2, 900).unwrap();
    assert_eq!(
        store.remaining(run.id, 10).unwrap().0,
        Remaining {
            pending_due: Some(900),
            exporting: false,
            exported_due: Some(65),
            exported_due_last: Some(65),
        }
    );
    // The last check due within the slack of the first.
    store.claim_next(run.id, 900).unwrap().unwrap();
    store.record_exported(run.id, 2, 6, 74).unwrap();
    let left = |slack| store.remaining(run.id, slack).unwrap().0;
    assert_eq!(
        (left(10).exported_due, left(10).exported_due_last),
        (Some(65), Some(74))
    );
    assert_eq!(left(8).exported_due_last, Some(65));
    store.record_failure(run.id, 2, "retry", Some(900)).unwrap();
    store.record_verified(run.id, 1, 1).unwrap();
    store.record_failure(run.id, 2, "refused", None).unwrap();
    assert_eq!(store.remaining(run.id, 10).unwrap().0, nothing);
}

#[test]
fn meta_is_read_by_keys_and_typed() {
    let db = HostSql::in_memory();
    let store = Store::open(&db).unwrap();
    let (n, s, missing) = (MetaKey::PrunedBelow, MetaKey::LastError, MetaKey::Intents);
    assert_eq!(store.meta(&[n]).unwrap().u64(n).unwrap(), None);
    store.set_meta(n, 42u64).unwrap();
    store.set_meta(s, "text").unwrap();
    let meta = store.meta(&[n, s, missing]).unwrap();
    assert_eq!(meta.u64(n).unwrap(), Some(42));
    assert_eq!(meta.text(s).unwrap().as_deref(), Some("text"));
    assert_eq!(meta.u64(missing).unwrap(), None);
    assert!(meta.u64(s).is_err(), "text is not read as a number");
    assert!(meta.text(n).is_err(), "a number is not read as text");
    let one = store.meta(&[s]).unwrap();
    assert_eq!(one.u64(n).unwrap(), None, "only the keys asked for");
}

#[test]
fn every_state_and_phase_the_sql_names_is_one_of_the_enums() {
    let sources = [
        include_str!("schema.rs"),
        include_str!("runs.rs"),
        include_str!("projects.rs"),
    ];
    let states: Vec<&str> = ProjectState::ALL.iter().map(|s| s.as_str()).collect();
    let phases: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
    let mut named = 0;
    for source in sources {
        for (column, known) in [("state", &states), ("phase", &phases)] {
            for marker in [format!("{column} = '"), format!("{column} != '")] {
                for rest in source.split(marker.as_str()).skip(1) {
                    let value = rest.split('\'').next().unwrap();
                    assert!(
                        known.contains(&value),
                        "{column} {value:?} is not an enum value"
                    );
                    named += 1;
                }
            }
            for rest in source.split(&format!("{column} IN (")).skip(1) {
                for item in rest.split(')').next().unwrap().split(',') {
                    let value = item.trim().trim_matches('\'');
                    assert!(
                        known.contains(&value),
                        "{column} {value:?} is not an enum value"
                    );
                    named += 1;
                }
            }
        }
    }
    assert!(
        named > 10,
        "only {named} values found: the markers no longer match the SQL"
    );
}

#[test]
fn last_backups_older_than_the_cutoff_are_forgotten_a_batch_at_a_time() {
    let db = HostSql::in_memory();
    let store = Store::open(&db).unwrap();
    let day = 86_400_000;
    for id in 1..=5u64 {
        store
            .record_backup(&Backup {
                project_id: id,
                path: format!("g/p{id}"),
                key: format!("g/p{id}/k.tar.gz"),
                run_id: 1,
                at_ms: id * 100 * day,
                size: 10,
            })
            .unwrap();
    }
    // Backups before day 350 go, two at a time; the newer stay.
    assert!(!store.prune(1, 2, 3, 2, 350 * day).unwrap(), "a full batch");
    assert!(store.prune(1, 2, 3, 2, 350 * day).unwrap(), "done");
    let kept: Vec<u64> = store
        .recent_backups(10)
        .unwrap()
        .into_iter()
        .map(|b| b.project_id)
        .collect();
    assert_eq!(kept, vec![5, 4]);
}
