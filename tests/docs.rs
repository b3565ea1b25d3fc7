//! The docs match the code. README.md and ARCHITECTURE.md are read as data and checked against
//! what they describe: every setting with its kind, default and range, the example configurations,
//! the commands (`cargo xtask …`, `npx wrangler …`), the HTTP routes, the log events, the key
//! layout, the IAM policy's actions, the numbers quoted from the code, and ARCHITECTURE.md's
//! module paths, tables, states and test names. Host only: no network, no wrangler.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use gitlab_backup::config::{
    Config, ConfigError, DEFAULT_EXPORTS_PER_MINUTE, DEFAULT_VERIFY_TIMEOUT_MINUTES,
    MAX_SUBREQUESTS_PER_INVOCATION, SETTINGS,
};
use gitlab_backup::engine::{Event, CHECK_STEPS, RETRY_AFTER_SLACK, RETRY_BACKOFF};
use gitlab_backup::manifest::{part_key, probe_key, summary_key, PART_SIZE};
use gitlab_backup::s3::{object_key, DEFAULT_ENDPOINT_REGION};
use gitlab_backup::store::{Phase, ProjectState};

// ---------------------------------------------------------------------------------------------
// Facts about the outside world that the test cannot ask for without a network or wrangler.

/// The wrangler whose command list is below: `package.json` pins it, and a new pin means
/// reading `npx wrangler --help` again and updating these lists.
const PINNED_WRANGLER: &str = "4.86.0";
/// `wrangler --help` of the pinned version: every top-level command.
const WRANGLER_COMMANDS: &[&str] = &[
    "docs",
    "complete",
    "email",
    "auth",
    "login",
    "logout",
    "whoami",
    "ai",
    "ai-search",
    "browser",
    "containers",
    "delete",
    "deploy",
    "deployments",
    "dev",
    "dispatch-namespace",
    "init",
    "pages",
    "preview",
    "queues",
    "rollback",
    "secret",
    "setup",
    "tail",
    "triggers",
    "types",
    "versions",
    "vpc",
    "workflows",
    "d1",
    "hyperdrive",
    "kv",
    "pipelines",
    "r2",
    "secrets-store",
    "vectorize",
    "cert",
    "mtls-certificate",
    "tunnel",
];
/// `wrangler secret --help`.
const WRANGLER_SECRET_COMMANDS: &[&str] = &["put", "delete", "list", "bulk"];
/// The options of the commands the docs show with options (`--help` of each), besides the
/// global ones.
const WRANGLER_OPTIONS: &[(&str, &[&str])] = &[
    (
        "tail",
        &[
            "--format",
            "--status",
            "--header",
            "--method",
            "--sampling-rate",
            "--search",
            "--ip",
            "--version-id",
        ],
    ),
    (
        "deploy",
        &[
            "--name",
            "--no-bundle",
            "--outdir",
            "--outfile",
            "--compatibility-date",
            "--compatibility-flags",
            "--latest",
            "--assets",
            "--var",
            "--define",
            "--alias",
            "--triggers",
            "--routes",
            "--domains",
            "--minify",
            "--dry-run",
            "--metafile",
            "--keep-vars",
            "--logpush",
            "--upload-source-maps",
            "--tag",
            "--message",
            "--strict",
            "--secrets-file",
        ],
    ),
];
const WRANGLER_GLOBAL_OPTIONS: &[&str] = &["--config", "--cwd", "--env", "--env-file", "--help"];

/// ALL_CAPS names the docs may mention that are not settings.
const NOT_SETTINGS: &[&str] = &["CLOUDFLARE_API_TOKEN", "PART_SIZE", "LEARNED_LIMIT_HOLDS"];

/// Example values for the settings the README marks as required.
const REQUIRED_EXAMPLES: &[(&str, &str)] = &[
    ("GITLAB_TOKEN", "glpat-example"),
    ("GROUPS_TO_BACKUP", "42,acme/platform"),
    ("AWS_S3_BUCKET", "acme-gitlab-backups"),
    ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
    ("AWS_SECRET_ACCESS_KEY", "example-secret"),
];

/// Messages the README's troubleshooting quotes: each must still be what the code says.
const QUOTED_MESSAGES: &[&str] = &[
    "GitLab refused GITLAB_TOKEN (401)",
    "the token needs the Maintainer role on this project",
    "the group does not exist or GITLAB_TOKEN cannot see it",
    "project gone",
    "GitLab refused the export: ",
    " refused a signed PUT (",
    "the upload never arrived within ",
];

// ---------------------------------------------------------------------------------------------
// Reading the repository.

/// The checkout to read: this one, or `DOCS_ROOT` (to see these checks catch a drift made in a
/// scratch copy without touching the working tree).
fn root() -> PathBuf {
    std::env::var_os("DOCS_ROOT")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn readme() -> String {
    read("README.md")
}

fn architecture() -> String {
    read("ARCHITECTURE.md")
}

/// Every `.rs` file under `dir`, with its text.
fn rust_files(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            files.push((path, text));
        }
    }
    files
}

