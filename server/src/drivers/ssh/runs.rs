//! Runs that outlive the connection: each run's output goes to files on the remote machine as it runs, and
//! sandlink follows them by byte offset; after a drop it reconnects and resumes from the offsets it delivered, so
//! nothing is lost and nothing repeated. The exit code is a file written when the run ends.
//!
//! On the remote, a run's folder (`<state>/runs/<token>`) holds `out`, `err`, `pid` (its process group), `code`
//! and, for a run with stdin, the FIFO `in`. A detached wrapper (`setsid nohup`, outside the run's process group)
//! starts the run as a process group of its own, waits for it and writes `code`; a follower channel streams the
//! files with `tail -f`; a catch-up through the helper shell reads what the follower had not delivered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::connection::Connection;
use crate::drivers::process::signal_name;
use crate::drivers::shell::agent::Agent;
use crate::drivers::shell::{Chunk, Command, Transport};
use crate::drivers::{ExitStatus, Process, ProcessControl, Signal};
use crate::error::{Error, Result};

/// `$1` = run folder, `$2` = stdin (1/0), `$3` = directory, then `$4` = how many `NAME=value` follow, those, and
/// the command (`eval LINE` for a shell line, `exec PROGRAM ARGS…` for a program): starts it as a process group of
/// its own (recorded in `pid`) with its output appended to the files, waits, and writes its status to `code`. A shell
/// line is evaluated by the group's own shell, as `sh -c` would (one process less per run). Files are written with
/// one `echo` each and read only once not empty (`-s`), so no rename is needed. SIGHUP is ignored, as `nohup` would.
const WRAPPER: &str = r#"d=$1; input=$2; cwd=$3; shift 3
run=$RUN; unset RUN
trap '' HUP
if [ "$input" = 1 ]; then src="$d/in"; else src=/dev/null; fi
if ! cd "$cwd" 2>>"$d/err"; then echo 126 >"$d/code"; exit 0; fi
setsid /bin/sh -c "$run" sh "$d" "$@" <"$src" >>"$d/out" 2>>"$d/err" &
wait "$!"
echo "$?" >"$d/code""#;

/// The run's own shell, the leader of its process group: `$1` = run folder, `$2` = how many `NAME=value` follow,
/// those, then `eval LINE` or `exec PROGRAM ARGS…`.
const RUN: &str = r#"echo $$ >"$1/pid"; n=$2; shift 2
while [ "$n" -gt 0 ]; do export "$1"; shift; n=$((n - 1)); done
if [ "$1" = eval ]; then sandlink_line=$2; shift $#; unset n; eval "$sandlink_line"; else shift; exec "$@"; fi"#;

/// `$1` = run folder, `$2`/`$3` = stdout/stderr bytes already delivered, `$4` = 1 to start the run, `$5` = the
/// trailer's token (then, to start: `$6` = stdin 1/0, `$7` = directory, `$8` = `WRAPPER`, `$9` = `RUN`, and the
/// command as `WRAPPER` takes it): streams
/// the rest of `out` to stdout and of `err` to stderr until the run has ended, then ends stdout with a trailer
/// `__sandlink_end_TOKEN CODE OUT ERR` (the exit status, or `lost`, and the files' sizes), so that when the
/// follower delivered everything no further request is needed. Started by the session's remote login shell, which
/// sshd made a session leader, so the wrapper's `setsid` needs no fork and `wait` follows it.
///
/// A run that ends within 30 ms (a timer's USR1 interrupts the `wait`) is answered with its files as they are,
/// without starting the two `tail -f`, whose start and end cost more than a short run itself.
///
/// `$4` = 2 starts the run from the session's launcher shell (`LAUNCH`) instead of a channel of its own: after those
/// 30 ms it answers, without following, the trailer with the exit status, or `-` while the run goes on, and the files'
/// contents only when the run ended and they hold at most 1 MiB (else a catch-up reads them in pieces).
const FOLLOW: &str = r#"d=$1; o=$2; e=$3; launch=$4; token=$5
w=
trap : USR1
if [ "$launch" != 0 ]; then
  input=$6; cwd=$7; wrapper=$8; RUN=$9; export RUN; shift 9
  mkdir -p "$d" && cd "$d" || exit 125
  : >out; : >err
  if [ "$input" = 1 ]; then mkfifo in || exit 125; fi
  setsid /bin/sh -c "$wrapper" sandlink "$d" "$input" "$cwd" "$@" </dev/null >/dev/null 2>&1 &
  w=$!
  echo "$w" >wpid
  if [ "$input" = 1 ]; then exec 3<&0; cat <&3 >in & fi
  (sleep 0.03; kill -USR1 $$) </dev/null >/dev/null 2>&1 &
  wait "$w"
