//! The local stack: a real S3 (s3s-fs, checking every signature), the worker under
//! `wrangler dev`, and helpers to fire its cron trigger and read what landed. The GitLab
//! stand-in runs in-process ([`crate::standin`]). Every process started here is stopped when
//! its handle is dropped, even when a test panics.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

use crate::tools::{repo_root, Tools};

/// The test bucket, its keys: s3s-fs checks requests against these.
pub const S3_ACCESS_KEY: &str = "AKIALOCALBACKUPTEST";
pub const S3_SECRET_KEY: &str = "local-secret-key-for-s3s-fs-only";
pub const S3_BUCKET: &str = "gitlab-backups";
/// The local worker's `ADMIN_TOKEN`: the bearer of `POST /run` and `GET /status`.
pub const ADMIN_TOKEN: &str = "local-admin-token";

/// A port that is free right now on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process in its own process group, whose whole group is ended on drop.
struct Service {
    name: &'static str,
    child: Child,
}

impl Service {
    fn spawn(name: &'static str, command: &mut Command, log: &Path) -> Result<Service> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("could not start {name}"))?;
        Ok(Service { name, child })
    }

    fn signal_group(&self, signal: &str) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args([signal, "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Ends the whole group: politely, then for sure.
    async fn stop(mut self) {
        self.signal_group("-TERM");
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            self.signal_group("-KILL");
            let _ = self.child.wait().await;
        }
    }

    /// Kills the whole group at once, as a crash would.
    async fn kill(mut self) {
        self.signal_group("-KILL");
        let _ = self.child.wait().await;
    }

    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early with {status}", self.name);
        }
        Ok(())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.signal_group("-KILL");
    }
}

/// Waits until `url` answers at all (any status), or fails after `timeout`.
async fn wait_until_up(
    service: &mut Service,
    url: &str,
    timeout: Duration,
    log: &Path,
) -> Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        if client.get(url).send().await.is_ok() {
            return Ok(());
        }
        if let Err(e) = service.check_running() {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            bail!("{e}; its log ({}):\n{tail}", log.display());
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not come up at {url} within {timeout:?}; log: {}",
                service.name,
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// s3s-fs serving `root`, with one bucket.
pub struct S3 {
    service: Service,
    pub endpoint: String,
    pub root: PathBuf,
}

impl S3 {
    pub async fn start(tools: &Tools, root: &Path) -> Result<S3> {
        std::fs::create_dir_all(root.join(S3_BUCKET))?;
        let port = free_port()?;
        let log = root.with_extension("log");
        let mut service = Service::spawn(
            "s3s-fs",
            Command::new(&tools.s3s_fs)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
                .arg(root),
            &log,
        )?;
        let endpoint = format!("http://127.0.0.1:{port}/");
        wait_until_up(&mut service, &endpoint, Duration::from_secs(30), &log).await?;
        Ok(S3 {
            service,
            endpoint,
            root: root.to_path_buf(),
        })
    }

    /// The file holding an object of the test bucket, by key.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.join(S3_BUCKET).join(key)
    }

    /// The SHA-256 (lowercase hex, as [`crate::standin::ImportRecord::archive_sha256`]) and length
    /// of an object of the test bucket, by key: what an import that downloaded it byte for byte
    /// reports.
    pub fn object_sha256(&self, key: &str) -> Result<(String, u64)> {
        file_sha256(&self.object_path(key)).with_context(|| format!("object {key}"))
    }

    /// Every object of the test bucket: key and size, sorted by key (s3s-fs's own metadata
    /// files are left out).
    pub fn objects(&self) -> Result<Vec<(String, u64)>> {
        let bucket = self.root.join(S3_BUCKET);
        let mut objects = Vec::new();
        let mut folders = vec![bucket.clone()];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder)? {
                let entry = entry?;
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    folders.push(path);
                } else if path.extension().is_some_and(|e| e == "gz") {
                    let key = path.strip_prefix(&bucket)?.to_string_lossy().into_owned();
                    objects.push((key, entry.metadata()?.len()));
                }
            }
        }
        objects.sort();
        Ok(objects)
    }

    pub async fn stop(self) {
        self.service.stop().await;
    }
}

/// The worker under `wrangler dev --local --test-scheduled`.
pub struct Wrangler {
    service: Service,
    pub url: String,
    pub log: PathBuf,
}

impl Wrangler {
    /// Starts the already built worker (`build/`) with these settings; its Durable Object state
    /// lives under `persist_to`, so a restart on the same folder resumes the same run.
    pub async fn start(
        tools: &Tools,
        vars: &[(&str, String)],
        persist_to: &Path,
        log: &Path,
    ) -> Result<Wrangler> {
        Wrangler::start_on(tools, vars, persist_to, log, free_port()?).await
    }

