//! Misdirection classifiers: the trained model and the baselines it is
//! compared with.

pub mod baseline;
