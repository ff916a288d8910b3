//! The stdio transport around tower-lsp: checked frames in, bad frames answered here, one writer owns stdout.
//!
//! tower-lsp-server's `Server` reads its input with a `FramedRead` that stops for good after the first frame its codec
//! cannot decode, so one malformed message used to end sandlink. It also takes any `AsyncRead`/`AsyncWrite`, which
//! makes wrapping it cheap: stdin goes through [`super::framing::FrameDecoder`], and only frames tower-lsp's codec is
//! known to accept are re-framed into an in-memory pipe that the `Server` reads. A frame that is refused gets its
//! JSON-RPC error from here. tower-lsp writes into a second pipe; one writer task cuts that stream at frame
//! boundaries and interleaves the refusals between whole frames, so nothing ever interleaves on stdout.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tower_lsp_server::jsonrpc::{Request, Response};
use tower_lsp_server::{ClientSocket, Server};

use super::framing::{encode_frame, FrameDecoder};

/// Bytes each in-memory pipe buffers; tower-lsp reads and writes whole frames through them.
const PIPE_BYTES: usize = 1 << 20;
/// Bytes read from stdin at a time.
const READ_BYTES: usize = 64 * 1024;
/// Refusals waiting for the writer; a client that floods garbage waits here like any slow reader.
const REFUSAL_QUEUE: usize = 64;
/// After the input ended, how long requests still in flight may take to answer before the server stops anyway.
const DRAIN_AFTER_INPUT_END: Duration = Duration::from_secs(5);
/// How many requests tower-lsp may serve at once. Requests that wait on a process or a provider (input, sync,
/// connect, extend, snapshot, restore) must never keep the others waiting, so there is no practical limit: a
/// waiting request costs a few hundred bytes and polls nothing while it waits.
const CONCURRENT_REQUESTS: usize = usize::MAX;

/// Serves `service` on `input`/`output` until the client sends `exit` or closes `input`. When the input ends,
/// `on_input_end` runs while the server can still send (so runs report their exit), then the server stops.
pub async fn serve<I, O, S, E>(input: I, output: O, service: S, socket: ClientSocket, on_input_end: E)
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
    S: tower_service::Service<Request, Response = Option<Response>> + Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send,
    E: Future<Output = ()>,
{
    let (to_server, server_input) = tokio::io::duplex(PIPE_BYTES);
    let (server_output, from_server) = tokio::io::duplex(PIPE_BYTES);
    let (refusals, refusals_received) = mpsc::channel::<Vec<u8>>(REFUSAL_QUEUE);

    let server = Server::new(server_input, server_output, socket).concurrency_level(CONCURRENT_REQUESTS).serve(service);
    let server_and_writer = async {
        tokio::join!(server, write_output(from_server, refusals_received, output));
    };
    let reader = async {
        let mut to_server = to_server;
        read_input(input, &mut to_server, refusals).await;
        on_input_end.await;
        // tower-lsp sees the end of its input only now, after the runs had their say.
        drop(to_server);
    };
    tokio::pin!(server_and_writer);
    tokio::pin!(reader);
    match futures::future::select(reader, server_and_writer).await {
        futures::future::Either::Left(((), server_and_writer)) => {
            if tokio::time::timeout(DRAIN_AFTER_INPUT_END, server_and_writer).await.is_err() {
                tracing::warn!("requests were still in flight when the client closed its side; stopping anyway");
            }
        }
        // `exit`: tower-lsp stopped; stdin may stay open (some clients never close it), so stop reading.
        futures::future::Either::Right(((), _reader)) => {}
    }
}

