//! Runs that outlive the connection: each run's output goes to files on the remote machine as it runs, and
//! sandlink follows them by byte offset; after a drop it reconnects and resumes from the offsets it delivered, so
//! nothing is lost and nothing repeated. The exit code is a file written when the run ends.
//!
//! On the remote, a run's files sit side by side in `<state>/runs` under its token (`<token>.out`, `.err`, `.pid`
//! (its process group), `.code`, `.wpid` and, for a run with stdin, the FIFO `.in`), so starting a run creates no
//! folder (a `mkdir` is a process). A wrapper (a background subshell of the starting shell, HUP ignored as `nohup`
//! would, its standard streams on /dev/null so no channel holds it) starts the run as a process group of its own,
//! waits for it and writes `code`; a follower channel streams the files with `tail -f`; a catch-up through the
//! helper shell reads what the follower had not delivered.

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

/// The run's own shell, the leader of its process group: `$1` = the run's files' prefix, `$2` = how many
/// `NAME=value` follow, those, then `eval LINE` or `exec PROGRAM ARGS…`. A shell line is evaluated by this shell, as
/// `sh -c` would (one process less per run).
const RUN: &str = r#"echo $$ >"$1.pid"; n=$2; shift 2
while [ "$n" -gt 0 ]; do export "$1"; shift; n=$((n - 1)); done
if [ "$1" = eval ]; then sandlink_line=$2; shift $#; unset n; eval "$sandlink_line"; else shift; exec "$@"; fi"#;

/// `$1` = the run's files' prefix (`<state>/runs/<token>`), `$2`/`$3` = stdout/stderr bytes already delivered,
/// `$4` = 1 to start the run, `$5` = the trailer's token (then, to start: `$6` = stdin 1/0, `$7` = directory, `$8` =
/// `RUN`, `$9` = how the first 30 ms are timed (`usr1` or `chld`, below), and the command as `RUN` takes it): streams
/// the rest of `out` to stdout and of `err` to stderr until the run has ended, then ends stdout with a trailer
/// `__sandlink_end_TOKEN CODE OUT ERR` (the exit status, or `lost`, and the files' sizes), so that when the
/// follower delivered everything no further request is needed. The run's `setsid` needs no fork: the wrapper is not
/// a process group leader.
///
/// A run that ends within 30 ms is answered with its files as they are, without starting the two `tail -f`, whose
/// start and end cost more than a short run itself. The wait for the wrapper is cut at 30 ms by a `sleep`: `usr1`
/// (a shell of its own, where `$$` is this shell) has the sleep's subshell send USR1; `chld` (a subshell of the
/// launcher, where `$$` names the launcher) traps CHLD, so the sleep's own end interrupts the `wait` as POSIX says
/// a trapped signal does: one process less, and no `$$` needed.
///
/// `$4` = 2 starts the run from the session's launcher shell instead of a channel of its own: after those 30 ms it
/// answers, without following, the trailer with the exit status, or `-` while the run goes on, and the files'
/// contents only when the run ended and they hold at most 1 MiB (else a catch-up reads them in pieces).
const FOLLOW: &str = r#"d=$1; o=$2; e=$3; launch=$4; token=$5
w=
if [ "$launch" != 0 ]; then
  input=$6; cwd=$7; run=$8; timer=$9; shift 9
  { : >"$d.out"; } 2>/dev/null || mkdir -p "${d%/*}" || exit 125
  : >"$d.err" || exit 125
  if [ "$input" = 1 ]; then mkfifo "$d.in" || exit 125; fi
  (
    trap '' HUP
    if [ "$input" = 1 ]; then src="$d.in"; else src=/dev/null; fi
    if ! cd "$cwd" 2>>"$d.err"; then echo 126 >"$d.code"; exit 0; fi
    setsid /bin/sh -c "$run" sh "$d" "$@" <"$src" >>"$d.out" 2>>"$d.err" &
    wait "$!"
    echo "$?" >"$d.code"
  ) </dev/null >/dev/null 2>&1 &
  w=$!
  echo "$w" >"$d.wpid"
  if [ "$input" = 1 ]; then exec 3<&0; cat <&3 >"$d.in" & fi
  if [ "$timer" = chld ]; then
    trap : CHLD
    sleep 0.03 </dev/null >/dev/null 2>&1 &
  else
    trap : USR1
    (sleep 0.03; kill -USR1 $$) </dev/null >/dev/null 2>&1 &
  fi
  wait "$w"
  trap - CHLD