/// The code of `src/` without its tests (unit-test modules and `tests.rs` files).
fn production_sources() -> Vec<(PathBuf, String)> {
    rust_files(&root().join("src"))
        .into_iter()
        .filter(|(path, _)| path.file_name().is_none_or(|n| n != "tests.rs"))
        .map(|(path, text)| {
            let code = match text.find("#[cfg(test)]") {
                Some(at) => text[..at].to_owned(),
                None => text,
            };
            (path, code)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Reading Markdown.

/// The fenced code blocks: (language, body).
fn code_blocks(md: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in md.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(lang)) => current = Some((lang.trim().to_owned(), String::new())),
            (Some(_), Some(_)) => blocks.push(current.take().unwrap()),
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(current.is_none(), "an unclosed code block");
    blocks
}

/// The text outside fenced code blocks.
fn prose(md: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in md.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The `code spans` of the prose.
fn spans(md: &str) -> Vec<String> {
    prose(md)
        .split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_owned())
        .collect()
}

/// From the `## heading` to the next `## ` heading.
fn section(md: &str, heading: &str) -> String {
    let start = md
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("no section ## {heading}"));
    let rest = &md[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 3);
    rest[..end].to_owned()
}

/// The rows of the table whose header line starts with `header`, as trimmed cells.
fn table(md: &str, header: &str) -> Vec<Vec<String>> {
    let mut lines = md.lines().skip_while(|l| !l.starts_with(header));
    assert!(lines.next().is_some(), "no table with header {header}");
    lines
        .skip(1)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

/// The text of a cell that is one code span, e.g. `` `6` `` → `6`.
fn single_span(cell: &str) -> Option<&str> {
    let inner = cell.strip_prefix('`')?.strip_suffix('`')?;
    (!inner.contains('`')).then_some(inner)
}

/// GitHub's anchor for a heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter_map(|c| match c {
            c if c.is_alphanumeric() => Some(c.to_lowercase().next().unwrap()),
            ' ' | '-' => Some('-'),
            '_' => Some('_'),
            _ => None,
        })
        .collect()
}

/// `1,000` for 1000.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The text with every run of whitespace made one space: Markdown wraps sentences anywhere.
fn flat(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn parse_number(text: &str) -> u64 {
    text.replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("{text:?} is not a number"))
}

/// Words made of `[A-Z0-9_]` holding an underscore: how the docs name settings.
fn caps_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .filter(|w| w.contains('_') && w.starts_with(|c: char| c.is_ascii_uppercase()))
        .map(|w| w.trim_end_matches('_').to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Reading the code's own lists.

fn settings() -> BTreeMap<&'static str, bool> {
    SETTINGS.iter().copied().collect()
}

fn configure(vars: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
    Config::from_lookup(|name| vars.get(name).cloned())
}

fn required_examples() -> BTreeMap<String, String> {
    REQUIRED_EXAMPLES
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn problem_names(result: Result<Config, ConfigError>) -> Vec<&'static str> {
    match result {
        Ok(_) => Vec::new(),
        Err(e) => e.problems.into_iter().map(|p| p.setting).collect(),
    }
}

/// `cargo xtask` commands: the `Some("…")` arms of xtask's `main`.
fn xtask_commands() -> BTreeSet<String> {
    let main = read("xtask/src/main.rs");
    main.split("Some(\"")
        .skip(1)
        .filter_map(|rest| rest.split_once("\")").map(|(name, _)| name.to_owned()))
        .collect()
}

/// The worker's HTTP routes, as `api::Route` lists them.
fn worker_routes() -> BTreeSet<(String, String)> {
    gitlab_backup::api::Route::ALL
        .iter()
        .map(|r| (r.method().to_owned(), r.path().to_owned()))
        .collect()
}

/// Every log event: the engine's `Event::NAMES` and the glue's own `"event": "…"` lines.
fn log_events() -> BTreeSet<String> {
    let mut events: BTreeSet<String> = Event::NAMES.iter().map(|&name| name.to_owned()).collect();
    for (_, text) in rust_files(&root().join("src/worker")) {
        for rest in text.split("\"event\": \"").skip(1) {
            events.insert(rest.split('"').next().unwrap().to_owned());
        }
    }
    events
}

/// The HTTP methods of the S3 requests the code signs (`presign(Method::…` and
/// `signed_request(Method::…`), outside tests.
fn s3_methods() -> BTreeSet<String> {
    let mut methods = BTreeSet::new();
    for (_, code) in production_sources() {
        for call in [".presign(", ".signed_request("] {
            for rest in code.split(call).skip(1) {
                if let Some(method) = rest.trim_start().strip_prefix("Method::") {
                    methods.insert(
                        method
                            .chars()
                            .take_while(char::is_ascii_alphabetic)
                            .collect(),
                    );
                }
            }
        }
    }
    methods
}

