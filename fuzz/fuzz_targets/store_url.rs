//! Store URL parsing: never panics; an accepted URL displays as a URL that parses the same.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pra_core::StoreUrl;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(url) = StoreUrl::parse(text) {
        assert_eq!(StoreUrl::parse(&url.to_string()).expect("a displayed URL parses"), url);
    }
});
