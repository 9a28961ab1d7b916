//! Who may talk to the status server: an optional shared token, sent as
//! `Authorization: Bearer <token>` (scripts, Prometheus) or as the password
//! of HTTP basic auth with any user name (browsers, which ask for it after
//! the server's `WWW-Authenticate` challenge).

/// What a request's credentials amount to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// No token configured, or the right one sent.
    Allowed,
    /// A token is configured and the request did not carry it.
    Refused,
}

/// Checks one request's `Authorization` header (None: absent) against the
/// configured token (None: the server is open).
pub(crate) fn check(token: Option<&str>, authorization: Option<&str>) -> Verdict {
    let Some(token) = token else {
        return Verdict::Allowed;
    };
    let Some(header) = authorization else {
        return Verdict::Refused;
    };
    let header = header.trim();
    let sent = match header.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => {
            rest.trim().as_bytes().to_vec()
        }
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("basic") => {
            match decode_base64(rest.trim()) {
                // "user:password": the user name is not checked.
                Some(pair) => match pair.iter().position(|&b| b == b':') {
                    Some(colon) => pair[colon + 1..].to_vec(),
                    None => return Verdict::Refused,
                },
                None => return Verdict::Refused,
            }
        }
        _ => return Verdict::Refused,
    };
    if same_bytes(&sent, token.as_bytes()) {
        Verdict::Allowed
    } else {
        Verdict::Refused
    }
}

/// Equality whose time does not depend on where the first difference
/// is, so timing the answers does not reveal the token a prefix at a
/// time (only its length, which a long random token makes worthless).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Standard base64 (RFC 4648, with or without `=` padding); None on any
/// other byte. Small enough not to need a crate for one header.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let s = s.trim_end_matches('=').as_bytes();
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = (acc << 6) | value(c)?;
        }
        // A chunk of n characters carries n * 6 bits: 3, 2 or 1 whole bytes.
        acc <<= 6 * (4 - chunk.len() as u32);
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_server_allows_everyone() {
        assert_eq!(check(None, None), Verdict::Allowed);
        assert_eq!(check(None, Some("Bearer nonsense")), Verdict::Allowed);
    }

    #[test]
    fn bearer_token_must_match() {
        assert_eq!(check(Some("s3cret"), None), Verdict::Refused);
        assert_eq!(
            check(Some("s3cret"), Some("Bearer s3cret")),
            Verdict::Allowed
        );
        assert_eq!(
            check(Some("s3cret"), Some("bearer  s3cret ")),
            Verdict::Allowed
        );
        assert_eq!(
            check(Some("s3cret"), Some("Bearer s3cre")),
            Verdict::Refused
        );
        assert_eq!(
            check(Some("s3cret"), Some("Bearer s3cretX")),
            Verdict::Refused
        );
        assert_eq!(check(Some("s3cret"), Some("s3cret")), Verdict::Refused);
        assert_eq!(
            check(Some("s3cret"), Some("Token s3cret")),
            Verdict::Refused
        );
    }

    #[test]
    fn basic_auth_password_is_the_token() {
        // base64("admin:s3cret") and base64("any:s3cret")
        assert_eq!(
            check(Some("s3cret"), Some("Basic YWRtaW46czNjcmV0")),
            Verdict::Allowed
        );
        assert_eq!(
            check(Some("s3cret"), Some("Basic YW55OnMzY3JldA==")),
            Verdict::Allowed
        );
        // base64("admin:wrong"), base64("s3cret") without a colon, garbage
        assert_eq!(
            check(Some("s3cret"), Some("Basic YWRtaW46d3Jvbmc=")),
            Verdict::Refused
        );
        assert_eq!(
            check(Some("s3cret"), Some("Basic czNjcmV0")),
            Verdict::Refused
        );
        assert_eq!(check(Some("s3cret"), Some("Basic !!!!")), Verdict::Refused);
        assert_eq!(check(Some("s3cret"), Some("Basic")), Verdict::Refused);
    }

    #[test]
    fn base64_round_trips_every_tail_length() {
        assert_eq!(decode_base64("").unwrap(), b"");
        assert_eq!(decode_base64("YQ==").unwrap(), b"a");
        assert_eq!(decode_base64("YWI=").unwrap(), b"ab");
        assert_eq!(decode_base64("YWJj").unwrap(), b"abc");
        assert_eq!(decode_base64("YWJjZA").unwrap(), b"abcd");
        assert_eq!(decode_base64("/+8=").unwrap(), [0xff, 0xef]);
        assert!(decode_base64("YWJjZ").is_none());
        assert!(decode_base64("YW-j").is_none());
    }
}
