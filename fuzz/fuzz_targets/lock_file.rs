//! The lock-file parser: never panics; whatever it accepts in pra's full format renders back to
//! a file that parses to the same record.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pra_core::store::LockFile;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(parsed) = LockFile::parse(text, "fuzz") {
        let rendered = parsed.render();
        let again = LockFile::parse(&rendered, "fuzz").expect("a rendered lock file parses");
        // A seed-format file gains pra's fields when rendered; the site must survive.
        assert_eq!(again.record.site, parsed.record.site);
        if text.contains("TOKEN") {
            assert_eq!(again, parsed);
        }
    }
});
