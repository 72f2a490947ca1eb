//! The OLMo v1 model: parameter layout, initialisation, and the forward/backward pass written
//! once over the ops of a [`crate::backend::Backend`].

pub mod params;
