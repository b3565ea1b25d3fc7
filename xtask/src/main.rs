//! `cargo xtask <command>`: the project's workflows as one Rust program.
//!
//! - `test`: installs what is missing, then runs every check and test (what `.ci/run` runs).
//! - `demo`: installs what is missing, then runs a whole backup locally and shows it.
//! - `setup`: only installs the tools.
//! - `build`: builds the worker (the `[build]` command of wrangler.toml).
//! - `bench`: prints the performance figures (bundle, per-tick cost, an end-to-end run).
//! - `standin`: serves the GitLab stand-in alone.

mod bench;
mod demo;

use std::process::Command;

use anyhow::{bail, Result};
use xtask::tools::{self, repo_root, run, BuildTools, Tools, WASM_TARGET};

const USAGE: &str = "usage: cargo xtask <test | demo | bench [size | ticks | e2e] | setup | build | standin [PORT]>";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("demo") => demo::run(),
        Some("bench") => bench::run_all(cargo, args.get(1).map(String::as_str)),
        Some("setup") => Tools::ensure().map(|tools| eprintln!("[setup] ready: {tools:#?}")),
        Some("build") => build(),
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

    step("cargo test (host unit tests, property tests, end-to-end tests)");
    run(cargo()
        .args(["test", "--workspace", "--locked"])
        .env("GITLAB_BACKUP_BUILT", "1"))?;
    Ok(())
}
