//! The command line's side: one request, its progress, its answer.

use std::io::{self, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use super::SocketAddrPath;
use super::protocol::{
    ControlError, ControlReply, ControlRequest, Line, REPLY_BYTES_MAX, read_line,
};

/// How long the daemon may take to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the daemon may take to read the request line.
const REQUEST_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why [`call`] got no `ok` answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing listens on the socket (no socket file, or a stale one): no
    /// daemon serves the volume, so the caller may open it itself.
    #[error("no daemon serves this volume (nothing listens on {})", path.display())]
    NotServed {
        /// The control socket's path.
        path: PathBuf,
    },
    /// The daemon answered with an error.
    #[error("the daemon refused: {0}")]
    Refused(ControlError),
    /// Connecting, sending or receiving failed (including timeouts).
    #[error("control socket {}: {source}", path.display())]
    Transport {
        /// The control socket's path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The daemon's answer broke the protocol (bad JSON, no final line).
    #[error("control socket {}: {message}", path.display())]
    Protocol {
        /// The control socket's path.
        path: PathBuf,
        /// What was wrong with the answer.
        message: String,
    },
}

/// Sends `request` to the daemon listening on `socket_path` and waits for
/// its answer, passing each progress value to `on_progress` as it comes.
///
/// Connecting times out after a few seconds; once the request is sent there
/// is no time limit (a compaction takes as long as it takes, and sends
/// progress meanwhile).
pub fn call(
    socket_path: &Path,
    request: &ControlRequest,
    on_progress: &mut dyn FnMut(&Value),
) -> Result<Value, CallError> {
    let transport = |source: io::Error| CallError::Transport {
        path: socket_path.to_owned(),
        source,
    };
    let protocol = |message: String| CallError::Protocol {
        path: socket_path.to_owned(),
        message,
    };
    let stream = connect(socket_path)?;
    stream
        .set_write_timeout(Some(REQUEST_WRITE_TIMEOUT))
        .map_err(transport)?;
    let mut line = serde_json::to_vec(request).map_err(|e| protocol(e.to_string()))?;
    line.push(b'\n');
    // If the daemon refuses early (e.g. an oversize request) the write
    // fails, but its error line is still there to read.
    let sent = (&stream).write_all(&line);
    let mut reader = BufReader::new(&stream);
    loop {
        let line = match read_line(&mut reader, REPLY_BYTES_MAX) {
            Ok(Line::Text(line)) => line,
            Ok(Line::TooLong) => {
                return Err(protocol(format!(
                    "answer line longer than {REPLY_BYTES_MAX} bytes"
                )));
            }
            Ok(Line::Eof) => {
                return Err(match sent {
                    Err(e) => transport(e),
                    Ok(()) => protocol("the daemon closed the connection without an answer".into()),
                });
            }
            Err(e) => return Err(transport(e)),
        };
        match serde_json::from_slice(&line) {
            Ok(ControlReply::Progress(value)) => on_progress(&value),
            Ok(ControlReply::Ok(value)) => return Ok(value),
            Ok(ControlReply::Error(error)) => return Err(CallError::Refused(error)),
            Err(e) => return Err(protocol(format!("invalid answer line: {e}"))),
        }
    }
}

/// Connects within [`CONNECT_TIMEOUT`]. A UNIX `connect` blocks only while
/// the daemon's accept backlog is full, so it runs on a helper thread that
/// is abandoned (and ends with the process) if the daemon never accepts.
fn connect(socket_path: &Path) -> Result<UnixStream, CallError> {
    let transport = |source: io::Error| CallError::Transport {
        path: socket_path.to_owned(),
        source,
    };
    let address = SocketAddrPath::new(socket_path).map_err(transport)?;
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("control-connect".to_owned())
        .spawn(move || {
            let _ = tx.send(UnixStream::connect(address.path()));
        })
        .map_err(transport)?;
    match rx.recv_timeout(CONNECT_TIMEOUT) {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e))
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Err(CallError::NotServed {
                path: socket_path.to_owned(),
            })
        }
        Ok(Err(e)) => Err(transport(e)),
        Err(_) => Err(transport(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the daemon did not accept the connection within {CONNECT_TIMEOUT:?}"),
        ))),
    }
}
