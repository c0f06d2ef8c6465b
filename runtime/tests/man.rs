//! The man pages in `man/` are generated from the CLI's own definition (clap), so they
//! cannot drift from `husk --help`: this test renders them and fails when a committed page
//! differs. After changing the CLI, regenerate with
//! `HUSK_UPDATE_MAN=1 cargo test -p husk --test man`.

use std::path::{Path, PathBuf};

use clap::{Command, CommandFactory};
use clap_mangen::Man;
use husk::cli::Cli;

const SECTION: &str = "8";

/// Prose for husk(8) that `--help` does not carry.
const HUSK_DESCRIPTION: &str = "\
husk is an OCI container runtime with the command line of runc. It runs every container \
in its own KVM microVM: a guest kernel and husk's agent as its PID 1, booted by husk's own \
virtual machine monitor (virtio-mmio devices: virtio-fs for the root filesystem and \
volumes, virtio-vsock to the agent, virtio-rng, a serial console). The \
container is built inside the guest with the OCI semantics of the bundle's config.json \
(namespaces, mounts, capabilities, seccomp, rlimits); exec'd processes run in the guest \
too.

Tools written for runc drive it unchanged, such as podman (--runtime husk), or the \
commands below. `husk vm boot` and `husk vm run` work with \
microVMs directly, without a bundle.";

const HUSK_FILES: &[(&str, &str)] = &[
    (
        "/run/husk/",
        "default --root: one directory per container with its state.json and the sockets \
         of its microVM; removed at delete",
    ),
    (
        "/etc/husk/config.toml",
        "optional: kernel and initramfs paths, overriding the ones found next to the husk \
         binary (a build tree) or in PREFIX/share/husk",
    ),
    (
        "PREFIX/share/husk/vmlinux, PREFIX/share/husk/initramfs.cpio",
        "the guest kernel and the initramfs holding husk's agent",
    ),
];

const HUSK_EXAMPLES: &str = "\
Boot a microVM to the agent and see where the time went:
    husk vm boot

Run a command with a host directory as its root, in a fresh microVM:
    husk vm run --rootfs ./rootfs -- sh -c 'uname -r'

Run an OCI bundle:
    mkdir -p bundle/rootfs && cd bundle && husk spec && husk run demo

With podman:
    podman --runtime /usr/local/bin/husk run --rm localhost/busybox uname -r";

fn man_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../man")
}

/// Every page: (file name, roff text). husk(8), then one page per visible command and
/// per visible `vm` command.
fn pages() -> Vec<(String, Vec<u8>)> {
    let husk = Cli::command();
    let mut pages = vec![("husk.8".to_string(), render_husk(husk.clone()))];
    for sub in visible(&husk) {
        let name = format!("husk-{}", sub.get_name());
        if sub.get_name() == "vm" {
            for vm_sub in visible(sub) {
                let vm_name = format!("husk-vm-{}", vm_sub.get_name());
                let bin = format!("husk vm {}", vm_sub.get_name());
                pages.push(render_command(vm_sub, &vm_name, &bin));
            }
        }
        let bin = format!("husk {}", sub.get_name());
        pages.push(render_command(sub, &name, &bin));
    }
    pages
}

fn visible(cmd: &Command) -> impl Iterator<Item = &Command> {
    cmd.get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
}

fn header(man: Man) -> Man {
    man.section(SECTION)
        .source(format!("husk {}", env!("CARGO_PKG_VERSION")))
        .manual("husk manual")
}

fn render_husk(cmd: Command) -> Vec<u8> {
    let man = header(Man::new(cmd.clone()));
    let mut out = Vec::new();
    man.render_title(&mut out).unwrap();
    man.render_name_section(&mut out).unwrap();
    man.render_synopsis_section(&mut out).unwrap();
    section(&mut out, "DESCRIPTION");
    for para in HUSK_DESCRIPTION.split("\n\n") {
        paragraph(&mut out, para);
    }
    man.render_options_section(&mut out).unwrap();
    man.render_subcommands_section(&mut out).unwrap();
    section(&mut out, "FILES");
    for (file, what) in HUSK_FILES {
        out.extend_from_slice(format!(".TP\n{}\n", roff_escape(file)).as_bytes());
        paragraph(&mut out, what);
    }
    section(&mut out, "EXAMPLES");
    for para in HUSK_EXAMPLES.split("\n\n") {
        let (text, code) = para.split_once('\n').unwrap();
        paragraph(&mut out, text);
        out.extend_from_slice(b".RS\n.nf\n");
        out.extend_from_slice(roff_escape(code.trim()).as_bytes());
        out.extend_from_slice(b"\n.fi\n.RE\n");
    }
    section(&mut out, "SEE ALSO");
    let see: Vec<String> = visible(&cmd)
        .map(|c| format!("husk-{}({SECTION})", c.get_name()))
        .chain(["podman(1)".to_string(), "runc(8)".to_string()])
        .collect();
    paragraph(&mut out, &see.join(", "));
    out
}

fn render_command(cmd: &Command, name: &str, bin: &str) -> (String, Vec<u8>) {
    // clap keeps names as &'static str (without its `string` feature); a test may leak.
    let cmd = cmd
        .clone()
        .name(&*name.to_string().leak())
        .bin_name(bin.to_string());
    let man = header(Man::new(cmd.clone()));
    let mut out = Vec::new();
    man.render_title(&mut out).unwrap();
    man.render_name_section(&mut out).unwrap();
    man.render_synopsis_section(&mut out).unwrap();
    man.render_description_section(&mut out).unwrap();
    man.render_options_section(&mut out).unwrap();
    if cmd.has_subcommands() {
        man.render_subcommands_section(&mut out).unwrap();
    }
    section(&mut out, "SEE ALSO");
    paragraph(
        &mut out,
        &format!("husk({SECTION}) for the global options given before the command."),
    );
    (format!("{name}.{SECTION}"), out)
}

fn section(out: &mut Vec<u8>, title: &str) {
    out.extend_from_slice(format!(".SH {title}\n").as_bytes());
}

fn paragraph(out: &mut Vec<u8>, text: &str) {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    out.extend_from_slice(format!(".PP\n{}\n", roff_escape(&text)).as_bytes());
}

/// Escapes what roff would read as requests or escapes: backslashes, and a leading dot or
/// quote on a line.
fn roff_escape(text: &str) -> String {
    text.replace('\\', "\\e")
        .lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn man_pages_match_the_cli() {
    let dir = man_dir();
    let pages = pages();
    if std::env::var_os("HUSK_UPDATE_MAN").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == SECTION) {
                std::fs::remove_file(path).unwrap();
            }
        }
        for (name, text) in &pages {
            std::fs::write(dir.join(name), text).unwrap();
        }
        return;
    }
    let mut stale = Vec::new();
    for (name, text) in &pages {
        if std::fs::read(dir.join(name)).ok().as_deref() != Some(text.as_slice()) {
            stale.push(name.clone());
        }
    }
    let committed = std::fs::read_dir(&dir)
        .map(|d| d.count())
        .unwrap_or_default();
    assert!(
        stale.is_empty() && committed == pages.len(),
        "man/ is out of date with the CLI ({stale:?} differ; {committed} files for {} pages): \
         regenerate with HUSK_UPDATE_MAN=1 cargo test -p husk --test man",
        pages.len()
    );
}
