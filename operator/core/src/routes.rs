//! The effective routes of a service for traffic from a workload, with their provenance:
//! what `meshctl routes` prints and the operator's dashboard shows on a service's page, one
//! computation for both ([`model::report`]). Compiled by the one compiler as the operator
//! compiles each proxy's configuration; each rule with the resource and rule it came from
//! ([`rules`]), each destination's policy, endpoints and inbound policy ([`destinations`])
//! and authorization verdict ([`verdict`]); for a concrete request ([`request`]), the rule
//! that takes it and why every earlier one did not ([`explain`]).

pub mod destinations;
pub mod explain;
pub mod model;
pub mod request;
pub mod rules;
pub mod verdict;
