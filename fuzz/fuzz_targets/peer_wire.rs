//! One line of the peer wire protocol, as a listener and as a pinger read it.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    redswarm::fuzzing::peer_line(data);
});
