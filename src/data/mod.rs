//! The data layer: token shards, document readers, tokenizers, training mixtures, and the
//! embedded demo data set.

pub mod demo;
pub mod mixture;
pub mod prompts;
pub mod shard;
pub mod text;
pub mod tokenizer;

pub use demo::{prepare_demo, DemoData};
pub use mixture::{eval_windows, Mixture, MixtureSource, MixtureState};
pub use shard::{write_shard, Shard};
pub use text::Format;
pub use tokenizer::{check_fits, Tokenizer};
