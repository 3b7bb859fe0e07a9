//! The admission webhooks' time in the operator: per webhook from a request's headers to its
//! answer written ([`AdmissionSeconds`]), and where that time goes ([`AdmissionPhases`]) —
//! waiting for a worker thread, for the request's body, and answering — so a slow admission
//! says whether the operator was busy, the client slow to send, or the answer slow to make.

use std::fmt::Write as _;

use super::{ADMISSION_BUCKETS, Histogram};

/// The operator's time per admission review, by webhook: from the request's headers being read
/// (hyper handing the request to the service) to the answer being handed back to the connection
/// to write — the body read, the decision, the serialization, and any wait for a worker
/// thread in between. The TLS handshake of a new connection and the kernel's queue come before.
#[derive(Debug)]
pub struct AdmissionSeconds {
    /// `POST /validate`.
    pub validate: Histogram,
    /// `POST /inject`.
    pub inject: Histogram,
    /// Anything else (a path nothing is served at, another method).
    pub other: Histogram,
}

impl Default for AdmissionSeconds {
    fn default() -> Self {
        AdmissionSeconds {
            validate: Histogram::with_bounds(&ADMISSION_BUCKETS),
            inject: Histogram::with_bounds(&ADMISSION_BUCKETS),
            other: Histogram::with_bounds(&ADMISSION_BUCKETS),
        }
    }
}

impl AdmissionSeconds {
    /// The histogram of `webhook` (`validate`, `inject`, else `other`).
    pub fn of(&self, webhook: &str) -> &Histogram {
        match webhook {
            "validate" => &self.validate,
            "inject" => &self.inject,
            _ => &self.other,
        }
    }

    pub(super) fn render(&self, out: &mut String) {
        let name = "trellis_operator_admission_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} The operator's time per admission review, from its request read to its answer written, by webhook.\n# TYPE {name} histogram"
        );
        for webhook in ["validate", "inject", "other"] {
            self.of(webhook)
                .render_series(out, name, &format!("webhook=\"{webhook}\","));
        }
    }
}

/// Where an admission review's time in the operator goes, all webhooks together; the three
/// add up to its [`AdmissionSeconds`].
///
/// # Caveats
/// `body` starts when the review's task first runs: a body that arrived while the task waited
/// for a worker counts in `queued`, and one still in flight then counts here — the client's
/// sending and the connection's reading of it (on HTTP/2 one task reads every stream).
#[derive(Debug)]
pub struct AdmissionPhases {
    /// From the request's headers read to its task first running (the wait for a worker).
    pub queued: Histogram,
    /// From the task first running to the whole body read.
    pub body: Histogram,
    /// From the body read to the answer handed to the connection: parsing, the decision, the
    /// answer's JSON, and any wait for a worker or for the connection in between.
    pub answer: Histogram,
}

impl Default for AdmissionPhases {
    fn default() -> Self {
        AdmissionPhases {
            queued: Histogram::with_bounds(&ADMISSION_BUCKETS),
            body: Histogram::with_bounds(&ADMISSION_BUCKETS),
            answer: Histogram::with_bounds(&ADMISSION_BUCKETS),
        }
    }
}

impl AdmissionPhases {
    pub(super) fn render(&self, out: &mut String) {
        let name = "trellis_operator_admission_phase_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Where an admission review's time in the operator goes: queued (for a worker), body (reading it), answer (deciding and writing).\n# TYPE {name} histogram"
        );
        for (phase, h) in [("queued", &self.queued), ("body", &self.body), ("answer", &self.answer)] {
            h.render_series(out, name, &format!("phase=\"{phase}\","));
        }
    }
}
