//! End to end: one-call restore from the status page. A run backs up a group; in headless
//! Chromium the operator signs in and clicks "Restore" beside a verified backup. A namespace
//! outside RESTORE_NAMESPACES typed into the form is refused and the form says why; with the
//! defaults the form shows, the restore starts, the page's "Restores" section follows it to
//! `finished` with a link to the new project, and the stand-in imported exactly the bucket's
//! object, byte for byte, into the project's own namespace under the default path.

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::{browser, checked, count, own_projects, run_to_the_end};
use testkit::stack::{LocalStack, ADMIN_TOKEN};
use testkit::standin::{ImportStatus, Options, Seed};

/// The group backed up: its own projects and those of its subgroup `initech/ops`.
const GROUP: &str = "initech";
/// The project restored: in a subgroup, so its default namespace is not the top-level group.
const RESTORED: &str = "initech/ops/monitoring";
/// A group of the stand-in that is not backed up: no restore may go there by default.
const OUTSIDE: &str = "contractors";
/// How long the page may take to show the restore finished.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(90);

fn test_output() -> Result<std::path::PathBuf> {
    let dir = testkit::tools::repo_root().join("test-output");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_pages_restore_action_starts_a_restore_and_shows_it_finished() -> Result<()> {
    let seed = Seed::demo();
    let projects = own_projects(&seed, &[GROUP]).len() as u64;
    let stack = LocalStack::start(
        "restore-page",
        seed,
        Options {
            exports_per_window: 200,
            // The local bucket and worker speak plain http.
            allow_http_imports: true,
            ..Options::default()
        },
        GROUP,
        &[("EXPORTS_PER_MINUTE", "200".to_owned())],
    )
    .await?;
    checked(stack, |stack| async move {
        let result = check(&stack, projects).await;
        (Some(stack), result)
    })
    .await
}

async fn check(stack: &LocalStack, projects: u64) -> Result<()> {
    let status = run_to_the_end(stack, Duration::from_secs(5 * 60)).await?;
    ensure!(count(&status, "verified")? == projects, "{status}");
    let key = status["last_backups"]
        .as_array()
        .context("no last_backups")?
        .iter()
        .find(|b| b["path"] == RESTORED)
        .and_then(|b| b["key"].as_str())
        .with_context(|| format!("no verified backup of {RESTORED}: {status}"))?
        .to_owned();
    let (sha256, size) = stack.s3.object_sha256(&key)?;

    let shown = restore_in_a_browser(stack, &key).await?;

    // What /status says of the restore is what the page showed.
    let status = stack.status().await?;
    let restores = status["restores"].as_array().context("no restores")?;
    ensure!(restores.len() == 1, "restores: {restores:?}");
    let restore = &restores[0];
    let (namespace, last) = RESTORED
        .rsplit_once('/')
        .context("RESTORED has a namespace")?;
    let target = restore["target"]
        .as_str()
        .context("restore without target")?;
    let path = target
        .strip_prefix(&format!("{namespace}/"))
        .with_context(|| format!("restored into {target}, not into {namespace}"))?;
    ensure!(
        is_default_path(path, last),
        "the default path is {path:?}, not {last}-restored-<YYYYMMDD-HHMM>"
    );
    ensure!(
        restore["state"] == "finished"
            && restore["key"] == key.as_str()
            && restore["error"].is_null(),
        "{restore}"
    );
    ensure!(
        shown.link.is_some() && shown.link.as_deref() == restore["web_url"].as_str(),
        "the page links to {:?}, /status says {}",
        shown.link,
        restore["web_url"]
    );

    // GitLab imported that very object, once, into the target.
    let imports = stack.standin.imports();
    ensure!(imports.len() == 1, "import requests: {imports:#?}");
    let import = &imports[0];
    ensure!(import.status == 201, "{import:#?}");
    ensure!(
        import.import_status == Some(ImportStatus::Finished),
        "{import:#?}"
    );
    ensure!(import.path.as_deref() == Some(path), "{import:#?}");
    ensure!(
        import.project_id.is_some() && restore["new_project_id"].as_u64() == import.project_id,
        "/status {restore} vs the stand-in {import:#?}"
    );
    ensure!(
        import.archive_sha256.as_deref() == Some(sha256.as_str())
            && import.archive_bytes == Some(size),
        "GitLab downloaded {:?} ({:?} bytes), the bucket holds {sha256} ({size} bytes) at {key}",
        import.archive_sha256,
        import.archive_bytes
    );
    Ok(())
}

/// `<last>-restored-<YYYYMMDD-HHMM>`.
fn is_default_path(path: &str, last: &str) -> bool {
    let Some(stamp) = path
        .strip_prefix(last)
        .and_then(|rest| rest.strip_prefix("-restored-"))
    else {
        return false;
    };
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    stamp
        .split_once('-')
        .is_some_and(|(day, time)| digits(day, 8) && digits(time, 4))
}

/// What the page showed once the restore finished.
struct Shown {
    /// The address the restore's link goes to, if the page showed one.
    link: Option<String>,
}

/// Headless Chromium signs in, opens the restore form beside `key`, checks the defaults it
/// shows, starts the restore with them and waits until the "Restores" section shows it finished;
/// the page's screenshot is saved whatever happened.
async fn restore_in_a_browser(stack: &LocalStack, key: &str) -> Result<Shown> {
    let url = format!("{}/", stack.wrangler.url);
    let key = key.to_owned();
    let screenshot = test_output()?.join("restore-page.png");
    tokio::task::spawn_blocking(move || -> Result<Shown> {
        use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
        let browser = browser((760, 1600))?;
        let tab = browser.new_tab()?;
        tab.set_default_timeout(Duration::from_secs(20));
        let shown = restore_on_the_page(&tab, &url, &key);
        // The screenshot shows the "Restores" section even when the page is long.
        tab.evaluate(
            r##"document.getElementById("restores-section").scrollIntoView({block: "end"})"##,
            false,
        )?;
        let png = tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)?;
        std::fs::write(&screenshot, png)?;
        eprintln!("restore page screenshot: {}", screenshot.display());
        shown
    })
    .await?
}

