//! The toolchain bootstrap: everything the build, the local stack and the tests need beyond
//! rustup, Node/npm and Python, installed once into a cache outside the clone, keyed by version
//! (`$GITLAB_BACKUP_CACHE`, default `~/.cache/gitlab-backup`).
//!
//! No installer downloads from GitHub (this project's machines reach only package registries):
//! worker-build gets wasm-bindgen, wasm-opt and esbuild through `*_BIN` variables.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// worker-build's release that matches `worker` 0.8.x.
pub const WORKER_BUILD_VERSION: &str = "0.8.7";
/// The last s3s-fs release that builds with this machine's rustc.
pub const S3S_FS_VERSION: &str = "0.14.1";
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// What building the worker needs (also what `wrangler deploy`'s `[build]` command installs).
#[derive(Clone, Debug)]
pub struct BuildTools {
    pub worker_build: PathBuf,
    pub wasm_bindgen: PathBuf,
    pub wasm_opt: PathBuf,
    pub esbuild: PathBuf,
    pub wrangler: PathBuf,
}

/// Everything the local stack and the tests need: the build tools and s3s-fs.
#[derive(Clone, Debug)]
pub struct Tools {
    pub build: BuildTools,
    pub s3s_fs: PathBuf,
}

/// The repository's root (the workspace holding `testkit/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives one level below the repository root")
        .to_path_buf()
}

/// Where installs are cached, outside any clone.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("GITLAB_BACKUP_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").context("HOME is not set; set GITLAB_BACKUP_CACHE")?;
    Ok(PathBuf::from(home).join(".cache").join("gitlab-backup"))
}

/// Runs a command to completion, failing with its name when it fails.
pub fn run(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("could not start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

fn say(message: &str) {
    eprintln!("[setup] {message}");
}

/// `cargo install` of one crate version into its own folder of the cache, unless already there.
fn cargo_install(
    cache: &Path,
    krate: &str,
    version: &str,
    binary: &str,
    extra: &[&str],
) -> Result<PathBuf> {
    let root = cache.join("tools").join(format!("{krate}-{version}"));
    let path = root.join("bin").join(binary);
    if path.is_file() {
        return Ok(path);
    }
    say(&format!(
        "installing {krate} {version} (once; cached in {})",
        root.display()
    ));
    let mut command = Command::new(env!("CARGO"));
    command
        .args(["install", krate, "--version", version, "--root"])
        .arg(&root)
        .args(extra)
        // A shared build folder lets later installs reuse common dependencies.
        .env("CARGO_TARGET_DIR", cache.join("tools").join("build"));
    run(&mut command)?;
    if !path.is_file() {
        bail!(
            "{krate} {version} installed, but {} is missing",
            path.display()
        );
    }
    Ok(path)
}

/// The wasm-bindgen version in Cargo.lock: the CLI must match it exactly.
fn locked_wasm_bindgen_version(root: &Path) -> Result<String> {
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
            WASM_TARGET,
        ])
        .current_dir(root)
        .output()
        .context("could not run cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "wasm-bindgen")
        .and_then(|p| p["version"].as_str())
        .map(str::to_owned)
        .context("Cargo.lock has no wasm-bindgen package")
}

/// Installs the npm tooling from package-lock.json into the cache (keyed by the lockfile's
/// pinned versions; reinstalled when the lockfile changes).
fn npm_tools(cache: &Path, root: &Path) -> Result<PathBuf> {
    let lock =
        std::fs::read(root.join("package-lock.json")).context("reading package-lock.json")?;
    let manifest = std::fs::read(root.join("package.json")).context("reading package.json")?;
    let pinned: serde_json::Value = serde_json::from_slice(&manifest)?;
    let key = pinned["devDependencies"]
        .as_object()
        .context("package.json has no devDependencies")?
        .iter()
        .map(|(name, version)| format!("{name}-{}", version.as_str().unwrap_or("?")))
        .collect::<Vec<_>>()
        .join("_");
    let dir = cache.join("node").join(key);
    let bin = dir.join("node_modules").join(".bin");
    let installed_lock = std::fs::read(dir.join("package-lock.json")).ok();
    if installed_lock.as_deref() == Some(&lock[..]) && bin.join("wrangler").exists() {
        return Ok(bin);
    }
    say(&format!("installing npm tooling into {}", dir.display()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("package.json"), &manifest)?;
    std::fs::write(dir.join("package-lock.json"), &lock)?;
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir))?;
    Ok(bin)
}

