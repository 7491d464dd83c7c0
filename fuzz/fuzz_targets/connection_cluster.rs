#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff::harness::connection_cluster(data));