fi
if [ "$launch" = 2 ]; then
  if [ -s "$d.code" ]; then read -r c <"$d.code"; else c=-; fi
  if [ -s "$d.out" ] || [ -s "$d.err" ]; then set -- $(wc -c "$d.out" "$d.err"); else set -- 0 out 0; fi
  if [ "$c" != - ] && [ $(($1 + $3)) -le 1048576 ]; then
    [ "$1" = 0 ] || cat "$d.out"
    [ "$3" = 0 ] || cat "$d.err" >&2
  fi
  printf '__sandlink_end_%s %s %s %s\n' "$token" "$c" "$1" "$3"
  exit 0
fi
if [ -s "$d.code" ]; then
  [ ! -s "$d.out" ] || tail -c +$((o + 1)) "$d.out"
  [ ! -s "$d.err" ] || tail -c +$((e + 1)) "$d.err" >&2
else
  tail -c +$((o + 1)) -f "$d.out" & a=$!
  tail -c +$((e + 1)) -f "$d.err" >&2 & b=$!
  [ -z "$w" ] || wait "$w"
  read -r wp <"$d.wpid"
  while [ ! -s "$d.code" ] && kill -0 "$wp" 2>/dev/null; do sleep 0.05; done
  kill "$a" "$b" 2>/dev/null
  while kill -0 "$a" 2>/dev/null || kill -0 "$b" 2>/dev/null; do wait "$a" "$b" 2>/dev/null; done
fi
if [ -s "$d.code" ]; then read -r c <"$d.code"; else c=lost; fi
if [ -s "$d.out" ] || [ -s "$d.err" ]; then set -- $(wc -c "$d.out" "$d.err"); else set -- 0 out 0; fi
printf '__sandlink_end_%s %s %s %s\n' "$token" "$c" "$1" "$3"
exit 0"#;

/// Runs `FOLLOW` (`$1`) with the rest as its arguments in a shell of its own, replacing the launcher's request
/// subshell: for a launcher whose shell does not let a trapped CHLD cut a `wait` short (`usr1` needs `$$`).
const LAUNCH: &str = r#"follow=$1; shift; exec /bin/sh -c "$follow" sandlink "$@""#;

/// Answers `chld` when a trapped CHLD interrupts `wait` in this shell (POSIX shells: dash, busybox, bash as `sh`),
/// else `usr1`; at most 0.3 s, once per launcher shell, off the runs' path.
const TIMER_CHECK: &str = r#"trap : CHLD
sleep 0.3 </dev/null >/dev/null 2>&1 & s=$!
sleep 0 </dev/null >/dev/null 2>&1 &
wait "$s"; r=$?
kill "$s" 2>/dev/null
if [ "$r" -gt 128 ]; then echo chld; else echo usr1; fi"#;

