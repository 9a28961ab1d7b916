//! Entry points into every decoder of outside input — configuration and
//! URLs, the peer wire format, and the values read back from Redis — for
//! the cargo-fuzz targets in `fuzz/` (feature `fuzzing`) and the property
//! tests below, which run in the normal test suite. Each takes raw bytes
//! (Redis replies as RESP) and must return without panicking, whatever the
//! input; the decoders' own errors are typed and name what was wrong.
//!
//! ```text
//! cargo +nightly fuzz run redis_values      # in fuzz/, with cargo-fuzz
//! ```

use redis::Value;

/// Which decoder a Redis reply is fed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoder {
    /// A `heartbeat.lua` reply (membership, peers, lease flags).
    Heartbeat,
    /// One entry of the membership list (`node_list.lua`).
    NodeRecord,
}

impl Decoder {
    /// Every decoder, for targets that pick one from the input.
    pub const ALL: [Decoder; 2] = [Decoder::Heartbeat, Decoder::NodeRecord];
}

/// Parses `data` as a Redis URL and builds a [`Config`](crate::Config)
/// from it; masks it for logs and checks the mask hides any password.
pub fn config_url(data: &[u8]) {
    let url = String::from_utf8_lossy(data);
    let _ = crate::Config::from_url(&url);
    let _ = crate::config::mask_url(&url);
}

/// Feeds `data` as one line of the peer wire protocol to a listener (as a
/// PING) and to a pinger (as the PONG to a ping it sent).
pub fn peer_line(data: &[u8]) {
    let line = String::from_utf8_lossy(data);
    for secret in [None, Some("s3cret".to_string())] {
        let me = crate::peer::PeerIdentity {
            namespace: "ns".into(),
            node_id: "me".into(),
            secret,
        };
        let _ = me.answer(&line, true);
        let _ = me.read_pong(&line, "them", "nonce");
    }
}

/// Feeds `data` as a task's stored record (`field=value` lines, as in the
/// task hash) and as a task event (JSON from the events channel).
pub fn task_record(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let fields: std::collections::HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let _ = crate::swarm::task::TaskInfo::from_hash("{ns:queue:q}:task:t", fields);
    let _ = serde_json::from_slice::<crate::TaskEvent>(data);
}

/// Feeds `data` as a stored fan-out outcome.
pub fn fanout_outcome(data: &[u8]) {
    let _ = crate::fanout::decode::<serde_json::Value, String>("{ns:fanout:j}:done", data);
}

/// Parses `data` as RESP and feeds the value to `decoder`.
pub fn redis_reply(data: &[u8], decoder: Decoder) {
    if let Ok(value) = redis::parse_redis_value(data) {
        redis_value(value, decoder);
    }
}

/// Feeds an already parsed value to `decoder`.
pub fn redis_value(value: Value, decoder: Decoder) {
    match decoder {
        Decoder::Heartbeat => {
            let _ = crate::heartbeat::BeatOutcome::parse("{ns:nodes}", "me", value);
        }
        Decoder::NodeRecord => {
            let _ = crate::membership::parse_node("{ns:nodes}", value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Arbitrary Redis values, nested a few levels, with the strings the
    /// decoders look for mixed in.
    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Nil),
            Just(Value::Okay),
            any::<i64>().prop_map(Value::Int),
            prop_oneof![Just(-1i64), Just(0), Just(1)].prop_map(Value::Int),
            proptest::collection::vec(any::<u8>(), 0..24).prop_map(Value::BulkString),
            "(corrupt:|ok|queued|running|[0-9]{1,20}|-?[0-9.e+]{1,12}|inf|nan)"
                .prop_map(|s| Value::BulkString(s.into_bytes())),
            ".{0,12}".prop_map(Value::SimpleString),
            any::<f64>().prop_map(Value::Double),
            any::<bool>().prop_map(Value::Boolean),
        ];
        leaf.prop_recursive(3, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn no_decoder_panics_on_any_value(v in value()) {
            for d in Decoder::ALL {
                redis_value(v.clone(), d);
            }
        }

        #[test]
        fn no_decoder_panics_on_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            for d in Decoder::ALL {
                redis_reply(&data, d);
            }
            config_url(&data);
            peer_line(&data);
            task_record(&data);
            fanout_outcome(&data);
        }

        #[test]
        fn peer_lines_of_the_right_shape_never_panic(
            verb in "(PING|PONG|RSWP/2|RSWP/1|)",
            fields in proptest::collection::vec("[ -~]{0,20}", 0..8),
        ) {
            let line = format!("RSWP/2 {verb} {}\n", fields.join(" "));
            peer_line(line.as_bytes());
        }

        #[test]
        fn task_records_with_hostile_fields_never_panic(
            state in "(queued|running|end|bogus|)",
            counts in proptest::collection::vec("(-?[0-9]{0,25}|1e308|inf|nan|x)", 8),
            data in "[ -~]{0,30}",
        ) {
            let names = ["attempts", "max_attempts", "failures", "lost", "max_lost", "fence", "timeout_ms", "backoff_ms"];
            let mut rec = format!("id=t\nstate={state}\ndata={data}\n");
            for (n, v) in names.iter().zip(&counts) {
                rec.push_str(&format!("{n}={v}\n"));
            }
            task_record(rec.as_bytes());
        }

        #[test]
        fn urls_parse_or_fail_cleanly_and_never_leak_the_password(
            scheme in "(redis|rediss|redis\\+unix|http|)",
            user in "[a-z%:@/]{0,6}",
            pass in "[A-Za-z0-9%:@/?#]{1,10}",
            host in "[a-z0-9.\\[\\]:]{0,12}",
            rest in "[/0-9?=&a-z]{0,12}",
        ) {
            let url = format!("{scheme}://{user}:{pass}@{host}{rest}");
            let _ = crate::Config::from_url(&url);
            let masked = crate::config::mask_url(&url);
            // A password of 4+ characters (shorter ones match by chance).
            if pass.len() >= 4 {
                prop_assert!(!masked.contains(&pass), "{url} masked as {masked}");
            }
        }
    }
}
