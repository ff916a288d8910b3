//! The listing parser: GNU find's and busybox stat's output (from `scripts::LIST` and `scripts::STAT`) as sync's
//! remote entries.

use crate::error::{Error, Result};
use crate::sync::{EntryKind, RemoteEntry};

/// Parses the output of `scripts::LIST` (and `scripts::STAT`). Names are bytes: anything but NUL (and `/`) may be in
/// one, newlines included, so neither format splits on newlines. A name (or link target) that is not UTF-8 is kept
/// as an entry marked `unsyncable`, to be reported on its own.
pub fn parse_listing(output: &[u8]) -> Result<Vec<RemoteEntry>> {
    let newline = output.iter().position(|byte| *byte == b'\n').ok_or_else(|| malformed("no format line"))?;
    let (format, body) = (&output[..newline], &output[newline + 1..]);
    let mut entries = match format {
        b"gnu" => parse_gnu(body)?,
        b"busybox" => parse_busybox(body)?,
        _ => return Err(malformed("unknown format line")),
    };
    entries.sort_by(|left, right| left.path.cmp(&right.path));
    Ok(entries)
}

fn malformed(what: &str) -> Error {
    Error::Remote { status: None, message: format!("The remote listing is malformed: {what}.") }
}

/// GNU find's `%y %s %T@ %m %i %C@ %P\0%l\0` records: times to the nanosecond, with the inode.
fn parse_gnu(body: &[u8]) -> Result<Vec<RemoteEntry>> {
    let mut entries = Vec::new();
    let mut fields = body.split(|byte| *byte == 0);
    while let Some(record) = fields.next() {
        if record.is_empty() {
            break;
        }
        let link = fields.next().ok_or_else(|| malformed("a record lacks its link field"))?;
        let mut parts = record.splitn(7, |byte| *byte == b' ');
        let (Some(kind), Some(size), Some(time), Some(mode), Some(inode), Some(change), Some(path)) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("a record has too few fields"));
        };
        let kind = match kind {
            b"f" => EntryKind::File,
            b"d" => EntryKind::Dir,
            b"l" => EntryKind::Symlink,
            _ => continue,
        };
        // `LIST` names entries relative to the root; `STAT` names them `./path`.
        let path = path.strip_prefix(b"./").unwrap_or(path);
        let stamp = Stamp {
            size: number(size, "a size")?,
            mtime_ns: parse_seconds_to_ns(ascii(time, "a time")?).ok_or_else(|| malformed("a time is not a number"))?,
            subsecond: true,
            inode: number(inode, "an inode")?,
            ctime_ns: parse_seconds_to_ns(ascii(change, "a time")?).ok_or_else(|| malformed("a time is not a number"))?,
            mode: u32::from_str_radix(ascii(mode, "a mode")?, 8).map_err(|_| malformed("a mode is not octal"))?,
        };
        entries.push(entry_from_bytes(path, kind, stamp, (kind == EntryKind::Symlink).then_some(link)));
    }
    Ok(entries)
}

