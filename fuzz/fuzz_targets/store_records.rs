#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tidings::fuzzing::store_records(data));
