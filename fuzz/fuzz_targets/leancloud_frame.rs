#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tidings::fuzzing::leancloud_frame(data));