/// busybox `stat -c '%f %s %Y %y %i %Z %z %n//%N'` records, each ended by a newline. `%n` never holds `//` (find
/// prints normalised paths), so it ends there; `%N` repeats the name, and for a link adds ` -> ` and the target, whose
/// length is the link's size: the record's end is known without looking for a newline a name could hold.
///
/// `%Y` and `%Z` are whole seconds; `%y` and `%z` (`2026-12-05 22:28:48.930696258 +0000`) add the nanoseconds, which
/// are taken from them (the seconds stay `%Y`'s and `%Z`'s, so no time zone is read). Busybox builds that print
/// zeros there, and file systems that keep whole seconds, show a status-change time of exactly a second, which the
/// kernel otherwise practically never gives: such entries are taken as whole-second ones. Without sub-second times,
/// every file uploaded within the last seconds would have to be fetched again on its next save to rule out a write
/// in the same second.
fn parse_busybox(body: &[u8]) -> Result<Vec<RemoteEntry>> {
    let mut entries = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let field = |rest: &mut &[u8], what: &str| -> Result<String> {
            let end = rest.iter().position(|byte| *byte == b' ').ok_or_else(|| malformed(what))?;
            let text = ascii(&rest[..end], what)?.to_string();
            *rest = &rest[end + 1..];
            Ok(text)
        };
        let raw_mode = u32::from_str_radix(&field(&mut rest, "a mode")?, 16).map_err(|_| malformed("a mode is not hex"))?;
        let size: u64 = field(&mut rest, "a size")?.parse().map_err(|_| malformed("a size is not a number"))?;
        let seconds: i128 = field(&mut rest, "a time")?.parse().map_err(|_| malformed("a time is not a number"))?;
        let modified_fraction = human_time_fraction(&mut rest, |rest| field(rest, "a time"))?;
        let inode: u64 = field(&mut rest, "an inode")?.parse().map_err(|_| malformed("an inode is not a number"))?;
        let change: i128 = field(&mut rest, "a time")?.parse().map_err(|_| malformed("a time is not a number"))?;
        let change_fraction = human_time_fraction(&mut rest, |rest| field(rest, "a time"))?;
        let subsecond = change_fraction != 0;
        let name_end = rest.windows(2).position(|pair| pair == b"//").ok_or_else(|| malformed("a record lacks its name"))?;
        let name = &rest[..name_end];
        rest = &rest[name_end + 2..];
        let kind = match raw_mode & 0o170000 {
            0o100000 => Some(EntryKind::File),
            0o040000 => Some(EntryKind::Dir),
            0o120000 => Some(EntryKind::Symlink),
            _ => None,
        };
        let mut target = None;
        if kind == Some(EntryKind::Symlink) {
            // `'NAME' -> 'TARGET'` (busybox quotes links' names), or unquoted in builds that do not.
            let quoted = rest.first() == Some(&b'\'');
            let skip = if quoted { 1 + name.len() + 6 } else { name.len() + 4 };
            let end = skip + size as usize;
            if rest.len() < end + usize::from(quoted) + 1 {
                return Err(malformed("a link record is cut short"));
            }
            target = Some(&rest[skip..end]);
            rest = &rest[end + usize::from(quoted)..];
        } else {
            if !rest.starts_with(name) {
                return Err(malformed("a record's two names differ"));
            }
            rest = &rest[name.len()..];
        }
        rest = rest.strip_prefix(b"\n").ok_or_else(|| malformed("a record does not end where its sizes say"))?;
        let Some(kind) = kind else { continue };
        let path = name.strip_prefix(b"./").unwrap_or(name);
        let stamp = Stamp {
            size,
            mtime_ns: seconds * 1_000_000_000 + modified_fraction,
            subsecond,
            inode,
            ctime_ns: change * 1_000_000_000 + change_fraction,
            mode: raw_mode & 0o7777,
        };
        entries.push(entry_from_bytes(path, kind, stamp, target));
    }
    Ok(entries)
}

/// The nanoseconds of busybox's `%y`/`%z` (`DATE HH:MM:SS.NNNNNNNNN ZONE`, three fields read with `field`); 0 when
/// the build prints no fraction.
fn human_time_fraction(rest: &mut &[u8], mut field: impl FnMut(&mut &[u8]) -> Result<String>) -> Result<i128> {
    let _date = field(rest)?;
    let time = field(rest)?;
    let _zone = field(rest)?;
    let Some((_, digits)) = time.split_once('.') else { return Ok(0) };
    if digits.len() != 9 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(malformed("a time's fraction is not nine digits"));
    }
    digits.parse().map_err(|_| malformed("a time's fraction is not a number"))
}

/// What a listing record says of an entry besides its name, kind and link target.
struct Stamp {
    size: u64,
    mtime_ns: i128,
    subsecond: bool,
    inode: u64,
    ctime_ns: i128,
    mode: u32,
}

