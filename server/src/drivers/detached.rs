//! Detached runs: a run that lives in its sandbox without sandlink, writing its output to files read by byte offset.
//!
//! A run's folder holds `out` and `err` (appended to as the run writes), `pid` (its process group, inside the
//! sandbox), `wpid` (its wrapper), `code` (its exit status, written once it ended) and `limit` (present when the
//! wrapper stopped it at its time limit). Anything that can read those files at an offset can follow the run after
//! a dropped stream, a server that died or an editor that restarted, with nothing lost and nothing repeated.
//!
//! Every driver with a POSIX shell gets this through `Sandbox::exec` (`start_with_shell`, `read_with_shell`); a
//! driver whose files are on this machine reads them directly (`read_host_folder`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::{ExecSpec, Sandbox};
use crate::error::{Error, Result};

/// The longest a detached run lives when its run gives no `timeoutMs`: nothing outlives it, even with no server.
pub const DEFAULT_LIMIT: Duration = Duration::from_secs(3600);

/// The most bytes of each stream one read carries.
pub const READ_BYTES: u64 = 4 << 20;

/// `$1` = run folder, `$2` = time limit in seconds, `$3` = directory, `$4` = `RUN`, then `RUN`'s arguments: starts
/// the run as a process group of its own with its output appended to the files, stops its group at the limit
/// (SIGTERM, then SIGKILL two seconds later, noting `limit`), waits, and writes its status to `code`. SIGHUP is
/// ignored, as `nohup` would, and nothing is written to whatever started it, which may be gone (the shell reports a
/// job killed by a signal, and a closed pipe would kill the wrapper before it wrote `code`).
pub const WRAPPER: &str = r#"d=$1; limit=$2; cwd=$3; run=$4; shift 4
exec </dev/null >/dev/null 2>&1
trap '' HUP
if ! cd "$cwd" 2>>"$d/err"; then echo 126 >"$d/code"; exit 0; fi
setsid sh -c "$run" sh "$d" "$@" </dev/null >>"$d/out" 2>>"$d/err" &
p=$!
(
  trap 'kill "$s" 2>/dev/null; exit 0' TERM
  sleep "$limit" & s=$!
  wait "$s"
  if [ ! -s "$d/code" ]; then echo 1 >"$d/limit"; kill -TERM -"$p" 2>/dev/null; sleep 2; kill -KILL -"$p" 2>/dev/null; fi
) </dev/null >/dev/null 2>&1 &
watchdog=$!
wait "$p"
c=$?
kill "$watchdog" 2>/dev/null
echo "$c" >"$d/code""#;

/// The run's own shell, the leader of its process group: `$1` = run folder, `$2` = how many `NAME=value` follow,
/// those, then `eval LINE` or `exec PROGRAM ARGS…`.
pub const RUN: &str = r#"echo $$ >"$1/pid"; n=$2; shift 2
while [ "$n" -gt 0 ]; do export "$1"; shift; n=$((n - 1)); done
if [ "$1" = eval ]; then sandlink_line=$2; shift $#; unset n; eval "$sandlink_line"; else shift; exec "$@"; fi"#;

/// `$1` = run id, `$2` = `WRAPPER`, then the wrapper's arguments after the folder: creates the run's folder in a
/// directory of the user's own under `/tmp` (several users may share a machine), starts the wrapper in a session of
/// its own, outside whatever started this script, and answers `started FOLDER`.
const START: &str = r#"d=/tmp/.sandlink-runs-$(id -u)/$1; w=$2; shift 2
mkdir -p "$d" && chmod 700 "${d%/*}" && : >"$d/out" && : >"$d/err" || exit 125
setsid sh -c "$w" sandlink "$d" "$@" </dev/null >/dev/null 2>&1 &
echo "$!" >"$d/wpid"
echo "started $d""#;

/// `$1` = run folder, `$2`/`$3` = stdout/stderr bytes already delivered, `$4` = most bytes to send per stream: a
/// line `CODE OUT ERR NOUT NERR LIMITED` (CODE `-` while the run goes on, `lost` when its wrapper died without
/// writing it; OUT, ERR the files' sizes; NOUT, NERR what follows), then the undelivered stdout and stderr, each cut
/// at `$4`. `gone` when the folder no longer exists. The code is read before the sizes, so once it is there the
/// sizes are final.
pub const CATCH_UP: &str = r#"cd "$1" 2>/dev/null || { printf 'gone\n'; exit 0; }
if [ -s code ]; then read -r c <code
elif read -r wp <wpid 2>/dev/null && kill -0 "$wp" 2>/dev/null; then c=-
elif [ -s code ]; then read -r c <code
else c=lost; fi
if [ -e limit ]; then t=1; else t=0; fi
so=$(($(wc -c <out))); se=$(($(wc -c <err)))
no=$((so - $2)); [ "$no" -le "$4" ] || no=$4; [ "$no" -ge 0 ] || no=0
ne=$((se - $3)); [ "$ne" -le "$4" ] || ne=$4; [ "$ne" -ge 0 ] || ne=0
printf '%s %s %s %s %s %s\n' "$c" "$so" "$se" "$no" "$ne" "$t"
[ "$no" -le 0 ] || tail -c +$(($2 + 1)) out | head -c "$no"
[ "$ne" -le 0 ] || tail -c +$(($3 + 1)) err | head -c "$ne""#;