/// `$1` = the run's files' prefix, `$2`/`$3` = bytes delivered, `$4` = most bytes to send per stream: a line
/// `CODE OUT ERR` (CODE `-` while the run goes on, `lost` when its wrapper died without writing it; OUT, ERR the
/// files' sizes), then the undelivered stdout and stderr, each cut at `$4`. `gone` when the files no longer exist.
const CATCH_UP: &str = r#"[ -e "$1.out" ] || { printf 'gone\n'; exit 0; }
if [ -s "$1.code" ]; then read -r c <"$1.code"
elif read -r wp <"$1.wpid" 2>/dev/null && kill -0 "$wp" 2>/dev/null; then c=-
elif [ -s "$1.code" ]; then read -r c <"$1.code"
else c=lost; fi
so=$(($(wc -c <"$1.out"))); se=$(($(wc -c <"$1.err")))
no=$((so - $2)); [ "$no" -le "$4" ] || no=$4
ne=$((se - $3)); [ "$ne" -le "$4" ] || ne=$4
printf '%s %s %s %s %s\n' "$c" "$so" "$se" "$no" "$ne"
[ "$no" -le 0 ] || tail -c +$(($2 + 1)) "$1.out" | head -c "$no"
[ "$ne" -le 0 ] || tail -c +$(($3 + 1)) "$1.err" | head -c "$ne""#;

/// `$1` = the run's files' prefix, `$2` = signal: signals the run's process group (waiting up to 2 s for it to be
/// recorded).
const SIGNAL: &str = r#"n=0
while [ ! -s "$1.pid" ] && [ -e "$1.out" ] && [ "$n" -lt 40 ]; do sleep 0.05; n=$((n + 1)); done
if read -r p <"$1.pid" 2>/dev/null && [ -n "$p" ]; then kill "-$2" "-$p" 2>/dev/null || kill "-$2" "$p" 2>/dev/null; fi
exit 0"#;

/// `$1` = signal, then the prefixes of finished runs: signals what is left of each run's group (the engine's sweep
/// after every run) and removes their files, with one `rm` for all.
const SWEEP: &str = r#"signal=$1; shift
for prefix in "$@"; do
  shift
  if read -r p <"$prefix.pid" 2>/dev/null && [ -n "$p" ]; then kill "-$signal" "-$p" 2>/dev/null; fi
  set -- "$@" "$prefix.out" "$prefix.err" "$prefix.pid" "$prefix.code" "$prefix.wpid" "$prefix.in"
done
rm -f "$@"
exit 0"#;