else
  cd "$d" || exit 125
fi
if [ "$launch" = 2 ]; then
  if [ -s code ]; then read -r c <code; else c=-; fi
  if [ -s out ] || [ -s err ]; then set -- $(wc -c out err); else set -- 0 out 0; fi
  if [ "$c" != - ] && [ $(($1 + $3)) -le 1048576 ]; then
    [ "$1" = 0 ] || cat out
    [ "$3" = 0 ] || cat err >&2
  fi
  printf '__sandlink_end_%s %s %s %s\n' "$token" "$c" "$1" "$3"
  exit 0
fi
if [ -s code ]; then
  [ ! -s out ] || tail -c +$((o + 1)) out
  [ ! -s err ] || tail -c +$((e + 1)) err >&2
else
  tail -c +$((o + 1)) -f out & a=$!
  tail -c +$((e + 1)) -f err >&2 & b=$!
  [ -z "$w" ] || wait "$w"
  read -r wp <wpid
  while [ ! -s code ] && kill -0 "$wp" 2>/dev/null; do sleep 0.05; done
  kill "$a" "$b" 2>/dev/null
  while kill -0 "$a" 2>/dev/null || kill -0 "$b" 2>/dev/null; do wait "$a" "$b" 2>/dev/null; done
fi
if [ -s code ]; then read -r c <code; else c=lost; fi
if [ -s out ] || [ -s err ]; then set -- $(wc -c out err); else set -- 0 out 0; fi
printf '__sandlink_end_%s %s %s %s\n' "$token" "$c" "$1" "$3"
exit 0"#;

/// Runs `FOLLOW` (`$1`) with the rest as its arguments, in the launcher shell's request subshell, which it replaces.
const LAUNCH: &str = r#"follow=$1; shift; exec /bin/sh -c "$follow" sandlink "$@""#;

/// `$1` = run folder, `$2`/`$3` = bytes delivered, `$4` = most bytes to send per stream: a line `CODE OUT ERR`
/// (CODE `-` while the run goes on, `lost` when its wrapper died without writing it; OUT, ERR the files' sizes), then the undelivered stdout and stderr, each cut
/// at `$4`. `gone` when the folder no longer exists.
const CATCH_UP: &str = r#"cd "$1" 2>/dev/null || { printf 'gone\n'; exit 0; }
if [ -s code ]; then read -r c <code
elif read -r wp <wpid 2>/dev/null && kill -0 "$wp" 2>/dev/null; then c=-
elif [ -s code ]; then read -r c <code
else c=lost; fi
so=$(($(wc -c <out))); se=$(($(wc -c <err)))
no=$((so - $2)); [ "$no" -le "$4" ] || no=$4
ne=$((se - $3)); [ "$ne" -le "$4" ] || ne=$4
printf '%s %s %s %s %s\n' "$c" "$so" "$se" "$no" "$ne"
[ "$no" -le 0 ] || tail -c +$(($2 + 1)) out | head -c "$no"
[ "$ne" -le 0 ] || tail -c +$(($3 + 1)) err | head -c "$ne""#;

/// `$1` = run folder, `$2` = signal, `$3` = `final` once the run is over (its folder is then removed).
const SIGNAL: &str = r#"n=0
while [ ! -s "$1/pid" ] && [ "$3" != final ] && [ -d "$1" ] && [ "$n" -lt 40 ]; do sleep 0.05; n=$((n + 1)); done
if read -r p <"$1/pid" 2>/dev/null && [ -n "$p" ]; then kill "-$2" "-$p" 2>/dev/null || kill "-$2" "$p" 2>/dev/null; fi
[ "$3" != final ] || rm -rf "$1"
exit 0"#;

/// Stands for `lost` in a catch-up: the wrapper died without writing the exit code.
const LOST: i64 = i64::MIN;
/// The most bytes of each stream one catch-up request carries.
const CATCH_UP_BYTES: u64 = 4 << 20;
/// Pipes between the follower and the engine's readers.
const PIPE_BYTES: usize = 1 << 20;

