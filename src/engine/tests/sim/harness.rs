//! One tick, as the coordinator runs it ([`drive_tick`]), and the Durable Object's life: cron
//! ticks, the alarm, restarts ([`Harness`]).

use std::collections::{BTreeMap, HashMap};

use super::{
    is_export, Rng, Sent, SimGitLab, World, BUCKET, GITLAB_URL, MINUTE, SECOND, T0, TOKEN,
};
use crate::config::Config;
use crate::engine::{arrival, Arrival, Begin, Event, Start, Tick, TickReport};
use crate::http::HttpRequest;
use crate::store::host::HostSql;
use crate::store::MetaKey;
use crate::store::{RunRow, Store};

/// Where the worker dies during a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Crash {
    /// `next_step` returned the step (and persisted it), the request never went out.
    BeforeSend,
    /// The request went out (it reaches its server, maybe after the worker is gone); the
    /// worker died before the answer.
    InFlight,
    /// The answer was handled; the worker died before `finish` (no report, no alarm).
    AfterHandle,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Began {
    Idle,
    /// A daily allowance was nearly spent.
    Paused,
    AlreadyRunning(u64),
    Ran,
}

#[derive(Debug)]
pub(crate) struct TickLog {
    pub(crate) started_ms: u64,
    pub(crate) began: Began,
    /// Steps the tick asked for (each one a subrequest).
    pub(crate) subrequests: u32,
    pub(crate) exports: u32,
    pub(crate) report: Option<TickReport>,
    pub(crate) crashed: Option<Crash>,
    /// Rows the tick wrote (SQLite's count of changed rows).
    pub(crate) rows_written: u64,
}

impl TickLog {
    pub(crate) fn events(&self) -> &[Event] {
        self.report.as_ref().map_or(&[], |r| &r.events)
    }
}

type CrashPlan = dyn FnMut(&HttpRequest) -> Option<Crash>;

/// Runs one tick like `worker::coordinator`: `next_steps`, send them together, `handle` each
/// answer in step order, until no step comes; then `finish`.
fn drive_tick(
    db: &HostSql,
    config: &Config,
    world: &mut World,
    start: Start,
    crash: &mut CrashPlan,
) -> TickLog {
    let store = Store::open(db).expect("the store opens");
    let rows_before = db.0.total_changes();
    let log = TickLog {
        started_ms: world.now,
        began: Began::Ran,
        subrequests: 0,
        exports: 0,
        report: None,
        crashed: None,
        rows_written: 0,
    };
    let log = drive_begun(&store, config, world, start, crash, log);
    TickLog {
        rows_written: db.0.total_changes() - rows_before,
        ..log
    }
}

/// [`drive_tick`] once the store is open.
fn drive_begun(
    store: &Store<&HostSql>,
    config: &Config,
    world: &mut World,
    start: Start,
    crash: &mut CrashPlan,
    mut log: TickLog,
) -> TickLog {
    let mut tick = match Tick::begin(store, config, world.now, start).expect("begin") {
        Begin::Tick(tick) => tick,
        Begin::Idle => {
            log.began = Began::Idle;
            return log;
        }
        Begin::Paused(_) => {
            log.began = Began::Paused;
            return log;
        }
        Begin::AlreadyRunning(id) => {
            log.began = Began::AlreadyRunning(id);
            return log;
        }
    };
    loop {
        let steps = tick.next_steps(world.now).expect("next_steps");
        if steps.is_empty() {
            break;
        }
        world.batch += 1;
        // The steps of one call go out together; their answers are handled in step order.
        let mut answered = Vec::new();
        for step in steps {
            log.subrequests += 1;
            if is_export(&step.request) {
                log.exports += 1;
            }
            let crash = crash(&step.request);
            match crash {
                Some(Crash::BeforeSend) => {
                    log.crashed = crash;
                    return log;
                }
                Some(Crash::InFlight) => {
                    world.send_then_die(&step.request);
                    log.crashed = crash;
                    return log;
                }
                _ => {}
            }
            let answer = world.send(&step.request);
            answered.push((step, answer, crash));
        }
        for (step, answer, crash) in answered {
            tick.handle(step, answer, world.now).expect("handle");
            if crash == Some(Crash::AfterHandle) {
                log.crashed = crash;
                return log;
            }
        }
    }
    log.report = Some(tick.finish(world.now).expect("finish"));
    log
}

