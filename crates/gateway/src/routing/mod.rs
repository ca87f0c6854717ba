//! Where a request goes: the routing snapshot built from the state (stages, variants, compiled
//! routes), the variant choice, path normalisation.

pub(crate) mod choose;
pub(crate) mod path;
pub(crate) mod table;
