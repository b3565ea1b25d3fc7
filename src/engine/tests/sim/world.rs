//! The network and the clock.

use std::collections::VecDeque;

use super::{is_export, Fault, Rng, SimGitLab, SimS3, SECOND, T0};
use crate::engine::REQUEST_TIMEOUT;
use crate::http::{HttpRequest, HttpResponse, HttpResult};
use crate::time::ms;

/// A request as the worker sent it.
#[derive(Clone, Debug)]
pub(crate) struct Sent {
    /// Where it went (its signature and query included).
    pub(crate) url: url::Url,
    /// Whether it carried GitLab's token.
    pub(crate) with_token: bool,
    pub(crate) sent_ms: u64,
    pub(crate) done_ms: u64,
    pub(crate) to_gitlab: bool,
    pub(crate) export: bool,
    /// The status the worker got, or why it got none.
    pub(crate) answer: Result<u16, String>,
    /// `Retry-After` of the answer, in seconds.
    pub(crate) retry_after_s: Option<u64>,
    /// Whether the worker lived to see the answer (or the failure).
    pub(crate) heard: bool,
    /// The `next_steps` call that asked for it: the requests of one go out together.
    pub(crate) batch: u64,
}

/// A request on its way to its server, sent by a worker that died before the answer.
struct Delivery {
    sent_ms: u64,
    arrival_ms: u64,
    request: HttpRequest,
    fault: Option<Fault>,
}

fn with_token(request: &HttpRequest) -> bool {
    request
        .headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("private-token"))
}

pub(crate) struct World {
    pub(crate) now: u64,
    pub(crate) gitlab: SimGitLab,
    pub(crate) s3: SimS3,
    pub(crate) rng: Rng,
    /// Counts the worker's `next_steps` calls (the harness moves it).
    pub(crate) batch: u64,
    /// Latency of one leg (to the server, or back), in ms, inclusive range.
    pub(crate) leg_ms: (u64, u64),
    /// Chance (percent) that a leg takes up to 40 s, past the worker's request timeout.
    pub(crate) slow_percent: u32,
    /// Latencies of the next legs, before any drawn at random.
    pub(crate) scripted_legs: VecDeque<u64>,
    pub(crate) sent: Vec<Sent>,
    /// Requests of dead workers still on their way, by arrival time.
    in_flight: Vec<Delivery>,
}

impl World {
    pub(crate) fn new(gitlab: SimGitLab) -> World {
        World {
            now: T0,
            gitlab,
            s3: SimS3::default(),
            rng: Rng::new(1),
            batch: 0,
            leg_ms: (100, 100),
            slow_percent: 0,
            scripted_legs: VecDeque::new(),
            sent: Vec::new(),
            in_flight: Vec::new(),
        }
    }

    fn leg(&mut self) -> u64 {
        if let Some(leg) = self.scripted_legs.pop_front() {
            leg
        } else if self.rng.percent(self.slow_percent) {
            self.rng.upto(40 * SECOND)
        } else {
            self.rng.between(self.leg_ms.0, self.leg_ms.1)
        }
    }

    fn to_gitlab(&self, request: &HttpRequest) -> bool {
        request.url.origin() == self.gitlab.base.origin()
    }

    fn fault_for(&mut self, request: &HttpRequest) -> Option<Fault> {
        if !self.to_gitlab(request) {
            None
        } else if is_export(request) {
            self.gitlab.export_faults.next()
        } else if request.url.path().contains("/groups/") {
            self.gitlab.listing_faults.next()
        } else {
            self.gitlab.status_faults.next()
        }
    }

    /// The server handles the request at `at_ms`; returns its answer and, for an export, the
    /// index of GitLab's record of it.
    fn serve(
        &mut self,
        request: &HttpRequest,
        sent_ms: u64,
        at_ms: u64,
        fault: Option<Fault>,
    ) -> (HttpResponse, Option<usize>) {
        self.deliver_uploads(at_ms);
        if self.to_gitlab(request) {
            let before = self.gitlab.exports.len();
            let answer = self.gitlab.serve(request, at_ms, fault);
            let seen = (self.gitlab.exports.len() > before).then_some(before);
            if let Some(index) = seen {
                self.gitlab.exports[index].sent_ms = sent_ms;
            }
            (answer, seen)
        } else if request
            .url
            .host_str()
            .is_some_and(|h| h.ends_with(".amazonaws.com"))
        {
            (self.s3.serve(request, at_ms), None)
        } else {
            panic!("the engine sent a request to an unknown host: {request:?}");
        }
    }

