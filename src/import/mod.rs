//! Imports from other platforms, through the registry's own import entry points
//! ([`crate::registry::import`]): `tidings import leancloud` runs them on a store it opens
//! itself, with the server stopped; `tidings import easemob` through a running server's admin
//! API, whose import endpoints call the same entry points.

pub mod easemob;
pub mod leancloud;