/// What a session's runs share.
pub struct Runs {
    pub connection: Arc<Connection>,
    pub transport: Arc<dyn Transport>,
    /// The helper shell for catch-ups and signals, apart from sync's so neither waits behind the other.
    pub helper: Arc<Agent>,
    /// The shell that starts runs without stdin: one request on a shell already open costs less than opening a
    /// channel (which is what `ssh host true` costs), so a short run ends before a channel could have opened.
    pub launcher: Arc<Agent>,
    /// `<state>/runs` on the remote.
    pub folder: String,
}

/// Where a run stands after a catch-up.
struct Standing {
    code: Option<i64>,
    out_total: u64,
    err_total: u64,
}

impl Runs {
    /// Starts `launch` with `env` added in `directory` and follows it.
    pub async fn start(
        self: &Arc<Self>,
        env: Vec<(String, String)>,
        launch: Launch,
        directory: String,
        stdin: bool,
    ) -> Result<Process> {
        let token = format!("run-{}", crate::ids::short_id());
        let folder = format!("{}/{token}", self.folder);
        let mut start = vec![if stdin { "1" } else { "0" }.to_string(), directory, WRAPPER.to_string(), RUN.to_string()];
        start.extend(command_with_environment(env, launch));
        let head = |mode: &str| vec![folder.clone(), "0".into(), "0".into(), mode.to_string(), token.clone()];
        let (output, follower_exit, input) = match stdin {
            // Input needs a channel whose stdin feeds the run's FIFO.
            true => {
                let channel = self.follower([head("1"), start].concat(), true).await?;
                (channel.output, channel.exit, Some(channel.input))
            }
            false => {
                let (output, exit) = self.launch(&folder, [head("2"), start].concat()).await?;
                (output, exit, None)
            }
        };
        let (stdout_reader, stdout_writer) = tokio::io::duplex(PIPE_BYTES);
        let (stderr_reader, stderr_writer) = tokio::io::duplex(PIPE_BYTES);
        let (exit_sender, exit_receiver) = tokio::sync::oneshot::channel();
        let signalled = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(AtomicBool::new(false));
        let runs = self.clone();
        let (task_folder, task_signalled, task_finished) = (folder.clone(), signalled.clone(), finished.clone());
        tokio::spawn(async move {
            let streams = Streams { stdout: stdout_writer, stderr: stderr_writer, out_sent: 0, err_sent: 0 };
            let status = runs.follow(task_folder, token, output, follower_exit, streams, task_signalled).await;
            task_finished.store(true, Ordering::SeqCst);
            let _ = exit_sender.send(status);
        });
        let exit = Box::pin(async move {
            exit_receiver.await.map_err(|_| Error::Internal("A run's follower ended without its exit.".into()))
        });
        let control = Arc::new(RunControl { helper: self.helper.clone(), folder, signalled, finished });
        Ok(Process { stdout: Box::pin(stdout_reader), stderr: Box::pin(stderr_reader), stdin: input, control, exit })
    }

