//! Fuzzes the listening-ports probe's parser (`engine::ports::parse`) on arbitrary text: it never panics, the ports
//! it says the sandbox's processes hold are among those it says listen, and every port it reports is the local port
//! of a LISTEN (`0A`) line of the TCP tables in its input, never one it made up. Attribution is claimed only when the
//! descriptor listing names a socket.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandlink::engine::ports::parse;

const SEPARATOR: &str = "---sandlink-tcp---";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Some(listening) = parse(&text) else { return };
    let (descriptors, tables) = text.split_once(SEPARATOR).expect("a parsed listing has the separator");
    assert!(listening.owned.is_subset(&listening.all), "owned {:?} is not within all {:?}", listening.owned, listening.all);
    if listening.attributable {
        assert!(descriptors.contains("socket:["), "attributable without a socket in the descriptor listing");
    } else {
        assert!(listening.owned.is_empty(), "owned ports without any socket seen: {:?}", listening.owned);
    }
    for port in &listening.all {
        let listed = tables.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 9 && fields[3] == "0A" && fields[1].rsplit_once(':').is_some_and(|(_, hex)| u16::from_str_radix(hex, 16) == Ok(*port))
        });
        assert!(listed, "port {port} is in no LISTEN line of the input");
    }
    assert_eq!(parse(&text), Some(listening), "parsing the same text twice differs");
});