/// A listing entry from a name and link target as bytes; one that is not UTF-8 is marked as unable to sync.
fn entry_from_bytes(path: &[u8], kind: EntryKind, stamp: Stamp, target: Option<&[u8]>) -> RemoteEntry {
    let mut unsyncable = None;
    let path = String::from_utf8(path.to_vec()).unwrap_or_else(|_| {
        unsyncable = Some(crate::sync::scan::NOT_UTF8.to_string());
        String::from_utf8_lossy(path).into_owned()
    });
    let link_target = target.map(|target| {
        String::from_utf8(target.to_vec()).unwrap_or_else(|_| {
            unsyncable.get_or_insert_with(|| "its symlink target is not valid UTF-8, which sandlink cannot carry".to_string());
            String::from_utf8_lossy(target).into_owned()
        })
    });
    RemoteEntry {
        path,
        kind,
        size: stamp.size,
        mtime_ns: stamp.mtime_ns,
        subsecond: stamp.subsecond,
        inode: Some(stamp.inode),
        ctime_ns: Some(stamp.ctime_ns),
        mode: stamp.mode,
        link_target,
        unsyncable,
    }
}

fn ascii<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|_| malformed(&format!("{what} is not text")))
}

fn number(bytes: &[u8], what: &str) -> Result<u64> {
    ascii(bytes, what)?.parse().map_err(|_| malformed(&format!("{what} is not a number")))
}