/// `CREATE TABLE` statements of the store's schema: name → statement.
fn schema_tables() -> BTreeMap<String, String> {
    let store = read("src/store/schema.rs");
    store
        .split("CREATE TABLE IF NOT EXISTS ")
        .skip(1)
        .map(|rest| {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let statement = rest.split("\",").next().unwrap().to_owned();
            (name, statement)
        })
        .collect()
}

fn declares_column(statement: &str, column: &str) -> bool {
    statement.match_indices(column).any(|(at, _)| {
        let before = statement[..at].chars().last();
        let after = statement[at + column.len()..].chars().next();
        matches!(before, Some('(' | ' ' | '\n' | ',')) && after == Some(' ')
    })
}

/// The run phases, as the store writes them.
fn phases() -> BTreeSet<String> {
    Phase::ALL.iter().map(|p| p.as_str().to_owned()).collect()
}

/// The project states, as the store writes them.
fn project_states() -> BTreeSet<String> {
    ProjectState::ALL
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect()
}

fn at_example_run_start() -> SystemTime {
    SystemTime::from(time::macros::datetime!(2026-11-25 02:00:07 UTC))
}

// ---------------------------------------------------------------------------------------------
// README: settings.

const SETTINGS_HEADER: &str = "| name | default | meaning | kind |";

#[test]
fn every_setting_is_in_the_settings_table_once_with_its_kind() {
    let rows = table(&readme(), SETTINGS_HEADER);
    let mut seen = BTreeSet::new();
    for row in &rows {
        let name = single_span(&row[0]).unwrap_or_else(|| panic!("row without a name: {row:?}"));
        assert!(seen.insert(name.to_owned()), "{name} is in the table twice");
        let secret = settings()
            .get(name)
            .copied()
            .unwrap_or_else(|| panic!("the table documents {name}, which the code does not read"));
        let kind = if secret { "secret" } else { "var" };
        assert_eq!(row[3], kind, "{name} is a {kind}");
    }
    let missing: Vec<_> = settings()
        .into_keys()
        .filter(|name| !seen.contains(*name))
        .collect();
    assert!(missing.is_empty(), "the settings table lacks {missing:?}");
}

#[test]
fn documented_defaults_are_what_the_code_does_without_the_setting() {
    let rows = table(&readme(), SETTINGS_HEADER);
    let base = required_examples();
    let without = configure(&base).expect("the required examples form a configuration");
    for row in &rows {
        let name = single_span(&row[0]).unwrap();
        let default = &row[1];
        if default == "required" {
            assert!(
                base.contains_key(name),
                "{name} is documented as required: give it an example in REQUIRED_EXAMPLES"
            );
            let mut vars = base.clone();
            vars.remove(name);
            assert!(
                problem_names(configure(&vars)).contains(&name),
                "the README says {name} is required, but the code runs without it"
            );
        } else if let Some(value) = single_span(default) {
            assert!(
                !base.contains_key(name),
                "{name} has a default and an example"
            );
            let mut vars = base.clone();
            vars.insert(name.to_owned(), value.to_owned());
            let with = configure(&vars)
                .unwrap_or_else(|e| panic!("{name}'s documented default {value:?}: {e}"));
            assert_eq!(
                format!("{with:?}"),
                format!("{without:?}"),
                "setting {name} to its documented default {value:?} changes the configuration"
            );
        }
    }
    for name in base.keys() {
        let row = rows
            .iter()
            .find(|r| single_span(&r[0]) == Some(name.as_str()));
        assert_eq!(
            row.map(|r| r[1].as_str()),
            Some("required"),
            "the code requires {name}: its default must read `required`"
        );
    }
}

/// Settings bounded by another one too (config: `VERIFY_TIMEOUT_MINUTES` at most
/// `PRESIGN_EXPIRY_HOURS`): (setting, the other, the other's value that leaves the whole range
/// room). Their rows must name the other.
const BOUNDED_BY: &[(&str, &str, &str)] = &[
    ("VERIFY_TIMEOUT_MINUTES", "PRESIGN_EXPIRY_HOURS", "168"),
    ("PRESIGN_EXPIRY_HOURS", "VERIFY_TIMEOUT_MINUTES", "1"),
    ("BACKUP_RETENTION_DAYS", "FULL_BACKUP_EVERY_DAYS", "0"),
    ("STALE_AFTER_DAYS", "FULL_BACKUP_EVERY_DAYS", "0"),
];

