//! Fuzzes the sync tar readers on hostile archives: `unpack_atomically` (the sandbox side of an upload) and
//! `stage` + `place` (the workspace side of a download). Neither may panic, write outside its root (a sentinel
//! directory beside the root, reachable through links in the root, must stay unchanged) or leave temporary files.
//!
//! Input: when it starts with `raw\n`, the rest is the archive as is; otherwise each line is one entry,
//! `type<TAB>name<TAB>link<TAB>content`, with `type` one tar type byte (`0` file, `2` symlink, `5` dir, `1`
//! hard link, `L` GNU long name, `x` pax, ...), so names and links can be any bytes and checksums stay valid.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandlink::sync::beneath::Beneath;
use sandlink::sync::transfer;
use sandlink_fuzz::{append_raw, finish_archive, lines, Layout, RawEntry};

fuzz_target!(|data: &[u8]| {
    let archive = match data.strip_prefix(b"raw\n") {
        Some(raw) => raw.to_vec(),
        None => build(data),
    };
    unpack_upload(&archive);
    stage_and_place_download(&archive);
});

fn build(data: &[u8]) -> Vec<u8> {
    let mut archive = Vec::new();
    for (index, fields) in lines(data).enumerate().take(64) {
        let Some(kind) = fields.first().and_then(|field| field.first()) else { continue };
        let name = fields.get(1).copied().unwrap_or_default();
        let link = fields.get(2).copied().unwrap_or_default();
        let content = fields.get(3).copied().unwrap_or_default();
        let mode = if index % 3 == 0 { 0o755 } else { 0o644 };
        append_raw(&mut archive, &RawEntry { name, entry_type: *kind, link, mode, mtime: 1_700_000_000 + index as u64, content });
    }
    finish_archive(&mut archive);
    archive
}

fn unpack_upload(archive: &[u8]) {
    let layout = Layout::new();
    let before = layout.outside_state();
    let _ = transfer::unpack_atomically(archive, &layout.root, &layout.staging);
    assert_eq!(before, layout.outside_state(), "an upload changed something outside the sandbox root");
    assert_no_leftovers(&layout);
}

fn stage_and_place_download(archive: &[u8]) {
    let layout = Layout::new();
    let before = layout.outside_state();
    if let (Ok(staged), Ok(mut beneath)) = (transfer::stage(archive, &layout.staging), Beneath::open(&layout.root)) {
        for entry in staged {
            // The session stops at the first failure too; later entries must not be written through what it left.
            if transfer::place(&mut beneath, entry).is_err() {
                break;
            }
        }
    }
    assert_eq!(before, layout.outside_state(), "a download changed something outside the workspace");
    assert_no_leftovers(&layout);
}

/// Every temporary file is either renamed into place or removed, whatever the archive held.
fn assert_no_leftovers(layout: &Layout) {
    let left: Vec<_> = std::fs::read_dir(&layout.staging)
        .map(|entries| entries.flatten().map(|entry| entry.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "temporary files were left in staging: {left:?}");
}