// ---------------------------------------------------------------------------------------------
// The Durable Object's life: cron ticks, the alarm, restarts.

pub(crate) struct Harness {
    pub(crate) db: HostSql,
    pub(crate) config: Config,
    pub(crate) world: World,
    pub(crate) ticks: Vec<TickLog>,
    alarm: Option<u64>,
    cron_base: u64,
    cron_at: u64,
    /// Each cron tick fires within ± this of its minute.
    pub(crate) cron_jitter_ms: u64,
    /// Chance (percent) that an event comes late by up to this many ms (the worker was away).
    pub(crate) late: (u32, u64),
    pub(crate) crash: Box<CrashPlan>,
    pub(crate) rng: Rng,
}

impl Harness {
    pub(crate) fn new(config: Config, world: World) -> Harness {
        let h = Harness::on_store(config, world, HostSql::in_memory());
        Store::open(&h.db).expect("the schema is created");
        h
    }

    /// A Durable Object whose store is already there (`db`, as an earlier version left it):
    /// its first tick opens it, as the coordinator does.
    pub(crate) fn on_store(config: Config, world: World, db: HostSql) -> Harness {
        let now = world.now;
        // The engine runs more distinct statements than rusqlite caches by default (16).
        db.0.set_prepared_statement_cache_capacity(128);
        Harness {
            db,
            config,
            world,
            ticks: Vec::new(),
            alarm: None,
            cron_base: now,
            cron_at: now,
            cron_jitter_ms: 0,
            late: (0, 0),
            crash: Box::new(|_| None),
            rng: Rng::new(7),
        }
    }

    pub(crate) fn store(&self) -> Store<&HostSql> {
        Store::open(&self.db).expect("the store opens")
    }

    pub(crate) fn latest_run(&self) -> Option<RunRow> {
        self.store().latest_run().unwrap()
    }

    /// Whether the latest run has finished (straight from the table: checked after every tick).
    fn finished(&self) -> bool {
        self.db
            .0
            .prepare_cached("SELECT phase = 'finished' FROM runs ORDER BY id DESC LIMIT 1")
            .unwrap()
            .query_row([], |row| row.get::<_, bool>(0))
            .unwrap_or(false)
    }

    pub(crate) fn attempts(&self, run: u64, project: u64) -> u64 {
        self.db
            .0
            .query_row(
                "SELECT attempts FROM projects WHERE run_id = ?1 AND project_id = ?2",
                [run as i64, project as i64],
                |row| row.get::<_, i64>(0),
            )
            .unwrap() as u64
    }

