//! Outbound HTTP grants: which origins an agent may reach over `wasi:http`
//! (`[agents.NAME] http = [...]` in `concord.toml`). Deny by default.
//!
//! An origin is a scheme (`http` or `https`), a host and a port. A host is
//! a domain name, an IP address, or `*.` and a domain, which matches the
//! domain's subdomains (at any depth) and not the domain itself.
//!
//! A request is checked on its [`Target`]: its scheme, host and port as the
//! WHATWG URL parser reads them (the parser browsers use). So the spellings
//! of an IP address that a resolver would also accept are one address here:
//! `127.1`, `0x7f.0.0.1`, `0177.0.0.1`, `2130706433` and
//! `[::ffff:127.0.0.1]` are all `127.0.0.1`, and are refused unless
//! `127.0.0.1` is granted on that port. The host then connects to the
//! target as checked, never to the text the agent wrote, so a name cannot
//! be read one way by the check and another way by the connect.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// `http` or `https`: the only schemes an agent may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn parse(s: &str) -> Option<Scheme> {
        match s {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// The port a URL of this scheme means when it names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host, normalised: a lowercase domain without a trailing dot, or an
/// address (an IPv4-mapped IPv6 address is its IPv4 address).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Host {
    Domain(String),
    Ip(IpAddr),
}

impl Host {
    /// Reads a host as the WHATWG URL parser does for `http` and `https`.
    fn parse(text: &str) -> Result<Host, String> {
        let host = url::Host::parse(text).map_err(|e| format!("`{text}` is not a host name or address: {e}"))?;
        Ok(match host {
            url::Host::Domain(d) => {
                let d = d.strip_suffix('.').unwrap_or(&d).to_string();
                if d.is_empty() {
                    return Err(format!("`{text}` is not a host name"));
                }
                Host::Domain(d)
            }
            url::Host::Ipv4(a) => Host::Ip(IpAddr::V4(a)),
            url::Host::Ipv6(a) => Host::Ip(unmap(a)),
        })
    }
}

/// `::ffff:a.b.c.d` connects to `a.b.c.d`, so it is that address.
fn unmap(a: Ipv6Addr) -> IpAddr {
    match a.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(a),
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
        }
    }
}

/// What an origin's host part matches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum HostPattern {
    Exact(Host),
    /// `*.example.com`: `a.example.com`, `b.a.example.com`; not
    /// `example.com`. Holds `example.com`.
    Subdomains(String),
}

/// One granted origin: `https://api.openai.com`, `http://127.0.0.1:11434`,
/// `https://*.example.com`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Origin {
    scheme: Scheme,
    host: HostPattern,
    port: u16,
}