/// Reads stdin through the decoder until it ends or tower-lsp stops reading; good frames go to tower-lsp, refusals
/// to the writer.
async fn read_input<I: AsyncRead + Unpin>(mut input: I, to_server: &mut DuplexStream, refusals: mpsc::Sender<Vec<u8>>) {
    let mut decoder = FrameDecoder::new();
    let mut buffer = vec![0u8; READ_BYTES];
    loop {
        let count = match input.read(&mut buffer).await {
            Ok(0) => break,
            Ok(count) => count,
            Err(error) => {
                tracing::warn!(%error, "could not read from the client; treating it as the end of input");
                break;
            }
        };
        decoder.push(&buffer[..count]);
        while let Some(outcome) = decoder.next_frame() {
            match outcome {
                Ok(frame) => {
                    let header = format!("Content-Length: {}\r\n\r\n", frame.body.len());
                    let forwarded = async {
                        to_server.write_all(header.as_bytes()).await?;
                        to_server.write_all(&frame.body).await
                    };
                    if forwarded.await.is_err() {
                        // tower-lsp stopped reading: it received `exit`.
                        return;
                    }
                    if is_exit_notification(&frame.body) {
                        // Many clients keep stdin open after `exit` and wait for the process to end: the input is
                        // over, so end it here, which lets tower-lsp and the writer finish.
                        return;
                    }
                }
                Err(refused) => {
                    tracing::warn!(id = ?refused.id, code = refused.code, "refused a message: {}", refused.message);
                    let Some(answer) = refused.response() else { continue };
                    match serde_json::to_vec(&answer) {
                        Ok(body) => {
                            if refusals.send(encode_frame(&body)).await.is_err() {
                                return;
                            }
                        }
                        Err(error) => tracing::error!(%error, "could not encode the answer to a refused message"),
                    }
                }
            }
        }
    }
    if decoder.buffered_len() > 0 {
        tracing::warn!(bytes = decoder.buffered_len(), "the client closed its side in the middle of a message");
    }
}

/// Whether a frame is the `exit` notification, after which nothing more is read.
fn is_exit_notification(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Method<'a> {
        #[serde(borrow)]
        method: Option<std::borrow::Cow<'a, str>>,
        id: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Method>(body).is_ok_and(|message| message.id.is_none() && message.method.as_deref() == Some("exit"))
}

/// The only writer of stdout: whole frames from tower-lsp and whole refusals, never a partial frame of either.
async fn write_output<O: AsyncWrite + Unpin>(
    mut from_server: DuplexStream,
    mut refusals: mpsc::Receiver<Vec<u8>>,
    mut output: O,
) {
    let mut pending = Vec::with_capacity(READ_BYTES);
    let mut chunk = vec![0u8; READ_BYTES];
    let mut refusals_open = true;
    loop {
        tokio::select! {
            read = from_server.read(&mut chunk) => {
                let count = match read {
                    Ok(0) | Err(_) => break,
                    Ok(count) => count,
                };
                pending.extend_from_slice(&chunk[..count]);
                let whole = whole_frames_len(&pending);
                if whole > 0 {
                    if output.write_all(&pending[..whole]).await.is_err() || output.flush().await.is_err() {
                        return;
                    }
                    pending.drain(..whole);
                }
            }
            refusal = refusals.recv(), if refusals_open => match refusal {
                Some(frame) => {
                    if output.write_all(&frame).await.is_err() || output.flush().await.is_err() {
                        return;
                    }
                }
                None => refusals_open = false,
            },
        }
    }
    // tower-lsp is done; refusals already queued still go out.
    while let Ok(frame) = refusals.try_recv() {
        if output.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = output.flush().await;
}

/// How many leading bytes of tower-lsp's output are whole frames. tower-lsp always writes
/// `Content-Length: N\r\n\r\n` and the body, so this needs no defensive parsing.
fn whole_frames_len(bytes: &[u8]) -> usize {
    let mut end = 0;
    loop {
        let rest = &bytes[end..];
        let Some(blank) = rest.windows(4).position(|window| window == b"\r\n\r\n") else { return end };
        let length = std::str::from_utf8(&rest[..blank])
            .ok()
            .and_then(|header| {
                header.lines().find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.trim().eq_ignore_ascii_case("Content-Length").then(|| value.trim().parse::<usize>().ok())?
                })
            });
        let Some(length) = length else {
            // Not possible from tower-lsp's encoder; pass the bytes on rather than hold stdout forever.
            tracing::error!("tower-lsp wrote a frame without Content-Length");
            return bytes.len();
        };
        let frame_end = blank + 4 + length;
        if rest.len() < frame_end {
            return end;
        }
        end += frame_end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_frames_should_be_released() {
        let frames = [encode_frame(b"{\"a\":1}"), encode_frame(b"{\"b\":22}")].concat();
        assert_eq!(whole_frames_len(&frames), frames.len());
        assert_eq!(whole_frames_len(&frames[..frames.len() - 1]), encode_frame(b"{\"a\":1}").len());
        assert_eq!(whole_frames_len(&frames[..5]), 0);
    }
}
