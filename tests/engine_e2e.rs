//! The engine end to end through `wrangler dev`, the GitLab stand-in and s3s-fs: a whole run over
//! several groups and pages, GitLab's real export limit held over a manual run, a worker killed in
//! the middle of a tick resuming the same run, and a 10,000-project listing spread over ticks within
//! the subrequest budget.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::*;
use gitlab_backup::engine::Event;
use testkit::stack::LocalStack;
use testkit::standin::{Options, Seed, DEMO_GROUPS};

const MINUTE: Duration = Duration::from_secs(60);
/// The crash test kills the worker once this many exports of its tick reached GitLab.
const KILL_AFTER: usize = 5;

fn took(test: &str, began: Instant) {
    eprintln!("{test}: {:.1} s", began.elapsed().as_secs_f64());
}

// --- 1 ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_groups_named_by_path_and_by_id_are_listed_page_by_page_and_each_own_project_is_exported_once(
) -> Result<()> {
    let began = Instant::now();
    let seed = Seed::demo();
    let globex_id = seed.group_by_path("globex").context("globex")?.id;
    // acme by full path, globex by id, initech by path; contractors not at all.
    let groups = format!("acme,{globex_id},initech");
    let options = Options {
        max_per_page: 3,
        exports_per_window: 200,
        window: MINUTE,
        ..Options::default()
    };
    let extra = [("EXPORTS_PER_MINUTE", "200".to_owned())];
    let stack = LocalStack::start("engine-three-groups", seed, options, &groups, &extra).await?;
    let result = checked(stack, |stack| async move {
        let result = three_groups_check(&stack).await;
        (Some(stack), result)
    })
    .await;
    took("three groups", began);
    result
}

async fn three_groups_check(stack: &LocalStack) -> Result<()> {
    let status = stack
        .wait_for_phase(
            "finished",
            Some(Duration::from_secs(3)),
            Duration::from_secs(120),
        )
        .await?;
    stack.standin.wait_idle(Duration::from_secs(30)).await?;
    let seed = stack.standin.seed();
    let own = own_projects(seed, &DEMO_GROUPS);
    ensure!(own.len() == 21, "the demo's three groups own 21 projects");
    let own_ids: BTreeSet<u64> = own.iter().map(|p| p.id).collect();

    // Every page of every group was read: the stand-in serves 3 projects a page.
    let events = engine_events(stack)?;
    let mut pages: BTreeMap<String, usize> = BTreeMap::new();
    for page in &events {
        if let Event::PageListed {
            group, projects, ..
        } = page
        {
            ensure!(*projects <= 3, "a page of more than 3 projects: {page:?}");
            *pages.entry(group.clone()).or_default() += 1;
        }
    }
    ensure!(
        pages.len() == 3 && pages.values().all(|&n| n >= 2),
        "each of the 3 groups should be listed over ≥ 2 pages: {pages:?}"
    );
    // acme 10 projects → 4 pages, globex 6 → 2, initech 5 → 2.
    ensure!(
        stack.standin.listing_requests() == 8,
        "{} listing requests, expected 8",
        stack.standin.listing_requests()
    );

    // Every own project, subgroups' and archived ones included, exported exactly once; nothing else.
    let exports = stack.standin.exports();
    ensure!(
        exports.iter().all(|e| e.status == 202),
        "an export was refused: {exports:?}"
    );
    let per_project = accepted_per_project(&exports);
    let twice: Vec<_> = per_project.iter().filter(|(_, &n)| n > 1).collect();
    ensure!(twice.is_empty(), "exported more than once: {twice:?}");
    let exported: BTreeSet<u64> = per_project.keys().copied().collect();
    let missing: Vec<&str> = own
        .iter()
        .filter(|p| !exported.contains(&p.id))
        .map(|p| p.path_with_namespace.as_str())
        .collect();
    ensure!(missing.is_empty(), "never exported: {missing:?}");
    let foreign: Vec<String> = exported
        .difference(&own_ids)
        .map(|&id| {
            seed.project(id)
                .map_or(id.to_string(), |p| p.path_with_namespace.clone())
        })
        .collect();
    ensure!(
        foreign.is_empty(),
        "exported projects of other groups: {foreign:?}"
    );
    for contractor in seed.own_projects("contractors") {
        ensure!(
            !exported.contains(&contractor.id),
            "{} (contractors, shared into a configured group) was exported",
            contractor.path_with_namespace
        );
    }
    for shared in [
        "initech/intranet",
        "acme/docs",
        "globex/research/ml-pipeline",
    ] {
        let project = seed.project_by_path(shared).context("demo project")?;
        ensure!(
            per_project.get(&project.id) == Some(&1),
            "{shared}, shared between two configured groups, was exported {:?} times",
            per_project.get(&project.id)
        );
    }
    for archived in own.iter().filter(|p| p.archived) {
        ensure!(
            exported.contains(&archived.id),
            "archived {} skipped",
            archived.path
        );
    }

    // Each object landed at <path_with_namespace>/<run start>.tar.gz, and only those.
    let object_name = run_object_name(&status)?;
    ensure_objects_landed(stack, &own, &object_name)?;
    let objects = stack.s3.objects()?;
    ensure!(
        objects.len() == own.len(),
        "{} objects in S3 for {} projects: {objects:?}",
        objects.len(),
        own.len()
    );

    // The run's report agrees.
    let (listed, exported, failed) = (
        count(&status, "listed")?,
        count(&status, "exported")?,
        count(&status, "failed")?,
    );
    ensure!(
        (listed, exported, failed) == (21, 21, 0),
        "status shows listed {listed}, exported {exported}, failed {failed}: {status:#}"
    );
    ensure!(
        status["run"]["finished"].is_string(),
        "a finished run without its end time: {status:#}"
    );
    Ok(())
}

