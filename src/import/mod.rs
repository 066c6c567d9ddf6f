//! Imports from other platforms, through the registry's own import entry points
//! ([`crate::registry::import`]): `tidings import leancloud` runs them on a store it opens
//! itself, with the server stopped; the same code can serve a live server's admin API.

pub mod leancloud;