    /// Starts a run through the launcher shell; answers what it printed as the first stretch of the run's output,
    /// which `follow` reads as it would a follower's (the trailer ends it, or says the run goes on). When the
    /// launcher failed, the run's folder tells whether it started: if so it is followed from its files, else it is
    /// started through a channel of its own, so a run never starts twice.
    async fn launch(
        &self,
        folder: &str,
        arguments: Vec<String>,
    ) -> Result<(crate::drivers::shell::OutputStream, futures::future::BoxFuture<'static, Result<i64>>)> {
        let done: futures::future::BoxFuture<'static, Result<i64>> = Box::pin(async { Ok(0) });
        let mut launched = vec![FOLLOW];
        launched.extend(arguments.iter().map(String::as_str));
        match self.launcher.run(LAUNCH, &launched, None).await {
            Ok(reply) => {
                let chunks = [Ok(Chunk::Stdout(reply.stdout.into())), Ok(Chunk::Stderr(reply.stderr.into()))];
                Ok((futures::stream::iter(chunks).boxed(), done))
            }
            Err(error) => {
                tracing::debug!(%error, "the launcher shell failed; looking whether the run started");
                let started = self.helper.run(r#"[ -d "$1" ] && echo started || echo absent"#, &[folder], None).await?;
                if String::from_utf8_lossy(&started.stdout).trim() == "started" {
                    return Ok((futures::stream::empty().boxed(), done));
                }
                let mut fallback = arguments;
                fallback[3] = "1".into();
                let channel = self.follower(fallback, false).await?;
                Ok((channel.output, channel.exit))
            }
        }
    }

    async fn follower(&self, arguments: Vec<String>, stdin: bool) -> Result<crate::drivers::shell::Channel> {
        let mut argv = vec!["/bin/sh".to_string(), "-c".to_string(), FOLLOW.to_string(), "sandlink".to_string()];
        argv.extend(arguments);
        self.transport.open(Command { argv, stdin, ..Command::default() }).await
    }

    /// Delivers the run's output until it has ended and everything it wrote is delivered; survives drops.
    async fn follow(
        &self,
        folder: String,
        token: String,
        mut output: crate::drivers::shell::OutputStream,
        mut exit: futures::future::BoxFuture<'static, Result<i64>>,
        mut streams: Streams,
        signalled: Arc<AtomicBool>,
    ) -> ExitStatus {
        let mut failures = 0u32;
        // No newline before it: output that ends with one must not be held back (the token makes the marker unique).
        let marker = format!("__sandlink_end_{token} ").into_bytes();
        loop {
            let mut trailer = Trailer::new(&marker);
            while let Some(chunk) = output.next().await {
                match chunk {
                    Ok(Chunk::Stdout(bytes)) => {
                        let deliver = trailer.feed(&bytes);
                        streams.out(&deliver).await;
                    }
                    Ok(Chunk::Stderr(bytes)) => streams.err(&bytes).await,
                    Err(error) => {
                        tracing::debug!(%error, "a run's follower broke off");
                        break;
                    }
                }
            }
            let _ = (&mut exit).await;
            let ended = trailer.end();
            streams.out(&ended.rest).await;
            // The common end: the follower saw the run end and delivered everything the files hold.
            if let Some((code, out_total, err_total)) = ended.trailer {
                if out_total == streams.out_sent && err_total == streams.err_sent {
                    return streams.finish(code, &signalled).await;
                }
            }
            // Otherwise (output still in the files, or the connection dropped) the files say where the run stands.
            let standing = loop {
                match self.catch_up(&folder, &mut streams).await {
                    Ok(Some(standing))
                        if standing.code.is_some()
                            && (standing.out_total > streams.out_sent || standing.err_total > streams.err_sent) =>
                    {
                        continue
                    }
                    Ok(Some(standing)) => break standing,
                    Ok(None) => {
                        return ExitStatus {
                            code: None,
                            signal: None,
                            message: Some("The run's files on the remote machine disappeared; its output and exit are lost.".into()),
                        }
                    }
                    Err(error) => {
                        failures += 1;
                        if let Some(status) = self.recover(failures, &error).await {
                            return status;
                        }
                    }
                }
            };
            if let Some(code) = standing.code {
                return streams.finish(code, &signalled).await;
            }
            // Still running: follow again from what was delivered.
            let arguments =
                vec![folder.clone(), streams.out_sent.to_string(), streams.err_sent.to_string(), "0".into(), token.clone()];
            match self.follower(arguments, false).await {
                Ok(channel) => {
                    failures = 0;
                    output = channel.output;
                    exit = channel.exit;
                }
                Err(error) => {
                    failures += 1;
                    if let Some(status) = self.recover(failures, &error).await {
                        return status;
                    }
                    output = futures::stream::empty().boxed();
                    exit = Box::pin(async { Ok(0) });
                }
            }
        }
    }

    /// After a failed request: reconnects (the connection backs off on its own); answers the run's end when the
    /// host stays unreachable.
    async fn recover(&self, failures: u32, error: &Error) -> Option<ExitStatus> {
        tracing::debug!(%error, failures, "following a run failed; reconnecting");
        let (_, generation) = self.connection.session().await;
        match self.connection.reconnect(generation).await {
            Ok(()) if failures < 20 => {
                tokio::time::sleep(Duration::from_millis(50 * u64::from(failures))).await;
                None
            }
            Ok(()) => Some(lost(error)),
            Err(reconnecting) => Some(lost(&reconnecting)),
        }
    }

    /// Delivers what the files hold beyond the offsets; `None` when the run's folder is gone.
    async fn catch_up(&self, folder: &str, streams: &mut Streams) -> Result<Option<Standing>> {
        let limit = CATCH_UP_BYTES.to_string();
        let arguments = [folder, &streams.out_sent.to_string(), &streams.err_sent.to_string(), &limit];
        let reply = self.helper.run(CATCH_UP, &arguments, None).await?;
        let text = &reply.stdout;
        let newline = text.iter().position(|byte| *byte == b'\n').ok_or_else(|| malformed(text))?;
        let head = String::from_utf8_lossy(&text[..newline]).to_string();
        if head == "gone" {
            return Ok(None);
        }
        let fields: Vec<&str> = head.split(' ').collect();
        let [code, out_total, err_total, out_count, err_count] = fields[..] else { return Err(malformed(text)) };
        let number = |field: &str| field.parse::<u64>().map_err(|_| malformed(text));
        let (out_count, err_count) = (number(out_count)? as usize, number(err_count)? as usize);
        let body = &text[newline + 1..];
        if body.len() != out_count + err_count {
            return Err(malformed(text));
        }
        streams.out(&body[..out_count]).await;
        streams.err(&body[out_count..]).await;
        let code = match code {
            "-" => None,
            "lost" => Some(LOST),
            code => Some(code.parse::<i64>().map_err(|_| malformed(text))?),
        };
        Ok(Some(Standing { code, out_total: number(out_total)?, err_total: number(err_total)? }))
    }
}

/// The engine's ends of a run's output, with how much of each was delivered.
struct Streams {
    stdout: tokio::io::DuplexStream,
    stderr: tokio::io::DuplexStream,
    out_sent: u64,
    err_sent: u64,
}

impl Streams {
    async fn out(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.out_sent += bytes.len() as u64;
            // The engine may have stopped reading (a cancelled view); the counts are what the remote sent.
            let _ = self.stdout.write_all(bytes).await;
        }
    }

