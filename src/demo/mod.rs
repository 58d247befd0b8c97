pub mod generator;
pub mod runner;