impl Origin {
    /// Parses a grant. It is a scheme, a host and an optional port, with
    /// nothing else: a path, a query, a user or a wildcard anywhere but
    /// the first label are refused, with what to write instead.
    pub fn parse(text: &str) -> Result<Origin, String> {
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(format!("`{text}` is not an origin: write the scheme, such as `https://api.example.com`"));
        };
        let scheme = Scheme::parse(&scheme.to_ascii_lowercase()).ok_or_else(|| {
            format!("`{text}`: the scheme `{scheme}` is not one an agent may use: use `http` or `https`")
        })?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(format!(
                "`{text}` has a path, a query or a fragment: a grant is a whole origin, such as `{scheme}://{}`",
                authority.split(['/', '?', '#']).next().unwrap_or_default()
            ));
        }
        if authority.contains('@') {
            return Err(format!("`{text}` names a user: a grant is a scheme, a host and a port"));
        }
        let (host_text, port) = split_port(authority).map_err(|why| format!("`{text}`: {why}"))?;
        let port = port.unwrap_or(scheme.default_port());
        let host = match host_text.strip_prefix("*.") {
            Some(domain) => {
                let host = Host::parse(domain).map_err(|why| format!("`{text}`: {why}"))?;
                match host {
                    Host::Domain(d) if !d.contains('*') && d.contains('.') => HostPattern::Subdomains(d),
                    Host::Domain(_) => {
                        return Err(format!(
                            "`{text}`: a wildcard needs a domain of two labels or more under it, such as `*.example.com`"
                        ));
                    }
                    Host::Ip(_) => return Err(format!("`{text}`: a wildcard covers subdomains, not addresses")),
                }
            }
            None if host_text.contains('*') => {
                return Err(format!(
                    "`{text}`: `*` may only stand for subdomains, as the first label (`*.example.com`); grant each origin"
                ));
            }
            None => HostPattern::Exact(Host::parse(host_text).map_err(|why| format!("`{text}`: {why}"))?),
        };
        Ok(Origin { scheme, host, port })
    }

    /// Whether a request to `target` is to this origin.
    pub fn matches(&self, target: &Target) -> bool {
        self.scheme == target.scheme && self.port == target.port && self.matches_host(&target.host)
    }

    /// Whether every request to `other` is also to this origin.
    pub fn covers(&self, other: &Origin) -> bool {
        self.scheme == other.scheme
            && self.port == other.port
            && match &other.host {
                HostPattern::Exact(h) => self.matches_host(h),
                HostPattern::Subdomains(d) => match &self.host {
                    HostPattern::Subdomains(mine) => d == mine || self.matches_host(&Host::Domain(d.clone())),
                    HostPattern::Exact(_) => false,
                },
            }
    }

    fn matches_host(&self, host: &Host) -> bool {
        match (&self.host, host) {
            (HostPattern::Exact(h), host) => h == host,
            (HostPattern::Subdomains(d), Host::Domain(name)) => {
                name.len() > d.len() + 1 && name.ends_with(d.as_str()) && name[..name.len() - d.len()].ends_with('.')
            }
            (HostPattern::Subdomains(_), Host::Ip(_)) => false,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        match &self.host {
            HostPattern::Exact(h) => write!(f, "{h}")?,
            HostPattern::Subdomains(d) => write!(f, "*.{d}")?,
        }
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// Splits `host[:port]` (`[v6]:port` for IPv6).
fn split_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => {
                let rest = &authority[end + 1..];
                let port = match rest.strip_prefix(':') {
                    Some(p) => Some(p),
                    None if rest.is_empty() => None,
                    None => return Err(format!("`{authority}` has text after the address")),
                };
                (&authority[..=end], port)
            }
            None => return Err(format!("`{authority}` opens `[` without closing it")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("the port `{p}` is not a number from 1 to 65535"))?,
        ),
    };
    Ok((host, port))
}

/// Where a request goes, as checked: the host connects to exactly this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: Scheme,
    pub host: Host,
    pub port: u16,
}

impl Target {
    /// Reads a request's scheme and authority. A user in the authority
    /// (`http://a@b/`) is refused: it hides the real host from a reader.
    pub fn parse(scheme: &str, authority: &str) -> Result<Target, String> {
        let scheme = Scheme::parse(&scheme.to_ascii_lowercase())
            .ok_or_else(|| format!("the scheme `{scheme}` is not http or https"))?;
        if authority.contains('@') {
            return Err(format!("the authority `{authority}` names a user; put credentials in a header"));
        }
        if authority.is_empty() {
            return Err("the request names no host".into());
        }
        let (host, port) = split_port(authority)?;
        let host = Host::parse(host)?;
        Ok(Target { scheme, host, port: port.unwrap_or(scheme.default_port()) })
    }

