//! The OLMo v1 model: parameter layout, initialisation, and the forward/backward pass written
//! once over the ops of a [`crate::backend::Backend`].

pub mod generate;
pub mod init;
pub mod params;
pub mod transformer;
pub mod workspace;

pub use init::init_params;
pub use params::ParamLayout;
pub use transformer::Model;
