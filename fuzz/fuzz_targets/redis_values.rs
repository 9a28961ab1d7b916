//! Every decoder of values read back from Redis; the first byte picks the
//! decoder, the rest is a RESP reply.
#![no_main]
use redswarm::fuzzing::{redis_reply, Decoder};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some((pick, reply)) = data.split_first() {
        let decoder = Decoder::ALL[*pick as usize % Decoder::ALL.len()];
        redis_reply(reply, decoder);
    }
});
