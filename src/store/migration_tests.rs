//! Versioned migrations: every schema that has been on `main`, as a fixture holding a run in the
//! middle (`store/fixtures/`), recognized, migrated, and still holding its run.

use std::collections::{BTreeMap, BTreeSet};

use super::host::HostSql;
use super::migrations::{declared_columns, Version, LATEST, STEPS};
use super::schema::{schema_digest, SCHEMA_DIGEST};
use super::*;
use crate::engine::window::Window;

/// The last version whose stores kept no number (later stores are numbered from the start).
const LAST_UNNUMBERED: u64 = 8;

/// A store of an earlier version: its file, the version its tables show, and its SQL.
pub(crate) struct Fixture {
    pub name: &'static str,
    pub version: u64,
    pub dump: &'static str,
}

macro_rules! fixture {
    ($name:literal, $version:literal) => {
        Fixture {
            name: $name,
            version: $version,
            dump: include_str!(concat!("fixtures/", $name, ".sql")),
        }
    };
}

/// Every schema that has been on `main`, before numbered versions: the oldest ones with a run
/// still listing, the others with a run exporting (projects pending, one exporting, exported,
/// verified, failed), each beside a finished run.
pub(crate) const FIXTURES: &[Fixture] = &[
    fixture!("v1_listing", 1),
    fixture!("v2_exporting", 2),
    fixture!("v3_listing", 3),
    fixture!("v3_opened_by_v8", 3),
    fixture!("v4_exporting", 4),
    fixture!("v5_exporting", 5),
    fixture!("v6_exporting", 6),
    fixture!("v7_exporting", 7),
    fixture!("v8_exporting", 8),
    fixture!("v9_exporting", 9),
    fixture!("v10_exporting", 10),
];

fn load(fixture: &Fixture) -> HostSql {
    HostSql::from_dump(fixture.dump).unwrap_or_else(|e| panic!("{}: {e}", fixture.name))
}

