//! The rolling minute of export requests as one tick sees it: read from the store once, then
//! kept up to date with the tick's own requests, so the tick knows its room at any moment of
//! its run without asking the store again (it is the only writer of the log).

use super::{ms, EXPORT_WINDOW};

/// Export requests that may still be in GitLab's rolling minute.
#[derive(Debug, Default)]
pub(crate) struct Window {
    /// `(export_log id, at_ms)`: when the request was answered, or, while in flight, the
    /// latest it can reach GitLab.
    requests: Vec<(u64, u64)>,
}

impl Window {
    pub fn new(requests: Vec<(u64, u64)>) -> Window {
        Window { requests }
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

    /// The tick logged a request, in flight until `until_ms` at the latest.
    pub fn requested(&mut self, log_id: u64, until_ms: u64) {
        self.requests.push((log_id, until_ms));
    }

    /// The request's answer came at `at_ms` (0: it was never sent).
    pub fn answered(&mut self, log_id: u64, at_ms: u64) {
        for request in self.requests.iter_mut().filter(|(id, _)| *id == log_id) {
            request.1 = at_ms;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000;

    #[test]
    fn a_request_counts_for_sixty_seconds_after_its_time() {
        let window = Window::new(vec![(1, 10 * S), (2, 20 * S)]);
        assert_eq!(window.used(10 * S), 2);
        assert_eq!(window.used(69 * S), 2);
        assert_eq!(window.frees_at(69 * S), Some(70 * S));
        // At 70 s the first has been in for its whole minute: the store's `at_ms > now - 60 s`.
        assert_eq!(window.used(70 * S), 1);
        assert_eq!(window.frees_at(70 * S), Some(80 * S));
        assert_eq!(window.used(80 * S), 0);
        assert_eq!(window.frees_at(80 * S), None);
    }

    #[test]
    fn the_ticks_own_requests_count_until_their_answer_then_from_it() {
        let mut window = Window::default();
        window.requested(7, 40 * S);
        assert_eq!(
            window.used(99 * S),
            1,
            "in flight until 40 s: counts until 100 s"
        );
        assert_eq!(window.frees_at(0), Some(100 * S));
        window.answered(7, 12 * S);
        assert_eq!(window.used(72 * S), 0);
        assert_eq!(window.frees_at(0), Some(72 * S));
        window.requested(8, 90 * S);
        window.answered(8, 0);
        assert_eq!(window.used(0), 1, "a request never sent leaves the window");
    }
}
