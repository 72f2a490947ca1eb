//! baddata: pretrain OLMo-style language models on mixtures of clean and toxic text, probe their
//! attention heads for a linear toxicity direction, and steer it away at inference (ITI).
//!
//! Reproduces "When Bad Data Leads to Good Models" (Li, Chen, Viégas, Wattenberg, ICML 2025).
//! See docs/ARCHITECTURE.md for how data flows from shard to gradient to checkpoint.

pub mod backend;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod eval;
pub mod float;
pub mod model;
pub mod optim;
pub mod perf;
pub mod plot;
pub mod probe;
pub mod score;
pub mod sweep;
pub mod toy;
pub mod train;
pub mod weights;
