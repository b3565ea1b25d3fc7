//! The fault matrix (issue 6), end to end through `wrangler dev`, the GitLab stand-in and s3s-fs.
//! Each case is a test, and each ends with every project `verified` or `failed` with the right
//! reason, none lost, none exported twice without cause (a lost answer), and no rolling 60 s with
//! more export requests than the limit:
//!
//! - 429 bursts with and without `Retry-After`;
//! - 5 % of listing calls answered 500;
//! - GitLab unreachable (the stand-in stops listening) for several ticks, then back;
//! - export answers slower than the worker's 30 s timeout;
//! - GitLab's real export limit (5 a minute) below `EXPORTS_PER_MINUTE` (6);
//! - the worker killed mid-tick: while an export request it sent has not reached GitLab yet (its
//!   state then is the one of a kill between presigning and sending), and after GitLab accepted
//!   one but before the answer was persisted; restarted on the same local state;
//! - S3 refusing the worker's key;
//! - a project deleted and one renamed between listing and export;
//! - a project deleted between two listing pages (the group is listed again);
//! - an export status that always answers 500, and a lost archive over S3's 5 GB single-PUT limit;
//! - an upload that is no gzip stream;
//! - a small daily allowance of the Durable Object's rows written (the run pauses, then resumes
//!   once the allowance is lifted);
//! - groups that do not exist or are not visible;
//! - `S3_PREFIX` changed mid-run: the run ends under its own prefix, the next one uses the new;
//! - a run cancelled mid-export.
//!
//! Where the rate limit is not the subject, the stand-in allows far more than the worker sends, so
//! that each case takes one to four minutes; the cases run in parallel (cargo's test threads).
//!
//! [`Case`] holds what every case does (the stack's seed, stand-in options, groups and settings,
//! starting it, `POST /run`, the cron to the end, the timing, and the end checks of
//! [`ensure_outcome`]); each test adds its own setup and its own assertions.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{ensure, Context, Result};
use common::*;
use gitlab_backup::engine::Event;
use serde_json::Value;
use testkit::stack::LocalStack;
use testkit::standin::{
    Burst429, ExportRecord, Faults, HoldExport, HoldStage, Options, Project, ProjectChange, Seed,
    Statistics, DEMO_GROUPS,
};

const MINUTE: Duration = Duration::from_secs(60);
/// The worker's own request timeout (`engine::REQUEST_TIMEOUT`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the tests fire the cron trigger (production: every minute).
const CRON_EVERY: Duration = Duration::from_secs(5);
/// A stand-in limit far above what any case sends: the limit is not what those cases test.
const UNLIMITED: u32 = 1_000;

fn took(test: &str, began: Instant) {
    eprintln!("{test}: {:.1} s", began.elapsed().as_secs_f64());
}

/// How many of the worker's events match.
fn how_many(events: &[Event], matching: impl Fn(&Event) -> bool) -> usize {
    events.iter().filter(|e| matching(e)).count()
}

/// The reasons of the `retry_later` events.
fn retry_later_reasons(events: &[Event]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::RetryLater { reason, .. } => Some(reason.as_str()),
            _ => None,
        })
        .collect()
}

/// The limits of the `limit_learned` events.
fn limits_learned(events: &[Event]) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::LimitLearned {
                exports_per_minute, ..
            } => Some(*exports_per_minute),
            _ => None,
        })
        .collect()
}

fn options(exports_per_window: u32) -> Options {
    Options {
        exports_per_window,
        window: MINUTE,
        ..Options::default()
    }
}

/// The cron every [`CRON_EVERY`] until the run is finished; the final status.
async fn finish(stack: &LocalStack, timeout: Duration) -> Result<Value> {
    stack
        .wait_for_phase("finished", Some(CRON_EVERY), timeout)
        .await
}

/// The export requests that arrived strictly after `at`.
fn after(exports: &[ExportRecord], at: SystemTime) -> Vec<ExportRecord> {
    exports.iter().filter(|e| e.at > at).cloned().collect()
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// What a case expects at the end of its run.
struct Outcome<'s> {
    /// Every project the run lists.
    projects: Vec<&'s Project>,
    /// Projects that end `failed`, with a piece of their reason.
    failed: BTreeMap<u64, &'static str>,
    /// Exports GitLab accepted per project where that is not 1 (a lost answer: 2; a project gone
    /// before its export: 0).
    accepted: BTreeMap<u64, usize>,
    /// No rolling 60 s holds more export requests than this (`EXPORTS_PER_MINUTE`).
    limit: usize,
}

