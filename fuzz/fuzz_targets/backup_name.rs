//! Backup-name parsing: never panics; an accepted name is a bare file name, and the canonical
//! name of what it parses to parses back to the same time and sequence.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pra_core::backup::{validate_name, BackupName};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some(id) = BackupName::parse(text) {
        assert!(!text.contains('/') && !text.contains(".."));
        assert_eq!(BackupName::parse(&id.file_name()), Some(id));
    }
    if validate_name(text).is_ok() {
        assert!(BackupName::parse(text).is_some());
    }
});
