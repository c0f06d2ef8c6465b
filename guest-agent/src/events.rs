//! The event connection to the host (`HOST_CID`:`HOST_EVENT_PORT`): `Ready` once the
//! agent listens, `Fatal` when the agent itself fails.

use std::fs::File;
use std::sync::Mutex;
use std::time::Duration;

use husk_protocol::{
    handshake, write_frame, AgentError, AgentEvent, ErrorKind, Role, HOST_CID, HOST_EVENT_PORT,
};

/// The host answers the hello at once; a host that does not must not stall the boot.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

static EVENTS: Mutex<Option<File>> = Mutex::new(None);

/// Connects to the host's event port and says `Ready`.
pub fn ready(boottime: Duration) -> Result<(), String> {
    let conn = husk_agent::vsock::connect(HOST_CID, HOST_EVENT_PORT)
        .map_err(|e| format!("cannot connect to the host's event port {HOST_EVENT_PORT}: {e}"))?;
    let mut conn = File::from(conn);
    husk_agent::set_read_timeout(&conn, Some(HELLO_TIMEOUT))
        .map_err(|e| format!("event connection: {e}"))?;
    handshake(&mut conn, Role::Agent).map_err(|e| format!("event connection: {e}"))?;
    let ready = AgentEvent::Ready {
        boottime_us: boottime.as_micros() as u64,
    };
    write_frame(&mut conn, &ready).map_err(|e| format!("sending ready: {e}"))?;
    *EVENTS.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn);
    Ok(())
}

/// Best effort: tells the host why the agent is going down. Never blocks on a lock a
/// panicking thread may hold.
pub fn fatal(error: &str) {
    let Ok(mut events) = EVENTS.try_lock() else {
        return;
    };
    if let Some(conn) = events.as_mut() {
        let event = AgentEvent::Fatal {
            error: AgentError::new(ErrorKind::Internal, error),
        };
        let _ = write_frame(conn, &event);
    }
}
