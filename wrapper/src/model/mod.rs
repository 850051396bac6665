//! The wrapper's domain: the operations on tenants' data that more than one way in needs (the
//! REST API, sign-in, the fast-path credit ingester), each taking the caller's transaction. They
//! know nothing of HTTP; `api/` and `auth/` call them, never the other way round.

pub mod apps;
pub mod credits;
pub mod grants;
pub mod hosts;
pub mod limits;
pub mod users;
