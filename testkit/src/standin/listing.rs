//! `GET /groups/:id/projects`: which projects a group lists under GitLab's filters, in which order, and
//! GitLab's offset pagination (page slicing, `X-*` headers and the `Link` header).

use std::borrow::Cow;
use std::str::FromStr;

use serde::Deserialize;
use url::Url;

use super::api::ApiError;
use super::seed::{Project, Seed};

const DEFAULT_PER_PAGE: usize = 20;
/// Above this many records GitLab stops counting: no `X-Total`, `X-Total-Pages` or `rel="last"`.
const MAX_COUNTED_RECORDS: usize = 10_000;

/// The query parameters the stand-in understands, as sent; others (`search`, `visibility`, …) are
/// ignored. Empty values count as absent.
#[derive(Debug, Default, Deserialize)]
pub struct ListingQuery {
    page: Option<String>,
    per_page: Option<String>,
    include_subgroups: Option<String>,
    with_shared: Option<String>,
    archived: Option<String>,
    order_by: Option<String>,
    sort: Option<String>,
    simple: Option<String>,
}

/// A validated listing request.
#[derive(Debug)]
pub struct Listing {
    include_subgroups: bool,
    with_shared: bool,
    /// `None`: archived and active projects; `Some(archived)`: only those with that flag.
    archived: Option<bool>,
    order_by: OrderBy,
    descending: bool,
    /// Answer with the simple project representation.
    pub simple: bool,
    /// 1-based.
    page: usize,
    per_page: usize,
}

#[derive(Debug, Clone, Copy)]
enum OrderBy {
    /// `id`, and the timestamps, which increase with the id in every seed (a `last_activity_at`
    /// moved by [`ProjectChange::Activity`](super::ProjectChange::Activity) is still ordered by id:
    /// the backup lists by id only).
    Id,
    Name,
    Path,
}

impl ListingQuery {
    /// Checks the parameters; `per_page` is capped at `max_per_page` (GitLab: 100), as GitLab caps
    /// it silently.
    pub fn validate(self, max_per_page: usize) -> Result<Listing, ApiError> {
        let order_by = match present(&self.order_by) {
            None | Some("id" | "created_at" | "updated_at" | "last_activity_at") => OrderBy::Id,
            Some("name") => OrderBy::Name,
            Some("path") => OrderBy::Path,
            Some(_) => return Err(ApiError::unsupported_value("order_by")),
        };
        let descending = match present(&self.sort) {
            None | Some("desc") => true,
            Some("asc") => false,
            Some(_) => return Err(ApiError::unsupported_value("sort")),
        };
        let page: usize = number("page", &self.page)?.unwrap_or(1);
        let per_page: usize = number("per_page", &self.per_page)?.unwrap_or(DEFAULT_PER_PAGE);
        Ok(Listing {
            include_subgroups: boolean("include_subgroups", &self.include_subgroups)?
                .unwrap_or(false),
            with_shared: boolean("with_shared", &self.with_shared)?.unwrap_or(true),
            archived: boolean("archived", &self.archived)?,
            order_by,
            descending,
            simple: boolean("simple", &self.simple)?.unwrap_or(false),
            page: page.max(1),
            per_page: if per_page == 0 {
                DEFAULT_PER_PAGE
            } else {
                per_page
            }
            .min(max_per_page.max(1)),
        })
    }
}

fn present(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|value| !value.is_empty())
}

fn number<T: FromStr>(name: &str, value: &Option<String>) -> Result<Option<T>, ApiError> {
    present(value)
        .map(|value| value.parse().map_err(|_| ApiError::invalid(name)))
        .transpose()
}

/// GitLab's Boolean parameters accept `true`/`false` and `1`/`0`.
pub fn boolean(name: &str, value: &Option<String>) -> Result<Option<bool>, ApiError> {
    present(value)
        .map(|value| match value.to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(ApiError::invalid(name)),
        })
        .transpose()
}

