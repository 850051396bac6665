//! Per-request context: the request id (from `X-Request-Id`, or made here) and the correlation
//! id (from `X-Correlation-Id`, or made here). The correlation id is echoed in the response and
//! copied into every event the request causes, so a change can be followed from the API call to
//! every app that applied it.
//!
//! It also carries the client's address: the peer's, or — when the peer is one of the trusted
//! proxies (`WRAPPER_TRUSTED_PROXIES`: addresses or CIDR ranges, loopback by default: the edge) —
//! the rightmost address in `X-Forwarded-For` that is not a trusted proxy. Sign-in throttling
//! counts failures per address.

use std::{net::IpAddr, sync::Arc};

use axum::{
    extract::{ConnectInfo, FromRequestParts, Request, State},
    http::{HeaderValue, request::Parts},
    middleware::Next,
    response::Response,
};
use tracing::Instrument;
use uuid::Uuid;

/// Header carrying the correlation id.
pub const CORRELATION_HEADER: &str = "x-correlation-id";
/// Header carrying the request id.
pub const REQUEST_HEADER: &str = "x-request-id";

/// Ids that identify a request and the work it causes.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Unique per HTTP request.
    pub request_id: String,
    /// Propagated across services and into events.
    pub correlation_id: String,
    /// The client's address, when known (see the module docs).
    pub client_ip: Option<IpAddr>,
    /// The caller's W3C trace context (`traceparent`), when it sent a well-formed one: passed
    /// on into events as it is when this service exports no traces itself.
    pub traceparent: Option<String>,
}

/// An address range: `10.0.0.0/8`, `fd00::/8`, or one address (`127.0.0.1`, `::1`). An
/// IPv4-mapped IPv6 address (`::ffff:10.0.0.5`, what a dual-stack listener reports) is judged as
/// the IPv4 address it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text.trim(), None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("'{text}' is not an address or a CIDR range"))?;
        let network = network.to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{text}': the prefix must be 0 to {max}"))?,
        };
        Ok(Self { network, prefix })
    }
}

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(pub Arc<Vec<IpRange>>);

impl TrustedProxies {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|range| range.contains(ip))
    }

    /// The client behind `peer`, given the request's `X-Forwarded-For` values.
    pub fn client(&self, peer: Option<IpAddr>, forwarded: &[&str]) -> Option<IpAddr> {
        let peer = peer?.to_canonical();
        if !self.trusts(peer) {
            return Some(peer);
        }
        let hops = forwarded.iter().flat_map(|v| v.split(','));
        let mut hops: Vec<IpAddr> = hops
            .filter_map(|h| h.trim().parse::<IpAddr>().ok())
            .map(|ip| ip.to_canonical())
            .collect();
        hops.reverse();
        Some(
            hops.into_iter()
                .find(|ip| !self.trusts(*ip))
                .unwrap_or(peer),
        )
    }
}

fn header_or_new(req: &Request, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map_or_else(|| Uuid::now_v7().to_string(), str::to_owned)
}

/// Middleware: attach a [`Ctx`], run the request inside a span carrying both ids, and echo them.
pub async fn attach(
    State(proxies): State<TrustedProxies>,
    mut req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let forwarded: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let client_ip = proxies.client(peer, &forwarded);
    let traceparent = req
        .headers()
        .get(sync_telemetry::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .filter(|v| sync_telemetry::is_traceparent(v))
        .map(str::to_owned);
    let ctx = Ctx {
        request_id: header_or_new(&req, REQUEST_HEADER),
        correlation_id: header_or_new(&req, CORRELATION_HEADER),
        client_ip,
        traceparent,
    };
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        request_id = %ctx.request_id,
        correlation_id = %ctx.correlation_id,
        status = tracing::field::Empty,
    );
    sync_telemetry::continue_trace(&span, ctx.traceparent.as_deref());
    req.extensions_mut().insert(ctx.clone());
    let started = std::time::Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("status", status);
    metrics::histogram!("tsync_wrapper_http_request_duration_seconds", "status" => status.to_string())
        .record(started.elapsed().as_secs_f64());
    span.in_scope(|| {
        tracing::info!(
            status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request done"
        )
    });
    for (name, value) in [
        (REQUEST_HEADER, &ctx.request_id),
        (CORRELATION_HEADER, &ctx.correlation_id),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            response.headers_mut().insert(name, v);
        }
    }
    response
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Ctx>().cloned().unwrap_or_else(|| {
            let id = Uuid::now_v7().to_string();
            Ctx {
                request_id: id.clone(),
                correlation_id: id,
                client_ip: None,
                traceparent: None,
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let range = |s: &str| s.parse::<IpRange>().unwrap();
        let proxies = TrustedProxies(Arc::new(vec![range("127.0.0.1"), range("10.0.0.2")]));
        let spoofed = ["6.6.6.6, 1.2.3.4"];
        assert_eq!(
            proxies.client(Some(ip("9.9.9.9")), &spoofed),
            Some(ip("9.9.9.9"))
        );
        assert_eq!(
            proxies.client(Some(ip("127.0.0.1")), &spoofed),
            Some(ip("1.2.3.4"))
        );
        let chain = ["1.2.3.4, 10.0.0.2"];
        assert_eq!(
            proxies.client(Some(ip("127.0.0.1")), &chain),
            Some(ip("1.2.3.4"))
        );
        assert_eq!(
            proxies.client(Some(ip("127.0.0.1")), &[]),
            Some(ip("127.0.0.1"))
        );
        assert_eq!(proxies.client(None, &spoofed), None);
    }

    #[test]
    fn trusted_proxies_are_ranges() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let range = |s: &str| s.parse::<IpRange>().unwrap();
        let edge = TrustedProxies(Arc::new(vec![range("172.28.0.0/16"), range("fd00::/8")]));
        let chain = ["203.0.113.9, 172.28.3.4"];
        assert_eq!(
            edge.client(Some(ip("172.28.0.10")), &chain),
            Some(ip("203.0.113.9"))
        );
        // A dual-stack listener reports the proxy mapped into IPv6.
        assert_eq!(
            edge.client(Some(ip("::ffff:172.28.0.10")), &chain),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            edge.client(Some(ip("fd12::1")), &["2001:db8::7"]),
            Some(ip("2001:db8::7"))
        );
        // Outside the range: the peer itself, whatever it forwards.
        assert_eq!(
            edge.client(Some(ip("172.29.0.1")), &chain),
            Some(ip("172.29.0.1"))
        );
        assert!(range("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(!range("10.0.0.0/8").contains(ip("11.0.0.1")));
        for bad in ["10.0.0.0/33", "fd00::/129", "nonsense", "10.0.0.0/x"] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad}");
        }
    }
}