// --- 2 ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_gitlabs_real_limit_a_manual_run_never_sends_more_than_six_exports_in_any_minute(
) -> Result<()> {
    let began = Instant::now();
    let stack = LocalStack::start(
        "engine-real-limit",
        Seed::demo(),
        Options::default(), // GitLab's real limit: 6 per 60 s, Retry-After 60
        &DEMO_GROUPS.join(","),
        &[],
    )
    .await?;
    let result = checked(stack, |stack| async move {
        let result = real_limit_check(&stack).await;
        (Some(stack), result)
    })
    .await;
    took("real limit", began);
    result
}

async fn real_limit_check(stack: &LocalStack) -> Result<()> {
    let own = own_projects(stack.standin.seed(), &DEMO_GROUPS);
    ensure!(own.len() >= 19, "enough projects for ≥ 3 windows");

    let (code, body) = stack.start_run().await?;
    ensure!(code == 202, "POST /run answered {code}: {body}");
    let run = body["run"]["id"]
        .as_u64()
        .with_context(|| format!("POST /run's answer names no run: {body}"))?;
    let (again, busy) = stack.start_run().await?;
    ensure!(
        again == 409 && busy["run"] == run && busy["error"].is_string(),
        "a second POST /run during run {run} answered {again}: {busy}"
    );

    // Production fires the cron every minute; every 5 s must not make it any faster.
    let status = stack
        .wait_for_phase(
            "finished",
            Some(Duration::from_secs(5)),
            Duration::from_secs(6 * 60),
        )
        .await?;
    stack.standin.wait_idle(Duration::from_secs(30)).await?;
    ensure!(
        status["run"]["id"] == run,
        "another run finished: {status:#}"
    );

    let exports = stack.standin.exports();
    ensure!(
        answered(&exports, 429) == 0,
        "GitLab answered 429 {} times: {exports:?}",
        answered(&exports, 429)
    );
    ensure_at_most_per_span(&exports, 6, MINUTE)?;
    let per_project = accepted_per_project(&exports);
    let missing: Vec<&str> = own
        .iter()
        .filter(|p| !per_project.contains_key(&p.id))
        .map(|p| p.path_with_namespace.as_str())
        .collect();
    ensure!(missing.is_empty(), "never exported: {missing:?}");
    ensure!(
        per_project.len() == own.len() && per_project.values().all(|&n| n == 1),
        "each own project once: {per_project:?}"
    );
    let first = exports.iter().map(|e| e.at).min().context("no exports")?;
    let last = exports.iter().map(|e| e.at).max().context("no exports")?;
    ensure!(
        last.duration_since(first)? >= 3 * MINUTE,
        "{} exports at 6 a minute took only {:?}",
        exports.len(),
        last.duration_since(first)?
    );
    ensure_objects_landed(stack, &own, &run_object_name(&status)?)?;
    let counts = (
        count(&status, "listed")?,
        count(&status, "exported")?,
        count(&status, "failed")?,
    );
    ensure!(
        counts == (21, 21, 0),
        "listed, exported, failed: {counts:?}"
    );
    Ok(())
}

