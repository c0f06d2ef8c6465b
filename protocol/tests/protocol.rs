//! The wire protocol over unix socket pairs: hello/version rule, request/response loop,
//! errors, stdio stream headers.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::thread;

use husk_protocol::version::handshake_with_version;
use husk_protocol::{
    accept_stdio_stream, ack_stdio_stream, handshake, open_stdio_stream, serve, write_frame,
    AgentError, Client, ErrorKind, ExitStatus, ProcessRef, ProtocolError, Request, Response, Role,
    ServeEnd, StdioConfig, StreamHeader, StreamKind, PROTOCOL_VERSION,
};
use oci_spec::runtime::{Process, Spec};

#[test]
fn hello_with_equal_versions() {
    let (mut a, mut h) = UnixStream::pair().unwrap();
    let agent = thread::spawn(move || handshake(&mut a, Role::Agent).unwrap());
    assert_eq!(handshake(&mut h, Role::Host).unwrap(), PROTOCOL_VERSION);
    assert_eq!(agent.join().unwrap(), PROTOCOL_VERSION);
}

#[test]
fn version_mismatch_names_both_versions_on_both_sides() {
    let (mut a, mut h) = UnixStream::pair().unwrap();
    let agent = thread::spawn(move || handshake_with_version(&mut a, Role::Agent, 7));
    let err = handshake(&mut h, Role::Host).unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::VersionMismatch {
            host: PROTOCOL_VERSION,
            agent: 7
        }
    ));
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("host speaks version {PROTOCOL_VERSION}")),
        "{msg}"
    );
    assert!(msg.contains("agent speaks version 7"), "{msg}");
    assert!(matches!(
        agent.join().unwrap(),
        Err(ProtocolError::VersionMismatch {
            host: PROTOCOL_VERSION,
            agent: 7
        })
    ));
}

#[test]
fn a_peer_that_is_not_husk_is_named_as_such() {
    let (mut a, mut h) = UnixStream::pair().unwrap();
    a.write_all(b"SSH-2.0-").unwrap();
    assert!(matches!(
        handshake(&mut h, Role::Host),
        Err(ProtocolError::BadMagic(m)) if &m == b"SSH-"
    ));
    drop(a);
    let (a, mut h) = UnixStream::pair().unwrap();
    drop(a);
    assert!(matches!(
        handshake(&mut h, Role::Host),
        Err(ProtocolError::Closed)
    ));
}

/// A fake agent: enough behaviour to exercise every request through `serve`.
fn fake_agent(request: Request) -> Result<Response, AgentError> {
    match request {
        Request::CreateContainer { id, spec, stdio } => {
            assert_eq!(spec.version(), Spec::default().version());
            assert!(stdio.stdout);
            if id == "exists" {
                Err(AgentError::new(
                    ErrorKind::AlreadyExists,
                    "container exists",
                ))
            } else {
                Ok(Response::Pid { pid: 42 })
            }
        }
        Request::StartContainer { .. } | Request::CloseStdin { .. } => Ok(Response::Ok),
        Request::ExecProcess { process, .. } => {
            let arg0 = process.args().as_ref().unwrap()[0].clone();
            Err(AgentError::new(
                ErrorKind::ExecutableNotFound,
                format!("exec: {arg0:?}: executable file not found in $PATH"),
            ))
        }
        Request::Signal { signal, .. } => {
            assert_eq!(signal, 15);
            Ok(Response::Ok)
        }
        Request::Wait { process } => {
            assert_eq!(process, ProcessRef::init("c1"));
            Ok(Response::Exit {
                status: ExitStatus::Signaled(15),
            })
        }
        Request::ResizeTty { rows, cols, .. } => {
            assert_eq!((rows, cols), (50, 132));
            Ok(Response::Ok)
        }
        Request::Shutdown => Ok(Response::Ok),
        other => panic!("serve should have answered {other:?} itself"),
    }
}

