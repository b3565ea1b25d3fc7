//! The free plan's daily Durable Object allowances: past one, Cloudflare makes the object's
//! operations fail until 00:00 UTC. The worker counts its own rows written and requests per UTC
//! day (one `meta` row), and pauses the run before either would run out.

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::store::{MetaKey, Sql, Store, StoreError};

const DAY_MS: u64 = 24 * 3_600_000;
/// Rows a tick may write at most, with room to spare (the benchmark's heaviest writes 122, its
/// alarm and this record included): a tick starts only while this much is left.
pub const ROWS_RESERVE: u64 = 300;
/// Requests the object gets a day that no tick counts: a cron tick every minute that finds
/// nothing to do or is paused, `GET /status`, and some to spare.
pub const REQUESTS_RESERVE: u64 = 24 * 60 + 100;

/// Which allowance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Allowance {
    RowsWritten,
    Requests,
}

/// Today's use, as counted by the ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Days since 1970 (UTC).
    pub day: u64,
    pub rows_written: u64,
    pub requests: u64,
}

/// A pause until the allowances are renewed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pause {
    pub allowance: Allowance,
    pub used: u64,
    pub limit: u64,
    /// The next 00:00 UTC.
    pub until_ms: u64,
}

impl Usage {
    /// The use stored, or none yet today.
    pub fn read(stored: Option<&str>, now_ms: u64) -> Result<Usage, StoreError> {
        let today = now_ms / DAY_MS;
        let usage: Usage = match stored {
            Some(json) => serde_json::from_str(json)
                .map_err(|e| StoreError(format!("the stored daily usage is unreadable: {e}")))?,
            None => Usage::default(),
        };
        Ok(if usage.day == today {
            usage
        } else {
            Usage {
                day: today,
                ..Usage::default()
            }
        })
    }

    /// Whether a tick may start today: none once fewer rows than a tick may write, or fewer
    /// requests than the day's cron ticks, are left.
    pub fn pause(&self, config: &Config) -> Option<Pause> {
        let until_ms = (self.day + 1) * DAY_MS;
        let over = |allowance, used: u64, limit: u64, reserve: u64| {
            (limit > 0 && used + reserve >= limit).then_some(Pause {
                allowance,
                used,
                limit,
                until_ms,
            })
        };
        over(
            Allowance::RowsWritten,
            self.rows_written,
            config.do_rows_written_per_day,
            ROWS_RESERVE,
        )
        .or_else(|| {
            over(
                Allowance::Requests,
                self.requests,
                config.do_requests_per_day,
                REQUESTS_RESERVE,
            )
        })
    }

    /// Adds one request that wrote `rows` (its own record of them included), and records it;
    /// without a daily limit (both settings `0`, the paid plan) nothing is counted or written.
    pub fn record<S: Sql>(
        &mut self,
        store: &Store<S>,
        config: &Config,
        rows: u64,
    ) -> Result<(), StoreError> {
        if config.do_rows_written_per_day == 0 && config.do_requests_per_day == 0 {
            return Ok(());
        }
        self.requests += 1;
        self.rows_written += rows;
        let json = serde_json::to_string(self)
            .map_err(|e| StoreError(format!("encoding the daily usage: {e}")))?;
        store.set_meta(MetaKey::DailyUsage, json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rows: &str, requests: &str) -> Config {
        Config::from_lookup(|name| {
            match name {
                "GITLAB_TOKEN" => Some("t"),
                "GROUPS_TO_BACKUP" => Some("7"),
                "AWS_S3_BUCKET" => Some("backups"),
                "AWS_ACCESS_KEY_ID" => Some("AKID"),
                "AWS_SECRET_ACCESS_KEY" => Some("s"),
                "DO_ROWS_WRITTEN_PER_DAY" => Some(rows),
                "DO_REQUESTS_PER_DAY" => Some(requests),
                _ => None,
            }
            .map(str::to_owned)
        })
        .unwrap()
    }

    #[test]
    fn a_day_pauses_before_an_allowance_runs_out_and_the_next_day_starts_afresh() {
        let limits = config("10000", "5000");
        let now = 3 * DAY_MS + 3_600_000;
        let mut usage = Usage::read(None, now).unwrap();
        assert_eq!(usage.pause(&limits), None);
        usage.rows_written = 10_000 - ROWS_RESERVE - 1;
        assert_eq!(usage.pause(&limits), None);
        usage.rows_written += 1;
        assert_eq!(
            usage.pause(&limits),
            Some(Pause {
                allowance: Allowance::RowsWritten,
                used: 10_000 - ROWS_RESERVE,
                limit: 10_000,
                until_ms: 4 * DAY_MS,
            })
        );
        usage.rows_written = 0;
        usage.requests = 5_000 - REQUESTS_RESERVE;
        assert_eq!(
            usage.pause(&limits).map(|p| p.allowance),
            Some(Allowance::Requests)
        );
        assert_eq!(usage.pause(&config("0", "0")), None, "0: no limit");
        let json = serde_json::to_string(&usage).unwrap();
        assert_eq!(Usage::read(Some(&json), now).unwrap(), usage);
        assert_eq!(
            Usage::read(Some(&json), 4 * DAY_MS).unwrap(),
            Usage {
                day: 4,
                ..Usage::default()
            },
            "a new day"
        );
    }
}
