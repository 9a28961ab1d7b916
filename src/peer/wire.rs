//! The `RSWP/2` lines and their MAC (layout in the [module docs](super)).

use ring::hmac;

use super::{PeerIdentity, MAX_LINE};

/// Protocol name and version, the first field of every line.
pub(crate) const VERSION: &str = "RSWP/2";
/// Longest id or namespace field (node ids are at most 512 bytes).
const MAX_FIELD: usize = 512;
/// Longest nonce accepted (ours are 32 hex digits).
const MAX_NONCE: usize = 64;
const REDIS_UP: &str = "redis:up";
const REDIS_DOWN: &str = "redis:down";

/// A field must survive the space-separated line intact: not empty, no
/// whitespace or control characters, bounded.
fn check_field(what: &str, value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("empty {what}"));
    }
    if value.len() > max {
        return Err(format!("{what} is {} bytes, over {max}", value.len()));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{what} {value:?} contains whitespace or control characters"
        ));
    }
    Ok(())
}

/// `<len>:<bytes>,` per field: no two field lists give the same input, so
/// ids containing separators cannot be shifted from one field to another.
fn mac_input(fields: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.iter().map(|f| f.len() + 8).sum());
    for f in fields {
        out.extend_from_slice(f.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(f.as_bytes());
        out.push(b',');
    }
    out
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks(2)
        .map(|pair| Some((digit(pair[0])? << 4) | digit(pair[1])?))
        .collect()
}

/// The line without its line ending, split into fields.
fn fields(line: &str) -> Vec<&str> {
    line.trim_end_matches(['\r', '\n']).split(' ').collect()
}