/// `1700000000.123456789` (GNU find's `%T@`) in nanoseconds, rounded down.
fn parse_seconds_to_ns(text: &str) -> Option<i128> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let seconds: i128 = whole.parse().ok()?;
    let mut digits: String = fraction.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nanos: i128 = digits.parse().ok()?;
    Some(seconds * 1_000_000_000 + nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::shell::scripts;

    #[test]
    fn listing_should_parse_busybox_output() {
        let output = format!(
            "busybox\n41ed 4096 1795435397 {at} 11 1795435398 {later} ./a//./a\n\
             81a4 3 1795435397 {at} 12 1795435399 {later} ./a/f//./a/f\n\
             a1ff 1 1795435397 {whole} 13 1795435397 {whole} ./a/l//'./a/l' -> 'f'\n",
            at = "2026-11-24 12:03:17.250000000 +0000",
            later = "2026-11-24 12:03:19.000000007 +0100",
            whole = "2026-11-24 12:03:17.000000000 +0000",
        );
        let entries = parse_listing(output.as_bytes()).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].path, "a");
        assert_eq!(entries[0].kind, EntryKind::Dir);
        assert_eq!(entries[1].mode, 0o644);
        assert_eq!(entries[1].mtime_ns, 1_795_435_397_250_000_000, "the seconds of %Y, the fraction of %y");
        assert_eq!((entries[1].inode, entries[1].ctime_ns), (Some(12), Some(1_795_435_399_000_000_007)));
        assert!(entries[1].subsecond, "a status-change time off the whole second shows nanoseconds");
        assert!(!entries[2].subsecond, "one on it reads as whole seconds");
        assert_eq!(entries[2].link_target.as_deref(), Some("f"));
        assert_eq!(entries[2].path, "a/l");
    }

    #[test]
    fn busybox_listing_should_keep_newlines_backslashes_and_arrows_in_names() {
        let mut output = b"busybox\n".to_vec();
        // Older busybox builds print no fraction in `%y` and `%z`.
        let record = |stamp: &str, name: &[u8]| {
            let (head, tail) = stamp.split_once('|').unwrap();
            let at = "2026-11-24 12:03:17 +0000";
            [format!("{head} {at} {tail} {at} ").as_bytes(), name].concat()
        };
        output.extend(record("81a4 1 1795435397|1 1795435397", b"./a\nb//./a\nb\n"));
        output.extend(record("81a4 2 1795435397|2 1795435397", b"./c\\d//./c\\d\n"));
        output.extend(record("a1ff 10 1795435397|3 1795435397", b"./l' -> 'x//'./l' -> 'x' -> 'to\n81a4 1 '\n"));
        output.extend(record("81a4 3 1795435397|4 1795435397", b"./\xff//./\xff\n"));
        let entries = parse_listing(&output).unwrap();
        let paths: Vec<&str> = entries.iter().map(|entry| entry.path.as_str()).collect();
        assert_eq!(paths, ["a\nb", "c\\d", "l' -> 'x", "\u{fffd}"]);
        assert_eq!(entries[2].link_target.as_deref(), Some("to\n81a4 1 "));
        assert!(entries[..3].iter().all(|entry| entry.unsyncable.is_none()));
        assert!(entries[3].unsyncable.is_some(), "a name that is not UTF-8 is marked, not dropped");
        assert!(entries.iter().all(|entry| !entry.subsecond && entry.mtime_ns == 1_795_435_397_000_000_000));
    }

    /// Runs `LIST` with busybox's own `find` and `stat` when this machine has busybox (the docker tests run it in a
    /// container either way).
    #[test]
    fn busybox_list_script_should_round_trip_odd_names() {
        let Ok(busybox) = which_busybox() else { return };
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("a\nb"), "1").unwrap();
        std::fs::write(root.path().join("c\\d"), "22").unwrap();
        std::os::unix::fs::symlink("a\nb", root.path().join("l")).unwrap();
        // busybox find has no `-printf`, so the script takes its busybox branch.
        let script = scripts::LIST.replace("find ", &format!("{busybox} find ")).replace("stat ", &format!("{busybox} stat "));
        let output = std::process::Command::new("sh").args(["-c", &script, "list", root.path().to_str().unwrap()]).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let entries = parse_listing(&output.stdout).unwrap();
        let paths: Vec<&str> = entries.iter().map(|entry| entry.path.as_str()).collect();
        assert_eq!(paths, ["a\nb", "c\\d", "l"]);
        assert_eq!(entries[2].link_target.as_deref(), Some("a\nb"));
        // Times to the nanosecond, as the file system keeps them.
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::symlink_metadata(root.path().join("c\\d")).unwrap();
        assert_eq!(entries[1].mtime_ns, metadata.mtime() as i128 * 1_000_000_000 + metadata.mtime_nsec() as i128);
        assert_eq!(entries[1].ctime_ns, Some(metadata.ctime() as i128 * 1_000_000_000 + metadata.ctime_nsec() as i128));
        assert_eq!(entries[1].subsecond, metadata.ctime_nsec() != 0);
    }

    fn which_busybox() -> std::result::Result<String, ()> {
        let output = std::process::Command::new("sh").args(["-c", "command -v busybox"]).output().map_err(|_| ())?;
        let path = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if path.is_empty() { Err(()) } else { Ok(path) }
    }

    #[test]
    fn listing_should_parse_gnu_output() {
        let output = b"gnu\nd 4096 1700000000.5 755 7 1700000000.5 a\0\0f 3 1700000000.123456789123 644 8 1700000001.25 a/with space\0\0l 1 1 777 9 1 a/l\0f\0";
        let entries = parse_listing(output).unwrap();
        assert_eq!(entries[1].path, "a/l");
        assert_eq!(entries[1].link_target.as_deref(), Some("f"));
        assert_eq!(entries[2].path, "a/with space");
        assert_eq!(entries[2].mtime_ns, 1_700_000_000_123_456_789);
        assert_eq!(entries[0].mtime_ns, 1_700_000_000_500_000_000);
        assert_eq!(entries[2].inode, Some(8));
        assert_eq!(entries[2].ctime_ns, Some(1_700_000_001_250_000_000));
        assert!(entries[2].subsecond);
    }

    /// Runs `STAT` with this machine's shell and GNU find (containers with busybox are covered by the docker tests).
    #[test]
    fn stat_script_should_report_existing_paths_in_the_listing_format() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("a")).unwrap();
        std::fs::write(root.path().join("a/with space"), "abc").unwrap();
        std::os::unix::fs::symlink("with space", root.path().join("a/l")).unwrap();
        let output = std::process::Command::new("sh")
            .args(["-c", scripts::STAT, "stat", root.path().to_str().unwrap(), "a/with space", "missing", "a/l", "-x"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let mut entries = parse_listing(&output.stdout).unwrap();
        entries.sort_by(|left, right| left.path.cmp(&right.path));
        let paths: Vec<&str> = entries.iter().map(|entry| entry.path.as_str()).collect();
        assert_eq!(paths, ["a/l", "a/with space"]);
        assert_eq!(entries[0].link_target.as_deref(), Some("with space"));
        assert_eq!((entries[1].kind, entries[1].size), (EntryKind::File, 3));
    }
}
