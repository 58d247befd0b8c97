#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| engaged_fuzz::decode_single_object(data));
