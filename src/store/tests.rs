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

/// A claim as the engine makes it: the projects under way are skipped, and a new one moves
/// the line.
fn claim(
    store: &Store<&HostSql>,
    run: u64,
    now_ms: u64,
    under_way: &[u64],
    new_after: &mut u64,
) -> Option<Claimable> {
    let ids = serde_json::to_string(under_way).unwrap();
    let claimed = store
        .claim_next(
            run,
            now_ms,
            Claims {
                under_way: &ids,
                new_after: *new_after,
            },
        )
        .unwrap()?;
    if claimed.new {
        *new_after = claimed.project.project_id;
    }
    Some(claimed)
}

fn project(project_id: u64, attempts: u64, exported_ms: Option<u64>) -> ClaimedProject {
    ClaimedProject {
        project_id,
        path: format!("a/{project_id}"),
        attempts,
        exported_ms,
    }
}

#[test]
fn a_pass_over_a_group_keeps_what_its_first_page_announced_and_a_relist_starts_another() {
    let db = HostSql::in_memory();
    let store = Store::open(&db).unwrap();
    let first = "https://gitlab.example.com/api/v4/groups/a/projects?page=1";
    let run = store.start_run(0, &[("a".into(), first.into())]).unwrap();
    let page = |number: u64, projects: &[(u64, &str)], total: u64| {
        let next = format!(
            "https://gitlab.example.com/api/v4/groups/a/projects?page={}",
            number + 1
        );
        store
            .record_page(
                run.id,
                &ListedPage {
                    position: 0,
                    page: number,
                    projects: &ListedProject::all_changed(projects),
                    backups_from_run: 0,
                    next: Some((&next, number + 1)),
                    pages_total: Some(3),
                    total: Some(total),
                },
            )
            .unwrap()
    };
    let pass = |announced: u64, relists: u64| {
        Some(ListingPass {
            announced: Some(announced),
            relists,
        })
    };
    assert_eq!(page(1, &[(1, "a/1"), (2, "a/2")], 6).cursor, pass(6, 0));
    // A later page's count is not what the pass announced; a page read ahead moves nothing.
    assert_eq!(page(2, &[(4, "a/4"), (5, "a/5")], 5).cursor, pass(6, 0));
    let ahead = page(4, &[(9, "a/9")], 5);
    assert_eq!((ahead.added, ahead.cursor), (1, None));
    store.relist(run.id, 0, first).unwrap();
    let open = store.open_listings(run.id, 10).unwrap();
    assert_eq!((open[0].next_url.as_str(), open[0].page), (first, 1));
    // The new pass: what was recorded stays once, the new page's projects join.
    let again = page(1, &[(2, "a/2"), (3, "a/3")], 5);
    assert_eq!((again.added, again.cursor), (1, pass(5, 1)));
    assert_eq!(store.active_run().unwrap().unwrap().listed, 6);
}