    async fn err(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.err_sent += bytes.len() as u64;
            let _ = self.stderr.write_all(bytes).await;
        }
    }

    async fn finish(mut self, code: i64, signalled: &AtomicBool) -> ExitStatus {
        let _ = self.stdout.shutdown().await;
        let _ = self.stderr.shutdown().await;
        if code == LOST {
            return ExitStatus {
                code: None,
                signal: None,
                message: Some(
                    "The run's watcher on the remote machine was killed before the run ended, so its exit is unknown; \
                     its output up to then was delivered."
                        .into(),
                ),
            };
        }
        exit_status(code, signalled.load(Ordering::SeqCst))
    }
}

/// Finds the follower's trailer line at the end of its stdout, holding back only bytes that could begin it.
struct Trailer<'a> {
    marker: &'a [u8],
    held: Vec<u8>,
    /// Set once the marker was seen: what followed it so far.
    found: Option<Vec<u8>>,
}

/// What the follower's stdout held besides the output: the trailer's status and sizes, if it came.
struct TrailerEnd {
    rest: Vec<u8>,
    trailer: Option<(i64, u64, u64)>,
}

impl<'a> Trailer<'a> {
    fn new(marker: &'a [u8]) -> Self {
        Trailer { marker, held: Vec::new(), found: None }
    }

