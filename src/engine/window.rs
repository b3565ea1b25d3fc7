//! The rolling minute of export requests: a handful of `(id, time)` pairs kept as one `meta`
//! row (with the exports under way, `flights.rs`), read with the tick's other facts and written back in the same synchronous step as each
//! claim; the answers' times go with the next claim, or at the end of the tick (a tick that
//! dies first leaves them in flight, on the safe side). The tick therefore knows its room at
//! any moment without asking the store, and a request costs one row written when it is made,
//! and the tick's answers one more.

use serde::{Deserialize, Serialize};

use super::flights::Flights;
use super::EXPORT_WINDOW;
use crate::store::StoreError;
use crate::time::ms;

/// Export requests that may still be in GitLab's rolling minute.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Window {
    /// The id of the next request.
    next: u64,
    /// `(id, at_ms)`: when the request was answered, or, while in flight, the latest it can
    /// reach GitLab. Only requests that can still be in the window are kept.
    requests: Vec<(u64, u64)>,
    /// The run's exports under way, stored with the requests (one row for both).
    #[serde(default)]
    pub flights: Flights,
}

impl Window {
    /// The window as stored (`None`: no request yet).
    pub fn read(stored: Option<&str>) -> Result<Window, StoreError> {
        stored.map_or(Ok(Window::default()), |json| {
            serde_json::from_str(json)
                .map_err(|e| StoreError(format!("the stored rate window is unreadable: {e}")))
        })
    }

    pub fn to_json(&self) -> Result<String, StoreError> {
        serde_json::to_string(self)
            .map_err(|e| StoreError(format!("encoding the rate window: {e}")))
    }

    fn inside(&self, now_ms: u64) -> impl Iterator<Item = u64> + '_ {
        let since = now_ms.saturating_sub(ms(EXPORT_WINDOW));
        self.requests
            .iter()
            .map(|&(_, at)| at)
            .filter(move |&at| at > since)
    }

    /// Requests in the window at `now_ms`.
    pub fn used(&self, now_ms: u64) -> u32 {
        u32::try_from(self.inside(now_ms).count()).unwrap_or(u32::MAX)
    }

    /// When the oldest request in the window at `now_ms` leaves it.
    pub fn frees_at(&self, now_ms: u64) -> Option<u64> {
        self.inside(now_ms).min().map(|at| at + ms(EXPORT_WINDOW))
    }

    /// A request is about to be sent, in flight until `until_ms` at the latest; returns its id.
    pub fn request(&mut self, until_ms: u64, now_ms: u64) -> u64 {
        self.forget(now_ms);
        let id = self.next;
        self.next += 1;
        self.requests.push((id, until_ms));
        id
    }

    /// The request's answer came at `at_ms` (0: it was never sent).
    pub fn answered(&mut self, id: u64, at_ms: u64, now_ms: u64) {
        for request in self.requests.iter_mut().filter(|(i, _)| *i == id) {
            request.1 = at_ms;
        }
        self.forget(now_ms);
    }

    /// Drops the requests that left the window.
    fn forget(&mut self, now_ms: u64) {
        let since = now_ms.saturating_sub(ms(EXPORT_WINDOW));
        self.requests.retain(|&(_, at)| at > since);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000;

    #[test]
    fn a_request_counts_for_sixty_seconds_after_its_time() {
        let mut window = Window::default();
        let first = window.request(10 * S, 0);
        let second = window.request(20 * S, 0);
        window.answered(first, 10 * S, 10 * S);
        window.answered(second, 20 * S, 20 * S);
        assert_eq!(window.used(10 * S), 2);
        assert_eq!(window.used(69 * S), 2);
        assert_eq!(window.frees_at(69 * S), Some(70 * S));
        // At 70 s the first has been in for its whole minute.
        assert_eq!(window.used(70 * S), 1);
        assert_eq!(window.frees_at(70 * S), Some(80 * S));
        assert_eq!(window.used(80 * S), 0);
        assert_eq!(window.frees_at(80 * S), None);
    }

    #[test]
    fn the_ticks_own_requests_count_until_their_answer_then_from_it() {
        let mut window = Window::default();
        let id = window.request(40 * S, 0);
        assert_eq!(
            window.used(99 * S),
            1,
            "in flight until 40 s: counts until 100 s"
        );
        assert_eq!(window.frees_at(0), Some(100 * S));
        window.answered(id, 12 * S, 12 * S);
        assert_eq!(window.used(71 * S), 1);
        assert_eq!(window.used(72 * S), 0);
        let unsent = window.request(90 * S, 12 * S);
        window.answered(unsent, 0, 12 * S);
        assert_eq!(
            window.used(12 * S),
            1,
            "a request never sent leaves the window"
        );
    }

    #[test]
    fn it_keeps_only_what_can_still_count_and_survives_a_round_trip() {
        let mut window = Window::default();
        for i in 0..100 {
            let id = window.request(i * 10 * S + 30 * S, i * 10 * S);
            window.answered(id, i * 10 * S + S, i * 10 * S + S);
        }
        assert!(window.requests.len() <= 7, "{window:?}");
        assert_eq!(window.next, 100, "ids are never reused");
        let stored = window.to_json().unwrap();
        assert_eq!(Window::read(Some(&stored)).unwrap(), window);
        assert_eq!(Window::read(None).unwrap(), Window::default());
        let err = Window::read(Some("{\"next\": \"x\"")).unwrap_err();
        assert!(err.0.contains("rate window"), "{err}");
    }
}