/// How long a finished run's sweep waits for those of runs that end meanwhile. Not at once, also because a process
/// the run started may be half-way out of its group (a `setsid` child not yet past its exec, as a detached run's
/// start is): a sweep at the run's very end would kill it.
const SWEEP_DELAY: Duration = Duration::from_millis(100);

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
    /// A second launcher for a run that starts while the first is busy (a port probe or another run within its
    /// 30 ms), so that one does not wait for the other; its shell opens when first needed.
    pub spare_launcher: Arc<Agent>,
    /// Set while the first launcher is starting a run.
    pub launching: AtomicBool,
    /// `<state>/runs` on the remote.
    pub folder: String,
    /// Set once the launcher's shell was seen to let a trapped CHLD cut a `wait` short: runs then start in the
    /// launcher's request subshell itself (`FOLLOW`'s `chld` timer) instead of a shell exec'd for them (`LAUNCH`).
    pub chld_timer: AtomicBool,
    /// Finished runs whose files wait for the next sweep, with the sweep's signal; one helper request removes the
    /// files of all runs that end within `SWEEP_DELAY` of each other.
    pub unswept: std::sync::Mutex<Vec<(String, &'static str)>>,
    /// Set while a sweep is waiting or under way.
    pub sweeping: AtomicBool,
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
        let timer = if !stdin && self.chld_timer.load(Ordering::SeqCst) { "chld" } else { "usr1" };
        let mut start = vec![if stdin { "1" } else { "0" }.to_string(), directory, RUN.to_string(), timer.to_string()];
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
        let control = Arc::new(RunControl { runs: self.clone(), folder, signalled, finished });
        Ok(Process { stdout: Box::pin(stdout_reader), stderr: Box::pin(stderr_reader), stdin: input, control, exit })
    }

    /// Queues a finished run's files for the next sweep, starting one unless one is waiting.
    fn sweep_later(self: &Arc<Self>, prefix: String, signal: &'static str) {
        crate::locks::lock(&self.unswept).push((prefix, signal));
        if self.sweeping.swap(true, Ordering::SeqCst) {
            return;
        }
        let runs = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_DELAY).await;
                let batch = std::mem::take(&mut *crate::locks::lock(&runs.unswept));
                for signal in ["KILL", "TERM"] {
                    let mut arguments = vec![signal];
                    arguments.extend(batch.iter().filter(|(_, wanted)| *wanted == signal).map(|(prefix, _)| prefix.as_str()));
                    if arguments.len() > 1 {
                        if let Err(error) = runs.helper.run(SWEEP, &arguments, None).await {
                            tracing::debug!(%error, "could not sweep finished runs' processes and files");
                        }
                    }
                }
                runs.sweeping.store(false, Ordering::SeqCst);
                // A run that finished while this sweep ran found it under way: sweep again for it.
                if crate::locks::lock(&runs.unswept).is_empty() || runs.sweeping.swap(true, Ordering::SeqCst) {
                    return;
                }
            }
        });
    }

    /// Opens the launcher's shell ahead of the first run and learns which timer its shell allows.
    pub async fn prepare_launcher(&self) {
        match self.launcher.run(TIMER_CHECK, &[], None).await {
            Ok(reply) => {
                let chld = String::from_utf8_lossy(&reply.stdout).trim() == "chld";
                self.chld_timer.store(chld, Ordering::SeqCst);
            }
            Err(error) => tracing::debug!(%error, "the launcher shell did not start ahead of the first run"),
        }
    }

    /// Starts a run through the launcher shell; answers what it printed as the first stretch of the run's output,
    /// which `follow` reads as it would a follower's (the trailer ends it, or says the run goes on). When the
    /// launcher failed, the run's files tell whether it started: if so it is followed from its files, else it is
    /// started through a channel of its own, so a run never starts twice.
    async fn launch(
        &self,
        folder: &str,
        arguments: Vec<String>,
    ) -> Result<(crate::drivers::shell::OutputStream, futures::future::BoxFuture<'static, Result<i64>>)> {
        let done: futures::future::BoxFuture<'static, Result<i64>> = Box::pin(async { Ok(0) });
        let arguments_only: Vec<&str> = arguments.iter().map(String::as_str).collect();
        let mut launched = vec![FOLLOW];
        launched.extend(arguments_only.iter().copied());
        let spare = self.launching.swap(true, Ordering::SeqCst);
        let (launcher, busy) = match spare {
            true => (&self.spare_launcher, None),
            false => (&self.launcher, Some(Busy(&self.launching))),
        };
        let reply = match arguments.get(8).map(String::as_str) {
            Some("chld") => launcher.run(FOLLOW, &arguments_only, None).await,
            _ => launcher.run(LAUNCH, &launched, None).await,
        };
        drop(busy);
        match reply {
            Ok(reply) => {
                let chunks = [Ok(Chunk::Stdout(reply.stdout.into())), Ok(Chunk::Stderr(reply.stderr.into()))];
                Ok((futures::stream::iter(chunks).boxed(), done))
            }
            Err(error) => {
                tracing::debug!(%error, "the launcher shell failed; looking whether the run started");
                let started = self.helper.run(r#"[ -e "$1.out" ] && echo started || echo absent"#, &[folder], None).await?;
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

    /// Delivers what the files hold beyond the offsets; `None` when the run's files are gone.
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

/// Marks the first launcher busy while it lives, also when the launch is dropped half-way.
struct Busy<'a>(&'a AtomicBool);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
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
    runs: Arc<Runs>,
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
            // The engine's sweep after the run: what the run left in its group ends and its files go, together
            // with those of other runs that end about now, in the background, so the exit is reported at once.
            self.runs.sweep_later(self.folder.clone(), name);
            return Ok(());
        }
        self.signalled.store(true, Ordering::SeqCst);
        self.runs.helper.run(SIGNAL, &[&self.folder, name], None).await.map(|_| ())
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
