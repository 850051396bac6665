//! The one rule for "a public address", and the HTTP client that connects only to such.
//!
//! The wrapper fetches URLs that tenants name (webhook endpoints, a custom domain's challenge).
//! Without care, a tenant could point either at the inside of the deployment (loopback, the pod
//! network, the cloud's metadata service) and have the wrapper fetch it for them. Both callers
//! use this module, so they cannot judge an address differently:
//!
//! * [`is_public`] judges an IP address. An IPv6 address that carries an IPv4 address
//!   (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, IPv4-translated
//!   `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`, Teredo `2001::/32`, ISATAP
//!   interface ids) is judged by the IPv4 address it carries, since a relay or translator may
//!   deliver it there; site-local `fec0::/10`, unique-local, link-local, documentation,
//!   benchmarking, discard-only and local-use NAT64 prefixes are never public.
//! * [`public_client`] builds a `reqwest` client whose resolver drops every non-public answer
//!   (so a name cannot be pointed at the inside after it was checked) and which follows no
//!   redirect. Hosts named as insecure (development, tests) resolve as they are.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

/// Whether `ip` is an address on the public internet: not loopback, private, shared,
/// link-local, documentation, benchmarking, multicast, reserved or unspecified, and for IPv6
/// forms that carry an IPv4 address, the IPv4 address is public too.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    !(v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 192 && b == 88 && c == 99)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

/// The IPv4 addresses an IPv6 address carries, in every form a relay or translator may
/// deliver to (more than one for Teredo: its server and its client).
fn embedded_v4(v6: Ipv6Addr) -> Vec<Ipv4Addr> {
    let s = v6.segments();
    let o = v6.octets();
    let last = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    let mut found = Vec::new();
    // ::ffff:a.b.c.d (mapped), ::a.b.c.d (compatible), ::ffff:0:a.b.c.d (translated).
    if s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) {
        found.push(last);
    }
    if s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
        found.push(last);
    }
    // NAT64, the well-known prefix 64:ff9b::/96.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        found.push(last);
    }
    // 6to4: 2002:AABB:CCDD::/48.
    if s[0] == 0x2002 {
        found.push(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    // Teredo: 2001:0000:<server v4>:<flags>:<port>:<client v4 xor ffffffff>.
    if s[0] == 0x2001 && s[1] == 0 {
        found.push(Ipv4Addr::new(o[4], o[5], o[6], o[7]));
        found.push(Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15]));
    }
    // ISATAP interface ids: ...:0000:5efe:a.b.c.d or ...:0200:5efe:a.b.c.d.
    if (s[4] & 0xfdff) == 0 && s[5] == 0x5efe {
        found.push(last);
    }
    found
}

fn is_public_v6(v6: Ipv6Addr) -> bool {
    let carried = embedded_v4(v6);
    if !carried.is_empty() {
        return carried.into_iter().all(is_public_v4);
    }
    let s = v6.segments();
    !(v6.is_loopback()
        || v6.is_unspecified()
        || v6.is_multicast()
        // unique local fc00::/7, link-local fe80::/10, site-local fec0::/10
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] & 0xffc0) == 0xfec0
        // documentation 2001:db8::/32 and 3fff::/20
        || (s[0] == 0x2001 && s[1] == 0x0db8)
        || (s[0] == 0x3fff && s[1] < 0x1000)
        // IETF protocol assignments 2001::/23 (benchmarking, ORCHID, …; Teredo is judged above)
        || (s[0] == 0x2001 && s[1] < 0x0200)
        // local-use NAT64 64:ff9b:1::/48, discard-only 100::/64
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
        || (s[..4] == [0x100, 0, 0, 0]))
}

/// Resolves names to public addresses only (an insecure host resolves as it is).
struct PublicOnly {
    insecure: Arc<Vec<String>>,
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let insecure = self
            .insecure
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name.as_str()));
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| insecure || is_public(a.ip()))
                .collect();
            if found.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

/// A client builder that connects only to public addresses (names are resolved through the
/// public-only resolver) except for the `insecure` hosts, follows no redirect and gives up
/// after `timeout`.
pub fn public_client(insecure: Arc<Vec<String>>, timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .dns_resolver(Arc::new(PublicOnly { insecure }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(text: &str) -> bool {
        is_public(text.parse().unwrap())
    }

    #[test]
    fn ipv6_forms_carrying_an_ipv4_address_are_judged_by_it() {
        for inside in [
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "::10.0.0.1",
            "::ffff:0:10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            "2001:0:4136:e378:8000:63bf:f5ff:fffe", // Teredo client 10.0.0.1
            "2001:0:7f00:1:8000:63bf:3fff:fdd2",    // Teredo server 127.0.0.1
            "fe80::5efe:10.0.0.1",
            "2001:4860::200:5efe:192.168.1.1",
        ] {
            assert!(!public(inside), "{inside} must not be public");
        }
        for outside in [
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7", // Teredo client 8.8.8.8 via 65.54.227.120
            "2606:4700:4700::1111",
        ] {
            assert!(public(outside), "{outside} must be public");
        }
    }

    #[test]
    fn local_and_reserved_ipv6_prefixes_are_not_public() {
        for inside in [
            "::1",
            "::",
            "fec0::1",
            "feff::1",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "2001:2::1",
            "2001:10::1",
            "64:ff9b:1::a00:1",
            "3fff::1",
            "2001:20::1",
            "100::1",
        ] {
            assert!(!public(inside), "{inside} must not be public");
        }
    }

    /// A one-request HTTP server on loopback: its port.
    async fn answer_once() -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        port
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_not_fetched_unless_the_host_is_insecure() {
        let port = answer_once().await;
        let url = format!("http://localhost:{port}/");
        let strict = public_client(Arc::default(), Duration::from_secs(2))
            .build()
            .unwrap();
        let refused = strict.get(&url).send().await;
        assert!(refused.is_err(), "fetched loopback: {refused:?}");
        let insecure = public_client(Arc::new(vec!["localhost".into()]), Duration::from_secs(2))
            .build()
            .unwrap();
        assert!(
            insecure
                .get(&url)
                .send()
                .await
                .unwrap()
                .status()
                .is_success()
        );
    }

    #[test]
    fn ipv4_ranges() {
        for inside in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "192.0.0.8",
            "198.18.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
        ] {
            assert!(!public(inside), "{inside} must not be public");
        }
        assert!(public("8.8.8.8"));
        assert!(public("1.1.1.1"));
    }
}