    /// Takes a piece of stdout; answers what is certainly output.
    fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        if let Some(found) = &mut self.found {
            found.extend_from_slice(bytes);
            return Vec::new();
        }
        self.held.extend_from_slice(bytes);
        if let Some(start) = self.held.windows(self.marker.len()).position(|window| window == self.marker) {
            self.found = Some(self.held[start + self.marker.len()..].to_vec());
            self.held.truncate(start);
            return std::mem::take(&mut self.held);
        }
        // Keep the longest end of what was held that is a beginning of the marker.
        let keep = (1..self.marker.len().min(self.held.len() + 1))
            .rev()
            .find(|length| self.held.ends_with(&self.marker[..*length]))
            .unwrap_or(0);
        let deliver = self.held.len() - keep;
        self.held.drain(..deliver).collect()
    }

    /// The stream ended: output still held, and the trailer when it was complete.
    fn end(self) -> TrailerEnd {
        let trailer = self.found.as_ref().and_then(|found| {
            let line = std::str::from_utf8(found).ok()?.strip_suffix('\n')?;
            let mut fields = line.split(' ');
            let code = match fields.next()? {
                "lost" => LOST,
                code => code.parse().ok()?,
            };
            Some((code, fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
        });
        TrailerEnd { rest: self.held, trailer }
    }
}

/// What a run starts: a shell line, or a program with its arguments (no shell parses them).
pub enum Launch {
    Line(String),
    Program(Vec<String>),
}

/// The wrapper's arguments after the directory: how many `NAME=value` `RUN` exports, those, and the command; names
/// that are not shell variable names go through `env` instead.
fn command_with_environment(env: Vec<(String, String)>, launch: Launch) -> Vec<String> {
    let is_name = |name: &str| {
        name.chars().next().is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
            && name.chars().all(|character| character.is_ascii_alphanumeric() || character == '_')
    };
    let assignments: Vec<String> = env.iter().map(|(name, value)| format!("{name}={value}")).collect();
    let mut command = Vec::new();
    if env.iter().all(|(name, _)| is_name(name)) {
        command.push(assignments.len().to_string());
        command.extend(assignments);
        match launch {
            Launch::Line(line) => command.extend(["eval".to_string(), line]),
            Launch::Program(argv) => {
                command.push("exec".to_string());
                command.extend(argv);
            }
        }
    } else {
        command.extend(["0".to_string(), "exec".to_string(), "env".to_string()]);
        command.extend(assignments);
        match launch {
            Launch::Line(line) => command.extend(["/bin/sh".to_string(), "-c".to_string(), line]),
            Launch::Program(argv) => command.extend(argv),
        }
    }
    command
}

fn malformed(text: &[u8]) -> Error {
    let shown = String::from_utf8_lossy(&text[..text.len().min(200)]).to_string();
    Error::Remote { status: None, message: format!("The state of a run on the remote machine could not be read: {shown:?}") }
}

fn lost(error: &Error) -> ExitStatus {
    ExitStatus {
        code: None,
        signal: None,
        message: Some(format!(
            "The connection to the remote machine was lost and could not be opened again ({error}); the run may still \
             be going on there."
        )),
    }
}

/// A run killed by signal N ends with status 128+N from the wrapper's `wait`; when sandlink sent it, say so.
fn exit_status(code: i64, signalled: bool) -> ExitStatus {
    if signalled && (129..=128 + 64).contains(&code) {
        return ExitStatus { code: None, signal: Some(signal_name((code - 128) as i32)), message: None };
    }
    ExitStatus { code: Some(code as i32), signal: None, message: None }
}

/// Signals a run's process group through the helper shell.
struct RunControl {
    helper: Arc<Agent>,
    folder: String,
    signalled: Arc<AtomicBool>,
    finished: Arc<AtomicBool>,
}

#[async_trait]
impl ProcessControl for RunControl {
    async fn signal(&self, signal: Signal) -> Result<()> {
        let name = match signal {
            Signal::Terminate => "TERM",
            Signal::Kill => "KILL",
        };
        if self.finished.load(Ordering::SeqCst) {
            // The engine's sweep after the run: what the run left in its group ends and its folder goes, in the
            // background, so the exit is reported at once.
            let (helper, folder) = (self.helper.clone(), self.folder.clone());
            tokio::spawn(async move {
                if let Err(error) = helper.run(SIGNAL, &[&folder, name, "final"], None).await {
                    tracing::debug!(%error, "could not sweep a finished run's processes");
                }
            });
            return Ok(());
        }
        self.signalled.store(true, Ordering::SeqCst);
        self.helper.run(SIGNAL, &[&self.folder, name, ""], None).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_should_be_found_across_pieces_and_never_eat_output() {
        let marker = b"__sandlink_end_run-1 ".to_vec();
        let mut trailer = Trailer::new(&marker);
        let mut output = Vec::new();
        for piece in [&b"hello\n__sand"[..], b"link_e", b"nd_run-1 0 6", b" 0\n"] {
            output.extend(trailer.feed(piece));
        }
        let end = trailer.end();
        output.extend(end.rest);
        assert_eq!(output, b"hello\n");
        assert_eq!(end.trailer, Some((0, 6, 0)));

        let mut lookalike = Trailer::new(&marker);
        let mut output = lookalike.feed(b"a\n__sandlink_end_run-2 x\n");
        assert_eq!(output, b"a\n__sandlink_end_run-2 x\n", "another run's marker is output, and a newline is not held");
        let end = lookalike.end();
        output.extend(end.rest);
        assert_eq!(end.trailer, None);
    }

    #[test]
    fn environment_should_be_exported_by_name_or_go_through_env() {
        let line = command_with_environment(vec![("A".into(), "b c".into())], Launch::Line("echo $A".into()));
        assert_eq!(line, ["1", "A=b c", "eval", "echo $A"]);
        let program = command_with_environment(vec![], Launch::Program(vec!["printf".into(), "%s".into()]));
        assert_eq!(program, ["0", "exec", "printf", "%s"]);
        let odd = command_with_environment(vec![("A-B".into(), "1".into())], Launch::Line("true".into()));
        assert_eq!(odd, ["0", "exec", "env", "A-B=1", "/bin/sh", "-c", "true"]);
    }
}
