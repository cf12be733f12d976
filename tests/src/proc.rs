//! Child processes that cannot outlive the harness.
//!
//! Every process is spawned from one long-lived thread with `PR_SET_PDEATHSIG = SIGKILL`, so the
//! kernel kills it when the harness process dies for any reason (panic, abort, SIGKILL). Each
//! child leads its own process group, so stopping it also stops what it forked. Every child
//! carries [`MARKER_ENV`] so that tests can find strays by scanning `/proc`.

use std::collections::BTreeMap;
use std::io::PipeReader;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Environment variable set on every process the harness starts; its value is the cluster id.
pub const MARKER_ENV: &str = "OCELLUS_LOCAL_CLUSTER";

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    /// Program (absolute path or looked up on PATH).
    pub program: PathBuf,
    /// Arguments.
    pub args: Vec<String>,
    /// Environment; the harness's own environment is not inherited when `clear_env` is set.
    pub env: BTreeMap<String, String>,
    /// Start from an empty environment.
    pub clear_env: bool,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// File receiving stdout and stderr.
    pub log: Option<PathBuf>,
}

/// What to run, whether to pipe its output, and where to answer.
type Request = (Spec, bool, mpsc::Sender<std::io::Result<(Child, Option<PipeReader>)>>);

fn spawner() -> &'static Mutex<mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        // This thread never exits, so PDEATHSIG fires only when the whole process dies.
        std::thread::Builder::new()
            .name("ocellus-spawner".into())
            .spawn(move || {
                for (spec, piped, reply) in rx {
                    let _ = reply.send(spawn_here(&spec, piped));
                }
                // Keep the thread alive even if every sender is gone.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the spawner thread");
        Mutex::new(tx)
    })
}

fn spawn_here(spec: &Spec, piped: bool) -> std::io::Result<(Child, Option<PipeReader>)> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args).stdin(Stdio::null());
    if spec.clear_env {
        cmd.env_clear();
    }
    cmd.envs(&spec.env);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    let mut reader = None;
    if piped {
        // One pipe for both, as one file was: their interleaving stays the process's own.
        let (r, w) = std::io::pipe()?;
        cmd.stdout(w.try_clone()?).stderr(w);
        reader = Some(r);
    } else if let Some(log) = &spec.log {
        let f = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        cmd.stdout(f.try_clone()?).stderr(f);
    } else {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    ffi::die_with_parent(&mut cmd);
    let child = cmd.spawn()?;
    // Dropping `cmd` closes this process's write ends: the reader sees EOF once the child, and
    // whatever it forked, have closed theirs.
    drop(cmd);
    Ok((child, reader))
}

fn request(spec: Spec, piped: bool) -> std::io::Result<(Child, Option<PipeReader>)> {
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .map_err(|_| std::io::Error::other("spawner poisoned"))?
        .send((spec, piped, tx))
        .map_err(|_| std::io::Error::other("spawner thread gone"))?;
    rx.recv().map_err(|_| std::io::Error::other("spawner thread gone"))?
}

/// Spawns a process that dies with this one.
pub fn spawn(spec: Spec) -> std::io::Result<Child> {
    request(spec, false).map(|(child, _)| child)
}

/// Like [`spawn`], with stdout and stderr written to one pipe whose read end is returned, for a
/// caller that records the output itself (the local node stamps each line with its time).
/// `spec.log` is not used.
pub fn spawn_piped(spec: Spec) -> std::io::Result<(Child, PipeReader)> {
    let (child, reader) = request(spec, true)?;
    reader.map(|r| (child, r)).ok_or_else(|| std::io::Error::other("no pipe"))
}

/// Sends `sig` to the process group led by `pid`.
pub fn signal_group(pid: u32, sig: i32) {
    ffi::kill(-(pid as i32), sig);
}

/// SIGTERM to the group, up to `grace` to exit, then SIGKILL. Reaps the child.
pub fn stop(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        signal_group(child.id(), ffi::SIGKILL);
        return Some(st);
    }
    signal_group(child.id(), ffi::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            signal_group(child.id(), ffi::SIGKILL);
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    signal_group(child.id(), ffi::SIGKILL);
    child.wait().ok()
}

/// Sends SIGKILL to the one process `pid` (not its group): a container's process dying as the
/// kernel's OOM killer or `kill -9` would end it.
pub fn kill_process(pid: u32) {
    ffi::kill(pid as i32, ffi::SIGKILL);
}

/// Pids of live processes whose environment carries `MARKER_ENV=<id>`.
pub fn processes_with_marker(id: &str) -> Vec<u32> {
    let needle = format!("{MARKER_ENV}={id}");
    live_processes_where("environ", |entry| entry == needle.as_bytes())
}

/// Pids of live processes with `arg` among their command-line arguments.
pub fn processes_with_arg(arg: &str) -> Vec<u32> {
    live_processes_where("cmdline", |entry| entry == arg.as_bytes())
}

/// Pids of live processes with an entry of `/proc/<pid>/<file>` (NUL-separated) that `hit`s.
fn live_processes_where(file: &str, hit: impl Fn(&[u8]) -> bool) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return vec![] };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| {
            // Zombies have no environment left and no resources: they do not count.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('Z'));
            !zombie
                && std::fs::read(format!("/proc/{pid}/{file}"))
                    .map(|bytes| bytes.split(|b| *b == 0).any(&hit))
                    .unwrap_or(false)
        })
        .collect()
}

/// The only unsafe code of the harness: pre-exec hooks and kill(2).
#[allow(unsafe_code)]
pub(crate) mod ffi {
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    pub const SIGTERM: i32 = libc::SIGTERM;
    pub const SIGKILL: i32 = libc::SIGKILL;

    /// In the child, before exec: own process group, and SIGKILL when the parent thread dies.
    pub fn die_with_parent(cmd: &mut Command) {
        // SAFETY: setpgid and prctl are async-signal-safe and touch no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// kill(2); errors (no such process) are ignored.
    pub fn kill(pid: i32, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}