    /// [`Wrangler::start`] on a port chosen beforehand (to hand the worker its own address).
    pub async fn start_on(
        tools: &Tools,
        vars: &[(&str, String)],
        persist_to: &Path,
        log: &Path,
        port: u16,
    ) -> Result<Wrangler> {
        let inspector = free_port()?;
        let config_home = persist_to.join("wrangler-config");
        std::fs::create_dir_all(&config_home)?;
        let mut command = Command::new(&tools.build.wrangler);
        command
            .current_dir(repo_root())
            .args(["dev", "--local", "--test-scheduled", "--ip", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .args(["--inspector-port", &inspector.to_string()])
            .arg("--persist-to")
            .arg(persist_to)
            .args(["--show-interactive-dev-session=false", "--log-level", "log"])
            .env("GITLAB_BACKUP_SKIP_BUILD", "1")
            .env("WRANGLER_SEND_METRICS", "false")
            .env("WRANGLER_SEND_ERROR_REPORTS", "false")
            .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
            .env("XDG_CONFIG_HOME", &config_home)
            .env("CI", "true");
        for (name, value) in vars {
            command.arg("--var").arg(format!("{name}:{value}"));
        }
        let mut service = Service::spawn("wrangler dev", &mut command, log)?;
        let url = format!("http://127.0.0.1:{port}");
        wait_until_up(
            &mut service,
            &format!("{url}/"),
            Duration::from_secs(120),
            log,
        )
        .await?;
        Ok(Wrangler {
            service,
            url,
            log: log.to_path_buf(),
        })
    }

    /// Fires the cron trigger once; returns when the tick (and its Durable Object call) ended.
    pub async fn fire_cron(&self) -> Result<()> {
        let response = reqwest::Client::new()
            .get(format!("{}/__scheduled?cron=*+*+*+*+*", self.url))
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .context("firing the cron trigger")?;
        if !response.status().is_success() {
            bail!("/__scheduled answered {}", response.status());
        }
        Ok(())
    }

    /// The worker's JSON log lines so far (one per event).
    pub fn events(&self) -> Result<Vec<serde_json::Value>> {
        let text = std::fs::read_to_string(&self.log)?;
        Ok(text
            .lines()
            .filter_map(|line| line.find("{\"").map(|start| &line[start..]))
            .filter_map(|json| serde_json::from_str::<serde_json::Value>(json).ok())
            .filter(|value| value.get("event").is_some())
            .collect())
    }

    pub async fn stop(self) {
        self.service.stop().await;
    }

    /// Kills wrangler and workerd at once, as a crash would.
    pub async fn kill(self) {
        self.service.kill().await;
    }
}

/// The worker's settings for a local stack.
pub fn local_vars(
    gitlab_url: &str,
    gitlab_token: &str,
    groups: &str,
    s3: &S3,
) -> Vec<(&'static str, String)> {
    vec![
        ("GITLAB_URL", gitlab_url.to_owned()),
        ("GITLAB_TOKEN", gitlab_token.to_owned()),
        ("GROUPS_TO_BACKUP", groups.to_owned()),
        ("AWS_S3_BUCKET", S3_BUCKET.to_owned()),
        ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("S3_ENDPOINT", s3.endpoint.clone()),
        ("ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
    ]
}

/// Builds the worker once per process, unless the caller already did (GITLAB_BACKUP_BUILT=1,
/// set by `cargo xtask test`).
pub fn ensure_built(tools: &Tools) -> Result<()> {
    static BUILT: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !*built && std::env::var_os("GITLAB_BACKUP_BUILT").is_none() {
        tools.build.build_worker()?;
    }
    *built = true;
    Ok(())
}

/// A fresh folder for one stack's files (S3 objects, Durable Object state, logs), kept after the
/// run for inspection: `target/local-stack/<name>-<unix ms>`.
pub fn work_dir(name: &str) -> Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let dir = repo_root()
        .join("target")
        .join("local-stack")
        .join(format!("{name}-{stamp}"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The GitLab stand-in, s3s-fs and the worker, wired together.
pub struct LocalStack {
    pub tools: Tools,
    pub dir: PathBuf,
    pub standin: crate::standin::Standin,
    pub s3: S3,
    pub wrangler: Wrangler,
    pub vars: Vec<(&'static str, String)>,
}

/// How [`LocalStack::relaunch`] stops the worker.
enum Stop {
    /// At once, as a crash would.
    Kill,
    /// As a redeploy does.
    Graceful,
}

impl LocalStack {
    /// Starts everything; `groups` is GROUPS_TO_BACKUP, `extra_vars` more worker settings.
    pub async fn start(
        name: &str,
        seed: crate::standin::Seed,
        options: crate::standin::Options,
        groups: &str,
        extra_vars: &[(&'static str, String)],
    ) -> Result<LocalStack> {
        LocalStack::start_inner(name, seed, options, groups, extra_vars, false).await
    }

    /// [`LocalStack::start`], with `WORKER_URL` set to the worker's own address (as restore
    /// drills need).
    pub async fn start_with_worker_url(
        name: &str,
        seed: crate::standin::Seed,
        options: crate::standin::Options,
        groups: &str,
        extra_vars: &[(&'static str, String)],
    ) -> Result<LocalStack> {
        LocalStack::start_inner(name, seed, options, groups, extra_vars, true).await
    }

    async fn start_inner(
        name: &str,
        seed: crate::standin::Seed,
        options: crate::standin::Options,
        groups: &str,
        extra_vars: &[(&'static str, String)],
        worker_url: bool,
    ) -> Result<LocalStack> {
        let tools = Tools::ensure()?;
        ensure_built(&tools)?;
        let dir = work_dir(name)?;
        let token = options.token.clone();
        let standin = crate::standin::Standin::start(seed, options).await?;
        let s3 = S3::start(&tools, &dir.join("s3")).await?;
        let mut vars = local_vars(&standin.base_url(), &token, groups, &s3);
        vars.extend(extra_vars.iter().cloned());
        let port = free_port()?;
        if worker_url {
            vars.push(("WORKER_URL", format!("http://127.0.0.1:{port}")));
        }
        let log = dir.join("wrangler.log");
        let wrangler = Wrangler::start_on(&tools, &vars, &dir.join("state"), &log, port).await?;
        Ok(LocalStack {
            tools,
            dir,
            standin,
            s3,
            wrangler,
            vars,
        })
    }

    /// Stops wrangler hard and starts it again on the same state, as after a crash.
    pub async fn crash_and_restart_worker(self) -> Result<LocalStack> {
        self.relaunch(Stop::Kill, &[]).await
    }

    /// Stops wrangler and starts it again on the same state with `changes` to the worker's
    /// settings (each replacing the setting of its name), as a redeploy with new vars does: the
    /// run it was advancing goes on under the new configuration.
    pub async fn restart_worker_with(
        self,
        changes: &[(&'static str, String)],
    ) -> Result<LocalStack> {
        self.relaunch(Stop::Graceful, changes).await
    }

    /// Stops wrangler as `stop` says and starts it again on the same state, with `changes` to
    /// the worker's settings, logging to a new file.
    async fn relaunch(self, stop: Stop, changes: &[(&'static str, String)]) -> Result<LocalStack> {
        let LocalStack {
            tools,
            dir,
            standin,
            s3,
            wrangler,
            mut vars,
        } = self;
        for (name, value) in changes {
            vars.retain(|(set, _)| set != name);
            vars.push((name, value.clone()));
        }
        match stop {
            Stop::Kill => wrangler.kill().await,
            Stop::Graceful => wrangler.stop().await,
        }
        let log = dir.join(format!("wrangler-{}.log", free_port()?));
        let wrangler = Wrangler::start(&tools, &vars, &dir.join("state"), &log).await?;
        Ok(LocalStack {
            tools,
            dir,
            standin,
            s3,
            wrangler,
            vars,
        })
    }

    /// The values of the worker's secrets: none may ever appear in a log line or an answer.
    pub fn secrets(&self) -> Vec<&str> {
        self.vars
            .iter()
            .filter(|(name, _)| {
                matches!(
                    *name,
                    "GITLAB_TOKEN" | "AWS_SECRET_ACCESS_KEY" | "AWS_SESSION_TOKEN" | "ADMIN_TOKEN"
                )
            })
            .map(|(_, value)| value.as_str())
            .collect()
    }

    /// Fails if `text` holds one of the worker's secrets or a presigned URL's signature that is
    /// not redacted.
    pub fn ensure_nothing_secret(&self, what: &str, text: &str) -> Result<()> {
        for secret in self.secrets() {
            if text.contains(secret) {
                bail!("{what} holds a secret of the worker");
            }
        }
        const SIGNATURE: &str = "X-Amz-Signature=";
        for (at, _) in text.match_indices(SIGNATURE) {
            if !text[at + SIGNATURE.len()..].starts_with("REDACTED") {
                bail!(
                    "{what} holds an unredacted signature: {}",
                    &text[at..(at + 40).min(text.len())]
                );
            }
        }
        Ok(())
    }

    /// Checks every log the worker wrote in this stack (restarts included) with
    /// [`LocalStack::ensure_nothing_secret`].
    pub fn ensure_logs_hold_nothing_secret(&self) -> Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with("wrangler") && name.ends_with(".log") {
                let text = std::fs::read_to_string(&path)?;
                self.ensure_nothing_secret(&format!("the worker log {}", path.display()), &text)?;
            }
        }
        Ok(())
    }

    /// `GET /status` with the admin bearer; an error unless it answers 200 with JSON that
    /// holds nothing secret.
    pub async fn status(&self) -> Result<serde_json::Value> {
        let response = reqwest::Client::new()
            .get(format!("{}/status", self.wrangler.url))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .context("GET /status")?;
        let status = response.status();
        let text = response.text().await.context("reading /status")?;
        if !status.is_success() {
            bail!("GET /status answered {status}: {text}");
        }
        self.ensure_nothing_secret("/status", &text)?;
        serde_json::from_str(&text).with_context(|| format!("/status is no JSON: {text}"))
    }

    /// `POST /run` with the admin bearer: its status code and JSON body (202 with the run, or
    /// 409 `{"error": …, "run": id}` while a run is going). Returns once the run's first tick ended.
    pub async fn start_run(&self) -> Result<(u16, serde_json::Value)> {
        let response = reqwest::Client::new()
            .post(format!("{}/run", self.wrangler.url))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .context("POST /run")?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .context("reading POST /run's answer")?;
        let body = serde_json::from_str(&text)
            .with_context(|| format!("POST /run answered {status} with no JSON: {text}"))?;
        Ok((status, body))
    }

    /// `POST /run/cancel` with the admin bearer: its status code and JSON body (200 with the
    /// cancelled run's id, 409 when no run is going or it is cancelled already).
    /// While a tick runs it answers 503 with `Retry-After`: asked again, as a client would.
    pub async fn cancel_run(&self) -> Result<(u16, serde_json::Value)> {
        let mut tries = 0;
        let response = loop {
            let response = reqwest::Client::new()
                .post(format!("{}/run/cancel", self.wrangler.url))
                .bearer_auth(ADMIN_TOKEN)
                .timeout(Duration::from_secs(120))
                .send()
                .await
                .context("POST /run/cancel")?;
            tries += 1;
            if response.status().as_u16() != 503 || tries == 24 {
                break response;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        };
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .context("reading POST /run/cancel's answer")?;
        let body = serde_json::from_str(&text)
            .with_context(|| format!("POST /run/cancel answered {status} with no JSON: {text}"))?;
        Ok((status, body))
    }

    /// Polls `/status` until `run.phase` is `phase`, firing the cron trigger every `cron_every`
    /// (never with `None`: the worker's own alarms must carry the run); the status that showed
    /// it. Fails after `timeout`, showing the last status.
    pub async fn wait_for_phase(
        &self,
        phase: &str,
        cron_every: Option<Duration>,
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        self.wait_for_status(&format!("phase {phase}"), cron_every, timeout, |status| {
            status["run"]["phase"] == phase
        })
        .await
    }

    /// Polls `/status` until `done` holds for it, firing the cron trigger every `cron_every` (if
    /// set); the status that satisfied `done`. Fails after `timeout` with the last status seen.
    pub async fn wait_for_status(
        &self,
        what: &str,
        cron_every: Option<Duration>,
        timeout: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let began = Instant::now();
        let mut last_cron: Option<Instant> = None;
        loop {
            if let Some(every) = cron_every {
                if last_cron.is_none_or(|at| at.elapsed() >= every) {
                    last_cron = Some(Instant::now());
                    self.wrangler.fire_cron().await?;
                }
            }
            let last = match self.status().await {
                Ok(status) if done(&status) => return Ok(status),
                Ok(status) => status,
                Err(e) => serde_json::Value::String(format!("{e:#}")),
            };
            if began.elapsed() > timeout {
                bail!(
                    "/status did not show {what} within {timeout:?}; last status:\n{}\nworker log: {}",
                    serde_json::to_string_pretty(&last).unwrap_or_default(),
                    self.wrangler.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    pub async fn stop(self) {
        self.wrangler.stop().await;
        self.s3.stop().await;
        self.standin.stop().await;
    }
}

/// The SHA-256 (lowercase hex) and length of a file.
pub fn file_sha256(path: &Path) -> Result<(String, u64)> {
    use sha2::Digest;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((
        hex::encode(sha2::Sha256::digest(&bytes)),
        bytes.len() as u64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_files_sha256_is_the_lowercase_hex_digest_of_its_bytes_with_its_length() {
        let dir = std::env::temp_dir().join(format!("testkit-sha256-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("abc");
        std::fs::write(&path, b"abc").unwrap();
        let (digest, length) = file_sha256(&path).unwrap();
        // FIPS 180-2's example for "abc".
        assert_eq!(
            digest,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(length, 3);
        assert!(file_sha256(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