/// `$1` = run folder, `$2` = signal: signals the run's process group.
const SIGNAL: &str = r#"if read -r p <"$1/pid" 2>/dev/null && [ -n "$p" ]; then kill "-$2" "-$p" 2>/dev/null || kill "-$2" "$p" 2>/dev/null; fi
exit 0"#;

/// What a detached run is started with.
#[derive(Debug, Clone)]
pub struct DetachedSpec {
    /// The run's id, which names its folder.
    pub run_id: String,
    pub exec: ExecSpec,
    /// The hard limit the wrapper enforces on its own.
    pub limit: Duration,
}

/// Where a started detached run's files are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DetachedStart {
    /// The run's folder as the sandbox sees it.
    pub folder: String,
    /// The same folder on this machine, for drivers whose sandbox files are here (local).
    pub host_folder: Option<std::path::PathBuf>,
}

/// How a detached run ended, as its files say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending {
    /// The wrapper's status (128+N for signal N); `None` when the wrapper died without writing it.
    pub code: Option<i64>,
    /// The wrapper stopped the run at its time limit.
    pub limited: bool,
}

/// One read of a detached run's files beyond the offsets given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Piece {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The files' sizes when read.
    pub stdout_total: u64,
    pub stderr_total: u64,
    /// Set once the run has ended; the sizes are then final.
    pub ending: Option<Ending>,
}

/// What a run's shell gets after `RUN`: how many `NAME=value` follow, those, and the command; names that are not
/// shell variable names go through `env` instead.
pub fn command_with_environment(env: &BTreeMap<String, String>, command: &str, args: Option<&[String]>) -> Vec<String> {
    let is_name = |name: &str| {
        name.chars().next().is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
            && name.chars().all(|character| character.is_ascii_alphanumeric() || character == '_')
    };
    let assignments: Vec<String> = env.iter().map(|(name, value)| format!("{name}={value}")).collect();
    let mut words = Vec::new();
    if env.keys().all(|name| is_name(name)) {
        words.push(assignments.len().to_string());
        words.extend(assignments);
        match args {
            None => words.extend(["eval".to_string(), command.to_string()]),
            Some(args) => {
                words.extend(["exec".to_string(), command.to_string()]);
                words.extend(args.iter().cloned());
            }
        }
    } else {
        words.extend(["0".to_string(), "exec".to_string(), "env".to_string()]);
        words.extend(assignments);
        match args {
            None => words.extend(["/bin/sh".to_string(), "-c".to_string(), command.to_string()]),
            Some(args) => {
                words.push(command.to_string());
                words.extend(args.iter().cloned());
            }
        }
    }
    words
}

/// The wrapper's arguments after the folder, for a run in `directory` (absolute, inside the sandbox).
pub fn wrapper_arguments(spec: &DetachedSpec, directory: &str) -> Vec<String> {
    let mut arguments = vec![spec.limit.as_secs().max(1).to_string(), directory.to_string(), RUN.to_string()];
    arguments.extend(command_with_environment(&spec.exec.env, &spec.exec.command, spec.exec.args.as_deref()));
    arguments
}

/// Starts a detached run through `Sandbox::exec` of a POSIX shell.
pub async fn start_with_shell<S: Sandbox + ?Sized>(sandbox: &S, spec: DetachedSpec) -> Result<DetachedStart> {
    // `START` runs where the run should (the driver maps `cwd` onto its sandbox), and the wrapper stays there. The
    // folder is outside the session's root, so sync never sees it.
    let mut arguments = vec![spec.run_id.clone(), WRAPPER.to_string()];
    arguments.extend(wrapper_arguments(&spec, "."));
    let reply = run_script(sandbox, START, arguments, spec.exec.cwd.clone()).await?;
    let reply = String::from_utf8_lossy(&reply);
    match reply.trim_end().strip_prefix("started /") {
        Some(folder) => Ok(DetachedStart { folder: format!("/{folder}"), host_folder: None }),
        None => Err(Error::Remote { status: None, message: format!("The detached run could not start in the sandbox: {reply}") }),
    }
}