// --- 3 ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_in_the_middle_of_a_tick_resumes_the_same_run_within_the_limit(
) -> Result<()> {
    let began = Instant::now();
    // 48 projects in two groups (and their subgroups); 30 exports a minute, each answered in 0.4 s,
    // so one tick exports for ~12 s.
    let seed = Seed::generated(2, 24);
    let options = Options {
        exports_per_window: 30,
        window: MINUTE,
        export_answer_delay: Duration::from_millis(400),
        ..Options::default()
    };
    let extra = [("EXPORTS_PER_MINUTE", "30".to_owned())];
    let stack = LocalStack::start("engine-crash", seed, options, "team-0,team-1", &extra).await?;
    let result = checked(stack, crash_check).await;
    took("crash", began);
    result
}

async fn crash_check(stack: LocalStack) -> (Option<LocalStack>, Result<()>) {
    // The tick runs in the background, so that the worker can be killed in its middle.
    let scheduled = format!("{}/__scheduled?cron=*+*+*+*+*", stack.wrangler.url);
    let tick = tokio::spawn(async move { reqwest::get(scheduled).await.map(|r| r.status()) });
    let before_kill = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        // ~2 s into the tick's ~12 s of exports.
        while stack.standin.exports().len() < KILL_AFTER {
            ensure!(
                Instant::now() < deadline,
                "the tick made {} exports within 60 s",
                stack.standin.exports().len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let status = stack.status().await?;
        ensure!(
            status["run"]["phase"] == "exporting",
            "the tick should be exporting: {status:#}"
        );
        status["run"]["id"]
            .as_u64()
            .with_context(|| format!("no run: {status:#}"))
    }
    .await;
    let run = match before_kill {
        Ok(run) => run,
        Err(e) => return (Some(stack), Err(e)),
    };
    let old_log = stack.wrangler.log.clone();
    let stack = match stack.crash_and_restart_worker().await {
        Ok(stack) => stack,
        Err(e) => return (None, Err(e.context("restarting the worker"))),
    };
    tick.abort();
    let result = after_restart(&stack, run, &old_log).await;
    (Some(stack), result)
}

async fn after_restart(stack: &LocalStack, run: u64, old_log: &std::path::Path) -> Result<()> {
    // Nothing reaches GitLab while the worker is down, so these are the requests made before the
    // kill; the last one may have been in flight.
    let at_kill = stack.standin.exports();
    ensure!(
        (KILL_AFTER..30).contains(&at_kill.len()),
        "the kill should fall inside the tick's 30 exports, after {} of them",
        at_kill.len()
    );
    let in_flight = at_kill.last().map(project_id);
    eprintln!(
        "killed after {} export requests; the last (maybe in flight): {in_flight:?}",
        at_kill.len()
    );

    let status = stack
        .wait_for_phase(
            "finished",
            Some(Duration::from_secs(5)),
            Duration::from_secs(4 * 60),
        )
        .await?;
    stack.standin.wait_idle(Duration::from_secs(30)).await?;
    ensure!(
        status["run"]["id"] == run,
        "the restarted worker did not finish run {run}: {status:#}"
    );
    let restarted = engine_events(stack)?;
    ensure!(
        !restarted
            .iter()
            .any(|e| matches!(e, Event::RunStarted { .. })),
        "the restarted worker started a new run instead of resuming {run}"
    );

    let seed = stack.standin.seed();
    let all: Vec<_> = seed.projects().iter().collect();
    ensure!(all.len() == 48);
    ensure_objects_landed(stack, &all, &run_object_name(&status)?)?;

    let exports = stack.standin.exports();
    ensure!(
        answered(&exports, 429) == 0,
        "GitLab answered 429 {} times (worker logs: {} and {}): {exports:?}",
        answered(&exports, 429),
        old_log.display(),
        stack.wrangler.log.display()
    );
    ensure_at_most_per_span(&exports, 30, MINUTE)?;
    let per_project = accepted_per_project(&exports);
    ensure!(per_project.len() == all.len(), "every project exported");
    let twice: Vec<u64> = per_project
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(&id, _)| id)
        .collect();
    ensure!(
        twice.iter().all(|&id| Some(id) == in_flight) && per_project.values().all(|&n| n <= 2),
        "exported again though not in flight at the kill ({in_flight:?}): {:?}",
        per_project
            .iter()
            .filter(|(_, &n)| n > 1)
            .collect::<Vec<_>>()
    );
    let counts = (
        count(&status, "listed")?,
        count(&status, "exported")?,
        count(&status, "failed")?,
    );
    ensure!(
        counts == (48, 48, 0),
        "listed, exported, failed: {counts:?}"
    );
    Ok(())
}

