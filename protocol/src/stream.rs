//! Stdio connections: how a byte stream is tied to one stream of one process.
//!
//! The host connects to [`crate::AGENT_STDIO_PORT`] once per stream, both sides send the
//! hello, the host sends a [`StreamHeader`] frame naming the process and the stream kind,
//! and the agent answers a [`StreamAck`] frame. After an `Ok` ack the connection is raw
//! bytes: no framing, so a relay is a plain copy and EOF (shutdown of the write side) means
//! EOF of the process's stream.
//!
//! The host opens the streams a request announces in its [`crate::StdioConfig`] and waits
//! for their acks before sending that request, so the process never writes before its
//! output has a reader and nothing is lost.

use std::io::{Read, Write};

use crate::frame::{read_frame, write_frame, ProtocolError};
use crate::messages::{StreamAck, StreamHeader};
use crate::version::{handshake, Role};

/// Host: introduces a freshly connected stdio stream; on `Ok` the stream is raw bytes.
pub fn open_stdio_stream<S: Read + Write + ?Sized>(
    stream: &mut S,
    header: &StreamHeader,
) -> Result<(), ProtocolError> {
    handshake(stream, Role::Host)?;
    write_frame(stream, header)?;
    let ack: StreamAck = read_frame(stream)?;
    Ok(ack?)
}

/// Agent: reads the hello and header of an accepted stdio stream. Answer it with
/// [`ack_stdio_stream`] once it has been parked (or refused).
pub fn accept_stdio_stream<S: Read + Write + ?Sized>(
    stream: &mut S,
) -> Result<StreamHeader, ProtocolError> {
    handshake(stream, Role::Agent)?;
    read_frame(stream)
}

/// Agent: answers a stream header.
pub fn ack_stdio_stream<S: Write + ?Sized>(
    stream: &mut S,
    ack: &StreamAck,
) -> Result<(), ProtocolError> {
    write_frame(stream, ack)
}