    /// Each project's state: its row's, or, while its export is under way (kept with the rate
    /// window), `exporting` until GitLab's answer is recorded and `exported` after.
    pub(crate) fn states(&self, run: u64) -> BTreeMap<u64, String> {
        let mut statement = self
            .db
            .0
            .prepare("SELECT project_id, state FROM projects WHERE run_id = ?1")
            .unwrap();
        let mut states: BTreeMap<u64, String> = statement
            .query_map([run as i64], |row| {
                Ok((row.get::<_, i64>(0)? as u64, row.get::<_, String>(1)?))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let store = Store::opened(&self.db);
        let meta = store.meta(&[MetaKey::ExportWindow]).unwrap();
        let mut window = crate::engine::window::Window::read(
            meta.text(MetaKey::ExportWindow).unwrap().as_deref(),
        )
        .unwrap();
        window.flights.for_run(run);
        for (project_id, accepted) in window.flights.states() {
            if states.get(&project_id).map(String::as_str) == Some("pending") {
                let state = if accepted { "exported" } else { "exporting" };
                states.insert(project_id, state.to_owned());
            }
        }
        states
    }

    /// Runs a tick now (a manual call, or one the test times itself).
    pub(crate) fn tick(&mut self, start: Start) -> &TickLog {
        self.run_tick(start, false)
    }

    fn run_tick(&mut self, start: Start, from_alarm: bool) -> &TickLog {
        let log = drive_tick(
            &self.db,
            &self.config,
            &mut self.world,
            start,
            &mut *self.crash,
        );
        if let Some(at) = log.report.as_ref().and_then(|r| r.wake_at_ms) {
            // `set_alarm` replaces the alarm; one in the past fires at once.
            self.alarm = Some(at.max(self.world.now));
        }
        if log.crashed.is_some() && from_alarm && self.alarm.is_none() {
            // A failed alarm handler is retried, 2 s later at first.
            self.alarm = Some(self.world.now + 2 * SECOND);
        }
        self.ticks.push(log);
        self.ticks.last().unwrap()
    }

    fn schedule_next_cron(&mut self) {
        self.cron_base += MINUTE;
        let jitter = self.rng.upto(2 * self.cron_jitter_ms);
        self.cron_at = (self.cron_base + jitter).saturating_sub(self.cron_jitter_ms);
    }

    /// Fires the next cron tick or alarm, whichever comes first.
    pub(crate) fn fire_next(&mut self) {
        let (at, from_alarm) = match self.alarm {
            Some(alarm) if alarm <= self.cron_at => (alarm, true),
            _ => (self.cron_at, false),
        };
        if from_alarm {
            self.alarm = None;
        } else {
            self.schedule_next_cron();
        }
        // An event that comes while a tick is running meets the coordinator's busy-tick rule.
        let busy = at < self.world.now;
        if arrival(busy, Start::IfDue, None) == Arrival::Skip {
            return;
        }
        let mut at = at;
        if self.late.0 > 0 && self.rng.percent(self.late.0) {
            at += self.rng.upto(self.late.1);
        }
        self.world.now = at;
        self.run_tick(Start::IfDue, from_alarm);
    }

    pub(crate) fn run_until(&mut self, deadline_ms: u64, done: impl Fn(&Harness) -> bool) {
        while !done(self) {
            assert!(
                self.world.now <= deadline_ms,
                "not done by the deadline: {}",
                self.describe()
            );
            self.fire_next();
        }
    }

    pub(crate) fn run_until_finished(&mut self, deadline_ms: u64) -> RunRow {
        self.run_until(deadline_ms, Harness::finished);
        // Requests of dead workers still arrive.
        self.world.arrive_until(u64::MAX);
        self.latest_run().unwrap()
    }

    pub(crate) fn describe(&self) -> String {
        let run = self.latest_run();
        let states = run.as_ref().map(|r| {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for state in self.states(r.id).into_values() {
                *counts.entry(state).or_insert(0) += 1;
            }
            counts
        });
        format!(
            "at +{} s after {} ticks; run {run:?}; states {states:?}; last tick {:?}; last error {:?}",
            (self.world.now - T0) / SECOND,
            self.ticks.len(),
            self.ticks.last(),
            self.store().meta(&[MetaKey::LastError]).ok().and_then(|m| m.text(MetaKey::LastError).ok().flatten()),
        )
    }

    /// GitLab requests the worker sent after the `index`-th request.
    pub(crate) fn gitlab_sends_after(&self, index: usize) -> impl Iterator<Item = &Sent> {
        self.world.sent[index + 1..].iter().filter(|s| s.to_gitlab)
    }
}

pub(crate) fn config(overrides: &[(&str, &str)]) -> Config {
    let mut vars: HashMap<String, String> = [
        ("GITLAB_URL", GITLAB_URL),
        ("GITLAB_TOKEN", TOKEN),
        ("GROUPS_TO_BACKUP", "acme"),
        ("AWS_S3_BUCKET", BUCKET),
        ("AWS_ACCESS_KEY_ID", "AKIDSIMULATED"),
        ("AWS_SECRET_ACCESS_KEY", "simulated-secret"),
        ("AWS_REGION", "eu-west-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (name, value) in overrides {
        vars.insert((*name).to_owned(), (*value).to_owned());
    }
    Config::from_lookup(|name| vars.get(name).cloned()).expect("a valid test configuration")
}

/// A GitLab with one group `acme` holding `count` projects.
pub(crate) fn one_group(count: usize, export_limit: u32) -> (SimGitLab, Vec<u64>) {
    let mut gitlab = SimGitLab::new(export_limit);
    let acme = gitlab.add_group("acme", None);
    let ids = gitlab.add_projects(acme, count);
    (gitlab, ids)
}
