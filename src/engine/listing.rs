//! Listing: each configured group's projects, page by page, several pages at once where GitLab
//! gave the page count; a page moves its group's cursor only by compare-and-set on the page
//! number, so pages read ahead or twice change nothing.
//!
//! GitLab's offset pagination is not a snapshot: a project deleted, moved or archived on a page
//! already read shifts the later pages by one, and a project is skipped. A pass over the pages
//! whose count (`X-Total`) changed is read again from the first page, at most [`MAX_RELISTS`]
//! times a run; projects already listed stay, once each.

use std::fmt;

use url::Url;

use super::changed::held_if_requested_after;
use super::gates::Limited;
use super::{Event, Purpose, Step, Tick};
use crate::config::Config;
use crate::gitlab::{page_number, with_page, GitLabError};
use crate::http::HttpResult;
use crate::store::{ListedPage, ListedProject, ListingPass, Phase, Sql, StoreError};

/// Listing pages read at once: Cloudflare keeps at most six subrequests waiting for their
/// answer per invocation, and queues the rest.
pub const LISTING_CONCURRENCY: u32 = 6;
/// CPU time budgeted for one listing page of 100 projects (parsing it and recording its
/// rows): the free plan's 10 ms reads one page per invocation. `cargo xtask bench` measures
/// the real cost on the host.
pub const LISTING_PAGE_CPU_MS: u32 = 10;

/// How many times a run lists a group again from its first page when it changed under the
/// listing: one that changes during every pass still ends, its last pass reported.
pub const MAX_RELISTS: u64 = 3;

/// The group's count of projects changed between the first page of a pass and a later one: a
/// project on a page already read may have gone, and the later pages skipped one.
///
/// A pass that ends with fewer projects than its first page announced always shows it too: a
/// pass holds exactly as many projects as its last page counted (every page before it is
/// full), and GitLab counts on every page up to 10,000 projects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CountChanged {
    announced: u64,
    now: u64,
    page: u64,
}

impl fmt::Display for CountChanged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "GitLab counted {} projects on the first page and {} on page {}",
            self.announced, self.now, self.page
        )
    }
}

/// Listing pages one invocation reads at most, by its CPU budget.
pub(super) fn pages_budget(config: &Config) -> u32 {
    (config.cpu_ms_per_invocation / LISTING_PAGE_CPU_MS).max(1)
}

