//! Misdirection classifiers: the trained model and the baselines it is
//! compared with.

pub mod baseline;
pub mod corpus;
pub mod corrupt;
pub mod eval;
pub mod features;
pub mod model;
pub mod ranking;
pub mod train;

pub use model::{ModelFile, ModelScorer};
