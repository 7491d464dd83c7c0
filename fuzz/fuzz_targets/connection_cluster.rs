#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff::harness::connection_cluster(data));

/// AddressSanitizer's defaults for this target (`ASAN_OPTIONS` still overrides
/// them): a whole-server world allocates thousands of times per input, and
/// recording a stack for each allocation and a fake frame for each large stack
/// frame was a fifth of its time. A report still names the bad access; rerun a
/// crash with `ASAN_OPTIONS=malloc_context_size=30` for where the memory came from.
#[no_mangle]
pub extern "C" fn __asan_default_options() -> *const std::ffi::c_char {
    c"malloc_context_size=0:detect_stack_use_after_return=0".as_ptr()
}
