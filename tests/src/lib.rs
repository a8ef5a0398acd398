//! Shared test helpers of the blocksmtp workspace.
pub mod loggen;
