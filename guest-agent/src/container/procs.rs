//! Reading a container's processes from the guest's /proc.

use husk_protocol::GuestProcessInfo;

/// `pid` (a guest pid) as the container sees it: its pid in the innermost pid namespace
/// (the last `NSpid` field) and its command line.
pub fn info(pid: i32) -> GuestProcessInfo {
    GuestProcessInfo {
        pid: pid_in_own_namespace(pid).unwrap_or(pid),
        command: command(pid),
    }
}

/// The last field of `NSpid:` in /proc/<pid>/status.
fn pid_in_own_namespace(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// The command line, arguments joined by spaces; `[comm]` for a process without one.
fn command(pid: i32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if !args.is_empty() {
        return args.join(" ");
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    format!("[{}]", comm.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process() {
        let me = std::process::id() as i32;
        let i = info(me);
        assert_eq!(i.pid, me);
        assert!(!i.command.is_empty());
    }
}