/// Reads a detached run's files through `Sandbox::exec`; `None` when its folder is gone.
pub async fn read_with_shell<S: Sandbox + ?Sized>(
    sandbox: &S,
    folder: &str,
    stdout_from: u64,
    stderr_from: u64,
    limit: u64,
) -> Result<Option<Piece>> {
    let arguments = vec![folder.to_string(), stdout_from.to_string(), stderr_from.to_string(), limit.to_string()];
    let reply = run_script(sandbox, CATCH_UP, arguments, None).await?;
    parse_catch_up(&reply)
}

/// Signals a detached run's process group through `Sandbox::exec` (`TERM` or `KILL`).
pub async fn signal_with_shell<S: Sandbox + ?Sized>(sandbox: &S, folder: &str, signal: &str) -> Result<()> {
    run_script(sandbox, SIGNAL, vec![folder.to_string(), signal.to_string()], None).await.map(|_| ())
}

/// Runs a script with `/bin/sh -c` and answers its whole stdout; a run that did not end normally is an error.
async fn run_script<S: Sandbox + ?Sized>(
    sandbox: &S,
    script: &str,
    arguments: Vec<String>,
    cwd: Option<String>,
) -> Result<Vec<u8>> {
    let mut args = vec!["-c".to_string(), script.to_string(), "sandlink".to_string()];
    args.extend(arguments);
    let mut process = sandbox
        .exec(ExecSpec {
            // By name: some sandboxes resolve absolute programs in a root of their own (Vercel's does).
            command: "sh".into(),
            args: Some(args),
            cwd,
            env: BTreeMap::new(),
            stdin: false,
            timeout: Some(Duration::from_secs(60)),
            pty: None,
        })
        .await?;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let (read_out, read_err) =
        tokio::join!(process.stdout.read_to_end(&mut stdout), process.stderr.read_to_end(&mut stderr));
    let status = process.exit.await?;
    read_out.map_err(|error| Error::io("Could not read a detached run's state", error))?;
    read_err.map_err(|error| Error::io("Could not read a detached run's state", error))?;
    if status.code != Some(0) || status.message.is_some() {
        return Err(Error::Remote {
            status: None,
            message: format!(
                "Reading a detached run's state in the sandbox failed ({}): {}",
                status.message.unwrap_or_else(|| format!("exit {:?}", status.code)),
                String::from_utf8_lossy(&stderr[..stderr.len().min(300)])
            ),
        });
    }
    Ok(stdout)
}

/// Reads the reply of `CATCH_UP`; a reply cut short (a dropped stream) is an error, so the caller reads again.
pub fn parse_catch_up(text: &[u8]) -> Result<Option<Piece>> {
    let malformed = || {
        let shown = String::from_utf8_lossy(&text[..text.len().min(200)]).to_string();
        Error::Remote { status: None, message: format!("The state of a detached run could not be read: {shown:?}") }
    };
    let newline = text.iter().position(|byte| *byte == b'\n').ok_or_else(malformed)?;
    let head = String::from_utf8_lossy(&text[..newline]).to_string();
    if head == "gone" {
        return Ok(None);
    }
    let fields: Vec<&str> = head.split(' ').collect();
    let [code, out_total, err_total, out_count, err_count, limited] = fields[..] else { return Err(malformed()) };
    let number = |field: &str| field.parse::<u64>().map_err(|_| malformed());
    let (out_count, err_count) = (number(out_count)? as usize, number(err_count)? as usize);
    let body = &text[newline + 1..];
    if body.len() != out_count + err_count {
        return Err(malformed());
    }
    let ending = match code {
        "-" => None,
        "lost" => Some(Ending { code: None, limited: limited == "1" }),
        code => Some(Ending { code: Some(code.parse::<i64>().map_err(|_| malformed())?), limited: limited == "1" }),
    };
    Ok(Some(Piece {
        stdout: body[..out_count].to_vec(),
        stderr: body[out_count..].to_vec(),
        stdout_total: number(out_total)?,
        stderr_total: number(err_total)?,
        ending,
    }))
}