impl BuildTools {
    /// Installs whatever the build lacks and returns the tools' paths.
    pub fn ensure() -> Result<BuildTools> {
        let cache = cache_dir()?;
        let root = repo_root();
        std::fs::create_dir_all(&cache)?;
        // For the toolchain cargo runs with (rustup passes it on in RUSTUP_TOOLCHAIN).
        run(Command::new("rustup").args(["target", "add", WASM_TARGET]))?;
        let worker_build = cargo_install(
            &cache,
            "worker-build",
            WORKER_BUILD_VERSION,
            "worker-build",
            &["--locked"],
        )?;
        // Without --locked: the CLI's own lockfile pins a yanked crate.
        let bindgen_version = locked_wasm_bindgen_version(&root)?;
        let wasm_bindgen = cargo_install(
            &cache,
            "wasm-bindgen-cli",
            &bindgen_version,
            "wasm-bindgen",
            &[],
        )?;
        let npm_bin = npm_tools(&cache, &root)?;
        Ok(BuildTools {
            worker_build,
            wasm_bindgen,
            wasm_opt: npm_bin.join("wasm-opt"),
            esbuild: npm_bin.join("esbuild"),
            wrangler: npm_bin.join("wrangler"),
        })
    }

    /// Builds the worker into `build/` with worker-build (release profile, wasm-opt -Oz), then
    /// strips the wasm's name section, which worker-build keeps (about 45 KB gzip; a panic's
    /// stack trace then shows function indices instead of names), and optimizes it once more.
    pub fn build_worker(&self) -> Result<()> {
        say("building the worker (worker-build --release)");
        let root = repo_root();
        run(Command::new(&self.worker_build)
            .arg("--release")
            .current_dir(&root)
            .env("WASM_BINDGEN_BIN", &self.wasm_bindgen)
            .env("WASM_OPT_BIN", &self.wasm_opt)
            .env("ESBUILD_BIN", &self.esbuild))?;
        let wasm = root.join("build").join("index_bg.wasm");
        let stripped = wasm.with_extension("stripped.wasm");
        run(Command::new(&self.wasm_opt)
            .arg(&wasm)
            .arg("-o")
            .arg(&stripped)
            .args(["--strip-debug", "--strip-producers"])
            // Without the names, -Oz finds more to shrink; --converge repeats it until it stops
            // (about 3 KB gzip, 15 s).
            .args(["-Oz", "--converge"])
            // worker-build's feature set: no newer encodings than workerd reads.
            .args([
                "--enable-mutable-globals",
                "--enable-sign-ext",
                "--enable-nontrapping-float-to-int",
                "--enable-bulk-memory",
                "--enable-multivalue",
                "--enable-reference-types",
                "--enable-exception-handling",
            ]))?;
        std::fs::rename(&stripped, &wasm)?;
        Ok(())
    }
}

impl Tools {
    /// Installs whatever is missing for the local stack and the tests.
    pub fn ensure() -> Result<Tools> {
        let build = BuildTools::ensure()?;
        run(Command::new("rustup").args(["component", "add", "clippy", "rustfmt"]))?;
        let s3s_fs = cargo_install(
            &cache_dir()?,
            "s3s-fs",
            S3S_FS_VERSION,
            "s3s-fs",
            &["--features", "binary", "--locked"],
        )?;
        Ok(Tools { build, s3s_fs })
    }
}

/// Debian's Chromium, for the status page's browser test (installed with apt-get when missing).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Installs Chromium from Debian's packages unless it is there.
pub fn ensure_chromium() -> Result<PathBuf> {
    let path = PathBuf::from(CHROMIUM);
    if path.is_file() {
        return Ok(path);
    }
    say("installing chromium (Debian package, for the status page's browser test)");
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "chromium",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    if !path.is_file() {
        bail!("apt-get installed chromium, but {CHROMIUM} is missing");
    }
    Ok(path)
}

/// The built wasm's size, raw and gzip-compressed (what Cloudflare's bundle limit counts).
pub fn wasm_size() -> Result<(u64, u64)> {
    use std::io::Write;
    let wasm = std::fs::read(repo_root().join("build").join("index_bg.wasm"))
        .context("build/index_bg.wasm is missing: build the worker first")?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&wasm)?;
    Ok((wasm.len() as u64, gz.finish()?.len() as u64))
}
