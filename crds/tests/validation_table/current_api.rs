//! The fields of Istio's current API (istio/api, `data/istio-fields.txt`) Trellis declares to
//! refuse: each refused where it is written, with "not supported by Trellis yet", the field's
//! name and the fix; and the documents Istio's validation rejects for them (its CRD's ranges
//! and rules, `pkg/config/validation`) rejected too, at the field.

use serde_json::json;

use super::Base::*;
use super::{Case, DEL, Expect, err, err_at, multi, ok};

const NOT_SUPPORTED: &str = "is not supported by Trellis yet";

/// VirtualService.
pub fn cases() -> Vec<Case> {
    vec![
        // ---------------- VirtualService ----------------
        err(
            Vs,
            "spec.http[0].mirror_percent",
            json!(50),
            "mirror_percent is not supported by Trellis yet; use mirrorPercentage",
        ),
        multi(
            Vs,
            vec![
                ("spec.http[0].route", json!(DEL)),
                ("spec.http[0].redirect", json!({"prefixRewrite": "/v2"})),
            ],
            Expect::Error(
                "spec.http[0].redirect.prefixRewrite",
                "prefixRewrite is not supported by Trellis yet",
            ),
        ),
        // Istio: prefixRewrite and uri are mutually exclusive; refused whatever it is with.
        multi(
            Vs,
            vec![
                ("spec.http[0].route", json!(DEL)),
                ("spec.http[0].redirect", json!({"uri": "/v2", "prefixRewrite": "/v2"})),
            ],
            Expect::Error("spec.http[0].redirect.prefixRewrite", NOT_SUPPORTED),
        ),
        // Istio's default, what Trellis always does: accepted.
        ok(
            Vs,
            "spec.http[0].retries",
            json!({"attempts": 2, "retryIgnorePreviousHosts": true}),
        ),
        err_at(
            Vs,
            "spec.http[0].retries",
            json!({"attempts": 2, "retryIgnorePreviousHosts": false}),
            "spec.http[0].retries.retryIgnorePreviousHosts",
            "retryIgnorePreviousHosts: false is not supported by Trellis yet",
        ),
        err_at(
            Vs,
            "spec.http[0].retries",
            json!({"attempts": 2, "retryIgnorePreviousHosts": "no"}),
            "spec.http[0].retries.retryIgnorePreviousHosts",
            "must be true or false",
        ),
        err(
            Vs,
            "spec.http[0].corsPolicy.allowOrigin",
            json!(["https://shop.example.com"]),
            "allowOrigin is not supported by Trellis yet: use allowOrigins",
        ),
        multi(
            Vs,
            vec![
                ("spec.http", json!(DEL)),
                (
                    "spec.tcp",
                    json!([{"match": [{"port": 5432, "sourceSubnet": "10.0.0.0/8"}],
                            "route": [{"destination": {"host": "payment"}}]}]),
                ),
            ],
            Expect::Error(
                "spec.tcp[0].match[0].sourceSubnet",
                "sourceSubnet is not supported by Trellis yet",
            ),
        ),
    ]
}
