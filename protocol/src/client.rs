//! The host side of a control connection.

use std::io::{Read, Write};

use oci_spec::runtime::{Process, Spec};

use crate::frame::{read_frame, write_frame, ProtocolError};
use crate::messages::{
    ExitStatus, GuestProcessInfo, ProcessRef, Request, RequestFrame, Response, ResponseFrame,
    StdioConfig,
};
use crate::version::{handshake, Role};

/// A control connection to the agent: one request at a time, answered in order.
/// Open another `Client` for each concurrent `wait`.
pub struct Client<S> {
    stream: S,
    next_id: u64,
}

impl<S: Read + Write> Client<S> {
    /// Does the hello on `stream` (fails with `VersionMismatch` naming both versions).
    pub fn connect(mut stream: S) -> Result<Self, ProtocolError> {
        handshake(&mut stream, Role::Host)?;
        Ok(Client { stream, next_id: 1 })
    }

    /// The underlying stream (e.g. to set timeouts).
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// Sends one request and reads its response. An agent-side failure is
    /// `ProtocolError::Agent` carrying the agent's kind and message.
    pub fn call(&mut self, request: Request) -> Result<Response, ProtocolError> {
        let id = self.next_id;
        self.next_id += 1;
        write_frame(&mut self.stream, &RequestFrame { id, request })?;
        let resp: ResponseFrame = read_frame(&mut self.stream)?;
        if resp.id != id {
            return Err(ProtocolError::IdMismatch {
                expected: id,
                got: resp.id,
            });
        }
        Ok(resp.result?)
    }

    fn call_ok(&mut self, request: Request) -> Result<(), ProtocolError> {
        let name = request.name();
        match self.call(request)? {
            Response::Ok => Ok(()),
            other => Err(unexpected(name, other)),
        }
    }

    fn call_pid(&mut self, request: Request) -> Result<i32, ProtocolError> {
        let name = request.name();
        match self.call(request)? {
            Response::Pid { pid } => Ok(pid),
            other => Err(unexpected(name, other)),
        }
    }

    pub fn ping(&mut self) -> Result<(), ProtocolError> {
        match self.call(Request::Ping)? {
            Response::Pong => Ok(()),
            other => Err(unexpected("ping", other)),
        }
    }

    /// (protocol version, agent build string).
    pub fn version(&mut self) -> Result<(u32, String), ProtocolError> {
        match self.call(Request::Version)? {
            Response::Version { protocol, agent } => Ok((protocol, agent)),
            other => Err(unexpected("version", other)),
        }
    }

    /// Returns the init process's guest pid.
    pub fn create_container(
        &mut self,
        id: &str,
        spec: Spec,
        stdio: StdioConfig,
    ) -> Result<i32, ProtocolError> {
        self.call_pid(Request::CreateContainer {
            id: id.to_owned(),
            spec,
            stdio,
        })
    }

    pub fn start_container(&mut self, id: &str) -> Result<(), ProtocolError> {
        self.call_ok(Request::StartContainer { id: id.to_owned() })
    }

    /// Returns the exec'd process's guest pid.
    pub fn exec_process(
        &mut self,
        container_id: &str,
        exec_id: &str,
        process: Process,
        stdio: StdioConfig,
    ) -> Result<i32, ProtocolError> {
        self.call_pid(Request::ExecProcess {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
            process,
            stdio,
        })
    }

    pub fn signal(
        &mut self,
        process: ProcessRef,
        signal: i32,
        all: bool,
    ) -> Result<(), ProtocolError> {
        self.call_ok(Request::Signal {
            process,
            signal,
            all,
        })
    }

    /// Sends `signal` to every process of container `id` (its whole pid namespace).
    pub fn signal_all(&mut self, id: &str, signal: i32) -> Result<(), ProtocolError> {
        self.signal(ProcessRef::init(id), signal, true)
    }

    /// The processes of container `id`, pids as seen inside it (init is 1).
    pub fn list_processes(&mut self, id: &str) -> Result<Vec<GuestProcessInfo>, ProtocolError> {
        match self.call(Request::ListProcesses { id: id.to_owned() })? {
            Response::Processes { processes } => Ok(processes),
            other => Err(unexpected("list_processes", other)),
        }
    }

    /// Blocks until the process exits.
    pub fn wait(&mut self, process: ProcessRef) -> Result<ExitStatus, ProtocolError> {
        match self.call(Request::Wait { process })? {
            Response::Exit { status } => Ok(status),
            other => Err(unexpected("wait", other)),
        }
    }

    pub fn resize_tty(
        &mut self,
        process: ProcessRef,
        rows: u16,
        cols: u16,
    ) -> Result<(), ProtocolError> {
        self.call_ok(Request::ResizeTty {
            process,
            rows,
            cols,
        })
    }

    pub fn close_stdin(&mut self, process: ProcessRef) -> Result<(), ProtocolError> {
        self.call_ok(Request::CloseStdin { process })
    }

    /// Mounts virtio-fs share `tag` at guest path `target`.
    pub fn mount_share(
        &mut self,
        tag: &str,
        target: &str,
        read_only: bool,
    ) -> Result<(), ProtocolError> {
        self.call_ok(Request::MountShare {
            tag: tag.to_owned(),
            target: target.to_owned(),
            read_only,
        })
    }

    /// Asks the agent to power the VM off; returns once it has acknowledged.
    pub fn shutdown(&mut self) -> Result<(), ProtocolError> {
        self.call_ok(Request::Shutdown)
    }
}

fn unexpected(request: &'static str, response: Response) -> ProtocolError {
    ProtocolError::UnexpectedResponse {
        request,
        response: format!("{response:?}"),
    }
}
