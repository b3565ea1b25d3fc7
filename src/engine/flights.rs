//! The run's exports under way: each claimed project from the moment its export request is
//! about to go out until its outcome (verified, failed, or back in line), with its next check
//! once GitLab accepted it. They are kept in the rate window's `meta` row, which every claim
//! writes anyway before its request goes out: a claim, an accepted export and each of its
//! checks cost no row of their own, and a project's row is written when it is listed and when
//! it has its outcome. Their number is bounded by the export rate times
//! `VERIFY_TIMEOUT_MINUTES`, not by the run's size.

use serde::{Deserialize, Serialize};

use crate::store::{Claimable, ClaimedProject, Claims};

/// One project's export under way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Flight {
    /// As claimed; once GitLab accepted this attempt, with it counted and its time.
    pub project: ClaimedProject,
    /// `None`: the request is out and its answer not recorded; else the next check.
    pub due_ms: Option<u64>,
    /// Whether the run counts the project as exported already (an earlier attempt of it was
    /// accepted and recorded in its row).
    pub counted: bool,
    /// Whether it was claimed as a project never tried (its place in line is its id).
    #[serde(default)]
    pub new: bool,
}

/// The exports under way of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Flights {
    run: u64,
    /// Every project of the run with an id up to this one was claimed as new once already.
    new_after: u64,
    list: Vec<Flight>,
}

impl Flights {
    /// Those of `run`: a new run starts with none.
    pub fn for_run(&mut self, run: u64) {
        if self.run != run {
            *self = Flights {
                run,
                ..Flights::default()
            };
        }
    }

