//! Identity that HTTP does not shape: the wrapper's signing keys (sealed at rest), password
//! hashing, and the OpenID Connect providers it trusts. `state` holds them; `auth/` (sign-in,
//! sessions) uses them. Nothing here imports `auth`, `api` or `state`.

pub mod keys;
pub mod oidc;
pub mod password;
