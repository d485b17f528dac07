//! STUB (replaced by the selection core)
pub mod conntrack;
pub mod select;
pub use select::{Algorithm, BackendSpec, BackendView, DEFAULT_MAGLEV_SIZE, Selector};