#[test]
fn claims_go_in_id_order_then_retries_as_they_come_due_and_skip_what_is_under_way() {
    let db = HostSql::in_memory();
    let store = Store::open(&db).unwrap();
    let run = store.start_run(0, &[("a".into(), "u".into())]).unwrap();
    store
        .record_only_page(run.id, 0, &[(9, "a/9"), (3, "a/3"), (5, "a/5")])
        .unwrap();
    let mut new_after = 0;
    let mut under_way = Vec::new();
    while let Some(c) = claim(&store, run.id, 0, &under_way, &mut new_after) {
        assert!(c.new);
        under_way.push(c.project.project_id);
    }
    assert_eq!(under_way, vec![3, 5, 9]);
    let rows_before = (&db).rows_written();
    // 5 failed an attempt: it comes back when due, not before; 3 is still under way.
    assert!(store
        .record_failure(run.id, &project(5, 1, Some(1)), "not there", Some(500))
        .unwrap());
    assert!(store
        .record_verified(run.id, &project(9, 1, Some(1)), 10)
        .unwrap());
    let under_way = [3];
    assert_eq!(claim(&store, run.id, 499, &under_way, &mut new_after), None);
    let retry = claim(&store, run.id, 500, &under_way, &mut new_after).unwrap();
    assert_eq!((retry.project.project_id, retry.new), (5, false));
    assert_eq!(retry.project.attempts, 1);
    assert_eq!(
        claim(&store, run.id, 500, &[3, 5], &mut new_after),
        None,
        "a verified project is never claimed again"
    );
    // The claims wrote nothing: two outcomes (each with its counters), and 5's entry in
    // `projects_queued`.
    assert!((&db).rows_written() - rows_before <= 6);
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

/// Takes a new store's tables back to version 8's: without the columns step 9 adds, the
/// table step 10 adds and the columns of step 11.
fn back_to_version_8(db: &HostSql) {
    db.0.execute_batch(
        "ALTER TABLE runs DROP COLUMN unchanged;
         ALTER TABLE projects DROP COLUMN kept_key;
         ALTER TABLE projects DROP COLUMN kept_ms;
         ALTER TABLE last_backups DROP COLUMN requested_ms;
         DROP TABLE restores;
         ALTER TABLE last_backups DROP COLUMN drill_key;
         ALTER TABLE last_backups DROP COLUMN drilled_ms;
         ALTER TABLE last_backups DROP COLUMN drill_error;
         ALTER TABLE listings DROP COLUMN total;
         ALTER TABLE listings DROP COLUMN relists;
         ALTER TABLE runs DROP COLUMN manifest_after;
         ALTER TABLE runs DROP COLUMN cancelled_ms;
         ALTER TABLE runs DROP COLUMN settings;
         DROP INDEX projects_queued;",
    )
    .unwrap();
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
    // At version 6, steps 7 (the triggers, the dropped one restored), 8, 9 and 10 run, each in
    // its transaction with the number and the digest's deletion.
    back_to_version_8(&db);
    db.0.execute_batch("UPDATE meta SET value = 6 WHERE key = 'schema_number'")
        .unwrap();
    let steps_from_7: Vec<_> = migrations::STEPS
        .iter()
        .filter(|step| step.version >= 7)
        .collect();
    let statements: u64 = steps_from_7
        .iter()
        .map(|step| step.statements.len() as u64)
        .sum();
    let store = opened(
        1 + statements + 2 * steps_from_7.len() as u64,
        "version 6: steps 7 to the last",
    );
    let run = store.start_run(0, &[("a".into(), "u".into())]).unwrap();
    store.record_only_page(run.id, 0, &[(1, "a/1")]).unwrap();
    store
        .record_failure(run.id, &project(1, 0, None), "gone", None)
        .unwrap();
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
    back_to_version_8(&db);
    db.0.execute_batch(
        "CREATE TABLE export_log (id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL);
         INSERT INTO export_log (id, at_ms) VALUES (41, 1000), (42, 2000);
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
        (run.exported, run.verified, run.failed)
    };
    // Project 1: an accepted export that failed its check (a retry), then a second one,
    // verified twice over (a tick that died before it stored the end of the export).
    store
        .record_failure(run.id, &project(1, 1, Some(10)), "not there", Some(30))
        .unwrap();
    assert_eq!(
        counts(),
        (1, 0, 0),
        "exported at its first accepted attempt"
    );
    assert!(store
        .record_verified(run.id, &project(1, 2, Some(40)), 100)
        .unwrap());
    assert!(!store
        .record_verified(run.id, &project(1, 2, Some(40)), 100)
        .unwrap());
    assert_eq!(counts(), (1, 1, 0), "exported and verified once");
    // Project 2: failed for good without an export, twice over; project 3 untouched.
    assert!(store
        .record_failure(run.id, &project(2, 0, None), "refused", None)
        .unwrap());
    assert!(!store
        .record_failure(run.id, &project(2, 0, None), "refused", None)
        .unwrap());
    assert_eq!(counts(), (1, 1, 1));
    // An outcome is final: a late answer of an old attempt changes nothing.
    assert!(!store
        .record_failure(run.id, &project(1, 3, Some(90)), "late", Some(99))
        .unwrap());
    assert_eq!(counts(), (1, 1, 1));
}

#[test]
fn remaining_says_when_the_next_pending_project_not_under_way_comes_due() {
    let db = HostSql::in_memory();
    let store = Store::open(&db).unwrap();
    let run = store.start_run(0, &[("a".into(), "u".into())]).unwrap();
    let left = |under_way: &[u64], new_after: u64| {
        let ids = serde_json::to_string(under_way).unwrap();
        let claims = Claims {
            under_way: &ids,
            new_after,
        };
        store.remaining(run.id, claims).unwrap().0
    };
    assert_eq!(left(&[], 0), None);
    store
        .record_only_page(run.id, 0, &[(1, "a/1"), (2, "a/2")])
        .unwrap();
    assert_eq!(left(&[], 0), Some(0), "a new one waits");
    assert_eq!(left(&[2], 1), None, "1 was taken, 2 is under way");
    store
        .record_failure(run.id, &project(2, 1, Some(5)), "retry", Some(900))
        .unwrap();
    assert_eq!(left(&[], 2), Some(900));
    assert_eq!(left(&[2], 2), None, "under way again");
    store
        .record_verified(run.id, &project(1, 1, Some(1)), 1)
        .unwrap();
    store
        .record_failure(run.id, &project(2, 2, Some(950)), "refused", None)
        .unwrap();
    assert_eq!(left(&[], 0), None);
    let (_, counted) = store
        .remaining(
            run.id,
            Claims {
                under_way: "[]",
                new_after: 0,
            },
        )
        .unwrap();
    assert_eq!((counted.verified, counted.failed), (1, 1));
}

#[test]
fn the_manifest_walks_the_run_by_id_and_a_cancelled_run_says_cancelled() {
    let db = HostSql::in_memory();
    let store = Store::open(&db).unwrap();
    let run = store
        .start_run(0, &[("a".into(), "u".into()), ("b".into(), "v".into())])
        .unwrap();
    store
        .record_only_page(run.id, 0, &[(4, "a/4"), (2, "a/2"), (7, "a/7")])
        .unwrap();
    store
        .record_verified(run.id, &project(2, 1, Some(1)), 5)
        .unwrap();
    store
        .record_failure(run.id, &project(7, 0, None), "refused", None)
        .unwrap();
    let cancelled = store.cancel_run(run.id, 99).unwrap().unwrap();
    assert_eq!(
        (cancelled.phase, cancelled.cancelled_ms),
        (Phase::Recording, Some(99))
    );
    assert_eq!(store.cancel_run(run.id, 100).unwrap(), None, "once");
    assert_eq!(
        store.listing_errors(run.id).unwrap(),
        vec![(
            "b".to_owned(),
            "the run was cancelled before this group was fully listed".to_owned()
        )]
    );
    let first = store.manifest_entries(run.id, 0, 2).unwrap();
    let outcomes: Vec<(u64, Outcome)> = first.iter().map(|e| (e.project_id, e.outcome)).collect();
    assert_eq!(
        outcomes,
        vec![(2, Outcome::Verified), (4, Outcome::Cancelled)]
    );
    let after = store.record_manifest_part(run.id, 4).unwrap();
    assert_eq!((after.manifest_parts, after.manifest_after), (1, 4));
    let rest = store.manifest_entries(run.id, 4, 2).unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(
        (
            rest[0].project_id,
            rest[0].outcome,
            rest[0].error.as_deref()
        ),
        (7, Outcome::Failed, Some("refused"))
    );
    assert!(store.manifest_entries(run.id, 7, 2).unwrap().is_empty());
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
        include_str!("restores.rs"),
    ];
    let states: Vec<&str> = ProjectState::ALL
        .iter()
        .map(|s| s.as_str())
        .chain(RestoreState::ALL.iter().map(|s| s.as_str()))
        .collect();
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
                requested_ms: None,
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

#[test]
fn a_restore_is_due_at_once_followed_until_it_ends_and_old_ended_ones_are_forgotten() {
    let db = HostSql::in_memory();
    let store = Store::open(&db).unwrap();
    let asked = |n: u64| NewRestore {
        project_id: n,
        project_path: format!("acme/p{n}"),
        key: format!("acme/p{n}/2026-12-01-00-00-00.tar.gz"),
        namespace: "acme".into(),
        path: format!("p{n}-restored"),
        name: None,
        origin: "https://backup.example".into(),
        expires_ms: 90_000_000,
        settings: "{}".into(),
        drill: false,
    };
    let first = store.insert_restore(&asked(1), 1_000).unwrap();
    assert_eq!(
        (first.state, first.due_ms, first.tries, first.target()),
        (RestoreState::Requested, 1_000, 0, "acme/p1-restored".into())
    );
    assert!(first.is_open() && first.capability.is_none());
    assert_eq!(store.due_restores(999, 5).unwrap(), vec![]);
    assert_eq!(store.due_restores(1_000, 5).unwrap(), vec![first.clone()]);
    store
        .update_restore(
            first.id,
            &RestoreUpdate::Sent {
                at_ms: 1_000,
                capability: "digest".into(),
                due_ms: 31_000,
            },
        )
        .unwrap();
    assert_eq!(store.imports_sent_since(1_000).unwrap(), 1);
    assert_eq!(store.imports_sent_since(1_001).unwrap(), 0);
    assert_eq!(store.next_restore_due().unwrap(), Some(31_000));
    store
        .update_restore(
            first.id,
            &RestoreUpdate::Importing {
                new_project_id: 77,
                web_url: "https://gitlab.example/acme/p1-restored".into(),
                due_ms: 6_000,
            },
        )
        .unwrap();
    let importing = store.restore(first.id).unwrap().unwrap();
    assert_eq!(
        (importing.state, importing.tries, importing.new_project_id),
        (RestoreState::Importing, 1, Some(77))
    );
    assert_eq!(importing.capability.as_deref(), Some("digest"));
    store
        .update_restore(first.id, &RestoreUpdate::Finished { at_ms: 9_000 })
        .unwrap();
    let ended = store.restore(first.id).unwrap().unwrap();
    assert_eq!(
        (ended.state, ended.finished_ms, ended.is_open()),
        (RestoreState::Finished, Some(9_000), false)
    );
    assert_eq!(store.next_restore_due().unwrap(), None);
    assert_eq!(store.due_restores(u64::MAX / 2, 5).unwrap(), vec![]);
    // The first ended long ago: it goes once RESTORES_KEPT newer ones are asked for; one still
    // going is never forgotten.
    let open = store.insert_restore(&asked(2), 2_000).unwrap();
    for n in 0..RESTORES_KEPT {
        let restore = store.insert_restore(&asked(10 + n), 3_000).unwrap();
        store
            .update_restore(
                restore.id,
                &RestoreUpdate::Failed {
                    reason: "refused".into(),
                    at_ms: 3_000,
                },
            )
            .unwrap();
    }
    assert_eq!(store.restore(first.id).unwrap(), None);
    assert!(store.restore(open.id).unwrap().is_some());
    let recent = store.recent_restores(3).unwrap();
    assert_eq!(recent.len(), 3);
    assert!(recent[0].id > recent[1].id && recent[1].id > recent[2].id);
    assert_eq!(recent[0].error.as_deref(), Some("refused"));
}

#[test]
fn the_backups_are_drilled_in_turn_by_project_id_and_the_tally_counts_their_last_drills() {
    let db = HostSql::in_memory();
    let store = Store::open(&db).unwrap();
    assert_eq!(store.next_to_drill().unwrap(), None);
    for id in [3, 1, 2] {
        store
            .record_backup(&Backup {
                project_id: id,
                path: format!("acme/p{id}"),
                key: format!("acme/p{id}/k.tar.gz"),
                run_id: 1,
                at_ms: 10,
                size: 5,
                requested_ms: None,
            })
            .unwrap();
    }
    let next = || store.next_to_drill().unwrap().unwrap().project_id;
    assert_eq!(next(), 1);
    store
        .record_drill(1, "acme/p1/k.tar.gz", 100, None)
        .unwrap();
    assert_eq!(next(), 2);
    store
        .record_drill(2, "acme/p2/k.tar.gz", 200, Some("import failed"))
        .unwrap();
    assert_eq!(next(), 3);
    store
        .record_drill(3, "acme/p3/k.tar.gz", 300, None)
        .unwrap();
    assert_eq!(next(), 1, "then the oldest drill");
    let drills = store.drills().unwrap();
    assert_eq!((drills.passed, drills.failed), (2, 1));
    let failure = drills.last_failure.unwrap();
    assert_eq!(
        (failure.path.as_str(), failure.at_ms, failure.error.as_str()),
        ("acme/p2", 200, "import failed")
    );
    // A newer backup of the project keeps its drill record (the drill names the key it drilled).
    store
        .record_backup(&Backup {
            project_id: 2,
            path: "acme/p2".into(),
            key: "acme/p2/newer.tar.gz".into(),
            run_id: 2,
            at_ms: 400,
            size: 6,
            requested_ms: None,
        })
        .unwrap();
    assert_eq!(store.drills().unwrap().failed, 1);
    // Drilled again, a backup's new result replaces its old one in the counts.
    store
        .record_drill(2, "acme/p2/newer.tar.gz", 500, None)
        .unwrap();
    let drills = store.drills().unwrap();
    assert_eq!((drills.passed, drills.failed), (3, 0));
    assert_eq!(
        drills.last_failure.unwrap().at_ms,
        200,
        "the latest failure is kept"
    );
    assert!(!store.drill_going().unwrap());
}

#[test]
fn a_page_of_unchanged_projects_costs_a_row_written_each_in_one_statement_against_their_backups() {
    let db = HostSql::in_memory();
    let store = Store::open(&db).unwrap();
    let first = "https://gitlab.example.com/api/v4/groups/a/projects?page=1";
    let earlier = store.start_run(0, &[("a".into(), first.into())]).unwrap();
    let paths: Vec<String> = (1..=100).map(|id| format!("a/p{id}")).collect();
    for id in 1..=100u64 {
        store
            .record_backup(&Backup {
                project_id: id,
                path: paths[id as usize - 1].clone(),
                key: format!("a/p{id}/k.tar.gz"),
                run_id: earlier.id,
                at_ms: 2_000,
                size: id,
                // Project 100's backup is from before the store knew when exports were asked.
                requested_ms: (id < 100).then_some(1_000),
            })
            .unwrap();
    }
    let run = store
        .start_run(10_000, &[("a".into(), first.into())])
        .unwrap();
    // Held when the backup's request came after the given moment: all but project 1 (asked
    // for after it), project 50 (moved) and project 100 (not known).
    let projects: Vec<ListedProject<'_>> = (1..=100u64)
        .map(|id| ListedProject {
            id,
            path: &paths[id as usize - 1],
            held_if_requested_after_ms: Some(if id == 1 { 1_000 } else { 999 }),
        })
        .collect();
    let listed = |backups_from_run: u64| ListedPage {
        position: 0,
        page: 1,
        projects: &projects,
        backups_from_run,
        next: None,
        pages_total: Some(1),
        total: Some(100),
    };
    let rows_before = (&db).rows_written();
    let recorded = store.record_page(run.id, &listed(earlier.id)).unwrap();
    // 100 project rows, the run's counters and the listing's cursor: no index entry, no
    // trigger.
    assert_eq!((&db).rows_written() - rows_before, 102);
    assert_eq!((recorded.added, recorded.unchanged), (100, 98));
    let run = recorded.run.unwrap();
    assert_eq!(
        (run.listed, run.unchanged, run.without_outcome()),
        (100, 98, 2)
    );
    let entries = store.manifest_entries(run.id, 0, 100).unwrap();
    assert_eq!(entries[0].outcome, Outcome::Cancelled, "pending, not held");
    assert_eq!(entries[99].kept, None);
    assert_eq!(entries[1].outcome, Outcome::Unchanged);
    assert_eq!(
        (entries[1].kept.clone(), entries[1].size),
        (Some(("a/p2/k.tar.gz".to_owned(), 2_000)), Some(2))
    );
    // Backups from before the run that moved them elsewhere hold nothing.
    let later = store
        .start_run(20_000, &[("a".into(), first.into())])
        .unwrap();
    let recorded = store.record_page(later.id, &listed(run.id)).unwrap();
    assert_eq!((recorded.added, recorded.unchanged), (100, 0));
}
