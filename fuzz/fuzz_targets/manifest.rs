//! Fuzzes the manifest file's decoder (`sync::manifest::decode`) on arbitrary bytes: a manifest left damaged in the
//! state directory must read as none, never panic or allocate what its bytes do not hold. Whatever it accepts comes
//! back unchanged from a save and a second read, and saves the same bytes again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandlink::sync::manifest::{decode, encode};

fuzz_target!(|data: &[u8]| {
    let Some(entries) = decode(data) else { return };
    let mut saved = Vec::new();
    encode(&entries, &mut saved).expect("encoding into memory cannot fail");
    let read_again = decode(&saved).expect("a saved manifest reads back");
    assert_eq!(read_again, entries, "a save and a read changed the entries");
    let mut saved_again = Vec::new();
    encode(&read_again, &mut saved_again).expect("encoding into memory cannot fail");
    assert_eq!(saved_again, saved, "the same entries saved to other bytes");
});