#[test]
fn every_request_round_trips_through_serve() {
    let (mut a, h) = UnixStream::pair().unwrap();
    let agent = thread::spawn(move || serve(&mut a, "husk-agent test", fake_agent));
    let mut c = Client::connect(h).unwrap();
    c.ping().unwrap();
    assert_eq!(
        c.version().unwrap(),
        (PROTOCOL_VERSION, "husk-agent test".to_owned())
    );
    let stdio = StdioConfig {
        stdout: true,
        ..Default::default()
    };
    assert_eq!(
        c.create_container("c1", Spec::default(), stdio).unwrap(),
        42
    );
    match c.create_container("exists", Spec::default(), stdio) {
        Err(ProtocolError::Agent(e)) => assert_eq!(e.kind, ErrorKind::AlreadyExists),
        other => panic!("{other:?}"),
    }
    c.start_container("c1").unwrap();
    let mut p = Process::default();
    p.set_args(Some(vec!["nope".into()]));
    match c.exec_process("c1", "e1", p, StdioConfig::default()) {
        Err(ProtocolError::Agent(e)) => {
            assert_eq!(e.kind.exit_code(), Some(127));
            assert!(e.message.contains("executable file not found in $PATH"));
        }
        other => panic!("{other:?}"),
    }
    c.signal(ProcessRef::init("c1"), 15, false).unwrap();
    c.resize_tty(ProcessRef::exec("c1", "e1"), 50, 132).unwrap();
    c.close_stdin(ProcessRef::init("c1")).unwrap();
    let status = c.wait(ProcessRef::init("c1")).unwrap();
    assert_eq!(status.code(), 143);
    c.shutdown().unwrap();
    assert_eq!(agent.join().unwrap().unwrap(), ServeEnd::Shutdown);
}

#[test]
fn an_undecodable_request_gets_an_error_and_the_connection_goes_on() {
    let (mut a, mut h) = UnixStream::pair().unwrap();
    let agent = thread::spawn(move || serve(&mut a, "t", fake_agent));
    handshake(&mut h, Role::Host).unwrap();
    write_frame(
        &mut h,
        &serde_json::json!({"id": 9, "request": {"frobnicate": {}}}),
    )
    .unwrap();
    let resp: husk_protocol::ResponseFrame = husk_protocol::read_frame(&mut h).unwrap();
    assert_eq!(resp.id, 9);
    assert_eq!(resp.result.unwrap_err().kind, ErrorKind::InvalidArgument);
    // Still in step: a proper client call works on the same stream.
    write_frame(
        &mut h,
        &husk_protocol::RequestFrame {
            id: 10,
            request: Request::Ping,
        },
    )
    .unwrap();
    let resp: husk_protocol::ResponseFrame = husk_protocol::read_frame(&mut h).unwrap();
    assert_eq!((resp.id, resp.result), (10, Ok(Response::Pong)));
    h.shutdown(Shutdown::Both).unwrap();
    assert_eq!(agent.join().unwrap().unwrap(), ServeEnd::PeerClosed);
}

#[test]
fn an_oversized_frame_ends_the_connection_with_a_typed_error() {
    let (mut a, mut h) = UnixStream::pair().unwrap();
    let agent = thread::spawn(move || serve(&mut a, "t", fake_agent));
    handshake(&mut h, Role::Host).unwrap();
    h.write_all(&u32::MAX.to_be_bytes()).unwrap();
    assert!(matches!(
        agent.join().unwrap(),
        Err(ProtocolError::FrameTooLarge { .. })
    ));
}

#[test]
fn stdio_stream_header_then_raw_bytes() {
    let (mut a, mut h) = UnixStream::pair().unwrap();
    let agent = thread::spawn(move || {
        let header = accept_stdio_stream(&mut a).unwrap();
        ack_stdio_stream(&mut a, &Ok(())).unwrap();
        let mut bytes = Vec::new();
        a.read_to_end(&mut bytes).unwrap();
        (header, bytes)
    });
    let header = StreamHeader {
        process: ProcessRef::exec("c1", "e2"),
        kind: StreamKind::Stdin,
    };
    open_stdio_stream(&mut h, &header).unwrap();
    h.write_all(b"\x00\x01raw, not framed").unwrap();
    h.shutdown(Shutdown::Write).unwrap();
    let (got, bytes) = agent.join().unwrap();
    assert_eq!(got, header);
    assert_eq!(bytes, b"\x00\x01raw, not framed");
}

#[test]
fn a_refused_stdio_stream_carries_the_agent_error() {
    let (mut a, mut h) = UnixStream::pair().unwrap();
    let agent = thread::spawn(move || {
        let header = accept_stdio_stream(&mut a).unwrap();
        ack_stdio_stream(&mut a, &Err(AgentError::not_found(&header.process))).unwrap();
    });
    let err = open_stdio_stream(
        &mut h,
        &StreamHeader {
            process: ProcessRef::init("nope"),
            kind: StreamKind::Stdout,
        },
    )
    .unwrap_err();
    agent.join().unwrap();
    match err {
        ProtocolError::Agent(e) => assert_eq!(e.kind, ErrorKind::NotFound),
        other => panic!("{other:?}"),
    }
}
