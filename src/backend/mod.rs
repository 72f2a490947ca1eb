pub mod cuda;
pub mod device;
