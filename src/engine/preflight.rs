//! Before anything else: the token is valid (`GET /user`), the bucket's region is known, and the
//! bucket takes the worker's signed PUT (`preflight.json`). A refusal stops the run before any
//! export, with the reason.

use std::time::Duration;

use super::gates::{Limited, S3Gate};
use super::intents::Intent;
use super::record::s3_error;
use super::{Event, Purpose, Step, Tick};
use crate::gitlab::GitLabError;
use crate::http::{HttpRequest, HttpResult, Method};
use crate::manifest;
use crate::s3::{region_from_answer, wrong_region, LearnedRegion};
use crate::store::{MetaKey, Phase, Sql, StoreError};
use crate::time::rfc3339;

impl<S: Sql> Tick<'_, S> {
    pub(super) fn preflight_step(&mut self, now_ms: u64) -> Result<Option<Step>, StoreError> {
        if !self.token_checked {
            let gitlab = self.gates.gitlab.hold.gate(now_ms);
            if !self.pass(gitlab) {
                return Ok(None);
            }
            return Ok(Some(Step {
                request: self.gitlab.user_request(),
                purpose: Purpose::CheckUser,
            }));
        }
        let Some(region) = self.region.clone() else {
            return self.region_probe(now_ms);
        };
        if !self.gates.s3.is_open() {
            return Ok(None);
        }
        if !self.prefix_ours {
            let key = manifest::deployment_key(&self.settings.s3_prefix);
            return self.s3_request(
                &region,
                Method::Get,
                &key,
                None,
                now_ms,
                Purpose::CheckMarker,
            );
        }
        let key = manifest::probe_key(&self.settings.s3_prefix, self.run_started());
        let body = serde_json::json!({
            "run": self.run.id,
            "started": rfc3339(self.run.started_ms),
            "purpose": "gitlab-backup checks that the bucket accepts its uploads",
        });
        self.s3_put_json(&region, &key, &body, now_ms, Purpose::Probe)
    }

    /// A signed HEAD of the bucket, whose answer names its region (one per tick).
    pub(super) fn region_probe(&mut self, now_ms: u64) -> Result<Option<Step>, StoreError> {
        if !self.gates.s3.is_open() {
            return Ok(None);
        }
        self.gates.s3 = S3Gate::ProbeSent;
        let url = match self.signer("us-east-1", now_ms).presign(
            Method::Head,
            &self.settings.bucket.region_probe_url(),
            Duration::from_secs(60),
        ) {
            Ok(url) => url,
            Err(e) => {
                self.note_error(&e.to_string(), now_ms)?;
                return Ok(None);
            }
        };
        Ok(Some(Step {
            request: HttpRequest {
                method: Method::Head,
                url,
                headers: Vec::new(),
                body: None,
            },
            purpose: Purpose::FindRegion,
        }))
    }

    pub(super) fn on_user(&mut self, answer: HttpResult, now_ms: u64) -> Result<(), StoreError> {
        match answer
            .map_err(GitLabError::Unavailable)
            .and_then(|a| self.gitlab.read_user(&a))
        {
            Ok(user) => {
                self.gitlab_answered()?;
                self.token_checked = true;
                self.report.events.push(Event::PreflightPassed {
                    run: self.run.id,
                    user,
                });
            }
            Err(GitLabError::Unauthorized) => {
                self.gitlab_answered()?;
                self.stop_run(&GitLabError::Unauthorized.to_string(), now_ms)?;
            }
            Err(GitLabError::RateLimited { retry_after }) => {
                self.rate_limited(retry_after, Limited::AllOfGitLab, now_ms)?;
            }
            Err(e) => self.gitlab_unavailable(&format!("checking the token: {e}"), now_ms)?,
        }
        Ok(())
    }

    pub(super) fn on_probe(&mut self, answer: HttpResult, now_ms: u64) -> Result<(), StoreError> {
        if self.region_was_wrong(&answer, now_ms)? {
            // Written again once the region is known.
            return Ok(());
        }
        match answer {
            Ok(a) if a.status == 200 => {
                self.intents.push(Intent::ReadBackProbe);
                Ok(())
            }
            answer => self.preflight_put_failed("the preflight PUT", answer, now_ms),
        }
    }

    /// The worker's own PUT in preflight was not taken: a refusal stops the run with advice;
    /// S3 failing or not answering rests it until the next tick.
    fn preflight_put_failed(
        &mut self,
        what: &str,
        answer: HttpResult,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        match answer {
            Ok(a) if a.status >= 500 => {
                self.gates.s3 = S3Gate::Resting;
                self.note_error(
                    &format!("S3 answered {} to {what}; trying again later", a.status),
                    now_ms,
                )
            }
            Ok(a) => {
                let reason = format!(
                    "the bucket {} refused a signed PUT ({}): check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and the key's s3:PutObject permission — {}",
                    self.settings.bucket.name,
                    a.status,
                    s3_error(&a)
                );
                self.stop_run(&reason, now_ms)
            }
            Err(e) => {
                self.gates.s3 = S3Gate::Resting;
                self.note_error(&format!("S3 did not answer {what}: {e}"), now_ms)
            }
        }
    }

    /// The marker of `S3_PREFIX`: this deployment's (go on), another's (stop: both would
    /// overwrite each other's run records and "verify" each other's uploads), or none yet.
    pub(super) fn on_marker(&mut self, answer: HttpResult, now_ms: u64) -> Result<(), StoreError> {
        let key = manifest::deployment_key(&self.settings.s3_prefix);
        if self.region_was_wrong(&answer, now_ms)? {
            // Read again once the region is known.
            return Ok(());
        }
        if let Some(reason) = self.set_region_wrong(&answer) {
            return self.stop_run(&reason, now_ms);
        }
        match answer {
            Ok(a) if a.status == 200 => {
                let ours = self.store.deployment_id()?;
                let theirs = serde_json::from_slice::<serde_json::Value>(&a.body)
                    .ok()
                    .and_then(|marker| marker["deployment"].as_str().map(str::to_owned));
                match theirs {
                    Some(theirs) if theirs == ours => self.prefix_checked()?,
                    theirs => {
                        let whose = theirs.map_or_else(
                            || "an unreadable marker".to_owned(),
                            |id| format!("deployment {id}"),
                        );
                        let reason = format!(
                            "S3_PREFIX is used by another deployment ({key} names {whose}, this one is {ours}): give each deployment its own prefix"
                        );
                        self.stop_run(&reason, now_ms)?;
                    }
                }
            }
            // Missing: 404 when the key may list the bucket, 403 when it may not.
            Ok(a) if a.status == 404 || a.status == 403 => self.intents.push(Intent::PutMarker),
            Ok(a) => {
                self.gates.s3 = S3Gate::Resting;
                self.note_error(
                    &format!("S3 answered {} reading {key}; trying again later", a.status),
                    now_ms,
                )?;
            }
            Err(e) => {
                self.gates.s3 = S3Gate::Resting;
                self.note_error(&format!("S3 did not answer reading {key}: {e}"), now_ms)?;
            }
        }
        Ok(())
    }

    /// The prefix is this deployment's, for the rest of this run's preflight (which may take
    /// several ticks on a small budget).
    fn prefix_checked(&mut self) -> Result<(), StoreError> {
        self.prefix_ours = true;
        self.store.set_meta(MetaKey::PrefixCheckedRun, self.run.id)
    }

    /// A PUT of this deployment's marker (its first run with this prefix).
    pub(super) fn put_marker_step(&mut self, now_ms: u64) -> Result<Option<Step>, StoreError> {
        let Some(region) = self.region.clone() else {
            return Ok(None);
        };
        let key = manifest::deployment_key(&self.settings.s3_prefix);
        let body = serde_json::json!({
            "deployment": self.store.deployment_id()?,
            "since": rfc3339(self.run.started_ms),
            "purpose": "gitlab-backup: this prefix belongs to one deployment",
        });
        self.s3_put_json(&region, &key, &body, now_ms, Purpose::PutMarker)
    }

    pub(super) fn on_marker_put(
        &mut self,
        answer: HttpResult,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        if self.region_was_wrong(&answer, now_ms)? {
            // The marker is read (and written) again once the region is known.
            return Ok(());
        }
        match answer {
            Ok(a) if a.status == 200 => self.prefix_checked(),
            answer => self.preflight_put_failed("the PUT of the prefix's marker", answer, now_ms),
        }
    }

    /// A HEAD of the object the preflight just wrote, signed in its headers.
    pub(super) fn read_back_step(&mut self, now_ms: u64) -> Result<Option<Step>, StoreError> {
        let Some(region) = self.region.clone() else {
            return Ok(None);
        };
        let key = manifest::probe_key(&self.settings.s3_prefix, self.run_started());
        let purpose = Purpose::ReadBackProbe;
        self.s3_request(&region, Method::Head, &key, None, now_ms, purpose)
    }

    /// The bucket gave back what the preflight wrote: the run may list. A key that writes but
    /// cannot read stops the run, since every backup's proof is a read.
    pub(super) fn on_read_back(
        &mut self,
        answer: HttpResult,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        if self.region_was_wrong(&answer, now_ms)? {
            // The probe is written and read again once the region is known.
            return Ok(());
        }
        match answer {
            Ok(a) if a.status == 200 => self.set_phase(Phase::Listing, now_ms)?,
            Ok(a) if a.status >= 500 => {
                self.gates.s3 = S3Gate::Resting;
                self.note_error(
                    &format!(
                        "S3 answered {} to the preflight's read-back; trying again later",
                        a.status
                    ),
                    now_ms,
                )?;
            }
            Ok(a) => {
                let reason = format!(
                    "the bucket {} took a signed PUT but refused to read it back ({}): grant the key s3:GetObject, without which no backup can be proven — {}",
                    self.settings.bucket.name,
                    a.status,
                    s3_error(&a)
                );
                self.stop_run(&reason, now_ms)?;
            }
            Err(e) => {
                self.gates.s3 = S3Gate::Resting;
                self.note_error(
                    &format!("S3 did not answer the preflight's read-back: {e}"),
                    now_ms,
                )?;
            }
        }
        Ok(())
    }

    pub(super) fn on_region(&mut self, answer: HttpResult, now_ms: u64) -> Result<(), StoreError> {
        let bucket = self.settings.bucket.name.clone();
        match answer.as_ref().ok().and_then(region_from_answer) {
            Some(region) => {
                self.keep_region(Some(&region))?;
                self.report
                    .events
                    .push(Event::RegionFound { bucket, region });
                // The probe paused S3 work only until the region was known.
                self.gates.s3 = S3Gate::Open;
            }
            None => {
                let why = match answer {
                    Ok(a) => format!("S3 answered {} without x-amz-bucket-region", a.status),
                    Err(e) => e,
                };
                self.note_error(
                    &format!(
                        "could not learn the region of bucket {bucket} ({why}); set AWS_REGION"
                    ),
                    now_ms,
                )?;
            }
        }
        Ok(())
    }

    /// Keeps the region the bucket named, or forgets it: in `meta`, for the bucket and endpoint
    /// it is for (the next runs with them start with it), and in the run's settings.
    fn keep_region(&mut self, region: Option<&str>) -> Result<(), StoreError> {
        match region {
            Some(region) => {
                let learned = LearnedRegion::new(&self.settings.bucket, region);
                self.store
                    .set_meta(MetaKey::BucketRegion, learned.to_json())?;
            }
            None => self.store.delete_meta(MetaKey::BucketRegion)?,
        }
        self.settings.learned_region = region.map(str::to_owned);
        self.region = self.settings.region().map(str::to_owned);
        if self.pinned {
            self.run = self
                .store
                .set_run_settings(self.run.id, &self.settings.to_json())?;
        }
        Ok(())
    }

    /// Whether S3 answered that the bucket is not in the region the request was signed for,
    /// with a region learned by asking: the bucket moved (or the region was another bucket's),
    /// and it is asked again, once a tick (a second time S3 rests until the next). The caller
    /// sends its request again once the region is known. A region the user set
    /// ([`Tick::set_region_wrong`]) is theirs to fix.
    pub(super) fn region_was_wrong(
        &mut self,
        answer: &HttpResult,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let (Ok(answer), Some(signed_for)) = (answer, self.signed_for.clone()) else {
            return Ok(false);
        };
        if !self.settings.region_is_learned() {
            return Ok(false);
        }
        let Some(wrong) = wrong_region(answer, &signed_for) else {
            return Ok(false);
        };
        // The answers to the other requests sent with it say the same: once is enough.
        if self.region.as_deref() == Some(signed_for.as_str()) {
            self.keep_region(None)?;
            let bucket = self.settings.bucket.name.clone();
            self.note_error(
                &format!(
                    "S3 answered {} for bucket {bucket}: it is not in {signed_for}{}; asking it again",
                    answer.status,
                    wrong
                        .named
                        .as_deref()
                        .map(|r| format!(" but in {r}"))
                        .unwrap_or_default()
                ),
                now_ms,
            )?;
            self.report.events.push(Event::RegionForgotten {
                bucket,
                region: signed_for,
                named: wrong.named,
            });
            if self.region_relearned {
                self.gates.s3 = S3Gate::Resting;
            }
            self.region_relearned = true;
        }
        Ok(true)
    }

    /// The reason to stop when AWS says the bucket is not in the region the user set
    /// (`AWS_REGION`). An S3-compatible server (`S3_ENDPOINT`) may name regions of its own: its
    /// answers are taken as they come.
    fn set_region_wrong(&self, answer: &HttpResult) -> Option<String> {
        let (Ok(answer), Some(signed_for)) = (answer, self.signed_for.as_deref()) else {
            return None;
        };
        if self.settings.region_is_learned() || self.settings.bucket.endpoint().is_some() {
            return None;
        }
        let wrong = wrong_region(answer, signed_for)?;
        let bucket = &self.settings.bucket.name;
        Some(match wrong.named {
            Some(named) => format!(
                "the bucket {bucket} is in {named}, not in AWS_REGION's {signed_for} (S3 answered {}): set AWS_REGION to {named}",
                answer.status
            ),
            None => format!(
                "the bucket {bucket} is not in AWS_REGION's {signed_for} (S3 answered {}): check AWS_REGION and S3_ENDPOINT",
                answer.status
            ),
        })
    }

    /// The token or the bucket was refused: the run ends before any export, with the reason.
    fn stop_run(&mut self, reason: &str, now_ms: u64) -> Result<(), StoreError> {
        let reason = format!("stopped before any export: {reason}");
        self.run = self.store.stop_run(self.run.id, &reason, now_ms)?;
        self.note_error(&reason, now_ms)?;
        self.report.events.push(Event::RunStopped {
            run: self.run.id,
            reason,
        });
        Ok(())
    }
}
