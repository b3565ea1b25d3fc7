//! `cargo xtask bench`: the figures behind the README's performance section, printed with ✓ or ✗
//! against each target. Separate from the tests: it measures, it does not pass or fail on time.
//!
//! 1. the worker's bundle, raw and gzip;
//! 2. `cargo bench --bench ticks` (the engine's per-tick cost at 100, 10,000 and 100,000
//!    projects over the Durable Object's SQL, subrequests against the budget, rows written per
//!    project; then, at realistic export durations, rows written with index entries and alarms,
//!    Durable Object and GitLab requests per exported project, and GitLab's busiest minute; last,
//!    a simulated week of daily changed-only runs at 100 to 100,000 projects: exports, rows
//!    written and requests a day against the free plan, backup ages, the delay from a change to
//!    its backup, and the largest instance the free plan carries);
//! 3. a whole run end to end: `wrangler dev`, the GitLab stand-in at GitLab's real 6 exports per
//!    minute and s3s-fs, the cron trigger fired once a minute as in production.

use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use testkit::stack::LocalStack;
use testkit::standin::{Options, Seed};
use testkit::tools::{self, run, Tools};

/// Projects of the end-to-end run (three groups of twelve, subgroups and archived ones included).
const GROUPS: usize = 3;
const PER_GROUP: usize = 12;
/// GitLab's limit, which the stand-in enforces.
const PER_MINUTE: f64 = 6.0;
const GZIP_TARGET: u64 = 350_000;

fn mark(ok: bool) -> &'static str {
    if ok {
        "✓"
    } else {
        "✗"
    }
}

/// `only`: `None` for everything, or one part: `size`, `ticks` or `e2e`.
pub fn run_all(cargo: impl Fn() -> std::process::Command, only: Option<&str>) -> Result<()> {
    let part = |name: &str| only.is_none_or(|only| only == name);
    if let Some(only) = only {
        if !["size", "ticks", "e2e"].contains(&only) {
            bail!("cargo xtask bench [size | ticks | e2e]: no part {only:?}");
        }
    }
    if part("size") || part("e2e") {
        eprintln!("\n==> installing tools and building the worker");
        let tools = Tools::ensure()?;
        tools.build.build_worker()?;
        let (raw, gzip) = tools::wasm_size()?;
        println!(
            "\n## Bundle\nwasm: {raw} bytes raw, {gzip} bytes gzip {} (target ≤ {GZIP_TARGET} gzip; Cloudflare's free plan takes 3 MB)",
            mark(gzip <= GZIP_TARGET)
        );
    }
    if part("ticks") {
        eprintln!("\n==> cargo bench --bench ticks (host, the engine over rusqlite)");
        println!("\n## Per tick");
        run(cargo().args([
            "bench",
            "--bench",
            "ticks",
            "--features",
            "host-sql",
            "--locked",
        ]))?;
    }
    if !part("e2e") {
        return Ok(());
    }
    eprintln!("\n==> a whole run through wrangler dev, the stand-in and s3s-fs (about 7 minutes)");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(end_to_end())
}

async fn end_to_end() -> Result<()> {
    let seed = Seed::generated(GROUPS, PER_GROUP);
    let groups: Vec<String> = seed
        .top_level_groups()
        .map(|g| g.full_path.clone())
        .collect();
    let projects = seed.projects().len();
    let stack =
        LocalStack::start("bench", seed, Options::default(), &groups.join(","), &[]).await?;
    let began = Instant::now();
    let outcome = stack
        .wait_for_status(
            "the run finished",
            Some(Duration::from_secs(60)),
            Duration::from_secs(20 * 60),
            |status| status["run"]["phase"] == "finished",
        )
        .await;
    let took = began.elapsed();
    let report = outcome.and_then(|status| throughput(&stack, &status, projects, took));
    stack.stop().await;
    report
}

fn millis(at: std::time::SystemTime) -> Result<u64> {
    Ok(at.duration_since(UNIX_EPOCH)?.as_millis() as u64)
}

fn throughput(
    stack: &LocalStack,
    status: &serde_json::Value,
    projects: usize,
    took: Duration,
) -> Result<()> {
    let exports = stack.standin.exports();
    let accepted: Vec<u64> = exports
        .iter()
        .filter(|e| e.status == 202)
        .map(|e| millis(e.at))
        .collect::<Result<_>>()?;
    let refused = exports.iter().filter(|e| e.status == 429).count();
    let verified = status["run"]["projects"]["verified"].as_u64().unwrap_or(0);
    if accepted.len() != projects || verified != projects as u64 {
        bail!(
            "the run did not back up every project: {} exports accepted, {verified} verified of {projects}; status: {status}",
            accepted.len()
        );
    }
    let first = *accepted.iter().min().context("no export")?;
    let last = *accepted.iter().max().context("no export")?;
    // The span of the exports plus the window the last one opened.
    let span_minutes = (last - first) as f64 / 60_000.0 + 1.0;
    let rate = accepted.len() as f64 / span_minutes;
    let ratio = rate / PER_MINUTE;
    let minutes = took.as_secs_f64() / 60.0;
    let ideal = projects.div_ceil(PER_MINUTE as usize);
    println!(
        "\n## End to end (wrangler dev, stand-in at 6 exports/min, s3s-fs, cron every minute)"
    );
    println!("| projects | exports/min ÷ 6 | 429s | minutes to the last verified export | ideal ceil(N/6) |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {projects} | {ratio:.3} {} | {refused} {} | {minutes:.1} {} | {ideal} |",
        mark(ratio >= 0.95),
        mark(refused == 0),
        mark(minutes <= ideal as f64),
    );
    Ok(())
}
