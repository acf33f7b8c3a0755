//! The route: which endpoints a stage tries, in which order. For now the order is the stage's
//! `route.models` list, and within a model the catalog's endpoint order; each candidate is
//! tried at most once per job, so a failing provider costs one attempt, never a retry storm.

use crate::config::{Endpoint, Stage};

/// The endpoints to try for one job of `stage`, in order.
pub fn candidates(stage: &Stage) -> Vec<&Endpoint> {
    stage.endpoints.iter().collect()
}
