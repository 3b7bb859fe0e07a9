//! The golden-signal reports a proxy sent on its subscriptions over the last
//! [`SIGNALS_WINDOW`], kept for a handover: when the operator replica that holds them stops,
//! it ends the subscription with [`crate::handover_status`], its view of this proxy's traffic
//! goes with it, and the next subscription (to whichever replica) sends them again, each with
//! its age, so `meshctl stat` and the dashboard keep the last minutes.
//!
//! # Guarantees
//! - Each report is held by exactly one live replica: reports are sent again only after a
//!   handover, never after a subscription that broke (its replica may still serve them).
//! - A report keeps the time it was first sent across handovers, so its age stays true when
//!   it is handed over twice.
//! - Bounded: reports older than [`SIGNALS_WINDOW`] go, and at most [`MAX_KEPT`] are kept.

use std::collections::VecDeque;
use std::time::Instant;

use trellis_contract::signals::Report;

use crate::SIGNALS_WINDOW;

/// The most reports kept.
// why: one report per SIGNALS_INTERVAL (10 s) fills the 5-minute window with 30; twice that
// leaves room for reports sent again on a subscription that was itself handed over quickly.
pub const MAX_KEPT: usize = 64;

/// The reports sent over the last [`SIGNALS_WINDOW`], and whether they are owed to the next
/// subscription.
#[derive(Debug, Default)]
pub struct Handover {
    sent: VecDeque<(Instant, Report)>,
    owed: bool,
}

impl Handover {
    /// `report` went on the subscription at `at`.
    pub fn sent(&mut self, at: Instant, report: Report) {
        self.prune(at);
        if self.sent.len() == MAX_KEPT {
            self.sent.pop_front();
        }
        self.sent.push_back((at, report));
    }

    /// The subscription ended with a handover: its replica's view of the reports is gone.
    pub fn handed_over(&mut self) {
        self.owed = true;
    }

    /// A new subscription started at `now`: the reports to send on it, oldest first, each with
    /// its age in whole seconds — every one still in the window after a handover, none
    /// otherwise (then the reports kept so far are the previous replica's, and dropped here).
    pub fn subscribed(&mut self, now: Instant) -> Vec<(u32, Report)> {
        if !std::mem::take(&mut self.owed) {
            self.sent.clear();
            return Vec::new();
        }
        self.prune(now);
        self.sent
            .iter()
            .map(|(at, report)| {
                let age = now.saturating_duration_since(*at).as_secs();
                (u32::try_from(age).unwrap_or(u32::MAX), report.clone())
            })
            .collect()
    }

    fn prune(&mut self, now: Instant) {
        while self
            .sent
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= SIGNALS_WINDOW)
        {
            self.sent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use trellis_contract::signals::{Counts, EdgeSignals};

    use super::*;

    fn report(requests: u64) -> Report {
        Report {
            edges: vec![EdgeSignals {
                service: "web.shop.svc.cluster.local".into(),
                counts: Counts::in_buckets(requests, 0, 0, &[(1, requests)]),
                ..EdgeSignals::default()
            }],
        }
    }

    #[test]
    fn reports_are_sent_again_with_their_ages_only_after_a_handover() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut h = Handover::default();
        assert!(h.subscribed(t0).is_empty(), "a first subscription owes nothing");
        h.sent(s(10), report(1));
        h.sent(s(20), report(2));
        // The subscription broke: the replica that took them still holds them.
        assert!(h.subscribed(s(25)).is_empty());
        h.sent(s(30), report(3));
        h.sent(s(40), report(4));
        h.handed_over();
        assert_eq!(
            h.subscribed(s(45)),
            vec![(15, report(3)), (5, report(4))],
            "the ended subscription's reports, with their ages"
        );
        // Handed over again: the reports sent again count with their first times.
        h.sent(s(50), report(5));
        h.handed_over();
        assert_eq!(
            h.subscribed(s(331)),
            vec![(291, report(4)), (281, report(5))],
            "report 3, sent 301 s before, left the window"
        );
        assert!(h.subscribed(s(332)).is_empty(), "owed once");
    }

    #[test]
    fn at_most_max_kept_reports_are_kept() {
        let t0 = Instant::now();
        let mut h = Handover::default();
        for i in 0..(MAX_KEPT as u64 + 5) {
            h.sent(t0 + Duration::from_millis(i), report(i + 1));
        }
        h.handed_over();
        let resent = h.subscribed(t0 + Duration::from_secs(1));
        assert_eq!(resent.len(), MAX_KEPT);
        assert_eq!(resent[0].1, report(6), "the oldest went first");
    }
}