    /// `host:port` to connect to, with IPv6 in brackets.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The `Host` header for a request to it: the host as checked, with the
    /// port unless it is the scheme's default.
    pub fn host_header(&self) -> http::HeaderValue {
        let text = match self.port == self.scheme.default_port() {
            true => self.host.to_string(),
            false => self.authority(),
        };
        // A normalised host and a port are header-safe (ASCII, no controls).
        http::HeaderValue::from_str(&text).unwrap_or_else(|_| http::HeaderValue::from_static("invalid"))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// A URL the host itself sends to (a model server, a webhook), checked
/// when the config is read: where it connects, and the path it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The URL as configured.
    pub url: String,
    pub target: Target,
    /// The path and query, from `/`.
    pub path: String,
}

impl Endpoint {
    /// Reads `http(s)://host[:port][/path][?query]`; a fragment, a user or
    /// another scheme is refused.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            format!("`{url}` has no scheme: write the whole URL, such as `http://127.0.0.1:11434/v1`")
        })?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let path = &rest[authority.len()..];
        if path.contains('#') {
            return Err(format!("`{url}` has a fragment, which is never sent: leave it out"));
        }
        let target = Target::parse(scheme, authority).map_err(|why| format!("`{url}`: {why}"))?;
        let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
        Ok(Endpoint { url: url.to_string(), target, path })
    }

    /// The URI to connect to: the target as checked, then the path.
    pub fn uri(&self) -> String {
        format!("{}://{}{}", self.target.scheme, self.target.authority(), self.path)
    }
}

/// The origins one agent may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpGrant {
    pub origins: Vec<Origin>,
}