/// Reads a detached run's folder on this machine (the local driver's); `alive` says whether whatever writes the
/// `code` is still there when it is missing. Blocking: call it off the runtime.
pub fn read_host_folder(folder: &Path, stdout_from: u64, stderr_from: u64, limit: u64, alive: impl Fn() -> bool) -> Result<Option<Piece>> {
    if !folder.is_dir() {
        return Ok(None);
    }
    let read_code = || -> Option<i64> {
        let text = std::fs::read_to_string(folder.join("code")).ok()?;
        text.trim().parse().ok()
    };
    // The code before the sizes: once it is there, the sizes are final.
    let ending = match read_code() {
        Some(code) => Some(Ending { code: Some(code), limited: folder.join("limit").exists() }),
        None if alive() => None,
        None => match read_code() {
            Some(code) => Some(Ending { code: Some(code), limited: folder.join("limit").exists() }),
            None => Some(Ending { code: None, limited: folder.join("limit").exists() }),
        },
    };
    let read_from = |name: &str, from: u64| -> Result<(Vec<u8>, u64)> {
        use std::io::{Read, Seek};
        let path = folder.join(name);
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(error) => return Err(Error::io(format!("Could not read {}", path.display()), error)),
        };
        let total = file.metadata().map(|metadata| metadata.len()).unwrap_or(0);
        let count = total.saturating_sub(from).min(limit);
        let mut bytes = Vec::with_capacity(count as usize);
        if count > 0 {
            file.seek(std::io::SeekFrom::Start(from)).map_err(|error| Error::io(format!("Could not read {}", path.display()), error))?;
            file.take(count)
                .read_to_end(&mut bytes)
                .map_err(|error| Error::io(format!("Could not read {}", path.display()), error))?;
        }
        Ok((bytes, total))
    };
    let (stdout, stdout_total) = read_from("out", stdout_from)?;
    let (stderr, stderr_total) = read_from("err", stderr_from)?;
    Ok(Some(Piece { stdout, stderr, stdout_total, stderr_total, ending }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catch_up_cut_short_should_be_an_error_and_a_whole_one_should_parse() {
        let whole = b"0 5 1 3 1 0\nabcE".to_vec();
        let piece = parse_catch_up(&whole).expect("parses").expect("present");
        assert_eq!(piece.stdout, b"abc");
        assert_eq!(piece.stderr, b"E");
        assert_eq!((piece.stdout_total, piece.stderr_total), (5, 1));
        assert_eq!(piece.ending, Some(Ending { code: Some(0), limited: false }));
        assert!(parse_catch_up(b"0 5 1 3 1 0\nab").is_err(), "a body shorter than announced is a drop");
        assert!(parse_catch_up(b"- 5 1").is_err(), "a header cut short is a drop");
        assert_eq!(parse_catch_up(b"gone\n").expect("parses"), None);
        let running = parse_catch_up(b"- 0 0 0 0 0\n").expect("parses").expect("present");
        assert_eq!(running.ending, None);
        let lost = parse_catch_up(b"lost 0 0 0 0 1\n").expect("parses").expect("present");
        assert_eq!(lost.ending, Some(Ending { code: None, limited: true }));
    }

    #[test]
    fn environment_should_be_exported_by_name_or_go_through_env() {
        let env = BTreeMap::from([("A".to_string(), "b c".to_string())]);
        assert_eq!(command_with_environment(&env, "echo $A", None), ["1", "A=b c", "eval", "echo $A"]);
        let program = command_with_environment(&BTreeMap::new(), "printf", Some(&["%s".to_string()]));
        assert_eq!(program, ["0", "exec", "printf", "%s"]);
        let odd = BTreeMap::from([("A-B".to_string(), "1".to_string())]);
        assert_eq!(command_with_environment(&odd, "true", None), ["0", "exec", "env", "A-B=1", "/bin/sh", "-c", "true"]);
    }

    #[test]
    fn the_host_folder_should_be_read_from_the_offsets_and_say_lost_when_nothing_writes_the_code() {
        let folder = tempfile::tempdir().expect("a temporary folder");
        std::fs::write(folder.path().join("out"), b"0123456789").expect("written");
        std::fs::write(folder.path().join("err"), b"").expect("written");
        let piece = read_host_folder(folder.path(), 4, 0, 3, || true).expect("reads").expect("present");
        assert_eq!((piece.stdout.as_slice(), piece.stdout_total, piece.ending), (&b"456"[..], 10, None));
        let lost = read_host_folder(folder.path(), 10, 0, 3, || false).expect("reads").expect("present");
        assert_eq!(lost.ending, Some(Ending { code: None, limited: false }));
        std::fs::write(folder.path().join("code"), b"3\n").expect("written");
        let ended = read_host_folder(folder.path(), 10, 0, 3, || false).expect("reads").expect("present");
        assert_eq!(ended.ending, Some(Ending { code: Some(3), limited: false }));
        assert_eq!(read_host_folder(&folder.path().join("nope"), 0, 0, 3, || true).expect("reads"), None);
    }
}