    /// GitLab's builds that ended by `until_ms` upload their archives (unless the upload is
    /// lost on the way).
    fn deliver_uploads(&mut self, until_ms: u64) {
        for job in self.gitlab.jobs.iter_mut() {
            if job.delivered || job.ready_ms > until_ms {
                continue;
            }
            job.delivered = true;
            if job.fails || job.upload_lost {
                continue;
            }
            match self.gitlab.odd_uploads.get(&job.project_id) {
                Some(odd) => self.s3.upload_as(
                    &job.upload_url,
                    odd.size,
                    &odd.start,
                    odd.content_type,
                    job.ready_ms,
                ),
                None => {
                    let size = 10_000 + job.project_id;
                    self.s3.upload(&job.upload_url, size, job.ready_ms);
                }
            }
        }
    }

    /// Servers handle the requests of dead workers that arrive by `until_ms`, in order.
    pub(crate) fn arrive_until(&mut self, until_ms: u64) {
        self.in_flight.sort_by_key(|d| d.arrival_ms);
        while self
            .in_flight
            .first()
            .is_some_and(|d| d.arrival_ms <= until_ms)
        {
            let delivery = self.in_flight.remove(0);
            let (_, export) = self.serve(
                &delivery.request,
                delivery.sent_ms,
                delivery.arrival_ms,
                delivery.fault,
            );
            self.lose_answer(export);
        }
    }

    fn lose_answer(&mut self, export: Option<usize>) {
        if let Some(index) = export {
            self.gitlab.exports[index].answer_lost = true;
        }
    }

    /// Sends a request as the glue does (`send(&request, REQUEST_TIMEOUT)`): the clock moves to
    /// when the answer (or the failure) comes back.
    pub(crate) fn send(&mut self, request: &HttpRequest) -> HttpResult {
        let sent_ms = self.now;
        let timeout = ms(REQUEST_TIMEOUT);
        let (up, down) = (self.leg(), self.leg());
        let fault = self.fault_for(request);
        let (result, done_ms) = if fault == Some(Fault::LostRequest) {
            (
                Err("connection reset before the request was sent".to_owned()),
                sent_ms + up.min(timeout),
            )
        } else if up >= timeout {
            (Err("timed out".to_owned()), sent_ms + timeout)
        } else {
            let arrival = sent_ms + up;
            self.arrive_until(arrival);
            let (answer, export) = self.serve(request, sent_ms, arrival, fault);
            let answered = arrival + down;
            if fault == Some(Fault::LostAnswer) {
                self.lose_answer(export);
                (
                    Err("connection reset".to_owned()),
                    answered.min(sent_ms + timeout),
                )
            } else if answered > sent_ms + timeout {
                self.lose_answer(export);
                (Err("timed out".to_owned()), sent_ms + timeout)
            } else {
                (Ok(answer), answered)
            }
        };
        self.now = done_ms;
        self.sent.push(Sent {
            batch: self.batch,
            url: request.url.clone(),
            with_token: with_token(request),
            sent_ms,
            done_ms,
            to_gitlab: self.to_gitlab(request),
            export: is_export(request),
            answer: result.as_ref().map(|a| a.status).map_err(Clone::clone),
            retry_after_s: result
                .as_ref()
                .ok()
                .and_then(|a| a.header("retry-after"))
                .and_then(|v| v.parse().ok()),
            heard: true,
        });
        result
    }

    /// The request goes out and the worker dies before the answer, maybe before the request
    /// reaches its server (which then handles it all the same, even while a new tick runs).
    pub(crate) fn send_then_die(&mut self, request: &HttpRequest) {
        let sent_ms = self.now;
        let up = self.leg();
        let fault = self.fault_for(request);
        if fault != Some(Fault::LostRequest) && up < ms(REQUEST_TIMEOUT) {
            self.in_flight.push(Delivery {
                sent_ms,
                arrival_ms: sent_ms + up,
                request: request.clone(),
                fault,
            });
        }
        self.now = sent_ms + self.rng.upto(up.min(ms(REQUEST_TIMEOUT)));
        self.sent.push(Sent {
            batch: self.batch,
            url: request.url.clone(),
            with_token: with_token(request),
            sent_ms,
            done_ms: self.now,
            to_gitlab: self.to_gitlab(request),
            export: is_export(request),
            answer: Err("the worker died".into()),
            retry_after_s: None,
            heard: false,
        });
    }
}
