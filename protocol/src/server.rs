//! The agent side of a control connection: hello, then a request loop.

use std::io::{Read, Write};

use crate::frame::{read_frame_bytes, write_frame, ProtocolError};
use crate::messages::{AgentError, ErrorKind, Request, RequestFrame, Response, ResponseFrame};
use crate::version::{handshake, Role, PROTOCOL_VERSION};

/// Why [`serve`] returned without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeEnd {
    /// The host closed the connection.
    PeerClosed,
    /// A `Shutdown` was handled and acknowledged: the caller powers off now.
    Shutdown,
}

/// Serves one control connection until the host closes it or a `Shutdown` succeeds.
///
/// `Ping` and `Version` are answered here; every other request goes to `handler`, whose
/// error becomes the response (the agent never leaves a request unanswered). A request that
/// does not decode gets an `InvalidArgument` response and the loop goes on (the framing is
/// still intact); framing or I/O errors end the connection with an error.
///
/// Call it on its own thread per connection: `Wait` blocks inside `handler`.
pub fn serve<S, H>(
    stream: &mut S,
    agent_version: &str,
    mut handler: H,
) -> Result<ServeEnd, ProtocolError>
where
    S: Read + Write + ?Sized,
    H: FnMut(Request) -> Result<Response, AgentError>,
{
    handshake(stream, Role::Agent)?;
    loop {
        let payload = match read_frame_bytes(stream) {
            Ok(p) => p,
            Err(ProtocolError::Closed) => return Ok(ServeEnd::PeerClosed),
            Err(e) => return Err(e),
        };
        let frame: RequestFrame = match serde_json::from_slice(&payload) {
            Ok(f) => f,
            Err(err) => {
                // Answer with the id if at least that much is readable.
                let id = serde_json::from_slice::<serde_json::Value>(&payload)
                    .ok()
                    .and_then(|v| v.get("id").and_then(|i| i.as_u64()))
                    .unwrap_or(0);
                let result = Err(AgentError::new(
                    ErrorKind::InvalidArgument,
                    format!("cannot decode request: {err}"),
                ));
                write_frame(stream, &ResponseFrame { id, result })?;
                continue;
            }
        };
        let shutdown = frame.request == Request::Shutdown;
        let result = match frame.request {
            Request::Ping => Ok(Response::Pong),
            Request::Version => Ok(Response::Version {
                protocol: PROTOCOL_VERSION,
                agent: agent_version.to_owned(),
            }),
            request => handler(request),
        };
        let ok = result.is_ok();
        write_frame(
            stream,
            &ResponseFrame {
                id: frame.id,
                result,
            },
        )?;
        if shutdown && ok {
            return Ok(ServeEnd::Shutdown);
        }
    }
}
