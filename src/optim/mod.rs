//! Optimisation: AdamW, global-norm gradient clipping and the learning-rate schedule.

pub mod adamw;
pub mod cuda;
pub mod schedule;

pub use adamw::{AdamW, AdamWConfig};
pub use schedule::CosineSchedule;