/// Every row of the tables, as text, by table: what a refused open must leave as it was.
fn dump(db: &HostSql) -> BTreeMap<String, Vec<String>> {
    let mut tables =
        db.0.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap();
    let names: Vec<String> = tables
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut all = BTreeMap::new();
    for name in names {
        let mut statement = db.0.prepare(&format!("SELECT * FROM {name}")).unwrap();
        let width = statement.column_count();
        let rows = statement
            .query_map([], |row| {
                (0..width)
                    .map(|i| row.get_ref(i).map(|v| format!("{v:?}")))
                    .collect::<Result<Vec<_>, _>>()
                    .map(|values| values.join("|"))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        all.insert(name, rows);
    }
    let schema = db
        .0
        .prepare("SELECT type || ' ' || name || ' ' || COALESCE(sql, '') FROM sqlite_master ORDER BY name")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    all.insert("sqlite_master".into(), schema);
    all
}

/// The schema's shape: each table's columns (name, type, NOT NULL, default, key), whether it
/// has a rowid, and each index and trigger's statement, whitespace aside. Column order is not
/// part of it: columns added later come last, and every query names its columns.
fn shape(db: &HostSql) -> BTreeMap<String, String> {
    let objects: Vec<(String, String, Option<String>)> =
        db.0.prepare("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let words = |sql: &str| sql.split_whitespace().collect::<Vec<_>>().join(" ");
    objects
        .into_iter()
        .map(|(kind, name, sql)| {
            let sql = sql.unwrap_or_default();
            let described = if kind == "table" {
                let mut columns: Vec<String> =
                    db.0.prepare(
                        "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?)",
                    )
                    .unwrap()
                    .query_map([&name], |row| {
                        Ok(format!(
                            "{} {} notnull={} default={:?} pk={}",
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, i64>(2)?,
                            row.get::<_, Option<String>>(3)?,
                            row.get::<_, i64>(4)?
                        ))
                    })
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                columns.sort();
                let rowid = if sql.contains("WITHOUT ROWID") {
                    "without rowid"
                } else {
                    "rowid"
                };
                format!("{rowid}: {}", columns.join(", "))
            } else {
                words(&sql)
            };
            (format!("{kind} {name}"), described)
        })
        .collect()
}

fn new_store() -> HostSql {
    let db = HostSql::in_memory();
    Store::open(&db).unwrap();
    db
}

fn query_strings(db: &HostSql, query: &str) -> Vec<String> {
    (&db)
        .exec(query, &[])
        .unwrap()
        .iter()
        .map(|row| {
            row.iter()
                .map(|v| format!("{v:?}"))
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

fn meta_value(db: &HostSql, key: &str) -> Option<Value> {
    (&db)
        .exec("SELECT value FROM meta WHERE key = ?", &[key.into()])
        .unwrap()
        .first()
        .map(|row| row[0].clone())
}

#[test]
fn the_schema_is_pinned_to_the_last_migration_step() {
    assert_eq!(
        SCHEMA_DIGEST,
        (LATEST, schema_digest().as_str()),
        "SCHEMA changed: every schema change is a new migration step (store/migrations.rs) plus \
         a fixture of the schema before it (store/fixtures/); then set SCHEMA_DIGEST to the new \
         version and this digest"
    );
    let versions: Vec<u64> = STEPS.iter().map(|step| step.version).collect();
    assert_eq!(
        versions,
        (2..=LATEST).collect::<Vec<_>>(),
        "steps go 2, 3, … in order"
    );
    for step in STEPS {
        assert!(
            FIXTURES.iter().any(|f| f.version == step.version - 1),
            "step {} has no fixture of the schema before it",
            step.version
        );
    }
    assert!(
        FIXTURES.iter().any(|f| f.version == LAST_UNNUMBERED),
        "a fixture of the latest schema from before numbered versions"
    );
}

#[test]
fn every_schema_that_has_been_on_main_is_recognized_by_its_tables() {
    let new = HostSql::in_memory();
    assert_eq!(
        Store::opened(&new).schema_version().unwrap(),
        Version::Unnumbered(0),
        "a new store"
    );
    for fixture in FIXTURES {
        let db = load(fixture);
        // Versions 4 and 5 differ by an index that 5 stopped creating but never dropped: both
        // are taken for 4, and step 5 drops the index if it is there.
        let shown = if fixture.version == 5 {
            4
        } else {
            fixture.version
        };
        let expected = if fixture.version > LAST_UNNUMBERED {
            Version::Numbered(shown)
        } else {
            Version::Unnumbered(shown)
        };
        assert_eq!(
            Store::opened(&db).schema_version().unwrap(),
            expected,
            "{}",
            fixture.name
        );
    }
}

#[test]
fn every_fixture_migrates_to_exactly_the_schema_of_a_new_store() {
    let expected = shape(&new_store());
    for fixture in FIXTURES {
        let db = load(fixture);
        Store::open(&db).unwrap_or_else(|e| panic!("{}: {e}", fixture.name));
        assert_eq!(shape(&db), expected, "{}", fixture.name);
        assert_eq!(
            meta_value(&db, MetaKey::SchemaNumber.as_str()),
            Some(Value::Int(LATEST as i64)),
            "{}",
            fixture.name
        );
        assert_eq!(
            meta_value(&db, MetaKey::SchemaVersion.as_str()),
            None,
            "{}: the digest goes",
            fixture.name
        );
    }
}

#[test]
fn a_migrated_store_keeps_every_run_project_listing_backup_and_fact() {
    let kept = [
        "SELECT id, started_ms, finished_ms, phase, listed, exported, failed FROM runs ORDER BY id",
        // Since version 9 the unfinished run's exports under way are kept with the rate window
        // (`a_migrated_store_answers_the_queries_of_a_tick` finds them there), their rows pending.
        "SELECT run_id, project_id, path,
             IIF(state IN ('exporting', 'exported')
                 AND run_id IN (SELECT id FROM runs WHERE phase != 'finished'), 'pending', state),
             error
         FROM projects ORDER BY run_id, project_id",
        "SELECT run_id, position, group_ref, next_url, error FROM listings ORDER BY run_id, position",
    ];
    for fixture in FIXTURES {
        let db = load(fixture);
        let before: Vec<Vec<String>> = kept.iter().map(|q| query_strings(&db, q)).collect();
        let facts_before = query_strings(&db, "SELECT key, value FROM meta ORDER BY key");
        let backups_before = (fixture.version >= 2).then(|| {
            query_strings(
                &db,
                "SELECT project_id, path, key, run_id, at_ms FROM last_backups ORDER BY project_id",
            )
        });
        Store::open(&db).unwrap();
        let after: Vec<Vec<String>> = kept.iter().map(|q| query_strings(&db, q)).collect();
        assert_eq!(after, before, "{}", fixture.name);
        let facts_after = query_strings(&db, "SELECT key, value FROM meta ORDER BY key");
        for fact in &facts_before {
            // The window gains the exports under way (its requests are kept: see
            // `the_old_rate_window_joins_meta_and_an_old_integer_meta_keeps_its_values`).
            if !fact.starts_with("Text(\"schema_version\")|")
                && !fact.starts_with("Text(\"schema_number\")|")
                && !fact.starts_with("Text(\"export_window\")|")
            {
                assert!(facts_after.contains(fact), "{}: {fact} kept", fixture.name);
            }
        }
        if let Some(backups) = backups_before {
            let now = query_strings(
                &db,
                "SELECT project_id, path, key, run_id, at_ms FROM last_backups ORDER BY project_id",
            );
            assert_eq!(now, backups, "{}", fixture.name);
        }
    }
}

#[test]
fn a_migrated_store_answers_the_queries_of_a_tick() {
    const T0: u64 = 1_704_067_200_000;
    for fixture in FIXTURES {
        let db = load(fixture);
        let why = fixture.name;
        let states = || -> BTreeMap<u64, String> {
            (&db)
                .exec(
                    "SELECT project_id, state FROM projects WHERE run_id = 2",
                    &[],
                )
                .unwrap()
                .iter()
                .map(|r| (r[0].as_u64().unwrap(), r[1].as_text().unwrap()))
                .collect()
        };
        let before = states();
        // Before version 9 an accepted export's row said `exported`; since, its row is pending
        // with the time GitLab accepted it.
        let exported_before: BTreeSet<u64> = if fixture.version >= 9 {
            query_strings(
                &db,
                "SELECT project_id FROM projects
                 WHERE run_id = 2 AND state = 'pending' AND exported_ms IS NOT NULL",
            )
            .iter()
            .map(|id| {
                id.trim_start_matches("Int(")
                    .trim_end_matches(')')
                    .parse()
                    .unwrap()
            })
            .collect()
        } else {
            before
                .iter()
                .filter(|(_, s)| *s == "exported")
                .map(|(id, _)| *id)
                .collect()
        };
        let store = Store::open(&db).unwrap();
        let run = store.active_run().unwrap().expect("run 2 is going");
        assert_eq!(run.id, 2, "{why}");
        if run.phase == Phase::Listing {
            // The group cut short goes on from the page it stood on (its number read from its URL).
            let open = store.open_listings(run.id, 10).unwrap();
            assert_eq!(open.len(), 1, "{why}");
            assert_eq!(
                (open[0].group.as_str(), open[0].page, open[0].pages_total),
                ("beta", 2, None),
                "{why}"
            );
            let next = open[0].next_url.replace("page=2", "page=3");
            let recorded = store
                .record_page(
                    run.id,
                    &ListedPage {
                        position: open[0].position,
                        page: 2,
                        projects: &ListedProject::all_changed(&[
                            (10, "beta/project-10"),
                            (12, "beta/project-12"),
                        ]),
                        backups_from_run: 0,
                        next: Some((&next, 3)),
                        pages_total: Some(3),
                        total: Some(5),
                    },
                )
                .unwrap();
            assert_eq!(recorded.added, 2, "{why}");
            // A pass begun before the migration announced nothing: it is not checked.
            assert_eq!(
                recorded.cursor.map(|pass| pass.announced),
                Some(None),
                "{why}"
            );
            assert_eq!(store.open_listings(run.id, 10).unwrap()[0].page, 3, "{why}");
            assert_eq!(states().len(), 8, "{why}");
            continue;
        }
        assert_eq!(before.len(), 11, "{why}");
        assert_eq!(
            run.manifest_parts, 0,
            "{why}: the manifest is written again, whole"
        );
        // The accepted exports are under way, kept with the rate window.
        let meta = store.meta(&[MetaKey::ExportWindow]).unwrap();
        let mut window = Window::read(meta.text(MetaKey::ExportWindow).unwrap().as_deref())
            .unwrap_or_else(|e| panic!("{why}: {e}"));
        window.flights.for_run(run.id);
        let under_way = window.flights.under_way();
        let (pending_due, counted) = store
            .remaining(run.id, window.flights.claims(&under_way))
            .unwrap();
        assert!(
            pending_due.is_some()
                && !window.flights.requesting()
                && window.flights.checks_due(0).is_some(),
            "{why}: {pending_due:?} {window:?}"
        );
        // The exported ones are checked and proven; the next pending one is claimed.
        let mut checked = Vec::new();
        let mut after = (0, 0);
        while let Some((project, due)) = window.flights.next_check(T0, after) {
            after = (due, project.project_id);
            assert!(
                project.exported_ms.is_some() && project.attempts > 0,
                "{why}"
            );
            assert!(store
                .record_verified(run.id, &project, 10_000 + project.project_id)
                .unwrap());
            checked.push(project.project_id);
        }
        assert_eq!(
            checked.iter().copied().collect::<BTreeSet<_>>(),
            exported_before,
            "{why}"
        );
        let claimed = store
            .claim_next(run.id, T0, window.flights.claims(&under_way))
            .unwrap()
            .expect("a pending project");
        assert!(
            !checked.contains(&claimed.project.project_id),
            "{why}: what was under way is not claimed again"
        );
        let mut accepted = claimed.project.clone();
        accepted.attempts += 1;
        accepted.exported_ms = Some(T0);
        store.record_verified(run.id, &accepted, 1).unwrap();
        let run_now = store.active_run().unwrap().unwrap();
        assert_eq!(
            run_now.verified,
            counted.verified + checked.len() as u64 + 1,
            "{why}: the triggers count"
        );
        assert_eq!(
            run_now.exported,
            counted.exported + u64::from(claimed.project.exported_ms.is_none()),
            "{why}"
        );
        let entries = store.manifest_entries(run.id, 0, 100).unwrap();
        assert_eq!(entries.len(), 11, "{why}: the walk lists every project");
        let finals: BTreeSet<u64> = states()
            .into_iter()
            .filter(|(_, s)| s == "verified" || s == "failed")
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            entries
                .iter()
                .filter(|e| e.outcome != Outcome::Cancelled)
                .map(|e| e.project_id)
                .collect::<BTreeSet<_>>(),
            finals,
            "{why}"
        );
        assert_eq!(states().len(), 11, "{why}: no project lost");
    }
}

#[test]
fn the_old_rate_window_joins_meta_and_an_old_integer_meta_keeps_its_values() {
    let v7 = load(&FIXTURES[7]);
    Store::open(&v7).unwrap();
    // Step 8 names the key as it is stored.
    assert_eq!(MetaKey::ExportWindow.as_str(), "export_window");
    let Some(Value::Text(window)) = meta_value(&v7, "export_window") else {
        panic!("no window");
    };
    let window: serde_json::Value = serde_json::from_str(&window).unwrap();
    assert_eq!(
        (&window["next"], &window["requests"]),
        (
            &serde_json::json!(15),
            &serde_json::json!([
                [11, 1704067079900_u64],
                [12, 1704067109900_u64],
                [13, 1704067140000_u64],
                [14, 1704067190000_u64]
            ])
        )
    );
    // Step 9 added the run's accepted exports, under way.
    assert_eq!(window["flights"]["run"], 2);
    // Moved already by version 8's worker: kept as it is.
    let moved = load(&FIXTURES[3]);
    let requests = |db: &HostSql| {
        let Some(Value::Text(window)) = meta_value(db, "export_window") else {
            panic!("no window");
        };
        let window: serde_json::Value = serde_json::from_str(&window).unwrap();
        (window["next"].clone(), window["requests"].clone())
    };
    let before = requests(&moved);
    Store::open(&moved).unwrap();
    assert_eq!(requests(&moved), before);
    // `meta.value` was an INTEGER at version 1; now any value, the old ones kept.
    let v1 = load(&FIXTURES[0]);
    Store::open(&v1).unwrap();
    assert_eq!(
        meta_value(&v1, "exports_blocked_until_ms"),
        Some(Value::Int(1_704_066_900_000))
    );
    Store::open(&v1)
        .unwrap()
        .set_meta(MetaKey::LastError, "500")
        .unwrap();
    assert_eq!(
        meta_value(&v1, "last_error"),
        Some(Value::Text("500".into()))
    );
}

#[test]
fn exports_accepted_before_proof_of_landing_await_their_proof() {
    // At version 2 `exported` was final; in the run still going it now waits for its check,
    // under way with the rate window since version 9.
    let db = load(&FIXTURES[1]);
    let store = Store::open(&db).unwrap();
    let meta = store.meta(&[MetaKey::ExportWindow]).unwrap();
    let mut window = Window::read(meta.text(MetaKey::ExportWindow).unwrap().as_deref()).unwrap();
    window.flights.for_run(2);
    assert_eq!(window.flights.len(), 4);
    let mut after = (0, 0);
    while let Some((project, due)) = window.flights.next_check(0, after) {
        after = (due, project.project_id);
        assert_eq!(
            (project.attempts, project.exported_ms, due),
            (1, Some(1_704_066_000_000), 0)
        );
    }
    assert_eq!(after.0, 0);
    let run = store.active_run().unwrap().unwrap();
    assert_eq!(run.failed, 1);
    assert_eq!(
        query_strings(&db, "SELECT manifest_parts, exported_ms IS NULL FROM runs JOIN projects ON run_id = id WHERE id = 1 AND project_id = 1"),
        vec!["Int(0)|Int(1)".to_owned()],
        "a finished run is left as it was"
    );
}

#[test]
fn a_store_newer_than_this_worker_is_refused_and_left_untouched() {
    let db = load(&FIXTURES[8]);
    Store::open(&db).unwrap();
    db.0.execute_batch(&format!(
        "UPDATE meta SET value = {} WHERE key = 'schema_number'",
        LATEST + 1
    ))
    .unwrap();
    let before = dump(&db);
    let changes = db.0.total_changes();
    let refused = Store::open(&db).err().expect("refused");
    assert_eq!(
        refused.0,
        format!(
            "the store is at schema version {}, this worker knows up to {LATEST}: deploy the newer worker",
            LATEST + 1
        )
    );
    assert_eq!(db.0.total_changes(), changes, "no row written");
    assert_eq!(dump(&db), before, "no row changed");
}

#[test]
fn a_step_that_fails_leaves_the_store_at_the_version_before_it_then_applies_once_fixed() {
    let db = load(&FIXTURES[1]);
    // Step 3 builds `last_backups` again through a table of this name, after its ALTERs.
    db.0.execute_batch("CREATE TABLE last_backups_before_v3 (x)")
        .unwrap();
    let before = dump(&db);
    let failed = Store::open(&db).err().expect("step 3 fails");
    assert!(
        failed
            .0
            .starts_with("migrating the store to schema version 3 (")
            && failed.0.contains("already exists"),
        "{failed}"
    );
    assert_eq!(dump(&db), before, "nothing of step 3 stayed");
    db.0.execute_batch("DROP TABLE last_backups_before_v3")
        .unwrap();
    Store::open(&db).unwrap();
    assert_eq!(shape(&db), shape(&new_store()));
}

#[test]
fn a_store_whose_meta_cannot_be_read_is_not_taken_for_an_old_one() {
    struct Failing<'a>(&'a HostSql);
    impl Sql for &Failing<'_> {
        fn exec(&self, query: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
            if query.starts_with("SELECT value FROM meta") {
                return Err(StoreError("the storage is unavailable".into()));
            }
            self.0.exec(query, params)
        }
        fn transaction(
            &self,
            body: &mut dyn FnMut() -> Result<(), StoreError>,
        ) -> Result<(), StoreError> {
            self.0.transaction(body)
        }
        fn rows_written(&self) -> u64 {
            self.0.rows_written()
        }
    }
    let db = new_store();
    let before = dump(&db);
    let failing = Failing(&db);
    let err = Store::open(&failing).err().expect("the read's failure");
    assert_eq!(err.0, "the storage is unavailable");
    assert_eq!(dump(&db), before);
}

#[test]
fn declared_columns_include_those_added_later_and_skip_constraints() {
    let db = HostSql::in_memory();
    db.0.execute_batch(
        "CREATE TABLE t (a INTEGER NOT NULL, \"b\" TEXT, d NOT NULL, PRIMARY KEY (a, d)) WITHOUT ROWID;
         ALTER TABLE t ADD COLUMN page INTEGER NOT NULL DEFAULT 1;",
    )
    .unwrap();
    let sql: String =
        db.0.query_row(
            "SELECT sql FROM sqlite_master WHERE name = 't'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    let columns: Vec<(String, String)> = declared_columns(&sql);
    assert_eq!(
        columns,
        vec![
            ("a".into(), "INTEGER NOT NULL".into()),
            ("b".into(), "TEXT".into()),
            ("d".into(), "NOT NULL".into()),
            ("page".into(), "INTEGER NOT NULL DEFAULT 1".into()),
        ]
    );
}