/// Every project ended with its outcome, none lost, none exported twice without cause, the limit
/// held, the objects are in the bucket, and the manifest agrees with `/status`.
fn ensure_outcome(stack: &LocalStack, status: &Value, outcome: &Outcome) -> Result<()> {
    let run = &status["run"];
    ensure!(
        run["phase"] == "finished" && run["error"].is_null(),
        "the run did not finish normally: {status:#}"
    );
    let n = outcome.projects.len() as u64;
    let failed = outcome.failed.len() as u64;
    let counts = (
        count(status, "listed")?,
        count(status, "verified")?,
        count(status, "failed")?,
        count(status, "pending")?,
    );
    ensure!(
        counts == (n, n - failed, failed, 0),
        "listed, verified, failed, pending: {counts:?}, expected {:?}: {status:#}",
        (n, n - failed, failed, 0)
    );
    let reasons: BTreeMap<u64, String> = run["failures"]
        .as_array()
        .context("no failures list")?
        .iter()
        .map(|f| {
            (
                f["project_id"].as_u64().unwrap_or(0),
                f["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    ensure!(
        reasons.keys().eq(outcome.failed.keys()),
        "failed projects {reasons:?}, expected {:?}",
        outcome.failed
    );
    for (id, piece) in &outcome.failed {
        ensure!(
            reasons[id].contains(piece),
            "project {id} failed for {:?}, expected {piece:?}",
            reasons[id]
        );
    }

    let exports = stack.standin.exports();
    let per_project = accepted_per_project(&exports);
    let ids: BTreeSet<u64> = outcome.projects.iter().map(|p| p.id).collect();
    let foreign: Vec<&u64> = per_project.keys().filter(|id| !ids.contains(id)).collect();
    ensure!(foreign.is_empty(), "exported other projects: {foreign:?}");
    let mut wrong = Vec::new();
    for project in &outcome.projects {
        let expected = outcome.accepted.get(&project.id).copied().unwrap_or(
            if outcome.failed.contains_key(&project.id) {
                0
            } else {
                1
            },
        );
        let got = per_project.get(&project.id).copied().unwrap_or(0);
        if got != expected {
            wrong.push(format!(
                "{} ({}): {got} accepted exports, expected {expected}",
                project.path_with_namespace, project.id
            ));
        }
    }
    ensure!(
        wrong.is_empty(),
        "lost or exported without cause: {wrong:#?}"
    );
    ensure_at_most_per_span(&exports, outcome.limit, MINUTE)?;

    // The backups are where the listing put them, and the manifest says what /status says.
    let verified: Vec<&Project> = outcome
        .projects
        .iter()
        .filter(|p| !outcome.failed.contains_key(&p.id))
        .copied()
        .collect();
    ensure_objects_landed(stack, &verified, &run_object_name(status)?)?;
    let summary_key = run["summary_key"].as_str().context("no summary_key")?;
    let summary: Value = serde_json::from_slice(
        &std::fs::read(stack.s3.object_path(summary_key)).context("summary.json is not in S3")?,
    )?;
    for name in ["listed", "exported", "verified", "failed"] {
        ensure!(
            summary[name] == run["projects"][name],
            "summary {name}: {summary} vs {status}"
        );
    }
    let mut lines = 0;
    for part in summary["parts"].as_array().context("no parts")? {
        let key = part.as_str().context("part key")?;
        lines += std::fs::read_to_string(stack.s3.object_path(key))
            .with_context(|| format!("{key} is not in S3"))?
            .lines()
            .count();
    }
    ensure!(lines as u64 == n, "{lines} manifest lines for {n} projects");
    Ok(())
}

/// How a case's run ends, beyond the case's own assertions.
enum Ending {
    /// The end every case checks ([`ensure_outcome`]): every project `verified` but those
    /// `failed` (with a piece of their reason), each accepted once but as `accepted` says.
    Projects {
        failed: BTreeMap<u64, &'static str>,
        accepted: BTreeMap<u64, usize>,
    },
    /// The run stopped before any export: the case's own assertions are all there is.
    Stopped,
}

impl Ending {
    /// Every project verified, each exported once.
    fn all_verified() -> Ending {
        Ending::Projects {
            failed: BTreeMap::new(),
            accepted: BTreeMap::new(),
        }
    }
}

/// One case of the matrix: the stack it starts and what is checked at its end.
struct Case {
    /// The stack's work folder.
    name: &'static str,
    /// What [`took`] prints.
    label: &'static str,
    seed: Seed,
    options: Options,
    /// `GITLAB_GROUPS`.
    groups: String,
    /// Settings after the local stack's (the later `--var` wins).
    vars: Vec<(&'static str, String)>,
    faults: Option<Faults>,
    /// `EXPORTS_PER_MINUTE`, which no rolling 60 s exceeds at the end.
    limit: Option<usize>,
    /// The projects the run lists: those these groups own, or every project of the seed.
    projects_of: Option<&'static [&'static str]>,
}

impl Case {
    /// A case over `seed` that backs up `team-0`, the stand-in allowing [`UNLIMITED`] exports a
    /// minute.
    fn new(name: &'static str, label: &'static str, seed: Seed) -> Case {
        Case {
            name,
            label,
            seed,
            options: options(UNLIMITED),
            groups: "team-0".to_owned(),
            vars: Vec::new(),
            faults: None,
            limit: None,
            projects_of: None,
        }
    }

    fn options(self, options: Options) -> Case {
        Case { options, ..self }
    }

    fn groups(self, groups: &str) -> Case {
        Case {
            groups: groups.to_owned(),
            ..self
        }
    }

    /// `EXPORTS_PER_MINUTE`, set for the worker and held at the end.
    fn limit(mut self, limit: usize) -> Case {
        self.vars.push(("EXPORTS_PER_MINUTE", limit.to_string()));
        Case {
            limit: Some(limit),
            ..self
        }
    }

    fn var(mut self, name: &'static str, value: &str) -> Case {
        self.vars.push((name, value.to_owned()));
        self
    }

    /// Set on the stand-in once it is up, before the run.
    fn faults(self, faults: Faults) -> Case {
        Case {
            faults: Some(faults),
            ..self
        }
    }

    /// The run lists the projects these groups own (rather than every project of the seed).
    fn projects_of(self, groups: &'static [&'static str]) -> Case {
        Case {
            projects_of: Some(groups),
            ..self
        }
    }

    /// `POST /run`, then the cron every [`CRON_EVERY`] until the run is finished (within
    /// `timeout`); then `check` with the final status, then the end checks.
    async fn run_to_the_end(
        self,
        timeout: Duration,
        check: impl AsyncFnOnce(&LocalStack, &Value) -> Result<Ending>,
    ) -> Result<()> {
        self.drive(async move |stack| {
            let result = async {
                let (code, body) = stack.start_run().await?;
                ensure!(code == 202, "POST /run answered {code}: {body}");
                let status = finish(&stack, timeout).await?;
                let ending = check(&stack, &status).await?;
                Ok((status, ending))
            }
            .await;
            (Some(stack), result)
        })
        .await
    }

    /// Starts the stack, sets the faults, lets `drive` run the case (it gives back the stack it
    /// ends with, the final status and the ending), makes the end checks, stops the stack
    /// whatever happened, and prints how long it all took.
    async fn drive(
        self,
        drive: impl AsyncFnOnce(LocalStack) -> (Option<LocalStack>, Result<(Value, Ending)>),
    ) -> Result<()> {
        let began = Instant::now();
        let label = self.label;
        let result = self.started(drive).await;
        took(label, began);
        result
    }

    async fn started(
        self,
        drive: impl AsyncFnOnce(LocalStack) -> (Option<LocalStack>, Result<(Value, Ending)>),
    ) -> Result<()> {
        let stack =
            LocalStack::start(self.name, self.seed, self.options, &self.groups, &self.vars).await?;
        if let Some(faults) = self.faults {
            stack.standin.set_faults(faults);
        }
        let (limit, projects_of) = (self.limit, self.projects_of);
        checked(stack, |stack| async move {
            let (stack, result) = drive(stack).await;
            let result = match (&stack, result) {
                (Some(stack), Ok((status, ending))) => {
                    ensure_ending(stack, &status, ending, limit, projects_of)
                }
                (None, Ok(_)) => Err(anyhow::anyhow!("the case lost its stack before the end")),
                (_, Err(e)) => Err(e),
            };
            (stack, result)
        })
        .await
    }
}

/// The end checks of a case whose run ends with its projects.
fn ensure_ending(
    stack: &LocalStack,
    status: &Value,
    ending: Ending,
    limit: Option<usize>,
    projects_of: Option<&[&str]>,
) -> Result<()> {
    let Ending::Projects { failed, accepted } = ending else {
        return Ok(());
    };
    let seed = stack.standin.seed();
    let projects = match projects_of {
        Some(groups) => own_projects(seed, groups),
        None => seed.projects().iter().collect(),
    };
    let limit = limit.context("a case that ends with its projects sets Case::limit")?;
    ensure_outcome(
        stack,
        status,
        &Outcome {
            projects,
            failed,
            accepted,
            limit,
        },
    )
}

// --- 429 bursts ---

/// A burst of 429s (another client of the backup user spends its limit) from the 7th export
/// request on, for 10 s; the worker sends nothing before `Retry-After` (or its default of 60 s
/// without one), keeps to what got through, and backs everything up once.
async fn burst_case(
    name: &'static str,
    label: &'static str,
    retry_after: Option<Duration>,
) -> Result<()> {
    Case::new(name, label, Seed::generated(1, 12))
        .limit(20)
        .faults(Faults {
            export_429_burst: Some(Burst429 {
                from_request: 7,
                lasting: Duration::from_secs(10),
                retry_after: retry_after.unwrap_or(MINUTE),
            }),
            omit_retry_after: retry_after.is_none(),
            ..Faults::default()
        })
        .run_to_the_end(Duration::from_secs(5 * 60), async move |stack, _| {
            burst_check(stack, retry_after).await
        })
        .await
}

async fn burst_check(stack: &LocalStack, retry_after: Option<Duration>) -> Result<Ending> {
    let exports = stack.standin.exports();
    let limited: Vec<&ExportRecord> = exports.iter().filter(|e| e.status == 429).collect();
    // The burst is over long before the worker asks again: one 429, not one per attempt.
    ensure!(
        limited.len() == 1,
        "{} answers 429: {exports:#?}",
        limited.len()
    );
    let refused_at = limited[0].at;
    let next = after(&exports, refused_at);
    let first_after = next.first().context("nothing exported after the 429")?;
    let waited = first_after.at.duration_since(refused_at)?;
    // `Retry-After`, or the worker's default of 60 s without one; and not much longer.
    let asked = retry_after.unwrap_or(MINUTE);
    ensure!(
        waited >= asked && waited <= asked + Duration::from_secs(20),
        "the first export after the 429 came {:.1} s later; asked to wait {} s",
        seconds(waited),
        asked.as_secs()
    );
    let events = engine_events(stack)?;
    let rate_limited: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::RateLimited { retry_after_s } => Some(*retry_after_s),
            _ => None,
        })
        .collect();
    ensure!(
        rate_limited == [asked.as_secs()],
        "rate_limited events (retry_after_s): {rate_limited:?}"
    );
    // Six got through before the burst: the rest of the run keeps to six a minute.
    let learned = limits_learned(&events);
    ensure!(
        learned == [6],
        "limit_learned events (exports_per_minute): {learned:?}"
    );
    ensure_at_most_per_span(&next, 6, MINUTE)?;
    Ok(Ending::all_verified())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_burst_with_retry_after_is_waited_out_as_asked_and_every_project_is_verified_once(
) -> Result<()> {
    // Longer than the rolling window, so that only Retry-After explains the wait.
    burst_case(
        "faults-burst-retry-after",
        "429 burst with Retry-After",
        Some(Duration::from_secs(75)),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_burst_without_retry_after_is_waited_out_a_minute_and_every_project_is_verified_once(
) -> Result<()> {
    burst_case(
        "faults-burst-no-retry-after",
        "429 burst without Retry-After",
        None,
    )
    .await
}

// --- Listing answered 500 ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_of_listing_calls_answered_500_are_retried_after_a_backoff_and_nothing_is_lost(
) -> Result<()> {
    // 40 projects, one a page: 40 listing calls, of which every 20th answers 500.
    Case::new("faults-listing-500", "listing 500", Seed::generated(2, 20))
        .options(Options {
            max_per_page: 1,
            ..options(UNLIMITED)
        })
        .groups("team-0,team-1")
        .limit(60)
        .faults(Faults {
            listing_5xx_every: Some(20),
            ..Faults::default()
        })
        .run_to_the_end(Duration::from_secs(6 * 60), listing_500_check)
        .await
}

async fn listing_500_check(stack: &LocalStack, status: &Value) -> Result<Ending> {
    // Requests 20 and 40 failed, each page was asked again: 40 pages in 42 calls.
    let calls = stack.standin.listing_requests();
    ensure!(calls == 42, "{calls} listing calls for 40 pages");
    let events = engine_events(stack)?;
    let retries: Vec<&str> = retry_later_reasons(&events)
        .into_iter()
        .filter(|r| r.contains("listing group"))
        .collect();
    ensure!(
        retries.len() == 2 && retries.iter().all(|r| r.contains("500")),
        "retry_later events for the listing: {retries:?}"
    );
    let pages = how_many(&events, |e| matches!(e, Event::PageListed { .. }));
    ensure!(pages == 40, "{pages} pages listed");
    ensure!(
        status["run"]["group_errors"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "a 500 made a group fail: {status:#}"
    );
    Ok(Ending::all_verified())
}

// --- GitLab unreachable ---

/// How long GitLab stays unreachable: the worker's backoff of 1, then 2 minutes sees it down
/// twice, and the third try finds it back.
const OUTAGE: Duration = Duration::from_secs(150);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_unreachable_for_several_ticks_while_exporting_then_back_loses_and_repeats_nothing(
) -> Result<()> {
    // 24 projects, each export answered in 0.3 s: the exporting tick lasts ~7 s.
    Case::new(
        "faults-unreachable",
        "GitLab unreachable",
        Seed::generated(2, 12),
    )
    .options(Options {
        export_answer_delay: Duration::from_millis(300),
        ..options(UNLIMITED)
    })
    .groups("team-0,team-1")
    .limit(60)
    .drive(async |mut stack| {
        let result = unreachable_check(&mut stack).await;
        (Some(stack), result)
    })
    .await
}

async fn unreachable_check(stack: &mut LocalStack) -> Result<(Value, Ending)> {
    let (code, body) = stack.start_run().await?;
    ensure!(code == 202, "POST /run answered {code}: {body}");
    let deadline = Instant::now() + Duration::from_secs(90);
    while stack.standin.exports().len() < 8 {
        ensure!(
            Instant::now() < deadline,
            "only {} exports within 90 s",
            stack.standin.exports().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = stack.status().await?;
    ensure!(
        status["run"]["phase"] == "exporting",
        "the outage should begin while exporting: {status:#}"
    );
    let run = status["run"]["id"].clone();

    stack.standin.pause().await;
    let paused_at = SystemTime::now();
    let before_outage = stack.standin.exports();
    let ticks_before = how_many(&engine_events(stack)?, |e| {
        matches!(e, Event::TickEnded { .. })
    });
    eprintln!(
        "GitLab unreachable after {} export requests, for {} s",
        before_outage.len(),
        OUTAGE.as_secs()
    );
    let outage_ends = Instant::now() + OUTAGE;
    while Instant::now() < outage_ends {
        stack.wrangler.fire_cron().await?;
        tokio::time::sleep(CRON_EVERY).await;
    }
    let events = engine_events(stack)?;
    let ticks_during = how_many(&events, |e| matches!(e, Event::TickEnded { .. })) - ticks_before;
    stack.standin.resume().await?;
    let resumed_at = SystemTime::now();

    let status = finish(stack, Duration::from_secs(5 * 60)).await?;
    ensure!(status["run"]["id"] == run, "another run: {status:#}");
    let exports = stack.standin.exports();
    ensure!(
        exports.len() >= before_outage.len()
            && exports[..before_outage.len()]
                .iter()
                .all(|e| e.at <= paused_at),
        "GitLab got export requests while unreachable"
    );
    let back = after(&exports, resumed_at);
    let first_back = back.first().context("nothing exported after the outage")?;
    let late = first_back.at.duration_since(resumed_at)?;
    ensure!(
        late <= Duration::from_secs(150),
        "the worker came back {:.0} s after GitLab did",
        seconds(late)
    );
    ensure!(
        ticks_during >= 3,
        "only {ticks_during} ticks while GitLab was unreachable"
    );
    let events = engine_events(stack)?;
    let unavailable = retry_later_reasons(&events)
        .into_iter()
        .filter(|r| r.contains("GitLab is unavailable"))
        .count();
    ensure!(
        (2..=3).contains(&unavailable),
        "{unavailable} retry_later events for the outage (expected tries at 0, 1 and maybe 3 minutes)"
    );
    ensure!(
        how_many(&events, |e| matches!(e, Event::RunStarted { .. })) == 1,
        "a second run started"
    );
    eprintln!(
        "{ticks_during} ticks while unreachable, {unavailable} tries refused, back {:.1} s after GitLab",
        seconds(late)
    );

    // An answer can only be lost for the request in flight when the listener stopped; the
    // stand-in lets it finish, so none is expected.
    Ok((status, Ending::all_verified()))
}

// --- Slow answers ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_answer_slower_than_the_timeout_is_given_up_and_asked_again_after_a_backoff(
) -> Result<()> {
    Case::new("faults-slow", "slow answers", Seed::generated(1, 10))
        .limit(30)
        // GitLab accepts the third export request at once but answers it only after 35 s.
        .faults(Faults {
            export_answer_delays: [(3, REQUEST_TIMEOUT + Duration::from_secs(5))].into(),
            ..Faults::default()
        })
        .run_to_the_end(Duration::from_secs(5 * 60), slow_check)
        .await
}

async fn slow_check(stack: &LocalStack, _: &Value) -> Result<Ending> {
    let exports = stack.standin.exports();
    let slow = exports.get(2).context("fewer than 3 export requests")?;
    let slow_id = project_id(slow);
    let again: Vec<&ExportRecord> = exports[3..]
        .iter()
        .filter(|e| project_id(e) == slow_id)
        .collect();
    ensure!(
        again.len() == 1,
        "project {slow_id}, whose answer timed out, was asked {} more times",
        again.len()
    );
    // Given up after 30 s, then GitLab rests 1 minute; the project goes behind the others (so
    // one project that never answers cannot hold the run), and is asked again later.
    let gap = again[0].at.duration_since(slow.at)?;
    ensure!(
        gap >= REQUEST_TIMEOUT + MINUTE - Duration::from_secs(2)
            && gap <= REQUEST_TIMEOUT + 4 * MINUTE,
        "asked again {:.1} s after the slow request",
        seconds(gap)
    );
    ensure!(
        project_id(&exports[3]) != slow_id,
        "the project whose answer was lost was asked again before the others"
    );
    let events = engine_events(stack)?;
    let timed_out: Vec<&str> = retry_later_reasons(&events)
        .into_iter()
        .filter(|r| r.contains("no answer within 30 s"))
        .collect();
    ensure!(
        timed_out.len() == 1,
        "retry_later for the timeout: {timed_out:?}"
    );
    Ok(Ending::Projects {
        failed: BTreeMap::new(),
        // Its first answer was lost: exported twice, with cause.
        accepted: BTreeMap::from([(slow_id, 2)]),
    })
}

// --- GitLab's real limit below the setting ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_at_five_exports_a_minute_with_six_configured_is_learned_from_one_429_and_used_fully(
) -> Result<()> {
    // 15 projects: three windows of five.
    Case::new(
        "faults-lower-limit",
        "lower real limit",
        Seed::generated(1, 15),
    )
    .options(options(5))
    .limit(6)
    .run_to_the_end(Duration::from_secs(6 * 60), lower_limit_check)
    .await
}

async fn lower_limit_check(stack: &LocalStack, _: &Value) -> Result<Ending> {
    let exports = stack.standin.exports();
    let refused = answered(&exports, 429);
    ensure!(
        (1..=2).contains(&refused),
        "{refused} answers 429 in the whole run (at most 2, not one per window): {exports:#?}"
    );
    let events = engine_events(stack)?;
    let learned = limits_learned(&events);
    ensure!(
        learned.first() == Some(&5) && learned.iter().all(|&n| n == 5),
        "limit_learned events (exports_per_minute): {learned:?}"
    );
    // After the first 429, GitLab's real limit holds in every rolling minute…
    let first_429 = exports
        .iter()
        .find(|e| e.status == 429)
        .context("no 429")?
        .at;
    ensure_at_most_per_span(&after(&exports, first_429), 5, MINUTE)?;
    // …and is used fully: every 5 accepted exports lie within a window and a little.
    let accepted: Vec<&ExportRecord> = accepted(&exports);
    for (earlier, later) in accepted.iter().zip(accepted.iter().skip(5)) {
        let gap = later.at.duration_since(earlier.at)?;
        ensure!(
            gap >= MINUTE && gap <= MINUTE + Duration::from_secs(15),
            "accepted exports 5 apart came {:.1} s apart (at 5 a minute: 60 to 75 s)",
            seconds(gap)
        );
    }
    let span = accepted
        .last()
        .context("none accepted")?
        .at
        .duration_since(accepted[0].at)?;
    eprintln!(
        "{refused} answer(s) 429; 15 exports over {:.1} s at GitLab's 5 a minute",
        seconds(span)
    );
    Ok(Ending::all_verified())
}

// --- The worker killed mid-tick ---

/// The worker is killed while its 5th export request is held by the stand-in at `stage`, then
/// restarted on the same state. GitLab and the worker allow 8 exports a minute, so that the
/// restarted worker must count the request that was in flight to stay within GitLab's limit.
async fn kill_case(name: &'static str, label: &'static str, stage: HoldStage) -> Result<()> {
    let limit = 8;
    Case::new(name, label, Seed::generated(1, 12))
        .options(options(limit as u32))
        .limit(limit)
        .faults(Faults {
            hold_export: Some(HoldExport { request: 5, stage }),
            ..Faults::default()
        })
        .drive(async move |stack| kill_check(stack, stage).await)
        .await
}

async fn kill_check(
    stack: LocalStack,
    stage: HoldStage,
) -> (Option<LocalStack>, Result<(Value, Ending)>) {
    let before_kill = async {
        let (code, body) = stack.start_run().await?;
        ensure!(code == 202, "POST /run answered {code}: {body}");
        let held = stack.standin.wait_held(Duration::from_secs(90)).await?;
        let status = stack.status().await?;
        ensure!(
            status["run"]["phase"] == "exporting",
            "the tick should be exporting: {status:#}"
        );
        let run = status["run"]["id"].clone();
        Ok((held, run))
    }
    .await;
    let (held, run) = match before_kill {
        Ok(found) => found,
        Err(e) => return (Some(stack), Err(e)),
    };
    let killed_at = SystemTime::now();
    let old_log = stack.wrangler.log.clone();
    let stack = match stack.crash_and_restart_worker().await {
        Ok(stack) => stack,
        Err(e) => return (None, Err(e.context("restarting the worker"))),
    };
    // The held request goes on to a dead connection: dropped unseen, or answered to nobody.
    stack.standin.release_held();
    let result = after_kill(&stack, stage, &held, &run, killed_at, &old_log).await;
    (Some(stack), result)
}

async fn after_kill(
    stack: &LocalStack,
    stage: HoldStage,
    held: &testkit::standin::HeldRecord,
    run: &Value,
    killed_at: SystemTime,
    old_log: &std::path::Path,
) -> Result<(Value, Ending)> {
    let held_id = match held.project_id {
        testkit::standin::ProjectRef::Known(id) => id,
        ref other => anyhow::bail!("held an export of an unknown project {other:?}"),
    };
    let at_kill = stack
        .standin
        .exports()
        .into_iter()
        .filter(|e| e.at <= killed_at)
        .collect::<Vec<_>>();
    let expected_at_kill = match stage {
        HoldStage::BeforeArrival => 4,
        HoldStage::BeforeAnswer => 5,
    };
    ensure!(
        at_kill.len() == expected_at_kill,
        "GitLab saw {} export requests before the kill, expected {expected_at_kill}",
        at_kill.len()
    );
    eprintln!(
        "killed while the export of project {held_id} was held {stage:?}; GitLab had seen {} requests",
        at_kill.len()
    );

    let status = finish(stack, Duration::from_secs(4 * 60)).await?;
    ensure!(
        status["run"]["id"] == *run,
        "the restarted worker did not finish run {run}: {status:#}"
    );
    let restarted = engine_events(stack)?;
    ensure!(
        how_many(&restarted, |e| matches!(e, Event::RunStarted { .. })) == 0,
        "the restarted worker started a new run (logs {} and {})",
        old_log.display(),
        stack.wrangler.log.display()
    );
    let exports = stack.standin.exports();
    // The project in flight is the first asked again, within the limit that counted it.
    let first_after = after(&exports, killed_at);
    ensure!(
        first_after.first().map(project_id) == Some(held_id),
        "the first export after the restart was not the one in flight ({held_id}): {first_after:#?}"
    );
    ensure!(
        answered(&exports, 429) == 0,
        "GitLab answered 429: the in-flight request was not counted: {exports:#?}"
    );
    let accepted = match stage {
        // GitLab never saw the first request: exported once.
        HoldStage::BeforeArrival => BTreeMap::new(),
        // GitLab accepted it but the worker never learned: exported again, with cause.
        HoldStage::BeforeAnswer => BTreeMap::from([(held_id, 2)]),
    };
    let ending = Ending::Projects {
        failed: BTreeMap::new(),
        accepted,
    };
    Ok((status, ending))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_claiming_and_presigning_before_gitlab_saw_the_export_resumes_and_exports_it_once(
) -> Result<()> {
    kill_case(
        "faults-kill-before-call",
        "killed before the export call",
        HoldStage::BeforeArrival,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_gitlab_accepted_before_the_answer_was_persisted_exports_it_again_within_the_limit(
) -> Result<()> {
    kill_case(
        "faults-kill-before-persist",
        "killed before persisting the answer",
        HoldStage::BeforeAnswer,
    )
    .await
}

// --- S3 refusing the worker's key ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_refusing_the_configured_key_stops_the_run_in_preflight_naming_the_key_and_exports_nothing(
) -> Result<()> {
    Case::new("faults-s3-refused", "S3 refused", Seed::demo())
        .groups(&DEMO_GROUPS.join(","))
        // Overrides the right secret (the later `--var` wins).
        .var("AWS_SECRET_ACCESS_KEY", "not-the-secret-of-this-key")
        .run_to_the_end(Duration::from_secs(60), s3_refused_check)
        .await
}

async fn s3_refused_check(stack: &LocalStack, status: &Value) -> Result<Ending> {
    let error = status["run"]["error"]
        .as_str()
        .with_context(|| format!("a finished run without its error: {status:#}"))?;
    for piece in [
        "stopped before any export",
        "refused a signed PUT (403)",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "SignatureDoesNotMatch",
    ] {
        ensure!(error.contains(piece), "run.error lacks {piece:?}: {error}");
    }
    ensure!(
        status["last_error"]["message"] == error,
        "last_error: {status:#}"
    );
    // More ticks change nothing: no retry, no new run, nothing asked of GitLab but the token check.
    for _ in 0..3 {
        stack.wrangler.fire_cron().await?;
    }
    let again = stack.status().await?;
    ensure!(
        again["run"]["id"] == status["run"]["id"] && again["run"]["phase"] == "finished",
        "the run went on: {again:#}"
    );
    ensure!(
        stack.standin.exports().is_empty(),
        "exports were requested: {:?}",
        stack.standin.exports()
    );
    ensure!(stack.standin.listing_requests() == 0, "groups were listed");
    let events = engine_events(stack)?;
    let stopped: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::RunStopped { reason, .. } => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    ensure!(
        stopped == [error],
        "run_stopped events (reason): {stopped:?}"
    );
    // The token passed (`preflight_passed` names GitLab's user), the bucket did not.
    ensure!(
        how_many(&events, |e| matches!(e, Event::PreflightPassed { .. })) == 1,
        "the token check"
    );
    for (name, found) in [
        (
            "export_requested",
            how_many(&events, |e| matches!(e, Event::ExportRequested { .. })),
        ),
        (
            "page_listed",
            how_many(&events, |e| matches!(e, Event::PageListed { .. })),
        ),
    ] {
        ensure!(found == 0, "{name} after the bucket refused the key");
    }
    ensure!(
        how_many(&events, |e| matches!(e, Event::RunStarted { .. })) == 1,
        "a second run started"
    );
    let objects = stack.s3.objects()?;
    ensure!(objects.is_empty(), "objects in the bucket: {objects:?}");
    Ok(Ending::Stopped)
}

// --- The world changes between listing and export ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_deleted_and_one_renamed_between_listing_and_export_end_failed_gone_and_verified(
) -> Result<()> {
    let seed = Seed::demo();
    let gone = seed.project_by_path("acme/api").context("acme/api")?.id;
    let renamed = seed
        .project_by_path("globex/firmware")
        .context("globex/firmware")?
        .id;
    Case::new("faults-deleted-renamed", "deleted and renamed", seed)
        .groups(&DEMO_GROUPS.join(","))
        .projects_of(&DEMO_GROUPS)
        .limit(100)
        .faults(Faults {
            on_first_export: vec![
                ProjectChange::Delete(gone),
                ProjectChange::Rename {
                    id: renamed,
                    path: "firmware-ng".to_owned(),
                },
            ],
            ..Faults::default()
        })
        .run_to_the_end(Duration::from_secs(3 * 60), async move |stack, status| {
            changed_world_check(stack, status, gone, renamed).await
        })
        .await
}

async fn changed_world_check(
    stack: &LocalStack,
    status: &Value,
    gone: u64,
    renamed: u64,
) -> Result<Ending> {
    let exports = stack.standin.exports();
    let asked_gone = exports
        .iter()
        .filter(|e| e.project_id == testkit::standin::ProjectRef::Unknown(gone.to_string()))
        .map(|e| e.status)
        .collect::<Vec<_>>();
    ensure!(
        asked_gone == [404],
        "the deleted project's export was asked and answered {asked_gone:?}, expected once 404"
    );
    // The renamed project is backed up under the path it was listed with.
    let backups = status["last_backups"].as_array().context("last_backups")?;
    let backup = backups
        .iter()
        .find(|b| b["project_id"] == renamed)
        .context("the renamed project has no backup")?;
    ensure!(
        backup["path"] == "globex/firmware"
            && backup["key"]
                .as_str()
                .is_some_and(|k| k.starts_with("globex/firmware/")),
        "the renamed project's backup: {backup}"
    );
    Ok(Ending::Projects {
        failed: BTreeMap::from([(gone, "project gone")]),
        accepted: BTreeMap::new(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_that_do_not_exist_or_are_not_visible_are_reported_and_the_other_groups_back_up_fully(
) -> Result<()> {
    Case::new("faults-unknown-groups", "unknown groups", Seed::demo())
        // A misspelt path and an id no group has: GitLab answers 404 to both (as to a group the
        // token cannot see).
        .groups("acme,no-such-group,globex,999,initech")
        .projects_of(&DEMO_GROUPS)
        .limit(100)
        .run_to_the_end(Duration::from_secs(3 * 60), unknown_groups_check)
        .await
}

async fn unknown_groups_check(stack: &LocalStack, status: &Value) -> Result<Ending> {
    let group_errors: BTreeMap<String, String> = status["run"]["group_errors"]
        .as_array()
        .context("no group_errors")?
        .iter()
        .map(|g| {
            (
                g["group"].as_str().unwrap_or("").to_owned(),
                g["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    ensure!(
        group_errors
            .keys()
            .map(String::as_str)
            .eq(["999", "no-such-group"]),
        "group_errors: {group_errors:?}"
    );
    for reason in group_errors.values() {
        ensure!(
            reason.contains("does not exist or GITLAB_TOKEN cannot see it (404)"),
            "reason: {reason}"
        );
    }
    let events = engine_events(stack)?;
    ensure!(
        how_many(&events, |e| matches!(e, Event::GroupFailed { .. })) == 2,
        "group_failed events"
    );
    let summary: Value = serde_json::from_slice(&std::fs::read(
        stack.s3.object_path(
            status["run"]["summary_key"]
                .as_str()
                .context("no summary")?,
        ),
    )?)?;
    ensure!(
        summary["group_errors"].as_array().map(Vec::len) == Some(2),
        "summary.json: {summary}"
    );
    Ok(Ending::all_verified())
}

// --- The operator cancels a run ---

/// `POST /run/cancel` in the middle of the exports: the run finishes with what it proved
/// `verified` and every other project `cancelled` in `/status`, its manifest and its summary;
/// no export is asked after the cancel; a second cancel, and one once the run is finished,
/// answer 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cancelled_mid_export_records_the_rest_cancelled_and_asks_no_more_exports(
) -> Result<()> {
    Case::new("faults-cancel", "cancel", Seed::generated(1, 12))
        .limit(2)
        .drive(async move |stack| {
            let result = async {
                let (code, body) = stack.start_run().await?;
                ensure!(code == 202, "POST /run answered {code}: {body}");
                let before = stack
                    .wait_for_status(
                        "a verified project",
                        Some(CRON_EVERY),
                        Duration::from_secs(120),
                        |s| s["run"]["projects"]["verified"].as_u64() >= Some(1),
                    )
                    .await?;
                let (code, body) = stack.cancel_run().await?;
                ensure!(
                    code == 200 && body["cancelled"] == before["run"]["id"],
                    "POST /run/cancel answered {code}: {body}"
                );
                let cancelled_at = SystemTime::now();
                let (code, body) = stack.cancel_run().await?;
                ensure!(code == 409, "a second cancel answered {code}: {body}");
                let status = finish(&stack, Duration::from_secs(120)).await?;
                let late = after(&stack.standin.exports(), cancelled_at);
                ensure!(late.is_empty(), "exports asked after the cancel: {late:?}");
                let run = &status["run"];
                let (listed, verified, failed, cancelled) = (
                    count(&status, "listed")?,
                    count(&status, "verified")?,
                    count(&status, "failed")?,
                    count(&status, "cancelled")?,
                );
                ensure!(
                    run["cancelled"].is_string()
                        && cancelled > 0
                        && listed == verified + failed + cancelled
                        && count(&status, "pending")? == 0,
                    "the cancelled run's counts: {status:#}"
                );
                let summary_key = run["summary_key"].as_str().context("no summary_key")?;
                let summary: Value = serde_json::from_slice(
                    &std::fs::read(stack.s3.object_path(summary_key))
                        .context("summary.json is not in S3")?,
                )?;
                ensure!(summary["cancelled"] == cancelled, "summary: {summary}");
                let mut outcomes = BTreeMap::<String, u64>::new();
                for part in summary["parts"].as_array().context("no parts")? {
                    let key = part.as_str().context("part key")?;
                    for line in std::fs::read_to_string(stack.s3.object_path(key))
                        .with_context(|| format!("{key} is not in S3"))?
                        .lines()
                    {
                        let line: Value = serde_json::from_str(line)?;
                        let outcome = line["outcome"].as_str().unwrap_or("?").to_owned();
                        *outcomes.entry(outcome).or_default() += 1;
                    }
                }
                ensure!(
                    outcomes.get("cancelled") == Some(&cancelled)
                        && outcomes.values().sum::<u64>() == listed,
                    "manifest outcomes {outcomes:?} for {listed} listed, {cancelled} cancelled"
                );
                let (code, body) = stack.cancel_run().await?;
                ensure!(
                    code == 409,
                    "a cancel with no run going answered {code}: {body}"
                );
                Ok((status, Ending::Stopped))
            }
            .await;
            (Some(stack), result)
        })
        .await
}

// --- The world changes during the listing ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_deleted_between_two_listing_pages_makes_the_group_listed_again_and_none_skipped(
) -> Result<()> {
    // Two projects a page: page 1 is [p0, p1]; p0 goes, and page 2 would be [p3, p4].
    let seed = Seed::generated(1, 6);
    let gone = own_projects(&seed, &["team-0"])[0].id;
    Case::new("faults-relisted", "deleted between listing pages", seed)
        .options(Options {
            max_per_page: 2,
            ..options(UNLIMITED)
        })
        .limit(60)
        .faults(Faults {
            after_listing: vec![(1, ProjectChange::Delete(gone))],
            ..Faults::default()
        })
        .run_to_the_end(Duration::from_secs(3 * 60), async move |stack, status| {
            relisted_check(stack, status, gone).await
        })
        .await
}

async fn relisted_check(stack: &LocalStack, status: &Value, gone: u64) -> Result<Ending> {
    // Pages 1 and 2, then the group again from its first page: 1, 2 and 3 of the 5 left.
    let calls = stack.standin.listing_requests();
    ensure!(calls == 5, "{calls} listing calls");
    let events = engine_events(stack)?;
    let relisted: Vec<(&str, u64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::GroupRelisted {
                group,
                reason,
                relists,
                ..
            } if group == "team-0" => Some((reason.as_str(), *relists)),
            _ => None,
        })
        .collect();
    ensure!(
        relisted
            == [(
                "GitLab counted 6 projects on the first page and 5 on page 2",
                1
            )],
        "group_relisted events: {relisted:?}"
    );
    ensure!(
        status["run"]["group_errors"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "group_errors: {status:#}"
    );
    // Every project is listed (the one deleted too, from page 1): no other was skipped.
    Ok(Ending::Projects {
        failed: BTreeMap::from([(gone, "project gone")]),
        accepted: BTreeMap::new(),
    })
}

// --- Checks that GitLab cannot answer, and an archive too large for one PUT ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_status_always_answering_500_and_a_lost_archive_over_5_gb_end_failed_and_the_run_finishes(
) -> Result<()> {
    // One project's export status always answers 500, and its upload is lost; another's upload
    // is lost and it holds 6 GiB. One attempt each, checked for a minute at most.
    let seed = Seed::generated(1, 6);
    let ids: Vec<u64> = own_projects(&seed, &["team-0"])
        .iter()
        .map(|p| p.id)
        .collect();
    let (unanswered, large) = (ids[1], ids[4]);
    let seed = seed.with_statistics(
        large,
        Statistics {
            repository_size: 6 << 30,
            ..Statistics::default()
        },
    );
    Case::new(
        "faults-status-500",
        "status 500 and a lost 6 GiB archive",
        seed,
    )
    .limit(60)
    .var("VERIFY_TIMEOUT_MINUTES", "1")
    .var("MAX_ATTEMPTS", "1")
    .faults(Faults {
        export_status_5xx: [unanswered].into(),
        fail_upload: [unanswered, large].into(),
        ..Faults::default()
    })
    .run_to_the_end(Duration::from_secs(5 * 60), async move |stack, status| {
        unanswered_check(stack, status, unanswered, large).await
    })
    .await
}

async fn unanswered_check(
    stack: &LocalStack,
    status: &Value,
    unanswered: u64,
    large: u64,
) -> Result<Ending> {
    let events = engine_events(stack)?;
    let unavailable = retry_later_reasons(&events)
        .into_iter()
        .filter(|r| r.contains("checking the export of") && r.contains("500"))
        .count();
    ensure!(unavailable >= 1, "no retry_later for the status's 500s");
    // The run is over and holds nothing: the next run starts when the schedule says (a day after
    // this one started, by default), not never.
    ensure!(
        status["next_tick"] == serde_json::json!({"action": "start_run", "due": false}),
        "next_tick: {status:#}"
    );
    Ok(Ending::Projects {
        failed: BTreeMap::from([
            (
                unanswered,
                "the upload never arrived within 1 minutes (GitLab's export status did not answer",
            ),
            (large, "likely over S3's 5 GB single-PUT limit"),
        ]),
        // Both were accepted once: their exports ran, their uploads did not land.
        accepted: BTreeMap::from([(unanswered, 1), (large, 1)]),
    })
}

// --- An upload that is no gzip stream ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_is_no_gzip_stream_ends_failed_naming_its_first_bytes_and_the_rest_verified(
) -> Result<()> {
    // One project's upload lands as an HTML page (a broken proxy's), still as application/gzip:
    // the ranged GET of its first bytes shows it is no archive. One attempt each.
    let seed = Seed::generated(1, 6);
    let not_gzip = own_projects(&seed, &["team-0"])[2].id;
    Case::new("faults-not-gzip", "an upload that is no gzip stream", seed)
        .limit(60)
        .var("MAX_ATTEMPTS", "1")
        .faults(Faults {
            upload_not_gzip: [not_gzip].into(),
            ..Faults::default()
        })
        .run_to_the_end(Duration::from_secs(3 * 60), async move |stack, _| {
            not_gzip_check(stack, not_gzip).await
        })
        .await
}

async fn not_gzip_check(stack: &LocalStack, not_gzip: u64) -> Result<Ending> {
    // The page is in the bucket as it came: the worker looked at it and did not count it.
    let uploads = stack.standin.uploads();
    ensure!(
        uploads
            .iter()
            .any(|u| u.project_id == not_gzip && u.status == Some(200)),
        "the page was not stored: {uploads:?}"
    );
    Ok(Ending::Projects {
        failed: BTreeMap::from([(
            not_gzip,
            // `<html>`
            "the object does not start like a gzip stream (first bytes 3c 68 74 6d 6c 3e",
        )]),
        accepted: BTreeMap::from([(not_gzip, 1)]),
    })
}

// --- A small daily allowance ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_daily_allowance_of_rows_pauses_the_run_and_once_lifted_it_ends_with_nothing_lost(
) -> Result<()> {
    // The smallest allowance (2,000 rows a day) pauses the run with 300 left, before 250
    // projects are all backed up.
    Case::new(
        "faults-allowance",
        "small daily allowance",
        Seed::generated(1, 250),
    )
    .limit(1000)
    .var("DO_ROWS_WRITTEN_PER_DAY", "2000")
    .drive(async |stack| allowance_check(stack).await)
    .await
}

async fn allowance_check(stack: LocalStack) -> (Option<LocalStack>, Result<(Value, Ending)>) {
    let paused = async {
        let (code, body) = stack.start_run().await?;
        ensure!(code == 202, "POST /run answered {code}: {body}");
        let status = stack
            .wait_for_status(
                "a pause",
                Some(CRON_EVERY),
                Duration::from_secs(4 * 60),
                |s| s["next_tick"]["action"] == "paused" || s["run"]["phase"] == "finished",
            )
            .await?;
        let plan = &status["next_tick"];
        ensure!(
            plan["action"] == "paused"
                && plan["allowance"] == "rows_written"
                && plan["limit"] == 2000
                && plan["used"]
                    .as_u64()
                    .is_some_and(|used| (1700..2000).contains(&used))
                && plan["until"]
                    .as_str()
                    .is_some_and(|u| u.ends_with("T00:00:00Z")),
            "not paused as expected: {status:#}"
        );
        ensure!(
            status["run"]["phase"] != "finished" && count(&status, "pending")? > 0,
            "the run should pause before its end: {status:#}"
        );
        // More ticks change nothing while paused.
        let exports = stack.standin.exports().len();
        for _ in 0..3 {
            stack.wrangler.fire_cron().await?;
        }
        let again = stack.status().await?;
        ensure!(
            again["run"]["projects"] == status["run"]["projects"]
                && stack.standin.exports().len() == exports,
            "the run went on while paused: {again:#}"
        );
        let events = engine_events(&stack)?;
        let pauses: Vec<(u64, u64)> = events
            .iter()
            .filter_map(|e| match e {
                Event::DailyAllowancePaused { used, limit, .. } => Some((*used, *limit)),
                _ => None,
            })
            .collect();
        ensure!(
            !pauses.is_empty() && pauses.iter().all(|(_, limit)| *limit == 2000),
            "daily_allowance_paused events: {pauses:?}"
        );
        eprintln!(
            "paused at {} of 2000 rows written, {} of 250 projects verified",
            plan["used"],
            count(&status, "verified")?
        );
        Ok(status["run"]["id"].clone())
    }
    .await;
    let run = match paused {
        Ok(run) => run,
        Err(e) => return (Some(stack), Err(e)),
    };
    // Resuming after 00:00 UTC cannot be waited for here (the host tests show it): the allowance
    // is lifted instead (`0`, as on the paid plan), and the same run goes on to its end.
    let mut stack = stack;
    stack.vars.push(("DO_ROWS_WRITTEN_PER_DAY", "0".to_owned()));
    let stack = match stack.crash_and_restart_worker().await {
        Ok(stack) => stack,
        Err(e) => return (None, Err(e.context("restarting the worker"))),
    };
    let result = async {
        let status = finish(&stack, Duration::from_secs(4 * 60)).await?;
        ensure!(status["run"]["id"] == run, "another run: {status:#}");
        Ok((status, Ending::all_verified()))
    }
    .await;
    (Some(stack), result)
}

// --- A setting changed mid-run ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_prefix_changed_mid_run_applies_from_the_next_run_and_the_run_ends_under_its_own(
) -> Result<()> {
    // 12 projects at 6 exports a minute: the run lasts two minutes, and the prefix changes (the
    // worker restarted with the new vars, as a redeploy does) after the first six.
    Case::new(
        "faults-settings-changed",
        "S3_PREFIX changed mid-run",
        Seed::generated(1, 12),
    )
    .limit(6)
    .drive(async |stack| settings_changed_check(stack).await)
    .await
}

/// Every line of the run's manifest (from its `summary.json`) names a key that is in s3s-fs,
/// under `prefix`; how many lines there are.
fn ensure_manifest_keys_exist(stack: &LocalStack, status: &Value, prefix: &str) -> Result<usize> {
    let summary_key = status["run"]["summary_key"]
        .as_str()
        .context("no summary_key")?;
    ensure!(
        summary_key.starts_with(&format!("{prefix}_runs/")),
        "the summary is at {summary_key}, not under {prefix:?}"
    );
    let summary: Value = serde_json::from_slice(
        &std::fs::read(stack.s3.object_path(summary_key)).context("summary.json is not in S3")?,
    )?;
    let mut lines = 0;
    for part in summary["parts"].as_array().context("no parts")? {
        let part = part.as_str().context("part key")?;
        ensure!(
            part.starts_with(prefix),
            "the part {part} is not under {prefix:?}"
        );
        let text = std::fs::read_to_string(stack.s3.object_path(part))
            .with_context(|| format!("{part} is not in S3"))?;
        for line in text.lines() {
            let entry: Value = serde_json::from_str(line)?;
            let key = entry["key"]
                .as_str()
                .context("a manifest line without its key")?;
            ensure!(
                key.starts_with(prefix) && stack.s3.object_path(key).is_file(),
                "the manifest lists {key}, which is not in s3s-fs under {prefix:?}"
            );
            lines += 1;
        }
    }
    Ok(lines)
}

async fn settings_changed_check(
    stack: LocalStack,
) -> (Option<LocalStack>, Result<(Value, Ending)>) {
    let before = async {
        let (code, body) = stack.start_run().await?;
        ensure!(code == 202, "POST /run answered {code}: {body}");
        let deadline = Instant::now() + Duration::from_secs(90);
        while stack.standin.exports().len() < 6 {
            ensure!(
                Instant::now() < deadline,
                "fewer than 6 exports within 90 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let status = stack.status().await?;
        ensure!(
            status["run"]["phase"] == "exporting" && status["settings_changed"].is_null(),
            "the change should come while exporting, unchanged until then: {status:#}"
        );
        Ok(status["run"]["id"].clone())
    }
    .await;
    let run = match before {
        Ok(run) => run,
        Err(e) => return (Some(stack), Err(e)),
    };
    let stack = match stack
        .restart_worker_with(&[("S3_PREFIX", "next".to_owned())])
        .await
    {
        Ok(stack) => stack,
        Err(e) => return (None, Err(e.context("restarting the worker with S3_PREFIX"))),
    };
    let result = after_settings_changed(&stack, &run).await;
    (Some(stack), result)
}

async fn after_settings_changed(stack: &LocalStack, run: &Value) -> Result<(Value, Ending)> {
    // `/status` says the settings differ from the run's, and from when they apply.
    let status = stack.status().await?;
    let changed = &status["settings_changed"];
    ensure!(
        status["run"]["id"] == *run
            && changed["run"] == *run
            && changed["settings"] == serde_json::json!(["S3_PREFIX"])
            && changed["message"]
                .as_str()
                .is_some_and(|m| m.contains("apply from the next run")),
        "/status after the change: {status:#}"
    );

    // The run finishes under the prefix it started with: every object where the listing put it
    // (no prefix), a manifest whose keys all exist, nothing under the new prefix.
    let status = finish(stack, Duration::from_secs(5 * 60)).await?;
    ensure!(status["run"]["id"] == *run, "another run: {status:#}");
    ensure!(
        status["settings_changed"].is_null(),
        "a finished run has no settings of its own to differ from: {status:#}"
    );
    let seed = stack.standin.seed();
    let projects: Vec<&Project> = seed.projects().iter().collect();
    ensure_outcome(
        stack,
        &status,
        &Outcome {
            projects: projects.clone(),
            failed: BTreeMap::new(),
            accepted: BTreeMap::new(),
            limit: 6,
        },
    )?;
    let lines = ensure_manifest_keys_exist(stack, &status, "")?;
    ensure!(lines == projects.len(), "{lines} manifest lines");
    let objects = stack.s3.objects()?;
    ensure!(
        objects.iter().all(|(key, _)| !key.starts_with("next/")),
        "objects under the new prefix during the old run: {objects:?}"
    );

    // The next run uses the new prefix.
    let (code, body) = stack.start_run().await?;
    ensure!(code == 202, "POST /run answered {code}: {body}");
    let next = finish(stack, Duration::from_secs(5 * 60)).await?;
    ensure!(
        next["run"]["id"] != *run && next["run"]["error"].is_null(),
        "the next run: {next:#}"
    );
    ensure!(
        count(&next, "verified")? == projects.len() as u64,
        "the next run: {next:#}"
    );
    let lines = ensure_manifest_keys_exist(stack, &next, "next/")?;
    ensure!(
        lines == projects.len(),
        "{lines} manifest lines in the next run"
    );
    let name = run_object_name(&next)?;
    for project in &projects {
        let key = format!("next/{}/{name}", project.path_with_namespace);
        ensure!(
            stack.s3.object_path(&key).is_file(),
            "{key} is not in s3s-fs"
        );
    }
    // Checked here, run by run: each project was exported once by each.
    Ok((next, Ending::Stopped))
}
