//! Keeping the read model right over time: reconciliation with the write
//! model, rebuilds into a new generation, and the dead letters.

pub mod dead_letters;
pub mod rebuild;
pub mod reconcile;