impl Listing {
    /// Every project the group lists under these filters, in the requested order: the group's own
    /// projects (and its subgroups' with `include_subgroups`), plus with `with_shared` the projects
    /// shared with the group itself, each once.
    /// `created` are the projects made after the seed (by imports), listed like the seed's own.
    pub fn select<'s>(
        &self,
        seed: &'s Seed,
        created: &'s [Project],
        group_id: u64,
    ) -> Vec<&'s Project> {
        let shared = self
            .with_shared
            .then(|| seed.projects_shared_with(group_id))
            .into_iter()
            .flatten();
        let owners = seed.owners(group_id, self.include_subgroups);
        let created = created
            .iter()
            .filter(move |project| owners.contains(&project.group_id));
        let mut projects: Vec<&Project> = seed
            .projects_owned_by(group_id, self.include_subgroups)
            .chain(created)
            .chain(shared)
            .filter(|project| {
                self.archived
                    .is_none_or(|archived| project.archived == archived)
            })
            .collect();
        projects.sort_by(|a, b| match self.order_by {
            OrderBy::Id => a.id.cmp(&b.id),
            OrderBy::Name => a.name.cmp(&b.name).then(a.id.cmp(&b.id)),
            OrderBy::Path => a.path.cmp(&b.path).then(a.id.cmp(&b.id)),
        });
        projects.dedup_by_key(|project| project.id);
        if self.descending {
            projects.reverse();
        }
        projects
    }

    /// The requested page of a listing of `total` projects.
    pub fn pagination(&self, total: usize) -> Pagination {
        Pagination {
            page: self.page,
            per_page: self.per_page,
            total,
        }
    }
}

/// GitLab's offset pagination of one listing request.
#[derive(Debug, Clone, Copy)]
pub struct Pagination {
    /// 1-based.
    page: usize,
    per_page: usize,
    total: usize,
}

impl Pagination {
    /// The requested page of `items` (empty beyond the last page).
    pub fn slice<'a, T>(&self, items: &'a [T]) -> &'a [T] {
        let start = (self.page - 1)
            .saturating_mul(self.per_page)
            .min(items.len());
        let end = start.saturating_add(self.per_page).min(items.len());
        &items[start..end]
    }

    fn is_counted(&self) -> bool {
        self.total <= MAX_COUNTED_RECORDS
    }

    /// At least 1, like GitLab, even for an empty listing.
    fn total_pages(&self) -> usize {
        self.total.div_ceil(self.per_page).max(1)
    }

    fn is_out_of_range(&self) -> bool {
        self.page > self.total_pages()
    }

    fn next_page(&self) -> Option<usize> {
        (self.page.saturating_mul(self.per_page) < self.total).then_some(self.page + 1)
    }

    fn prev_page(&self) -> Option<usize> {
        (self.page > 1 && !self.is_out_of_range()).then(|| self.page - 1)
    }

    /// `X-Page`, `X-Per-Page`, `X-Next-Page`, `X-Prev-Page`, `X-Total`, `X-Total-Pages` and `Link`,
    /// whose URLs are `request_url` (on the public base) with `page` changed. Totals and
    /// `rel="last"` are left out above 10,000 records, as GitLab does.
    pub fn headers(&self, request_url: &Url) -> Vec<(&'static str, String)> {
        let optional = |page: Option<usize>| page.map(|page| page.to_string()).unwrap_or_default();
        let mut headers = vec![
            ("x-page", self.page.to_string()),
            ("x-per-page", self.per_page.to_string()),
            ("x-next-page", optional(self.next_page())),
            ("x-prev-page", optional(self.prev_page())),
        ];
        let mut links = vec![
            (self.prev_page(), "prev"),
            (self.next_page(), "next"),
            (Some(1), "first"),
        ];
        if self.is_counted() {
            headers.push(("x-total", self.total.to_string()));
            headers.push(("x-total-pages", self.total_pages().to_string()));
            links.push((Some(self.total_pages()), "last"));
        }
        let link = links
            .into_iter()
            .filter_map(|(page, rel)| {
                Some(format!(
                    "<{}>; rel=\"{rel}\"",
                    with_page(request_url, page?)
                ))
            })
            .collect::<Vec<_>>()
            .join(", ");
        headers.push(("link", link));
        headers
    }
}

/// `url` with its `page` query parameter set to `page`, all other parameters kept in order.
fn with_page(url: &Url, page: usize) -> Url {
    let page = page.to_string();
    let mut replaced = false;
    let pairs: Vec<(Cow<str>, Cow<str>)> = url
        .query_pairs()
        .map(|(name, value)| {
            if name == "page" {
                replaced = true;
                (name, Cow::Borrowed(page.as_str()))
            } else {
                (name, value)
            }
        })
        .collect();
    let mut linked = url.clone();
    {
        let mut query = linked.query_pairs_mut();
        query.clear().extend_pairs(pairs);
        if !replaced {
            query.append_pair("page", &page);
        }
    }
    linked
}