#[test]
fn documented_ranges_are_the_ranges_the_code_accepts() {
    let rows = table(&readme(), SETTINGS_HEADER);
    let mut checked = 0;
    for row in &rows {
        let name = single_span(&row[0]).unwrap();
        let Some((_, range)) = row[2].split_once("(from ") else {
            continue;
        };
        let bound = BOUNDED_BY.iter().find(|(setting, _, _)| *setting == name);
        if let Some((_, other, _)) = bound {
            assert!(
                row[2].contains(&format!("`{other}`")),
                "{name} is bounded by {other} too: its row must say so"
            );
        }
        let (low, high) = range
            .split_once(')')
            .and_then(|(r, _)| r.split_once(" to "))
            .unwrap_or_else(|| panic!("{name}: a range reads (from A to B)"));
        let (low, high) = (parse_number(low), parse_number(high));
        let with = |value: u64| {
            let mut vars = required_examples();
            vars.insert(name.to_owned(), value.to_string());
            if let Some((_, other, room)) = bound {
                vars.insert(other.to_string(), room.to_string());
            }
            problem_names(configure(&vars))
        };
        assert_eq!(with(low), Vec::<&str>::new(), "{name} = {low} is refused");
        assert_eq!(with(high), Vec::<&str>::new(), "{name} = {high} is refused");
        assert_eq!(
            with(high + 1),
            vec![name],
            "{name} = {} is accepted",
            high + 1
        );
        if low > 0 {
            assert_eq!(
                with(low - 1),
                vec![name],
                "{name} = {} is accepted",
                low - 1
            );
        }
        checked += 1;
    }
    assert!(
        checked >= 8,
        "only {checked} ranges found in the settings table"
    );
}

#[test]
fn example_configurations_in_the_docs_are_valid_and_hold_no_secret() {
    let mut examples = 0;
    for (lang, body) in code_blocks(&readme()) {
        if lang != "toml" {
            continue;
        }
        let mut vars = BTreeMap::new();
        for line in body.lines().filter(|l| l.contains(" = ")) {
            let (name, value) = line.split_once(" = ").unwrap();
            let value = value.trim().trim_matches('"');
            // `<account-id>` and the like are for the reader to fill in.
            let mut filled = String::new();
            for (i, part) in value.split(['<', '>']).enumerate() {
                filled.push_str(if i % 2 == 1 { "placeholder" } else { part });
            }
            let secret = settings()
                .get(name)
                .copied()
                .unwrap_or_else(|| panic!("an example sets {name}, which the code does not read"));
            assert!(!secret, "an example puts the secret {name} under [vars]");
            vars.insert(name.to_owned(), filled);
        }
        for (name, secret) in SETTINGS {
            if *secret {
                vars.insert(name.to_string(), "example".to_owned());
            }
        }
        if let Err(e) = configure(&vars) {
            panic!("this example is refused ({e}):\n{body}");
        }
        examples += 1;
    }
    assert!(examples >= 2, "the AWS and R2 examples are gone");
}