fn restore_on_the_page(tab: &headless_chrome::Tab, url: &str, key: &str) -> Result<Shown> {
    tab.navigate_to(url)?.wait_until_navigated()?;
    tab.wait_for_element("#token")?.click()?;
    tab.type_str(ADMIN_TOKEN)?.press_key("Enter")?;
    let row = format!("#backups tr[data-key={}]", serde_json::to_string(key)?);
    tab.wait_for_element(&format!("{row} button"))?.click()?;

    // The form shows the defaults: the project's namespace and `<last>-restored-<time>`.
    let (namespace, last) = RESTORED
        .rsplit_once('/')
        .context("RESTORED has a namespace")?;
    let defaults = page_json(
        tab,
        r##"({namespace: document.getElementById("restore-namespace").placeholder,
             path: document.getElementById("restore-path").placeholder,
             visible: !document.getElementById("restore-form").hidden})"##,
    )?;
    ensure!(
        defaults["visible"] == true && defaults["namespace"] == namespace,
        "the restore form: {defaults}"
    );
    ensure!(
        defaults["path"]
            .as_str()
            .is_some_and(|p| is_default_path(p, last)),
        "the default path shown: {defaults}"
    );
    // A namespace outside RESTORE_NAMESPACES (by default the backed-up groups) is refused, and
    // the form says why.
    tab.wait_for_element("#restore-namespace")?.click()?;
    tab.type_str(OUTSIDE)?;
    let refused = start_restore(tab)?;
    ensure!(
        refused.class == "error" && refused.text.contains(OUTSIDE),
        "a restore into {OUTSIDE} showed {refused:?}"
    );
    // Emptied again, the field takes its default.
    tab.evaluate(
        r##"document.getElementById("restore-namespace").value = """##,
        false,
    )?;
    let started = start_restore(tab)?.text;
    ensure!(
        started.starts_with("Restore #")
            && started.contains(&format!("{namespace}/{last}-restored-")),
        "after Start restore the form shows {started:?}"
    );

    // The page refreshes by itself until the restore is finished (or failed).
    let deadline = Instant::now() + RESTORE_TIMEOUT;
    let row = loop {
        let row = page_json(
            tab,
            r##"(() => { const tr = document.querySelector("#restores tr");
                const a = tr && tr.querySelector("a");
                return tr && {state: tr.querySelector(".phase").textContent,
                              text: tr.innerText, link: a && a.href}; })()"##,
        )?;
        let state = row["state"].as_str().unwrap_or_default();
        if state == "finished" || state == "failed" {
            break row;
        }
        if Instant::now() > deadline {
            bail!("the page did not show the restore finished within {RESTORE_TIMEOUT:?}: {row}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    ensure!(row["state"] == "finished", "the restore ended: {row}");
    Ok(Shown {
        link: row["link"].as_str().map(str::to_owned),
    })
}

/// What the form showed after "Start restore".
#[derive(Debug)]
struct Answer {
    text: String,
    class: String,
}

/// Clicks "Start restore" and waits for the worker's answer in the form.
fn start_restore(tab: &headless_chrome::Tab) -> Result<Answer> {
    tab.wait_for_element("#restore-start")?.click()?;
    // While the worker is asked, the form says so in a sentence ending in "…".
    let answered = Instant::now() + Duration::from_secs(60);
    loop {
        let shown = page_json(
            tab,
            r##"(() => { const p = document.getElementById("restore-result");
                return {text: p.textContent, class: p.className}; })()"##,
        )?;
        let text = shown["text"].as_str().unwrap_or_default();
        if (!text.is_empty() && !text.ends_with('…')) || Instant::now() > answered {
            return Ok(Answer {
                text: text.to_owned(),
                class: shown["class"].as_str().unwrap_or_default().to_owned(),
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Evaluates `expression` in the page and reads its value as JSON.
fn page_json(tab: &headless_chrome::Tab, expression: &str) -> Result<serde_json::Value> {
    let value = tab
        .evaluate(&format!("JSON.stringify({expression})"), false)?
        .value
        .with_context(|| format!("no value from {expression}"))?;
    let text = value.as_str().context("JSON.stringify gave no string")?;
    Ok(serde_json::from_str(text)?)
}
