//! What is kept of old runs.

use super::sim::{config, one_group, Began, Harness, World, DAY, HOUR, T0};
use crate::engine::Start;
use crate::store::MetaKey;

#[test]
fn old_runs_lose_their_project_rows_batch_by_batch_and_then_pruning_stops() {
    // 30 projects: two batches of PRUNE_BATCH for each run that leaves the detailed window.
    let (gitlab, _) = one_group(30, 6);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    for run in 1..=4u64 {
        h.world.now = h.world.now.max(T0 + (run - 1) * DAY);
        assert_eq!(h.tick(Start::Now).began, Began::Ran);
        let finished = h.run_until_finished(T0 + (run - 1) * DAY + 2 * HOUR);
        assert_eq!((finished.id, finished.verified), (run, 30));
    }
    let count = |h: &Harness, run: u64| -> u64 {
        h.db.0
            .query_row(
                "SELECT COUNT(*) FROM projects WHERE run_id = ?1",
                [run as i64],
                |row| row.get::<_, i64>(0),
            )
            .unwrap() as u64
    };
    // Runs 1 and 2 left the detailed window (RUNS_KEPT_IN_DETAIL = 2) while runs 3 and 4 went.
    assert_eq!((count(&h, 1), count(&h, 2)), (0, 0));
    assert_eq!((count(&h, 3), count(&h, 4)), (30, 30));
    assert_eq!(
        h.store().recent_runs(10).unwrap().len(),
        4,
        "the runs themselves stay"
    );
    let meta = h.store().meta(&[MetaKey::PrunedBelow]).unwrap();
    assert_eq!(
        meta.u64(MetaKey::PrunedBelow).unwrap(),
        Some(4),
        "done for the newest run"
    );
}