impl HttpGrant {
    /// Whether `target` is granted; if not, why, in terms of the closest
    /// grant (the host is not granted at all, or not on this scheme or port).
    pub fn check(&self, target: &Target) -> Result<(), String> {
        if self.origins.iter().any(|o| o.matches(target)) {
            return Ok(());
        }
        let same_host: Vec<String> =
            self.origins.iter().filter(|o| o.matches_host(&target.host)).map(ToString::to_string).collect();
        Err(if same_host.is_empty() {
            format!("host {} is not granted", target.host)
        } else if !self.origins.iter().any(|o| o.matches_host(&target.host) && o.scheme == target.scheme) {
            format!("scheme {} is not granted for {} (granted: {})", target.scheme, target.host, same_host.join(", "))
        } else {
            format!("port {} is not granted for {} (granted: {})", target.port, target.host, same_host.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn target(url: &str) -> Result<Target, String> {
        let (scheme, rest) = url.split_once("://").expect("a scheme");
        Target::parse(scheme, rest.split('/').next().unwrap_or_default())
    }

    fn grant(origins: &[&str]) -> HttpGrant {
        HttpGrant { origins: origins.iter().map(|o| Origin::parse(o).expect("a valid origin")).collect() }
    }

    #[test]
    fn ip_spellings_are_one_address() {
        for spelling in [
            "http://127.0.0.1:9",
            "http://127.1:9",
            "http://0x7f.0.0.1:9",
            "http://0177.0.0.1:9",
            "http://2130706433:9",
            "http://0x7f000001:9",
            "http://[::ffff:127.0.0.1]:9",
            "http://[::ffff:7f00:1]:9",
            "HTTP://127.0.0.1:9",
        ] {
            let t = target(spelling).expect("parses");
            assert_eq!(t.host, Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)), "{spelling}");
            assert_eq!(t.authority(), "127.0.0.1:9", "{spelling}");
        }
    }

    #[test]
    fn a_spelling_of_a_granted_address_is_granted_only_on_its_port() {
        let g = grant(&["http://127.0.0.1:8080"]);
        assert_eq!(g.check(&target("http://0x7f.1:8080").expect("parses")), Ok(()));
        let why = g.check(&target("http://127.1:9090").expect("parses")).expect_err("another port");
        assert!(why.contains("port 9090"), "{why}");
        let why = g.check(&target("https://127.1:8080").expect("parses")).expect_err("another scheme");
        assert!(why.contains("scheme https"), "{why}");
        let why = g.check(&target("http://10.0.0.1:8080").expect("parses")).expect_err("another host");
        assert_eq!(why, "host 10.0.0.1 is not granted");
    }

    #[test]
    fn nothing_is_granted_by_default() {
        let why = HttpGrant::default().check(&target("https://api.openai.com").expect("parses")).expect_err("denied");
        assert_eq!(why, "host api.openai.com is not granted");
    }

    #[test]
    fn default_ports_and_case_and_a_trailing_dot_are_the_same_origin() {
        let g = grant(&["https://API.OpenAI.com"]);
        for ok in [
            "https://api.openai.com",
            "https://api.openai.com:443",
            "https://api.openai.com.",
            "https://API.openai.COM",
        ] {
            assert_eq!(g.check(&target(ok).expect("parses")), Ok(()), "{ok}");
        }
        assert!(g.check(&target("http://api.openai.com").expect("parses")).is_err());
        assert!(g.check(&target("https://api.openai.com:8443").expect("parses")).is_err());
    }

    #[test]
    fn a_wildcard_covers_subdomains_only() {
        let g = grant(&["https://*.example.com"]);
        for ok in ["https://a.example.com", "https://b.a.example.com"] {
            assert_eq!(g.check(&target(ok).expect("parses")), Ok(()), "{ok}");
        }
        for no in ["https://example.com", "https://badexample.com", "https://a.example.com.evil.net", "https://1.2.3.4"]
        {
            assert!(g.check(&target(no).expect("parses")).is_err(), "{no}");
        }
    }

    #[test]
    fn bad_grants_say_what_to_write() {
        for (bad, says) in [
            ("api.openai.com", "write the scheme"),
            ("ftp://example.com", "use `http` or `https`"),
            ("https://example.com/v1", "a whole origin, such as `https://example.com`"),
            ("https://user@example.com", "names a user"),
            ("https://*.com", "two labels or more"),
            ("https://*", "as the first label"),
            ("https://a.*.example.com", "as the first label"),
            ("https://*.127.0.0.1", "not addresses"),
            ("https://example.com:0", "1 to 65535"),
            ("https://example.com:99999", "1 to 65535"),
            ("https://[::1", "without closing"),
            ("https://exa mple.com", "not a host name"),
        ] {
            let why = Origin::parse(bad).expect_err(bad);
            assert!(why.contains(says), "{bad}: {why}");
        }
    }

    #[test]
    fn a_user_in_the_authority_is_refused() {
        let why = target("http://api.openai.com@127.0.0.1:9").expect_err("a user");
        assert!(why.contains("names a user"), "{why}");
    }

    #[test]
    fn covers() {
        let o = |s: &str| Origin::parse(s).expect("valid");
        assert!(o("https://*.example.com").covers(&o("https://api.example.com")));
        assert!(o("https://*.example.com").covers(&o("https://*.eu.example.com")));
        assert!(o("https://*.example.com").covers(&o("https://*.example.com")));
        assert!(o("https://api.example.com").covers(&o("https://api.example.com:443")));
        assert!(!o("https://api.example.com").covers(&o("https://*.example.com")));
        assert!(!o("https://*.example.com").covers(&o("https://example.com")));
        assert!(!o("https://*.example.com").covers(&o("http://api.example.com")));
        assert!(!o("http://127.0.0.1:8080").covers(&o("http://127.0.0.1:8081")));
    }

    #[test]
    fn endpoints_connect_to_the_target_as_checked() {
        let e = Endpoint::parse("HTTP://0x7f.1:8080/v1/chat?x=1").expect("valid");
        assert_eq!(e.uri(), "http://127.0.0.1:8080/v1/chat?x=1");
        assert_eq!(
            Endpoint::parse("https://hooks.example.com").expect("valid").uri(),
            "https://hooks.example.com:443/"
        );
        for (bad, says) in [
            ("hooks.example.com/x", "has no scheme"),
            ("https://a.example.com/x#frag", "fragment"),
            ("https://user@a.example.com/", "names a user"),
            ("ftp://a.example.com/", "not http or https"),
        ] {
            let why = Endpoint::parse(bad).expect_err(bad);
            assert!(why.contains(says), "{bad}: {why}");
        }
    }

    #[test]
    fn origins_display_as_written() {
        for o in ["https://api.openai.com", "http://127.0.0.1:11434", "https://*.example.com:8443", "http://[::1]:8080"]
        {
            assert_eq!(Origin::parse(o).expect("valid").to_string(), o);
        }
    }
}
