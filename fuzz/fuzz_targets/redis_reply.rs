#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff::harness::redis_reply(data));