impl PeerIdentity {
    fn key(&self) -> Option<hmac::Key> {
        self.secret
            .as_ref()
            .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes()))
    }

    fn mac(&self, fields: &[&str]) -> String {
        match self.key() {
            Some(key) => to_hex(hmac::sign(&key, &mac_input(fields)).as_ref()),
            None => "-".to_string(),
        }
    }

    fn mac_ok(&self, fields: &[&str], mac: &str) -> bool {
        match self.key() {
            Some(key) => from_hex(mac)
                .is_some_and(|tag| hmac::verify(&key, &mac_input(fields), &tag).is_ok()),
            None => mac == "-",
        }
    }

    /// The PING line for the peer `to` with `nonce`; an error if an id
    /// cannot be carried on the wire.
    pub(crate) fn ping_line(&self, to: &str, nonce: &str) -> Result<String, String> {
        check_field("namespace", &self.namespace, MAX_FIELD)?;
        check_field("own node id", &self.node_id, MAX_FIELD)?;
        check_field("peer node id", to, MAX_FIELD)?;
        check_field("nonce", nonce, MAX_NONCE)?;
        let mac = self.mac(&[VERSION, "PING", &self.namespace, &self.node_id, to, nonce]);
        let line = format!(
            "{VERSION} PING {} {} {to} {nonce} {mac}\n",
            self.namespace, self.node_id
        );
        if line.len() > MAX_LINE {
            return Err(format!(
                "ping line of {} bytes is over {MAX_LINE}",
                line.len()
            ));
        }
        Ok(line)
    }

    /// Checks one request line as the listener of this node; the PONG line
    /// to send back if it is a valid ping addressed to us by another node.
    pub(crate) fn answer(&self, line: &str, reaches_redis: bool) -> Result<String, String> {
        let parts = fields(line);
        let [version, verb, ns, from, to, nonce, mac] = parts.as_slice() else {
            return Err(format!("malformed request ({} fields)", parts.len()));
        };
        if *version != VERSION {
            return Err(format!("unsupported version {version:?}"));
        }
        if *verb != "PING" {
            return Err(format!("unknown verb {verb:?}"));
        }
        if *ns != self.namespace {
            return Err(format!("namespace {ns:?} is not ours"));
        }
        check_field("node id", from, MAX_FIELD)?;
        check_field("nonce", nonce, MAX_NONCE)?;
        if *to != self.node_id {
            // The caller dialled a stale or shared address: answering would
            // make it count a node it did not mean.
            return Err(format!("ping addressed to node {to:?}, not to us"));
        }
        if *from == self.node_id {
            return Err("ping from our own node id (a node never counts itself)".into());
        }
        if !self.mac_ok(&[VERSION, "PING", ns, from, to, nonce], mac) {
            return Err(format!("bad MAC from {from:?}"));
        }
        let flag = if reaches_redis { REDIS_UP } else { REDIS_DOWN };
        let mac = self.mac(&[VERSION, "PONG", ns, &self.node_id, from, nonce, flag]);
        Ok(format!(
            "{VERSION} PONG {ns} {} {nonce} {flag} {mac}\n",
            self.node_id
        ))
    }

    /// Checks the answer to our ping of node `pinged` with `nonce`: whether
    /// that node reaches Redis, or why the answer does not count.
    pub(crate) fn read_pong(&self, line: &str, pinged: &str, nonce: &str) -> Result<bool, String> {
        let parts = fields(line);
        let [version, verb, ns, node, their_nonce, flag, mac] = parts.as_slice() else {
            return Err(format!("malformed answer ({} fields)", parts.len()));
        };
        if *version != VERSION || *verb != "PONG" {
            return Err(format!("not an {VERSION} PONG: {version:?} {verb:?}"));
        }
        if *ns != self.namespace {
            return Err(format!("answer from namespace {ns:?}"));
        }
        if *node != pinged {
            return Err(format!("answered by node {node:?}, pinged {pinged:?}"));
        }
        if *node == self.node_id {
            return Err("answered by this node itself".into());
        }
        if *their_nonce != nonce {
            return Err("answer carries another nonce".into());
        }
        let reaches_redis = match *flag {
            REDIS_UP => true,
            REDIS_DOWN => false,
            other => return Err(format!("unknown redis flag {other:?}")),
        };
        if !self.mac_ok(
            &[VERSION, "PONG", ns, node, &self.node_id, their_nonce, flag],
            mac,
        ) {
            return Err(format!("bad MAC from {node:?}"));
        }
        Ok(reaches_redis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(node: &str, secret: Option<&str>) -> PeerIdentity {
        PeerIdentity {
            namespace: "ns".into(),
            node_id: node.into(),
            secret: secret.map(String::from),
        }
    }

    #[test]
    fn a_ping_and_its_pong_round_trip_with_the_redis_flag() {
        for secret in [None, Some("s3cret")] {
            let (a, b) = (ident("a", secret), ident("b", secret));
            for up in [true, false] {
                let ping = a.ping_line("b", "n1").unwrap();
                let pong = b.answer(&ping, up).unwrap();
                assert_eq!(a.read_pong(&pong, "b", "n1"), Ok(up), "{pong}");
            }
        }
    }

    #[test]
    fn answers_only_well_formed_pings_of_its_namespace_and_secret() {
        let me = ident("me", Some("s3cret"));
        let them = ident("them", Some("s3cret"));
        let good = them.ping_line("me", "n1").unwrap();
        assert!(me
            .answer(&good, true)
            .unwrap()
            .starts_with("RSWP/2 PONG ns me n1 redis:up "));
        assert!(me.answer("garbage\n", true).is_err());
        assert!(me.answer(&good.replace("RSWP/2", "RSWP/1"), true).is_err());
        assert!(me.answer(&good.replace(" ns ", " other "), true).is_err());
        assert!(me.answer(&good.replace(" PING ", " PONG "), true).is_err());
        let wrong = ident("them", Some("nope"));
        assert!(me
            .answer(&wrong.ping_line("me", "n1").unwrap(), true)
            .is_err());
        let open = ident("them", None);
        assert!(me
            .answer(&open.ping_line("me", "n1").unwrap(), true)
            .is_err());
        assert!(ident("me", None)
            .answer(&open.ping_line("me", "n1").unwrap(), true)
            .is_ok());
    }

    #[test]
    fn a_listener_refuses_pings_for_another_node_or_from_itself() {
        let me = ident("me", None);
        let them = ident("them", None);
        let err = me
            .answer(&them.ping_line("other", "n1").unwrap(), true)
            .unwrap_err();
        assert!(err.contains("addressed to"), "{err}");
        let err = me
            .answer(&me.ping_line("me", "n1").unwrap(), true)
            .unwrap_err();
        assert!(err.contains("own node id"), "{err}");
    }

    #[test]
    fn a_pinger_refuses_answers_from_another_node_nonce_or_secret() {
        let me = ident("me", Some("k"));
        let b = ident("b", Some("k"));
        let pong = b.answer(&me.ping_line("b", "n1").unwrap(), true).unwrap();
        assert!(me
            .read_pong(&pong, "c", "n1")
            .unwrap_err()
            .contains("answered by"));
        assert!(me
            .read_pong(&pong, "b", "n2")
            .unwrap_err()
            .contains("nonce"));
        // The answer is bound to the pinger: another node cannot reuse it.
        assert!(ident("x", Some("k")).read_pong(&pong, "b", "n1").is_err());
        let forged = pong.replace("redis:up", "redis:down");
        assert!(me
            .read_pong(&forged, "b", "n1")
            .unwrap_err()
            .contains("MAC"));
        let other_secret = ident("b", Some("other"));
        let pong = other_secret
            .answer(
                &ident("me", Some("other")).ping_line("b", "n1").unwrap(),
                true,
            )
            .unwrap();
        assert!(me.read_pong(&pong, "b", "n1").unwrap_err().contains("MAC"));
        // A node answering itself (an address that loops back) never counts.
        let self_pong = "RSWP/2 PONG ns me n1 redis:up -\n";
        assert!(ident("me", None).read_pong(self_pong, "me", "n1").is_err());
    }

    #[test]
    fn the_mac_input_is_unambiguous() {
        assert_ne!(mac_input(&["a|b", "c"]), mac_input(&["a", "b|c"]));
        assert_ne!(mac_input(&["ab", "c"]), mac_input(&["a", "bc"]));
        assert_ne!(mac_input(&["1:a,", ""]), mac_input(&["1:a,"]));
        assert_eq!(mac_input(&["PING", "ns"]), b"4:PING,2:ns,".to_vec());
    }

    #[test]
    fn ids_that_would_break_the_line_are_refused() {
        let spaced = PeerIdentity {
            namespace: "my ns".into(),
            ..ident("a", None)
        };
        assert!(spaced
            .ping_line("b", "n1")
            .unwrap_err()
            .contains("namespace"));
        assert!(ident("a", None).ping_line("b c", "n1").is_err());
        assert!(ident("a", None).ping_line("", "n1").is_err());
        assert!(ident("a\n", None).ping_line("b", "n1").is_err());
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(from_hex(&to_hex(&bytes)), Some(bytes.to_vec()));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex("é1"), None);
    }
}
