//! Serve mode: the vsock listeners, one thread per connection, over `husk_agent::Agent`.

use std::convert::Infallible;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use husk_agent::{vsock, Agent};
use husk_protocol::process::Reaper;
use husk_protocol::{ProtocolError, ServeEnd, AGENT_CONTROL_PORT, AGENT_STDIO_PORT};

use crate::{console_line, events, init, ready_line, warn};

/// Listens, reports ready, and serves until a `Shutdown` powers the VM off.
pub fn run() -> Result<Infallible, String> {
    let reaper = Reaper::start().map_err(|e| format!("cannot start the reaper: {e}"))?;
    let agent = Arc::new(Agent::new(reaper));
    let listen =
        |port| vsock::listen(port).map_err(|e| format!("cannot listen on vsock port {port}: {e}"));
    let control = listen(AGENT_CONTROL_PORT)?;
    let stdio = listen(AGENT_STDIO_PORT)?;

    let a = agent.clone();
    accept_loop("control", control, move |conn| {
        match a.serve_control(conn) {
            Ok(ServeEnd::Shutdown) => init::power_off(),
            Ok(ServeEnd::PeerClosed) | Err(ProtocolError::Closed) => {}
            Err(e) => warn(&format!("control connection: {e}")),
        }
    })?;
    accept_loop("stdio", stdio, move |conn| {
        if let Err(e) = agent.accept_stdio(conn) {
            warn(&format!("stdio connection: {e}"));
        }
    })?;

    let boottime = init::boottime()?;
    if let Err(e) = events::ready(boottime) {
        // The host can still reach the agent on its ports; the console line follows.
        warn(&e);
    }
    console_line(&ready_line()?);
    loop {
        thread::park();
    }
}

/// Accepts on `listener` forever, each connection on its own thread.
fn accept_loop(
    name: &'static str,
    listener: OwnedFd,
    handle: impl Fn(OwnedFd) + Send + Sync + 'static,
) -> Result<(), String> {
    let handle = Arc::new(handle);
    let spawned = thread::Builder::new()
        .name(format!("husk-{name}-accept"))
        .spawn(move || loop {
            let conn = match vsock::accept(&listener) {
                Ok(c) => c,
                Err(e) => {
                    // Out of fds or memory: back off rather than spin.
                    warn(&format!("accepting a {name} connection: {e}"));
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let h = handle.clone();
            if let Err(e) = thread::Builder::new()
                .name(format!("husk-{name}"))
                .spawn(move || h(conn))
            {
                warn(&format!(
                    "cannot start a thread for a {name} connection: {e}"
                ));
            }
        });
    spawned
        .map(drop)
        .map_err(|e| format!("cannot start the {name} listener thread: {e}"))
}
