//! Redis URLs and their masking for logs.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    redswarm::fuzzing::config_url(data);
});
