//! The engine against a simulated GitLab and S3, on the host: unit tests and property tests.
//!
//! The simulated world, in `sim/`:
//! - [`SimGitLab`](sim::SimGitLab) (`sim/gitlab.rs`) answers the engine's requests as GitLab's
//!   REST API does: offset pagination with `Link` headers and a server-side cap on `per_page`,
//!   subgroups, shared projects, archived projects, and the per-user export limit as a fixed
//!   one-minute window opened by the first request. It records every request with its
//!   (simulated) arrival time. It answers `GET /user`, and `GET /projects/:id/export` as the
//!   export it accepted goes `queued`, `started`, then `finished` (or `failed`) after a
//!   simulated build time, when it PUTs the archive to the presigned upload URL (unless the
//!   upload is to be lost).
//! - [`SimS3`](sim::SimS3) (`sim/s3.rs`) answers the bucket-region probe, the worker's
//!   header-signed PUTs (preflight probe, manifest parts, summary) and HEADs of backups from
//!   the objects it holds.
//! - [`World`](sim::World) (`sim/world.rs`) carries requests over a simulated network on a
//!   millisecond clock: each leg has a latency, so a request arrives after it was sent and is
//!   answered after it arrived; it also injects faults (429s, 5xx, lost requests and lost
//!   answers, timeouts; `sim/faults.rs`).
//! - [`drive_tick`](sim::drive_tick) (`sim/harness.rs`) runs one tick exactly like
//!   `worker::coordinator` does, counting subrequests, and may kill the worker at a step:
//!   before the request went out, while it is in flight (it still reaches GitLab, maybe after
//!   the next tick began), or after its answer was recorded.
//! - [`Harness`](sim::Harness) (`sim/harness.rs`) fires ticks at cron cadence (every minute,
//!   with jitter, sometimes late) and at the alarm each tick asks for, as the Durable Object
//!   does in production: an event that comes while a tick is running is skipped, a crashed
//!   alarm is retried.
//! - `sim/checks.rs` holds the checks the tests share (GitLab's window kept, no export asked
//!   for again after a heard outcome, proof of landing, tick budgets).
//!
//! The cases, by topic: `schedule.rs` (when runs start), `preflight.rs` (token, bucket and
//! region), `listing.rs` (pages and groups), `exports.rs` (rate window, 429s, learned limit,
//! backoff, refusals, unanswered exports), `verify.rs` (proof of landing, retries, timeouts),
//! `restarts.rs` (a worker killed mid-tick), `restores.rs` (`POST /restore` admitted, imports
//! sent within GitLab's limit and followed to their end, the archive URL's capability),
//! `changed.rs` (changed-only runs: unchanged projects held by their backup, the full-export
//! cycle, freshness), `pruning.rs` (old runs), `settings.rs` (settings pinned per run, the bucket's region learned
//! again), `upgrades.rs` (a run left in the middle by every earlier schema, completed after its
//! store is migrated), and `properties.rs` (the property tests).

mod sim;

mod allowance;
mod changed;
mod exports;
mod listing;
mod preflight;
mod properties;
mod pruning;
mod restarts;
mod restores;
mod schedule;
mod settings;
mod upgrades;
mod verify;