#[test]
fn every_setting_the_docs_name_exists() {
    let known: BTreeSet<&str> = settings()
        .into_keys()
        .chain(NOT_SETTINGS.iter().copied())
        .collect();
    for (doc, text) in [("README.md", readme()), ("ARCHITECTURE.md", architecture())] {
        for name in caps_names(&text) {
            assert!(
                known.contains(name.as_str()),
                "{doc} names {name}, which is no setting (add it to NOT_SETTINGS if it is not meant to be)"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// README: commands.

#[test]
fn every_cargo_xtask_command_shown_exists() {
    let commands = xtask_commands();
    assert!(
        commands.contains("test") && commands.contains("demo"),
        "{commands:?}"
    );
    let mut shown = BTreeSet::new();
    for text in [readme(), architecture()] {
        for rest in text.split("cargo xtask ").skip(1) {
            // `cargo xtask test / demo / bench` names three.
            let until = rest.find(['`', '\n']).unwrap_or(rest.len());
            for alternative in rest[..until].split(" / ") {
                let word: String = alternative
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                shown.insert(word);
            }
        }
    }
    for command in &shown {
        assert!(
            commands.contains(command),
            "the docs show `cargo xtask {command}`, which xtask/src/main.rs does not have ({commands:?})"
        );
    }
    assert!(shown.contains("demo") && shown.contains("test"));
}

#[test]
fn every_wrangler_command_shown_exists_in_the_pinned_wrangler() {
    let package: serde_json::Value = serde_json::from_str(&read("package.json")).unwrap();
    assert_eq!(
        package["devDependencies"]["wrangler"], PINNED_WRANGLER,
        "wrangler's pin changed: check WRANGLER_COMMANDS against its --help, then update PINNED_WRANGLER"
    );
    let mut shown = 0;
    for text in [readme(), architecture()] {
        // `npx wrangler …` and `` `wrangler …` ``; not prose such as "the pinned wrangler and".
        for (at, _) in text.match_indices("wrangler ") {
            if !(text[..at].ends_with("npx ") || text[..at].ends_with('`')) {
                continue;
            }
            let rest = &text[at + "wrangler ".len()..];
            let line = rest.split(['`', '\n', '#']).next().unwrap();
            let mut words = line.split_whitespace();
            let command = words.next().unwrap_or_default();
            assert!(
                WRANGLER_COMMANDS.contains(&command),
                "`wrangler {command}` is no command of wrangler {PINNED_WRANGLER}"
            );
            if command == "secret" {
                let sub = words.next().unwrap_or_default();
                assert!(
                    WRANGLER_SECRET_COMMANDS.contains(&sub),
                    "`wrangler secret {sub}`"
                );
            }
            let options = WRANGLER_OPTIONS
                .iter()
                .find(|(c, _)| *c == command)
                .map_or(&[][..], |(_, o)| *o);
            for option in words.filter(|w| w.starts_with("--")) {
                assert!(
                    options.contains(&option) || WRANGLER_GLOBAL_OPTIONS.contains(&option),
                    "`wrangler {command} {option}` is no option of wrangler {PINNED_WRANGLER}"
                );
            }
            shown += 1;
        }
    }
    assert!(shown >= 5, "only {shown} wrangler commands found");
}

#[test]
fn secrets_put_with_wrangler_are_exactly_the_secret_settings() {
    let mut put = BTreeSet::new();
    for (_, body) in code_blocks(&readme()) {
        for rest in body.split("npx wrangler secret put ").skip(1) {
            put.insert(rest.split_whitespace().next().unwrap().to_owned());
        }
    }
    let secrets: BTreeSet<String> = SETTINGS
        .iter()
        .filter(|(_, secret)| *secret)
        .map(|(name, _)| name.to_string())
        .collect();
    assert_eq!(
        put, secrets,
        "the deploy steps must set every secret, and only secrets"
    );
}

#[test]
fn the_cron_trigger_the_docs_describe_is_every_minute() {
    let wrangler = read("wrangler.toml");
    assert!(
        wrangler.contains("crons = [\"* * * * *\"]"),
        "the README says the cron trigger stays every minute"
    );
    assert!(flat(&readme()).contains("stays `* * * * *`"));
}

// ---------------------------------------------------------------------------------------------
// README: HTTP API, logs.

#[test]
fn the_http_api_section_documents_exactly_the_worker_routes() {
    let routes = worker_routes();
    assert!(routes.len() >= 3, "{routes:?}");
    let documented: BTreeSet<(String, String)> = spans(&section(&readme(), "HTTP API and logs"))
        .iter()
        .filter_map(|span| {
            let (method, path) = span.split_once(' ')?;
            let http = ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"];
            (http.contains(&method) && path.starts_with('/') && !path.contains(' '))
                .then(|| (method.to_owned(), path.to_owned()))
        })
        .collect();
    assert_eq!(
        documented, routes,
        "the HTTP API section and src/api.rs disagree"
    );
}

#[test]
fn every_curl_call_shown_uses_a_route_and_method_of_the_worker() {
    let routes = worker_routes();
    let mut calls = 0;
    for (_, body) in code_blocks(&readme()) {
        for line in body.lines().filter(|l| l.trim_start().starts_with("curl ")) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let method = words
                .iter()
                .position(|w| *w == "-X")
                .map_or("GET", |i| words[i + 1]);
            let url = words.iter().rev().find(|w| w.starts_with("http")).unwrap();
            let after_scheme = &url[url.find("://").unwrap() + 3..];
            let path = &after_scheme[after_scheme.find('/').unwrap_or(after_scheme.len())..];
            assert!(
                routes.contains(&(method.to_owned(), path.to_owned())),
                "`{line}` calls {method} {path}, which the worker does not serve"
            );
            calls += 1;
        }
    }
    assert!(calls >= 2);
}

#[test]
fn the_log_events_listed_are_exactly_those_the_worker_logs() {
    let text = section(&readme(), "HTTP API and logs");
    let start = text
        .find("with its name in `event`")
        .expect("the list of log events");
    let list = &text[start..];
    let list = &list[..list.find("\n\n").unwrap()];
    let documented: BTreeSet<String> = spans(list).into_iter().filter(|s| s != "event").collect();
    assert_eq!(
        documented,
        log_events(),
        "README's log events and the code disagree"
    );
}

// ---------------------------------------------------------------------------------------------
// README: storage, keys and numbers.

#[test]
fn the_iam_policy_parses_and_names_exactly_the_actions_the_code_needs() {
    let policy = code_blocks(&readme())
        .into_iter()
        .find(|(lang, body)| lang == "json" && body.contains("\"Statement\""))
        .expect("the IAM policy");
    let policy: serde_json::Value = serde_json::from_str(&policy.1).expect("the policy is JSON");

    // What each kind of S3 request needs; a missing object reads 404, not 403, only with
    // s3:ListBucket (and the region probe is a bucket-level HEAD).
    let mut needed: BTreeSet<String> = s3_methods()
        .iter()
        .map(|method| match method.as_str() {
            "Put" => "s3:PutObject".to_owned(),
            "Head" | "Get" => "s3:GetObject".to_owned(),
            other => panic!("the code now signs S3 {other} requests: extend the README's policy"),
        })
        .collect();
    assert!(needed.contains("s3:PutObject") && needed.contains("s3:GetObject"));
    needed.insert("s3:ListBucket".to_owned());

    let statements = policy["Statement"].as_array().expect("Statement is a list");
    let mut actions = BTreeSet::new();
    for statement in statements {
        match &statement["Action"] {
            serde_json::Value::String(a) => {
                actions.insert(a.clone());
            }
            serde_json::Value::Array(list) => {
                actions.extend(list.iter().map(|a| a.as_str().unwrap().to_owned()));
            }
            other => panic!("an Action that is neither a string nor a list: {other}"),
        }
        assert_eq!(statement["Effect"], "Allow");
    }
    assert_eq!(actions, needed);

    // The resources are the example configuration's bucket and prefix, as the code uses them.
    let example = code_blocks(&readme())
        .into_iter()
        .find(|(lang, body)| lang == "toml" && body.contains("AWS_REGION = \"eu-"))
        .expect("the AWS example configuration")
        .1;
    let value = |name: &str| {
        example
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} = ")))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_else(|| panic!("the AWS example sets no {name}"))
    };
    let mut vars = required_examples();
    vars.insert("S3_PREFIX".to_owned(), value("S3_PREFIX"));
    let prefix = configure(&vars).unwrap().s3_prefix;
    let bucket = value("AWS_S3_BUCKET");
    for statement in statements {
        let resource = statement["Resource"].as_str().unwrap();
        if statement["Action"] == "s3:ListBucket" {
            assert_eq!(resource, format!("arn:aws:s3:::{bucket}"));
            assert_eq!(
                statement["Condition"]["StringLike"]["s3:prefix"],
                format!("{prefix}*")
            );
        } else {
            assert_eq!(resource, format!("arn:aws:s3:::{bucket}/{prefix}*"));
        }
    }
}

#[test]
fn the_key_layout_shown_is_the_codes() {
    let readme = flat(&readme());
    let mut vars = required_examples();
    vars.insert("S3_PREFIX".to_owned(), "gitlab".to_owned());
    let prefix = configure(&vars).unwrap().s3_prefix;
    let started = at_example_run_start();
    assert!(readme.contains("`S3_PREFIX` set to `gitlab`"));
    assert!(readme.contains("2026 at 02:00:07 UTC"));

    let key = object_key(&prefix, "acme/platform/api", started);
    assert!(
        readme.contains(&format!("`{key}`")),
        "README lacks the key {key}"
    );
    let part = part_key(&prefix, started, 1);
    let (folder, part_name) = part.rsplit_once('/').unwrap();
    assert!(
        readme.contains(&format!("`{folder}/`")),
        "README lacks the folder {folder}/"
    );
    for key in [
        part.clone(),
        probe_key(&prefix, started),
        summary_key(&prefix, started),
    ] {
        let (in_folder, name) = key.rsplit_once('/').unwrap();
        assert_eq!(in_folder, folder);
        assert!(readme.contains(&format!("`{name}`")), "README lacks {name}");
    }
    assert_eq!(part_name, "part-00001.jsonl");
    assert!(readme.contains("`<S3_PREFIX>_runs/<run start>/part-NNNNN.jsonl`"));
}

#[test]
fn numbers_quoted_from_the_code_are_the_codes() {
    let readme = flat(&readme());
    let architecture = flat(&architecture());
    let has = |doc: &str, text: &str, what: &str| {
        assert!(doc.contains(text), "the docs should say {text:?} ({what})");
    };
    has(
        &readme,
        &format!("at most {} projects per part", thousands(PART_SIZE)),
        "manifest::PART_SIZE",
    );
    let minutes: Vec<String> = RETRY_BACKOFF
        .iter()
        .map(|d| (d.as_secs() / 60).to_string())
        .collect();
    let (last, first) = minutes.split_last().unwrap();
    let backoff = format!("{}, then {last}", first.join(", "));
    has(
        &readme,
        &format!("retries wait {backoff} minutes"),
        "engine::RETRY_BACKOFF",
    );
    has(
        &architecture,
        &format!("due again {backoff} min later"),
        "engine::RETRY_BACKOFF",
    );
    let per_day = u64::from(DEFAULT_EXPORTS_PER_MINUTE) * 60 * 24;
    has(
        &readme,
        &format!("at most {} projects a day per token", thousands(per_day)),
        "6 exports a minute, all day",
    );
    has(
        &readme,
        &format!("`Retry-After` plus {} seconds", RETRY_AFTER_SLACK.as_secs()),
        "engine::RETRY_AFTER_SLACK",
    );
    // "10 seconds after GitLab accepted it, then 30 seconds, 1 minute and 2 minutes after each
    // look, then every 5 minutes".
    let spoken = |d: &std::time::Duration| match d.as_secs() {
        60 => "1 minute".to_owned(),
        s if s % 60 == 0 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    };
    let (first, rest) = CHECK_STEPS.split_first().unwrap();
    let (every, between) = rest.split_last().unwrap();
    let (last_between, before) = between.split_last().unwrap();
    let between: Vec<String> = before.iter().map(spoken).collect();
    let schedule = format!(
        "{} after GitLab accepted it, then {} and {} after each look, then every {}",
        spoken(first),
        between.join(", "),
        spoken(last_between),
        spoken(every)
    );
    has(&readme, &schedule, "engine::CHECK_STEPS");
    has(
        &readme,
        &format!("after the first few, every {}", spoken(every)),
        "engine::CHECK_STEPS",
    );
    has(
        &readme,
        &format!("never arrived within {DEFAULT_VERIFY_TIMEOUT_MINUTES} minutes"),
        "config::DEFAULT_VERIFY_TIMEOUT_MINUTES",
    );
    has(
        &readme,
        &format!(
            "{} on paid",
            thousands(u64::from(MAX_SUBREQUESTS_PER_INVOCATION))
        ),
        "config::MAX_SUBREQUESTS_PER_INVOCATION",
    );
    has(
        &readme,
        &format!("assumes `{DEFAULT_ENDPOINT_REGION}` with `S3_ENDPOINT`"),
        "s3::DEFAULT_ENDPOINT_REGION",
    );
    has(
        &readme,
        &format!("uses {} invocations a day", thousands(24 * 60)),
        "a cron every minute",
    );
}

#[test]
fn the_nightly_table_is_the_export_limits_arithmetic() {
    let rows = table(&readme(), "| projects | at least |");
    assert!(rows.len() >= 3);
    for row in rows {
        let projects = parse_number(&row[0]);
        let minutes = projects.div_ceil(u64::from(DEFAULT_EXPORTS_PER_MINUTE));
        let expected = match (minutes / 60, minutes % 60) {
            (0, m) => format!("{m} min"),
            (h, 0) => format!("{h} h"),
            (h, m) => format!("{h} h {m} min"),
        };
        assert_eq!(
            row[1], expected,
            "{projects} projects at {DEFAULT_EXPORTS_PER_MINUTE} a minute"
        );
    }
}

#[test]
fn the_messages_troubleshooting_quotes_are_the_codes() {
    let readme = flat(&section(&readme(), "Troubleshooting"));
    let code: String = production_sources().into_iter().map(|(_, t)| t).collect();
    for message in QUOTED_MESSAGES {
        assert!(
            readme.contains(message),
            "Troubleshooting no longer quotes {message:?}"
        );
        assert!(
            code.contains(message),
            "the code no longer says {message:?}"
        );
    }
}

#[test]
fn internal_links_lead_to_headings() {
    for (doc, text) in [("README.md", readme()), ("ARCHITECTURE.md", architecture())] {
        let anchors: BTreeSet<String> = prose(&text)
            .lines()
            .filter_map(|l| {
                l.trim_start_matches('#')
                    .strip_prefix(' ')
                    .filter(|_| l.starts_with('#'))
            })
            .map(slug)
            .collect();
        for rest in text.split("](#").skip(1) {
            let anchor = rest.split(')').next().unwrap();
            assert!(
                anchors.contains(anchor),
                "{doc} links to #{anchor}, which no heading is"
            );
        }
        for rest in text.split("](").skip(1) {
            let target = rest.split(')').next().unwrap();
            if !target.starts_with('#') && !target.contains("://") {
                assert!(
                    root().join(target).exists(),
                    "{doc} links to {target}, which is missing"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ARCHITECTURE.md.

#[test]
fn architecture_fits_on_a_page() {
    let lines = architecture().lines().count();
    assert!(
        lines <= 125,
        "ARCHITECTURE.md is {lines} lines: keep it to one page"
    );
}

#[test]
fn paths_the_docs_mention_exist() {
    let prefixes = ["src/", "tests/", "xtask/", "testkit/", "benches/", ".ci/"];
    for (doc, text) in [("README.md", readme()), ("ARCHITECTURE.md", architecture())] {
        let mut checked = 0;
        for token in text.split(|c: char| c.is_whitespace() || "`()[],;:".contains(c)) {
            let token = token.trim_end_matches('.');
            if !prefixes.iter().any(|p| token.starts_with(p)) {
                continue;
            }
            let exists = match token.split_once('*') {
                None => root().join(token).exists(),
                Some((head, tail)) => {
                    let (dir, start) = head.rsplit_once('/').unwrap();
                    std::fs::read_dir(root().join(dir)).unwrap().any(|e| {
                        let name = e.unwrap().file_name().into_string().unwrap();
                        name.starts_with(start) && name.ends_with(tail)
                    })
                }
            };
            assert!(exists, "{doc} mentions {token}, which does not exist");
            checked += 1;
        }
        assert!(checked > 0 || doc == "README.md");
    }
}

#[test]
fn the_code_map_lists_every_module_and_only_modules() {
    let rows = table(&architecture(), "| module | owns | never does |");
    let mut mapped = BTreeSet::new();
    for row in rows {
        // A row names one module, or several leaves: every span of its first cell.
        let names: Vec<&str> = row[0].split('`').skip(1).step_by(2).collect();
        assert!(
            !names.is_empty(),
            "a code map row without a module: {row:?}"
        );
        for name in names {
            let exists = match name.strip_suffix('/') {
                Some(dir) => root().join("src").join(dir).is_dir() || root().join(dir).is_dir(),
                None => {
                    root().join(format!("src/{name}.rs")).is_file()
                        || root().join(format!("src/{name}/mod.rs")).is_file()
                }
            };
            assert!(exists, "the code map lists {name}, which does not exist");
            mapped.insert(name.trim_end_matches('/').to_owned());
        }
    }
    for line in read("src/lib.rs").lines() {
        let line = line.trim();
        let Some(module) = line
            .strip_prefix("pub mod ")
            .or_else(|| line.strip_prefix("mod "))
        else {
            continue;
        };
        let module = module.trim_end_matches(';');
        assert!(
            mapped.contains(module),
            "the code map lacks the module {module}"
        );
    }
}

#[test]
fn the_schema_table_is_the_stores() {
    let tables = schema_tables();
    let rows = table(&architecture(), "| table | one row per | key columns |");
    let mut documented = BTreeSet::new();
    for row in rows {
        let name = single_span(&row[0]).unwrap();
        let statement = tables.get(name).unwrap_or_else(|| {
            panic!("ARCHITECTURE.md documents the table {name}, which the store lacks")
        });
        for column in row[2].split('`').skip(1).step_by(2) {
            assert!(
                declares_column(statement, column),
                "ARCHITECTURE.md says {name} has a column {column}; src/store/schema.rs does not"
            );
        }
        documented.insert(name.to_owned());
    }
    let created: BTreeSet<String> = tables.into_keys().collect();
    assert_eq!(
        documented, created,
        "ARCHITECTURE.md's tables and src/store/schema.rs disagree"
    );
    // Triggers change rows behind the queries' backs: each is named in the schema table.
    let schema = table(&architecture(), "| table | one row per | key columns |")
        .concat()
        .join(" ");
    let store = read("src/store/schema.rs");
    let triggers: Vec<&str> = store
        .split("CREATE TRIGGER IF NOT EXISTS ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert!(!triggers.is_empty(), "the store's triggers were not found");
    for trigger in triggers {
        assert!(
            schema.contains(&format!("`{trigger}`")),
            "ARCHITECTURE.md's schema table does not name the trigger {trigger}"
        );
    }
}

#[test]
fn the_states_documented_are_the_stores() {
    let text = architecture();
    let diagram = code_blocks(&text)
        .into_iter()
        .find(|(_, body)| body.trim_start().starts_with("preflight"))
        .expect("the run phases")
        .1;
    let documented: BTreeSet<String> = diagram
        .split(|c: char| !c.is_ascii_lowercase())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(documented, phases(), "the run phases in ARCHITECTURE.md");
    let readme_phases = section(&readme(), "HTTP API and logs");
    for phase in phases() {
        assert!(
            readme_phases.contains(&format!("`{phase}`")),
            "README's /status lacks {phase}"
        );
    }

    let rows = table(&text, "| from | on | to |");
    let mut states = BTreeSet::new();
    for row in rows {
        states.insert(single_span(&row[0]).unwrap().to_owned());
        states.insert(single_span(&row[2]).unwrap().to_owned());
    }
    assert_eq!(
        states,
        project_states(),
        "the project states in ARCHITECTURE.md"
    );
}

#[test]
fn the_tests_architecture_cites_exist() {
    let mut cited = 0;
    for span in spans(&architecture()) {
        let Some((place, function)) = span.rsplit_once("::") else {
            continue;
        };
        let file = if place.ends_with(".rs") {
            root().join(place)
        } else if place.contains("tests") {
            // `engine::tests::exports` → src/engine/tests/exports.rs; `config::tests` → the
            // module's own file, or its `tests.rs`.
            let path = place.replace("::", "/");
            let module = path.strip_suffix("/tests").unwrap_or(&path);
            [
                format!("src/{path}.rs"),
                format!("src/{path}/mod.rs"),
                format!("src/{module}/tests.rs"),
                format!("src/{module}.rs"),
                format!("src/{module}/mod.rs"),
            ]
            .into_iter()
            .map(|candidate| root().join(candidate))
            .find(|file| file.exists())
            .unwrap_or_else(|| root().join(format!("src/{path}.rs")))
        } else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap_or_else(|_| {
            panic!(
                "ARCHITECTURE.md cites {span}: {} is missing",
                file.display()
            )
        });
        assert!(
            text.contains(&format!("fn {function}(")),
            "ARCHITECTURE.md cites the test {span}, which does not exist"
        );
        cited += 1;
    }
    assert!(cited >= 10, "only {cited} tests cited");
}

#[test]
fn the_tick_api_architecture_shows_exists() {
    let engine: String = rust_files(&root().join("src/engine"))
        .into_iter()
        .map(|(_, text)| text)
        .collect();
    let text = architecture();
    let mut named = 0;
    for (_, body) in code_blocks(&text) {
        for marker in ["Tick::", "tick."] {
            for rest in body.split(marker).skip(1) {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if rest[name.len()..].starts_with('(') {
                    assert!(
                        engine.contains(&format!("pub fn {name}(")),
                        "ARCHITECTURE.md shows Tick::{name}, which src/engine/ lacks"
                    );
                    named += 1;
                }
            }
        }
    }
    assert!(named >= 4);
}
