//! Listing: each configured group's projects, page by page, several pages at once where GitLab
//! gave the page count; a page moves its group's cursor only by compare-and-set on the page
//! number, so pages read ahead or twice change nothing.

use url::Url;

use super::gates::Limited;
use super::{Event, Purpose, Step, Tick};
use crate::config::Config;
use crate::gitlab::{page_number, with_page, GitLabError};
use crate::http::HttpResult;
use crate::store::{ListedPage, Phase, Sql, StoreError};

/// Listing pages read at once: Cloudflare keeps at most six subrequests waiting for their
/// answer per invocation, and queues the rest.
pub const LISTING_CONCURRENCY: u32 = 6;
/// CPU time budgeted for one listing page of 100 projects (parsing it and recording its
/// rows): the free plan's 10 ms reads one page per invocation. `cargo xtask bench` measures
/// the real cost on the host.
pub const LISTING_PAGE_CPU_MS: u32 = 10;

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
        answer: HttpResult,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let page = answer
            .map_err(GitLabError::Unavailable)
            .and_then(|a| self.gitlab.read_projects_page(&a));
        match page {
            Ok(page) => {
                self.gitlab_answered()?;
                let projects: Vec<(u64, &str)> = page
                    .projects
                    .iter()
                    .map(|p| (p.id, p.path_with_namespace.as_str()))
                    .collect();
                let next = page.next.as_ref().map(|url| {
                    let number = page_number(url).unwrap_or(page_number_asked + 1);
                    (url.as_str(), number)
                });
                let (new, run) = self.store.record_page(
                    self.run.id,
                    &ListedPage {
                        position,
                        page: page_number_asked,
                        projects: &projects,
                        next,
                        pages_total: page.total_pages,
                    },
                )?;
                if let Some(run) = run {
                    self.run = run;
                }
                self.report.events.push(Event::PageListed {
                    run: self.run.id,
                    group,
                    projects: projects.len(),
                    new,
                    more: next.is_some(),
                });
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
}
