//! # sync-web
//!
//! The browser and HTTP primitives the wrapper and every app share, so a sign-in page and an
//! app's dashboard look, escape and refuse alike:
//!
//! * [`html`] — one page layout, HTML escaping and URL encoding;
//! * [`page`] — the HTML response (no caching, no framing, a strict CSP), `303` redirects and
//!   [`page::Pages`], where an app is served and where its users sign in;
//! * [`csrf`] — the Origin check for cookie-authenticated writes, and reading session cookies
//!   and bearer tokens;
//! * [`problem`] — `application/problem+json` answers and the middleware that makes every
//!   refusal one;
//! * [`body`] — JSON bodies whose every refusal names the field ([`body::JsonBody`]).
//!
//! It knows nothing about tenants, stores or streams: apps reach it through `sync-sdk`
//! (`sync_sdk::{html, csrf, web, http}`), which adds sessions and tenant-aware serving.
#![warn(missing_docs)]

pub mod body;
pub mod csrf;
pub mod html;
pub mod page;
pub mod problem;