    /// The ids under way, as the store's claims take them.
    pub fn under_way(&self) -> String {
        let ids: Vec<u64> = self.list.iter().map(|f| f.project.project_id).collect();
        serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into())
    }

    pub fn claims<'j>(&self, under_way: &'j str) -> Claims<'j> {
        Claims {
            under_way,
            new_after: self.new_after,
        }
    }

    /// A project is claimed: its request is about to go out.
    pub fn claim(&mut self, claimable: Claimable) {
        if claimable.new {
            self.new_after = self.new_after.max(claimable.project.project_id);
        }
        self.list.push(Flight {
            counted: claimable.project.exported_ms.is_some(),
            project: claimable.project,
            due_ms: None,
            new: claimable.new,
        });
    }

    fn position(&self, project_id: u64) -> Option<usize> {
        self.list
            .iter()
            .position(|f| f.project.project_id == project_id)
    }

    /// The export is no longer under way: it has its outcome, or is back in line.
    pub fn end(&mut self, project_id: u64) {
        if let Some(at) = self.position(project_id) {
            self.list.swap_remove(at);
        }
    }

    /// The request is taken back without using an attempt: a new project keeps its place.
    pub fn release(&mut self, project_id: u64) {
        if let Some(at) = self.position(project_id) {
            let flight = self.list.swap_remove(at);
            if flight.new {
                self.new_after = self.new_after.min(project_id.saturating_sub(1));
            }
        }
    }

    /// Requests whose answer no tick recorded (the tick died): they go back in line, as if
    /// never sent. Only one tick runs at a time, so at its start every such one is dead.
    pub fn release_interrupted(&mut self) -> usize {
        let interrupted: Vec<u64> = self
            .list
            .iter()
            .filter(|f| f.due_ms.is_none())
            .map(|f| f.project.project_id)
            .collect();
        for &id in &interrupted {
            self.release(id);
        }
        interrupted.len()
    }

    /// GitLab accepted the export at `now_ms`: the attempt counts, checked first at
    /// `first_check_ms`. The project as it now stands.
    pub fn accepted(
        &mut self,
        project_id: u64,
        now_ms: u64,
        first_check_ms: u64,
    ) -> Option<ClaimedProject> {
        let at = self.position(project_id)?;
        let flight = &mut self.list[at];
        flight.project.attempts += 1;
        flight.project.exported_ms = Some(now_ms);
        flight.due_ms = Some(first_check_ms);
        Some(flight.project.clone())
    }

    /// When the project is checked next.
    pub fn reschedule(&mut self, project_id: u64, due_ms: u64) {
        if let Some(at) = self.position(project_id) {
            self.list[at].due_ms = Some(due_ms);
        }
    }

    /// The accepted export whose check is most overdue at `now_ms`, after `after`
    /// (`(due_ms, project_id)` of the one checked last), and its due time.
    pub fn next_check(&self, now_ms: u64, after: (u64, u64)) -> Option<(ClaimedProject, u64)> {
        self.list
            .iter()
            .filter_map(|f| Some((f.due_ms?, f)))
            .filter(|&(due, f)| due <= now_ms && (due, f.project.project_id) > after)
            .min_by_key(|&(due, f)| (due, f.project.project_id))
            .map(|(due, f)| (f.project.clone(), due))
    }

    /// Whether a request is out without its answer recorded.
    pub fn requesting(&self) -> bool {
        self.list.iter().any(|f| f.due_ms.is_none())
    }

    /// When the first accepted export comes due for a check, and the last due within
    /// `slack_ms` after it.
    pub fn checks_due(&self, slack_ms: u64) -> Option<(u64, u64)> {
        let first = self.list.iter().filter_map(|f| f.due_ms).min()?;
        let last = self
            .list
            .iter()
            .filter_map(|f| f.due_ms)
            .filter(|&due| due <= first + slack_ms)
            .max()
            .unwrap_or(first);
        Some((first, last))
    }

    /// Accepted exports the run's counter does not count yet (their rows are written at their
    /// outcome).
    pub fn exported_uncounted(&self) -> u64 {
        self.list
            .iter()
            .filter(|f| f.due_ms.is_some() && !f.counted)
            .count() as u64
    }

    /// Each project under way, and whether GitLab accepted its export (tests).
    #[cfg(test)]
    pub fn states(&self) -> Vec<(u64, bool)> {
        self.list
            .iter()
            .map(|f| (f.project.project_id, f.due_ms.is_some()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn clear(&mut self) {
        self.list.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimable(project_id: u64, new: bool) -> Claimable {
        Claimable {
            project: ClaimedProject {
                project_id,
                path: format!("g/p{project_id}"),
                attempts: 0,
                exported_ms: None,
            },
            new,
        }
    }

    #[test]
    fn a_claim_is_under_way_until_its_end_and_a_new_one_moves_the_line() {
        let mut flights = Flights::default();
        flights.for_run(3);
        flights.claim(claimable(5, true));
        flights.claim(claimable(2, false));
        assert_eq!(flights.under_way(), "[5,2]");
        assert_eq!(flights.claims("[]").new_after, 5);
        assert!(flights.requesting());
        let accepted = flights.accepted(5, 100, 110).unwrap();
        assert_eq!((accepted.attempts, accepted.exported_ms), (1, Some(100)));
        assert_eq!(flights.exported_uncounted(), 1);
        assert_eq!(flights.next_check(109, (0, 0)), None);
        assert_eq!(
            flights.next_check(110, (0, 0)).map(|(_, due)| due),
            Some(110)
        );
        assert_eq!(flights.next_check(110, (110, 5)), None, "checked this tick");
        flights.end(5);
        flights.end(2);
        assert_eq!(flights.len(), 0);
        assert_eq!(
            flights.claims("[]").new_after,
            5,
            "ended: its place is gone"
        );
    }

    #[test]
    fn a_released_or_interrupted_new_project_keeps_its_place_and_a_new_run_starts_empty() {
        let mut flights = Flights::default();
        flights.for_run(1);
        for id in [4, 7, 9] {
            flights.claim(claimable(id, true));
        }
        flights.accepted(9, 0, 10);
        flights.release(7);
        assert_eq!(flights.claims("[]").new_after, 6);
        assert_eq!(flights.release_interrupted(), 1, "4 had no answer recorded");
        assert_eq!(flights.claims("[]").new_after, 3);
        assert_eq!(flights.under_way(), "[9]", "the accepted one stays");
        flights.for_run(1);
        assert_eq!(flights.len(), 1);
        flights.for_run(2);
        assert_eq!((flights.len(), flights.claims("[]").new_after), (0, 0));
    }

    #[test]
    fn checks_due_within_the_slack_share_a_wake() {
        let mut flights = Flights::default();
        for (id, due) in [(1, 100), (2, 105), (3, 130)] {
            flights.claim(claimable(id, true));
            flights.accepted(id, 0, due);
        }
        assert_eq!(flights.checks_due(10), Some((100, 105)));
        flights.reschedule(1, 200);
        assert_eq!(flights.checks_due(10), Some((105, 105)));
    }
}