impl<S: Sql> Tick<'_, S> {
    /// The next listing pages: each unfinished group's next page, then pages further on where
    /// GitLab gave the page count, at most [`LISTING_CONCURRENCY`] at once and within the
    /// tick's page and subrequest budgets.
    pub(super) fn listing_steps(&mut self, now_ms: u64) -> Result<Vec<Step>, StoreError> {
        let gitlab = self.gates.gitlab.hold.gate(now_ms);
        if !self.pass(gitlab) {
            return Ok(Vec::new());
        }
        let room = LISTING_CONCURRENCY
            .min(self.budget.pages_left)
            .min(self.budget.subrequests_left) as usize;
        let listings = self.store.open_listings(self.run.id, room.max(1) as u64)?;
        if listings.is_empty() {
            self.set_phase(Phase::Exporting, now_ms)?;
            if self.budget.pages_left < pages_budget(self.config) {
                // This tick read pages: the exports start in the next one, at once, so no tick
                // carries both a page of rows and a minute's exports.
                self.budget.end();
                return Ok(Vec::new());
            }
            return self.run_steps(now_ms);
        }
        if room == 0 {
            self.budget.end();
            return Ok(Vec::new());
        }
        let cursors = listings
            .iter()
            .map(|listing| {
                Url::parse(&listing.next_url)
                    .map(|url| (listing, url))
                    .map_err(|e| StoreError(format!("stored page URL: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut pages: Vec<_> = cursors
            .iter()
            .map(|(listing, url)| (*listing, listing.page, url.clone()))
            .collect();
        for (listing, cursor) in &cursors {
            let Some(total) = listing.pages_total else {
                continue;
            };
            for page in listing.page + 1..=total {
                if pages.len() >= room {
                    break;
                }
                pages.push((listing, page, with_page(cursor, page)));
            }
        }
        pages.truncate(room);
        self.budget.pages_left -= pages.len() as u32;
        Ok(pages
            .into_iter()
            .map(|(listing, page, url)| Step {
                request: self.gitlab.projects_page_request(url),
                purpose: Purpose::ListPage {
                    position: listing.position,
                    page,
                    group: listing.group.clone(),
                },
            })
            .collect())
    }

    pub(super) fn on_page(
        &mut self,
        position: u64,
        page_number_asked: u64,
        group: String,
        asked: &Url,
        answer: HttpResult,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let page = answer
            .map_err(GitLabError::Unavailable)
            .and_then(|a| self.gitlab.read_projects_page(&a));
        match page {
            Ok(page) => {
                self.gitlab_answered()?;
                let rule = self.settings.changed_only;
                let projects: Vec<ListedProject<'_>> = page
                    .projects
                    .iter()
                    .map(|p| ListedProject {
                        id: p.id,
                        path: p.path_with_namespace.as_str(),
                        held_if_requested_after_ms: rule.and_then(|rule| {
                            held_if_requested_after(
                                rule,
                                p.id,
                                p.last_activity_at.as_deref(),
                                now_ms,
                            )
                        }),
                    })
                    .collect();
                let next = page.next.as_ref().map(|url| {
                    let number = page_number(url).unwrap_or(page_number_asked + 1);
                    (url.as_str(), number)
                });
                let recorded = self.store.record_page(
                    self.run.id,
                    &ListedPage {
                        position,
                        page: page_number_asked,
                        projects: &projects,
                        backups_from_run: self.settings.backups_from_run.unwrap_or(self.run.id),
                        next,
                        pages_total: page.total_pages,
                        total: page.total,
                    },
                )?;
                if let Some(run) = recorded.run {
                    self.run = run;
                }
                self.report.events.push(Event::PageListed {
                    run: self.run.id,
                    group: group.clone(),
                    projects: projects.len(),
                    new: recorded.added,
                    unchanged: recorded.unchanged,
                    more: next.is_some(),
                });
                let changed = recorded.cursor.and_then(|pass| {
                    let announced = pass.announced?;
                    let now = page.total.filter(|now| *now != announced)?;
                    Some((
                        pass,
                        CountChanged {
                            announced,
                            now,
                            page: page_number_asked,
                        },
                    ))
                });
                if let Some((pass, changed)) = changed {
                    self.relist(position, group, asked, &pass, changed, now_ms)?;
                }
            }
            Err(GitLabError::RateLimited { retry_after }) => {
                // Listing has its own, generous limit; wait as asked, exports included.
                self.rate_limited(retry_after, Limited::AllOfGitLab, now_ms)?;
            }
            Err(e @ (GitLabError::Unauthorized | GitLabError::Unavailable(_))) => {
                self.gitlab_unavailable(&format!("listing group {group}: {e}"), now_ms)?;
            }
            Err(e) => {
                self.gitlab_answered()?;
                let reason = e.to_string();
                self.store
                    .record_listing_error(self.run.id, position, &reason)?;
                self.note_error(&format!("group {group}: {reason}"), now_ms)?;
                self.report.events.push(Event::GroupFailed {
                    run: self.run.id,
                    group,
                    reason,
                });
            }
        }
        Ok(())
    }

    /// The pass over `group` may have skipped a project: the group is listed again from its
    /// first page (the URL `asked`, at page 1), or past [`MAX_RELISTS`] the pass goes on and
    /// the run reports the doubt.
    fn relist(
        &mut self,
        position: u64,
        group: String,
        asked: &Url,
        pass: &ListingPass,
        changed: CountChanged,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        if pass.relists >= MAX_RELISTS {
            let doubt = format!(
                "the group changed during each of its {} listings ({changed}): this run may \
                 miss a project of it",
                pass.relists + 1
            );
            self.store
                .record_listing_doubt(self.run.id, position, &doubt)?;
            return self.note_error(&format!("group {group}: {doubt}"), now_ms);
        }
        self.store
            .relist(self.run.id, position, with_page(asked, 1).as_str())?;
        self.report.events.push(Event::GroupRelisted {
            run: self.run.id,
            group,
            reason: changed.to_string(),
            relists: pass.relists + 1,
        });
        Ok(())
    }
}
