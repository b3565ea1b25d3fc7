//! The run's record in the bucket, once every project has its outcome: a manifest part per
//! `PART_SIZE` projects by id (a tick's whole work), then `summary.json`, which finishes the
//! run. The worker's own PUTs are signed
//! in their headers, body hash included.

use std::time::Duration;

use super::gates::S3Gate;
use super::{Event, Purpose, Step, Tick};
use crate::http::{HttpResponse, HttpResult, Method};
use crate::manifest::{self, PART_SIZE};
use crate::store::{MetaKey, Sql, StoreError};
use crate::time::ms;

/// How long S3 may refuse a run's record, in a row, before the run is finished without it
/// (`record_abandoned`): its outcomes stay in the store and `/status`, its backups in the
/// bucket, and the next run may start. Until then each tick tries the record again.
pub const RECORD_GIVE_UP: Duration = Duration::from_secs(6 * 3600);

impl<S: Sql> Tick<'_, S> {
    /// The run's record once every project has its outcome (or the run was cancelled): the
    /// next manifest part, a page of the run's projects by id, as a tick's whole work; once
    /// every project is in a part, the summary.
    pub(super) fn record_step(
        &mut self,
        region: &str,
        now_ms: u64,
    ) -> Result<Option<Step>, StoreError> {
        if !self.gates.s3.is_open() {
            return Ok(None);
        }
        if self.report.subrequests > 0 {
            // This tick did other work: the next one, at once, starts with the record.
            self.budget.end();
            return Ok(None);
        }
        let entries =
            self.store
                .manifest_entries(self.run.id, self.run.manifest_after, PART_SIZE)?;
        let Some(last) = entries.last() else {
            return self.summary_step(region, now_ms);
        };
        let last_project_id = last.project_id;
        let part = self.run.manifest_parts + 1;
        let key = manifest::part_key(&self.settings.s3_prefix, self.run_started(), part);
        let body = manifest::part_body(&self.settings.s3_prefix, self.run_started(), &entries);
        self.s3_put(
            region,
            &key.clone(),
            body,
            "application/x-ndjson",
            now_ms,
            Purpose::ManifestPart {
                key,
                last_project_id,
                projects: entries.len(),
            },
        )
    }

    /// The run's `summary.json`, from the run's counters as the store keeps them.
    pub(super) fn summary_step(
        &mut self,
        region: &str,
        now_ms: u64,
    ) -> Result<Option<Step>, StoreError> {
        let key = manifest::summary_key(&self.settings.s3_prefix, self.run_started());
        let errors = self.store.listing_errors(self.run.id)?;
        let drills = match &self.config.drills {
            Some(_) => Some(self.store.drills()?),
            None => None,
        };
        let body = manifest::summary_body(
            &self.settings.s3_prefix,
            &self.run,
            &errors,
            drills.as_ref(),
            now_ms,
        );
        self.s3_put(
            region,
            &key.clone(),
            body,
            "application/json",
            now_ms,
            Purpose::Summary { key },
        )
    }

    /// A PUT of the worker's own object, signed in its headers (body hash included).
    pub(super) fn s3_put(
        &mut self,
        region: &str,
        key: &str,
        body: String,
        content_type: &'static str,
        now_ms: u64,
        purpose: Purpose,
    ) -> Result<Option<Step>, StoreError> {
        let body = Some((body, content_type));
        self.s3_request(region, Method::Put, key, body, now_ms, purpose)
    }

    /// A PUT of a small JSON object of the worker's own.
    pub(super) fn s3_put_json(
        &mut self,
        region: &str,
        key: &str,
        body: &serde_json::Value,
        now_ms: u64,
        purpose: Purpose,
    ) -> Result<Option<Step>, StoreError> {
        let body = body.to_string();
        self.s3_put(region, key, body, "application/json", now_ms, purpose)
    }

    /// A request for one of the worker's own objects, signed in its headers; a signing failure
    /// rests S3 for the tick.
    pub(super) fn s3_request(
        &mut self,
        region: &str,
        method: Method,
        key: &str,
        body: Option<(String, &'static str)>,
        now_ms: u64,
        purpose: Purpose,
    ) -> Result<Option<Step>, StoreError> {
        let url = self.settings.bucket.object_url(region, key);
        let signer = self.signer(region, now_ms);
        match signer.signed_request(method, &url, body) {
            Ok(request) => Ok(Some(Step { request, purpose })),
            Err(e) => {
                self.gates.s3 = S3Gate::Resting;
                self.note_error(&e.to_string(), now_ms)?;
                Ok(None)
            }
        }
    }

    pub(super) fn on_manifest_part(
        &mut self,
        key: String,
        last_project_id: u64,
        projects: usize,
        answer: HttpResult,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        if !self.s3_put_succeeded(&key, answer, now_ms)? {
            return Ok(());
        }
        self.run = self
            .store
            .record_manifest_part(self.run.id, last_project_id)?;
        // A part is the tick's whole work: the next tick goes on at once.
        self.budget.end();
        self.report.events.push(Event::ManifestWritten {
            run: self.run.id,
            key,
            projects,
        });
        Ok(())
    }

    pub(super) fn on_summary(
        &mut self,
        key: String,
        answer: HttpResult,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        if !self.s3_put_succeeded(&key, answer, now_ms)? {
            return Ok(());
        }
        self.run = self.store.record_summary(self.run.id, &key, now_ms)?;
        self.report.events.push(Event::RunFinished {
            run: self.run.id,
            listed: self.run.listed,
            exported: self.run.exported,
            verified: self.run.verified,
            failed: self.run.failed,
            unchanged: self.run.unchanged,
            summary: key,
        });
        Ok(())
    }

    /// Whether S3 took the worker's PUT; if not, the error is noted and S3 rests this tick.
    fn s3_put_succeeded(
        &mut self,
        key: &str,
        answer: HttpResult,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        if self.region_was_wrong(&answer, now_ms)? {
            // Written again once the bucket's region is known.
            return Ok(false);
        }
        let why = match answer {
            Ok(a) if a.status == 200 => {
                if self.record_failing_since.take().is_some() {
                    self.store.delete_meta(MetaKey::RecordFailingSince)?;
                }
                return Ok(true);
            }
            Ok(a) => format!("S3 answered {}: {}", a.status, s3_error(&a)),
            Err(e) => e,
        };
        self.gates.s3 = S3Gate::Resting;
        let error = format!("writing {key}: {why}");
        self.note_error(&error, now_ms)?;
        let since = match self.record_failing_since {
            Some(since) => since,
            None => {
                self.store.set_meta(MetaKey::RecordFailingSince, now_ms)?;
                self.record_failing_since = Some(now_ms);
                now_ms
            }
        };
        if now_ms.saturating_sub(since) >= ms(RECORD_GIVE_UP) {
            self.abandon_record(&error, now_ms)?;
        }
        Ok(false)
    }

    /// S3 has refused the run's record for [`RECORD_GIVE_UP`]: the run is finished without
    /// it, so that it no longer holds back the next run.
    fn abandon_record(&mut self, error: &str, now_ms: u64) -> Result<(), StoreError> {
        let hours = RECORD_GIVE_UP.as_secs() / 3600;
        let reason = format!(
            "S3 refused the run's record for {hours} h, so the run ended without it (last: \
             {error}); {} of its manifest parts were written, its outcomes are in /status and \
             its backups in the bucket",
            self.run.manifest_parts
        );
        self.run = self.store.stop_run(self.run.id, &reason, now_ms)?;
        self.store.delete_meta(MetaKey::RecordFailingSince)?;
        self.record_failing_since = None;
        self.report.events.push(Event::RecordAbandoned {
            run: self.run.id,
            reason,
        });
        Ok(())
    }
}

/// S3's error code and message from an XML error body, or the start of the body.
pub(super) fn s3_error(answer: &HttpResponse) -> String {
    let text = answer.body_excerpt();
    let between = |open: &str, close: &str| {
        let start = text.find(open)? + open.len();
        let end = text[start..].find(close)? + start;
        Some(text[start..end].to_owned())
    };
    match (
        between("<Code>", "</Code>"),
        between("<Message>", "</Message>"),
    ) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code,
        _ if text.is_empty() => "no details".to_owned(),
        _ => text,
    }
}
