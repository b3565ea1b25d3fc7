//! `cargo xtask <command>`: the project's workflows as one Rust program.
//!
//! - `test`: installs what is missing, then runs every check and test (what `.ci/run` runs).
//! - `demo`: installs what is missing, then runs a whole backup locally and shows it.
//! - `setup`: only installs the tools.
//! - `build`: builds the worker (the `[build]` command of wrangler.toml).
//! - `bench`: prints the performance figures (bundle, per-tick cost, an end-to-end run).
//! - `standin`: serves the GitLab stand-in alone.
//! - `deploy-dry-run`: `wrangler deploy --dry-run` of the built worker (part of `test`).

mod bench;
mod demo;

use std::process::Command;

use anyhow::{bail, Result};
use testkit::tools::{self, repo_root, run, BuildTools, Tools, WASM_TARGET};

const USAGE: &str = "usage: cargo xtask <test | demo | bench [size | ticks | e2e] | setup | build | standin [PORT]>";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("demo") => demo::run(),
        Some("bench") => bench::run_all(cargo, args.get(1).map(String::as_str)),
        Some("setup") => Tools::ensure().map(|tools| eprintln!("[setup] ready: {tools:#?}")),
        Some("build") => build(),
        Some("deploy-dry-run") => deploy_dry_run(&Tools::ensure()?),
        Some("standin") => demo::standin(args.get(1).map(String::as_str)),
        _ => bail!("{USAGE}"),
    }
}

fn cargo() -> Command {
    let mut command = Command::new(env!("CARGO"));
    command.current_dir(repo_root());
    command
}

/// The `[build]` command: wrangler runs it at start (twice); the tests and the demo build once
/// themselves and set GITLAB_BACKUP_SKIP_BUILD=1.
fn build() -> Result<()> {
    if std::env::var_os("GITLAB_BACKUP_SKIP_BUILD").is_some() {
        return Ok(());
    }
    BuildTools::ensure()?.build_worker()
}

fn step(name: &str) {
    eprintln!("\n==> {name}");
}

fn test() -> Result<()> {
    step("installing tools (cached outside the clone)");
    let tools = Tools::ensure()?;
    tools::ensure_chromium()?;

    step("cargo fmt --check");
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;

    step("cargo clippy (host, every target)");
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;

    step("cargo clippy (wasm32: the worker glue)");
    run(cargo().args([
        "clippy",
        "-p",
        "gitlab-backup",
        "--lib",
        "--locked",
        "--target",
        WASM_TARGET,
        "--",
        "-D",
        "warnings",
    ]))?;

    step("building the worker");
    tools.build.build_worker()?;
    let (raw, gzip) = tools::wasm_size()?;
    eprintln!(
        "wasm size: {raw} bytes raw, {gzip} bytes gzip ({:.0} KB gzip of the free plan's 3 MB)",
        gzip as f64 / 1000.0
    );

    step("npx wrangler deploy --dry-run (the README's deploy, offline)");
    deploy_dry_run(&tools)?;

    step("cargo test (host unit tests, property tests, end-to-end tests)");
    run(cargo()
        .args(["test", "--workspace", "--locked"])
        .env("GITLAB_BACKUP_BUILT", "1"))?;
    Ok(())
}

/// Runs the README's `wrangler deploy` as far as it goes without an account: the pinned
/// wrangler reads wrangler.toml, bundles the built worker and lists its bindings.
fn deploy_dry_run(tools: &Tools) -> Result<()> {
    let dir = tools::cache_dir()?.join("deploy-dry-run");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("config"))?;
    let output = Command::new(&tools.build.wrangler)
        .current_dir(repo_root())
        .args(["deploy", "--dry-run", "--outdir"])
        .arg(dir.join("out"))
        .env("GITLAB_BACKUP_SKIP_BUILD", "1")
        .env("WRANGLER_SEND_METRICS", "false")
        .env("WRANGLER_SEND_ERROR_REPORTS", "false")
        .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("CI", "true")
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !text.contains("env.COORDINATOR (Coordinator)") {
        bail!(
            "wrangler deploy --dry-run failed ({}):\n{text}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let files: Vec<String> = std::fs::read_dir(dir.join("out"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    if !files.iter().any(|f| f == "index.js") || !files.iter().any(|f| f.ends_with(".wasm")) {
        bail!("wrangler deploy --dry-run bundled {files:?}, without index.js and the wasm");
    }
    if let Some(line) = text.lines().find(|l| l.contains("Total Upload")) {
        eprintln!("{}", line.trim());
    }
    Ok(())
}
