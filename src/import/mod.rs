//! Importers: the learned state and the settings of the greylisting daemon mxsentry replaces.

pub mod postgrey;
