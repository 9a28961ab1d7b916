//! Records read back from Redis: task hashes, task events, fan-out outcomes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    redswarm::fuzzing::task_record(data);
    redswarm::fuzzing::fanout_outcome(data);
});