// --- 4 ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_ten_thousand_projects_fits_the_fifty_subrequest_budget_tick_by_tick() -> Result<()>
{
    let began = Instant::now();
    // 2 groups of 5,000 projects (half in a subgroup each): 100 pages of 100.
    let seed = Seed::generated(2, 5_000);
    // CPU to spare (a paid plan's), so each tick reads as many pages as its 50 subrequests allow,
    // six at a time: pages ahead of each group's cursor once GitLab gave the page count. (The
    // free plan's one page per tick is covered by the engine's host tests.)
    let stack = LocalStack::start(
        "engine-ten-thousand",
        seed,
        Options::default(),
        "team-0,team-1",
        &[("CPU_MS_PER_INVOCATION", "30000".to_owned())],
    )
    .await?;
    let result = checked(stack, |stack| async move {
        let result = ten_thousand_check(&stack).await;
        (Some(stack), result)
    })
    .await;
    took("ten thousand", began);
    result
}

async fn ten_thousand_check(stack: &LocalStack) -> Result<()> {
    // One cron tick; the worker's alarm carries the listing on.
    stack.wrangler.fire_cron().await?;
    let status = stack
        .wait_for_status(
            "phase exporting",
            None,
            Duration::from_secs(4 * 60),
            |status| status["run"]["phase"] == "exporting" || status["run"]["phase"] == "finished",
        )
        .await?;
    let listed = count(&status, "listed")?;
    ensure!(listed == 10_000, "listed {listed} of 10,000: {status:#}");
    ensure!(
        stack.standin.listing_requests() == 100,
        "{} listing requests for 100 pages",
        stack.standin.listing_requests()
    );

    // `/status` can show the phase before wrangler has written the tick's log lines: wait for
    // the line that ends the tick which finished the listing.
    let waited = Instant::now();
    let events = loop {
        let events = engine_events(stack)?;
        let ended = events.iter().any(|e| {
            matches!(e, Event::TickEnded { phase, .. } if *phase != gitlab_backup::store::Phase::Listing && *phase != gitlab_backup::store::Phase::Preflight)
        });
        if ended || waited.elapsed() > Duration::from_secs(20) {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ticks: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::TickEnded { .. }))
        .collect();
    let over: Vec<_> = ticks
        .iter()
        .filter(|t| matches!(t, Event::TickEnded { subrequests, .. } if *subrequests > 50))
        .collect();
    ensure!(over.is_empty(), "ticks over the budget of 50: {over:?}");
    // Events are logged tick by tick, each tick's ending with its tick_ended line.
    let mut listing_ticks = Vec::new();
    let mut pages_in_tick = 0;
    for event in &events {
        match event {
            Event::PageListed { .. } => pages_in_tick += 1,
            Event::TickEnded { .. } => {
                if pages_in_tick > 0 {
                    listing_ticks.push(pages_in_tick);
                }
                pages_in_tick = 0;
            }
            _ => {}
        }
    }
    // 5 preflight requests (token, the prefix's marker read and written, the probe's PUT and
    // read-back), then 45 + 50 + 5 pages.
    ensure!(
        listing_ticks == [45, 50, 5],
        "pages listed per tick: {listing_ticks:?}"
    );
    eprintln!(
        "pages listed per tick: {listing_ticks:?}; {} ticks in all",
        ticks.len()
    );
    Ok(())
}
