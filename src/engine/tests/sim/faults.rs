//! Randomness for the simulation (latencies, jitter, faults), seeded by the property tests, and
//! the faults it injects.

use std::collections::VecDeque;

#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    /// SplitMix64.
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max`.
    pub(crate) fn upto(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            Some(n) => self.next() % n,
            None => self.next(),
        }
    }

    pub(crate) fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.upto(hi - lo)
    }

    pub(crate) fn percent(&mut self, chance: u32) -> bool {
        self.next() % 100 < u64::from(chance)
    }

    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.upto(items.len() as u64 - 1) as usize]
    }
}

// ---------------------------------------------------------------------------------------------
// Faults.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// GitLab answers 429 (someone else spent the quota), with `Retry-After` seconds or none.
    TooMany(Option<u64>),
    /// GitLab answers this status (5xx, or a one-off 403/404/400).
    Status(u16),
    /// The connection fails before the request reaches GitLab.
    LostRequest,
    /// GitLab handles the request, but its answer never comes back.
    LostAnswer,
}

/// Faults for one kind of request: a script first (one entry per request, `None` for no
/// fault), then an optional random source.
#[derive(Default)]
pub(crate) struct FaultPlan {
    script: VecDeque<Option<Fault>>,
    pub(crate) random: Option<Box<dyn FnMut() -> Option<Fault>>>,
}

impl FaultPlan {
    pub(crate) fn scripted(script: &[Option<Fault>]) -> FaultPlan {
        FaultPlan {
            script: script.iter().copied().collect(),
            random: None,
        }
    }

    pub(crate) fn next(&mut self) -> Option<Fault> {
        if let Some(fault) = self.script.pop_front() {
            return fault;
        }
        self.random.as_mut().and_then(|random| random())
    }
}
